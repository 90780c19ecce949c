"""What a store's files must look like: its spec (``spec.json`` or one given from elsewhere) and
the headers of its ``.npy`` files, checked before any of them is opened, with one-line errors;
and the small file operations ``datamodels.store`` builds on.

A spec names the store's arrays: schema key ``k`` is the file ``k.npy`` inside the store, so a
key is a plain name (letters, digits, underscores; no path separators, no ``..``) and a key
cannot be one of the store's own files.  Every array's size must be computable: positive
dimensions, a numeric dtype, and fewer than ``MAX_BYTES`` bytes.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Tuple

import numpy as np

from .errors import DatamodelsError

SPEC = "spec.json"
COMPLETED = "_completed.npy"
# Letters first: names starting with "_" are the store's own files (_completed.npy, _failures.json).
KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
# Larger than any disk, small enough that sizes and offsets stay exact in int64 arithmetic.
MAX_BYTES = 1 << 60

HEADER_IO = {
    (1, 0): (np.lib.format.read_array_header_1_0, np.lib.format.write_array_header_1_0),
    (2, 0): (np.lib.format.read_array_header_2_0, np.lib.format.write_array_header_2_0),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value) -> str:
    return json.dumps(value)[:80]


def read_spec(path: Path, where: str) -> dict:
    """The JSON object in ``path``, or a one-line error naming ``where``."""
    if not path.is_file():
        raise DatamodelsError(f"{where} not found")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatamodelsError(f"{where} is not valid JSON ({first_line(exc)})") from None
    except RecursionError:
        raise DatamodelsError(f"{where} is not valid JSON (nested too deeply)") from None
    except OSError as exc:
        raise DatamodelsError(f"{where}: cannot read it ({reason(exc)})") from None
    if not isinstance(spec, dict):
        raise DatamodelsError(f"{where} must hold a JSON object, got {type(spec).__name__}")
    return spec


def check_spec(spec, where: str) -> None:
    """A one-line error unless ``spec`` is a store spec this package can open safely."""
    if not isinstance(spec, dict) or not _is_int(spec.get("num_models")) or spec["num_models"] < 0:
        raise DatamodelsError(f"{where} needs a non-negative integer num_models")
    schema = spec.get("schema")
    if not isinstance(schema, dict) or "masks" not in schema or "margins" not in schema:
        raise DatamodelsError(f"{where} needs a schema with 'masks' and 'margins'")
    for key, field in schema.items():
        if not KEY.fullmatch(key):
            raise DatamodelsError(f"{where}: schema key {_shown(key)} is not a plain name (letters, digits and _, "
                                  f"starting with a letter): each key names a .npy file inside the store")
        if not isinstance(field, dict) or not isinstance(field.get("shape"), list):
            raise DatamodelsError(f"{where}: schema.{key} needs a shape list and a dtype")
        shape = field["shape"]
        if not all(_is_int(d) and d >= 0 for d in shape):
            raise DatamodelsError(f"{where}: schema shapes must be lists of non-negative integers, "
                                  f"got schema.{key}.shape {_shown(shape)}")
        if 0 in shape:
            raise DatamodelsError(f"{where}: schema.{key}.shape {_shown(shape)} has a zero dimension; "
                                  f"every dimension must be at least 1")
        dtype = field.get("dtype")
        try:
            parsed = np.dtype(dtype) if isinstance(dtype, str) else None
        except (TypeError, ValueError, SyntaxError):
            parsed = None
        if parsed is None or parsed.kind not in "biuf" or parsed.fields is not None or parsed.shape != ():
            raise DatamodelsError(f"{where}: schema.{key}.dtype {_shown(dtype)} is not a numeric numpy dtype "
                                  f"(e.g. \"bool_\", \"float32\")")
        size = max(1, spec["num_models"]) * math.prod(shape) * parsed.itemsize
        if size >= MAX_BYTES:
            raise DatamodelsError(f"{where}: num_models {spec['num_models']} with schema.{key}.shape "
                                  f"{_shown(shape)} makes {key}.npy {size:.3g} bytes, more than any disk holds")
    if len(schema["masks"]["shape"]) != 1 or len(schema["margins"]["shape"]) != 1:
        raise DatamodelsError(f"{where}: masks and margins must each have a one-dimensional row shape")
    if np.dtype(schema["masks"]["dtype"]) != np.bool_:
        raise DatamodelsError(f"{where}: schema.masks.dtype must be \"bool_\", got {_shown(schema['masks']['dtype'])}")
    if np.dtype(schema["margins"]["dtype"]).kind != "f":
        raise DatamodelsError(f"{where}: schema.margins.dtype must be a floating-point dtype (e.g. \"float32\"), "
                              f"got {_shown(schema['margins']['dtype'])}")
    meta = spec.get("datamodels", {})
    if not isinstance(meta, dict):
        raise DatamodelsError(f"{where}: datamodels must be an object")
    ranges = meta.get("eval_ranges", [])
    if not isinstance(ranges, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(_is_int(v) and v >= 0 for v in r) and r[0] <= r[1]
            for r in ranges):
        raise DatamodelsError(f"{where}: datamodels.eval_ranges must be a list of [start, stop] row ranges, "
                              f"got {_shown(ranges)}")
    alpha, seed = meta.get("alpha"), meta.get("seed")
    if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha < 1):
        raise DatamodelsError(f"{where}: datamodels.alpha must be a number in (0, 1), got {_shown(alpha)}")
    if seed is not None and not (_is_int(seed) and 0 <= seed < 1 << 63):
        raise DatamodelsError(f"{where}: datamodels.seed must be an integer in [0, 2**63), got {_shown(seed)}")


def detect_spec(path) -> dict:
    """The spec of a store directory without ``spec.json``, read off its ``.npy`` headers when
    they determine it: ``masks.npy`` bool [M, N], ``margins.npy`` floating [M, T] and
    ``_completed.npy`` bool [M], with one M.  Anything else is an error that asks for the spec."""
    path = Path(path)
    ask = "pass the spec it was created with (--spec FILE)"
    if not (path / "masks.npy").is_file():
        raise DatamodelsError(f"{path} is not a store: {SPEC} is missing, and there is no masks.npy to detect one from "
                              f"(a store written elsewhere: {ask})")
    headers = {}
    for name in ("masks.npy", "margins.npy", COMPLETED):
        where = f"store {path}: {name}"
        if not (path / name).is_file():
            raise DatamodelsError(f"store {path} has no {SPEC} and no {name}, so its spec cannot be detected; {ask}")
        shape, _, dtype, _ = read_npy_header(path / name, where)
        headers[name] = (shape, dtype)
    (ms, md), (ys, yd), (cs, cd) = headers["masks.npy"], headers["margins.npy"], headers[COMPLETED]
    problem = None
    if len(ms) != 2 or md != np.bool_:
        problem = f"masks.npy is {md} {list(ms)}, not a bool [models, train] array"
    elif len(ys) != 2 or not np.issubdtype(yd, np.floating):
        problem = f"margins.npy is {yd} {list(ys)}, not a floating [models, targets] array"
    elif len(cs) != 1 or cd != np.bool_:
        problem = f"{COMPLETED} is {cd} {list(cs)}, not a bool [models] array"
    elif not ms[0] == ys[0] == cs[0]:
        problem = f"the files disagree on the number of models (masks {ms[0]}, margins {ys[0]}, completed {cs[0]})"
    if problem:
        raise DatamodelsError(f"store {path} has no {SPEC} and its .npy headers do not determine one: {problem}; {ask}")
    return {"num_models": int(ms[0]), "schema": {"masks": {"shape": [int(ms[1])], "dtype": "bool_"},
                                                 "margins": {"shape": [int(ys[1])], "dtype": str(yd)}}}


def read_npy_header(path: Path, where: str) -> Tuple[Tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a .npy file, or a one-line error."""
    try:
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
            except ValueError:
                raise DatamodelsError(f"{where} is not a .npy file (no .npy header)") from None
            if version not in HEADER_IO:
                raise DatamodelsError(f"{where} is a .npy file of unsupported version {version}")
            try:
                shape, fortran, dtype = HEADER_IO[version][0](f)
                dtype = np.dtype(dtype)
            except (ValueError, SyntaxError, TypeError, MemoryError) as exc:
                raise DatamodelsError(f"{where} is not a .npy file (damaged header: {first_line(exc)})") from None
            shape = tuple(int(d) for d in shape)
            if any(d < 0 for d in shape):
                raise DatamodelsError(f"{where} is not a .npy file (damaged header: shape {list(shape)})")
            if dtype.hasobject:
                raise DatamodelsError(f"{where} holds Python objects ({dtype}), not numbers")
            return shape, bool(fortran), dtype, f.tell()
    except IsADirectoryError:
        raise DatamodelsError(f"{where} is a directory, not a .npy file") from None
    except OSError as exc:
        raise DatamodelsError(f"{where}: cannot read it ({reason(exc)})") from None


