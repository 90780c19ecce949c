"""Each node's copy of the prepared data, checked by content before every use.

The driver hashes the prepared files (``payload``) and sends their digest with every task; a
task's node keeps the files in ``<cache root>/<digest>/``.  Before the files are used their
SHA-256 is compared with the digest, so files put there by anything else (another program, a
damaged disk, another user of a shared temporary directory) are never trained on: they are
replaced, atomically, by the driver's.

The cache root is ``$DATAMODELS_CACHE`` if set, else ``$XDG_CACHE_HOME/datamodels/data`` or
``~/.cache/datamodels/data``.  It is created private (mode 0700) and must belong to the
current user and be writable by no one else; a root that is not is refused with a one-line
error, never used.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable, Dict, Tuple

from .errors import DatamodelsError
from .files import file_digest

DATA_FILES = ("train.beton", "test.beton", "meta.json")

# digest -> the (device, inode, size, mtime, ctime) of each file when it was last hashed in this
# process: a task reuses a check while the files are untouched (a changed file changes its ctime,
# which no one can set back), instead of hashing the data set again for every task.
_VERIFIED: Dict[Tuple[str, str], tuple] = {}


def digest_of(hashes: Dict[str, str]) -> str:
    """One digest for the files' SHA-256s, naming each file, so no two data sets share one."""
    return hashlib.sha256("".join(f"{name}\0{hashes[name]}\n" for name in DATA_FILES).encode()).hexdigest()


def payload(data_dir: Path) -> Tuple[str, Dict[str, bytes]]:
    """The digest and bytes of the prepared data files, as the driver sends them."""
    files = {name: (Path(data_dir) / name).read_bytes() for name in DATA_FILES}
    return digest_of({name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}), files


def cache_root() -> Path:
    """This user's cache root (not yet created or checked)."""
    explicit = os.environ.get("DATAMODELS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "datamodels" / "data"


def private_root() -> Path:
    """The cache root, created mode 0700 if missing; a one-line error unless it is a directory
    of this user's that no one else can write (it is not a symbolic link either)."""
    root = cache_root()
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            root.mkdir(mode=0o700)
        except FileExistsError:
            pass
        info = os.lstat(root)
    except OSError as exc:
        raise DatamodelsError(f"data cache {root}: cannot create it ({exc.strerror or exc}); "
                              f"set DATAMODELS_CACHE to a private directory") from None
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a directory (a symbolic link or a file)"
    elif info.st_uid != os.getuid():
        problem = f"belongs to another user (uid {info.st_uid})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    if problem:
        raise DatamodelsError(f"data cache {root} {problem}, so files in it cannot be trusted; set DATAMODELS_CACHE "
                              f"to a directory of your own that only you can write, or fix it (chmod 700)")
    return root


def _signature(path: Path) -> tuple:
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode):
        raise FileNotFoundError(path)  # a link or anything else is not a cached file
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def verified(target: Path, digest: str) -> bool:
    """Whether ``target`` holds exactly the files whose digest is ``digest``."""
    try:
        signature = tuple(_signature(target / name) for name in DATA_FILES)
        if _VERIFIED.get((str(target), digest)) == signature:
            return True
        hashes = {name: file_digest(target / name) for name in DATA_FILES}
        if tuple(_signature(target / name) for name in DATA_FILES) != signature:
            return False  # changed while being hashed
    except OSError:
        return False
    if digest_of(hashes) != digest:
        return False
    _VERIFIED[(str(target), digest)] = signature
    return True


def local_data_dir(digest: str, fetch: Callable[[], Dict[str, bytes]]) -> str:
    """This node's verified copy of the data whose digest is ``digest``; ``fetch()`` returns the
    files' bytes (from the object store) when the copy is missing or not what it should be."""
    from filelock import FileLock

    root = private_root()
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a data digest: {digest!r}")
    target = root / digest
    if verified(target, digest):
        return str(target)
    with FileLock(str(root / f"{digest}.lock")):  # several worker processes per node race here
        if verified(target, digest):
            return str(target)
        files = fetch()
        hashes = {name: hashlib.sha256(files[name]).hexdigest() for name in DATA_FILES}
        if digest_of(hashes) != digest:
            raise DatamodelsError(f"the data sent to this node does not match its digest {digest[:16]}...")
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{digest[:16]}-"))
        stale = None
        try:
            for name in DATA_FILES:
                with open(tmp / name, "wb") as f:
                    f.write(files[name])
                    f.flush()
                    os.fsync(f.fileno())
            # Swap in the new copy: the old one (wrong files) is moved aside, then removed.
            if os.path.lexists(target):
                stale = Path(tempfile.mkdtemp(dir=root, prefix=f".{digest[:16]}-stale-"))
                os.replace(target, stale / "old")
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)
    if not verified(target, digest):
        raise DatamodelsError(f"data cache {target}: the files written do not read back as written")
    return str(target)
