"""Writes that cannot destroy their inputs.

Every output goes to a temporary file in the same directory and is moved over the target with
``os.replace``, so a reader sees the old file or the new one, never half of either, and a failure
part-way leaves the old file as it was.  ``check_output`` is called before a command writes
anything: it refuses an output path inside a store directory, one that is (or resolves to) one of
the command's own inputs, and an existing file that the command did not write, unless forced.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from .errors import DatamodelsError

PathLike = Union[str, os.PathLike]

# The files that make a directory a store (datamodels.store's layout): its own files are written
# only by the sweep, under the store's lock, never by another command's --out.
STORE_MARKERS = ("spec.json", "_completed.npy")
# What the commands' own outputs hold, so that an existing file of the user's is never taken for one:
# the arrays of a datamodels .npz, and the title the report's page starts with.
DATAMODELS_KEYS = ("weight", "bias", "targets")
REPORT_MARKER = "<title>Datamodels report:"


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_replace(path: PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` to write a temporary file beside ``path``, then move it over ``path``.

    The temporary file is removed when ``writer`` fails; an existing file keeps its permissions."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = _new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        writer(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_replace(path, write)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_save(path: PathLike, array=None, **arrays) -> Path:
    """``np.save(path, array)``, or ``np.savez(path, **arrays)`` with keyword arrays, atomically.

    Written through a file object, so numpy never appends a suffix to the name given."""
    import numpy as np

    if (array is None) == (not arrays):
        raise TypeError("atomic_save takes one array or keyword arrays")
    buffer = io.BytesIO()
    if arrays:
        np.savez(buffer, **arrays)
    else:
        np.save(buffer, array)
    return atomic_write_bytes(path, buffer.getvalue())


def store_directory(path: PathLike) -> Optional[Path]:
    """The store directory that ``path`` lies in (itself or an ancestor), or None."""
    path = Path(os.path.abspath(path))
    for directory in (path, *path.parents):
        if any((directory / marker).is_file() for marker in STORE_MARKERS):
            return directory
    return None


def _same(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):  # symlinks and hard links to one file
            return True
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: PathLike, inputs: Iterable[Optional[PathLike]] = (), force: bool = False, *,
                 produced: Optional[Callable[[Path], bool]] = None, what: str = "--out",
                 hint: str = "pass --force to replace it") -> Path:
    """Refuse, before anything is written, an output path that would destroy something.

    Refused always: a path inside a store directory, a path equal to (or a link to) one of
    ``inputs``, a directory, and a path under a file.  Refused unless ``force``: an existing file
    that ``produced(path)`` does not recognise as this command's own output (with no ``produced``,
    any existing file; ``hint``: how to go on, ending the message).  Returns the path."""
    path = Path(path)
    if str(path).strip() == "":
        raise DatamodelsError(f"{what} is empty")
    if path.is_dir():
        raise DatamodelsError(f"{what} {path} is a directory; give a file path")
    for ancestor in Path(os.path.abspath(path)).parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise DatamodelsError(f"{what} {path}: {ancestor} is a file, not a directory")
            break
    store = store_directory(path.parent)
    if store is not None:
        raise DatamodelsError(f"{what} {path} is inside the store {store}; write it elsewhere")
    for item in inputs:
        if item is None:
            continue
        if _same(path, Path(item)):
            raise DatamodelsError(f"{what} {path} is one of this command's inputs ({item}); write it elsewhere")
    if path.exists() or path.is_symlink():
        ours = produced is not None and path.is_file() and _quietly(produced, path)
        if not ours and not force:
            raise DatamodelsError(f"{what} {path} exists and was not written by this command; {hint}")
    return path


def _quietly(predicate: Callable[[Path], bool], path: Path) -> bool:
    try:
        return bool(predicate(path))
    except Exception:  # a file the predicate cannot even read is not ours
        return False


def npz_with_keys(*keys: str) -> Callable[[Path], bool]:
    """A ``produced`` test: an .npz archive holding at least ``keys``."""
    def check(path: Path) -> bool:
        import zipfile

        with zipfile.ZipFile(path) as archive:
            names = {name[:-4] if name.endswith(".npy") else name for name in archive.namelist()}
        return set(keys) <= names

    return check


def text_with_marker(marker: str, head_bytes: int = 4096) -> Callable[[Path], bool]:
    """A ``produced`` test: a text file whose first ``head_bytes`` contain ``marker``."""
    def check(path: Path) -> bool:
        with open(path, "rb") as f:
            return marker.encode() in f.read(head_bytes)

    return check


def json_with_keys(*keys: str) -> Callable[[Path], bool]:
    """A ``produced`` test: a JSON object holding at least ``keys``."""
    def check(path: Path) -> bool:
        import json

        value = json.loads(path.read_text())
        return isinstance(value, dict) and set(keys) <= set(value)

    return check


def file_digest(path: PathLike) -> str:
    """SHA-256 of a file's bytes (to tell whether a write changed it)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