def reason(exc: OSError) -> str:
    """An OSError as lower-case words, e.g. 'no space left on device'."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_free_for_store(path: Path) -> bool:
    """Whether ``path`` is free for a new store (absent, or an empty directory); False when a
    store is there; a one-line error when something else is."""
    if (path / SPEC).exists():
        return False
    if path.exists() and not path.is_dir():
        raise DatamodelsError(f"cannot create store {path}: it is a file, not a directory")
    try:
        present = sorted(os.listdir(path)) if path.is_dir() else []
    except OSError as exc:
        raise DatamodelsError(f"cannot create store {path}: {reason(exc)}") from None
    found = [name for name in ("masks.npy", "margins.npy", COMPLETED) if name in present]
    if found:
        raise DatamodelsError(
            f"{path} holds {', '.join(found)} without {SPEC} (a store written by another pipeline?), which a "
            f"new store would overwrite: it cannot be grown or resumed here; fit, evaluate and analyse it as it is "
            f"(--spec FILE), or use another out directory for new models")
    if present:
        raise DatamodelsError(f"cannot create store {path}: the directory is not empty (it holds "
                              f"{', '.join(present[:3])}{', ...' if len(present) > 3 else ''}); give a new or "
                              f"empty directory")
    return True


def create_npy(path: Path, shape, dtype) -> None:
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape))
    del arr
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_npy_head(path: Path) -> Tuple[int, bytes]:
    """A file's size and header, enough to undo ``store.grow``'s extension."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        HEADER_IO[version][0](f)
        offset = f.tell()
        f.seek(0)
        return os.fstat(f.fileno()).st_size, f.read(offset)


def restore_npy_head(path: Path, saved: Tuple[int, bytes]) -> None:
    size, head = saved
    with open(path, "r+b") as f:
        f.truncate(size)
        f.seek(0)
        f.write(head)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory
    finally:
        os.close(fd)
