"""The store: one row per trained model, in memory-mapped ``.npy`` files.

Layout (that of the published reference implementation, so its stores open too)::

    store/
      spec.json        {"num_models": M, "schema": {"masks": {"shape": [N], "dtype": "bool_"},
                                                    "margins": {"shape": [T], "dtype": "float32"}},
                        "datamodels": {...our metadata: alpha, seed, evaluation rows...}}
      masks.npy        bool  [M, N]  which training examples model i saw
      margins.npy      float [M, T]  model i's margin on each target example
      _completed.npy   bool  [M]     row i holds finished results
      _failures.json   {index: error} for tasks that failed after all retries
      .lock            held by the one process writing this store

A store appears whole or not at all: ``create`` builds it in a hidden sibling directory,
holding that directory's ``.lock`` from before its first file, and renames it into place;
the lock file moves with it, so the store is locked by its creator from its first byte.
Every write (grow, results, failures) needs the lock, held by this process or free.

Masks are a pure function of (seed, index), so any row can be regenerated and
checked.  Only the driver writes; it writes a row's margins, flushes them, and
only then sets and flushes the row's completion flag, so a crash never leaves a
row marked complete with partial data.  Rows are split into a *fitting* part
(training and validation of the regression) and an *evaluation* part (held out,
used only for LDS); the evaluation rows are listed as ranges in the spec so the
store can grow in either part later.
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from filelock import FileLock, Timeout

from .errors import DatamodelsError
from .files import atomic_write_text
from .store_format import COMPLETED, HEADER_IO, SPEC, check_free_for_store, check_spec, create_npy, detect_spec
from .store_format import first_line, fsync_dir, read_npy_header, read_spec, reason, restore_npy_head, save_npy_head

__all__ = ["Store", "detect_spec", "parse_rows", "subset_mask", "subset_size", "model_seed", "model_seeds"]

FAILURES = "_failures.json"
LOCK = ".lock"
FORMAT_VERSION = 1
CREATING = ".creating-"  # hidden sibling directories of stores being created: .<name>.creating-XXXX
STALE_CREATION_S = 60  # a creation takes milliseconds; an unlocked one this old was abandoned


def subset_size(num_train: int, alpha: float) -> int:
    return max(1, min(num_train, int(round(alpha * num_train))))


def subset_mask(seed: int, index: int, num_train: int, alpha: float) -> np.ndarray:
    """Model ``index``'s mask: a uniformly random subset of exactly round(alpha*N) examples."""
    rng = np.random.default_rng([int(seed), int(index), 0])
    mask = np.zeros(num_train, dtype=bool)
    mask[rng.permutation(num_train)[: subset_size(num_train, alpha)]] = True
    return mask


def model_seed(seed: int, index: int) -> int:
    """Model ``index``'s training seed (initialisation, batch order), independent of its mask."""
    return int(np.random.SeedSequence([int(seed), int(index), 1]).generate_state(1, dtype=np.uint32)[0])


def model_seeds(seed: int, rows) -> np.ndarray:
    """The training seeds of the models at ``rows`` (``model_seed`` of each)."""
    return np.array([model_seed(seed, i) for i in rows], dtype=np.int64)


def _ranges_to_bool(ranges: Sequence[Sequence[int]], n: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    for start, stop in ranges:
        out[start:min(stop, n)] = True
    return out


class Store:
    """A datamodels store opened for reading (``mode="r"``) or writing (``mode="r+"``)."""

    def __init__(self, path, mode: str = "r", *, spec=None, eval_rows=None):
        """``spec``: the JSON spec (a path or a dict) of a store that keeps it elsewhere, as the
        reference pipeline does; without it, ``path/spec.json``, or else one detected from the
        ``.npy`` headers when they determine it (``detect_spec``).  ``eval_rows``: rows
        (``"A:B"``, ``(A, B)`` or ``range``) to hold out for LDS in place of the store's own
        evaluation split, in memory only (for a store that has none)."""
        self.path = Path(path)
        self.mode = mode
        self._spec_arg, self._eval_rows_arg = spec, eval_rows
        spec_path = self.path / SPEC
        if not self.path.is_dir():
            raise DatamodelsError(f"store not found: {self.path}")
        # Where the spec came from: named in errors; a spec from elsewhere must match the files exactly.
        self.spec_source = SPEC
        self.external_spec = spec is not None or not spec_path.is_file()
        if isinstance(spec, dict):
            self.spec, self.spec_source = json.loads(json.dumps(spec)), "the given spec"
        elif spec is not None:
            self.spec, self.spec_source = read_spec(Path(spec), f"spec {spec}"), f"spec {spec}"
        elif spec_path.is_file():
            self.spec = read_spec(spec_path, f"store {self.path}: {SPEC}")
        else:
            self.spec, self.spec_source = detect_spec(self.path), "the spec detected from its .npy headers"
        check_spec(self.spec, f"store {self.path}: {self.spec_source}")
        if mode == "r+" and (self.alpha is None or self.seed is None):
            raise DatamodelsError(
                f"store {self.path} has no alpha/seed metadata (it was written by another pipeline, e.g. the reference "
                f"implementation's workers), so it cannot be grown or resumed here: its masks are not a function of a "
                f"seed, so unfinished rows cannot be trained. Fit, evaluate and analyse it as it is (--eval-rows A:B "
                f"holds out rows for LDS), or train new models into another out directory with `datamodels sweep`")
        self.num_models = int(self.spec["num_models"])
        self.arrays: Dict[str, np.memmap] = {}
        for key, field in self.spec["schema"].items():
            self.arrays[key] = self._open_array(f"{key}.npy", [self.num_models, *field["shape"]], field["dtype"])
        self.completed = self._open_array(COMPLETED, [self.num_models], "bool_")
        self.eval_override: Optional[List[List[int]]] = None
        if eval_rows is not None:
            self.eval_override = [list(parse_rows(eval_rows, self.num_models))]
            start, stop = self.eval_override[0]
            done = np.asarray(self.completed[start:stop], dtype=bool)
            if not done.all():
                missing = start + np.flatnonzero(~done)
                raise DatamodelsError(
                    f"eval rows {start}:{stop} of store {self.path}: {len(missing)} of {stop - start} are not completed "
                    f"(rows {', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''}); choose completed rows")

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, num_train: int, num_targets: int, alpha: float, seed: int,
               margins_dtype: str = "float32", extra: Optional[dict] = None) -> "Store":
        """An empty store (zero models) for this problem; ``grow`` adds rows.

        The store is built in a hidden sibling directory, under its lock, and renamed into
        place, so a crash at any point leaves no store or a whole one.  Of creators racing for
        one path, the first rename wins; the others, like a creator finding the store already
        there, open it when it was made with the same settings (two runs of one command started
        together behave as if one had started first; the store's lock then lets only one of
        them write), and get a one-line error otherwise."""
        path = Path(os.path.abspath(path))
        spec = {
            "num_models": 0,
            "schema": {
                "masks": {"shape": [int(num_train)], "dtype": "bool_"},
                "margins": {"shape": [int(num_targets)], "dtype": margins_dtype},
            },
            "datamodels": {"version": FORMAT_VERSION, "alpha": float(alpha), "seed": int(seed),
                           "eval_ranges": [], **(extra or {})},
        }
        spec = json.loads(json.dumps(spec))
        check_spec(spec, f"new store {path}")
        if check_free_for_store(path):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatamodelsError(f"cannot create store {path}: {reason(exc)}") from None
            _remove_abandoned_creations(path)
            _build_and_rename(path, spec)
        return cls._open_created(path, spec)

    @classmethod
    def _open_created(cls, path: Path, spec: dict) -> "Store":
        """The store at ``path``, which ``create`` or a racing creator made, if made like ``spec``."""
        store = cls(path, mode="r+")

        def settings(of: dict) -> dict:
            return {"schema": of["schema"], **{k: v for k, v in of.get("datamodels", {}).items() if k != "eval_ranges"}}

        ours, theirs = settings(spec), settings(store.spec)
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differ:
            raise DatamodelsError(f"store already exists: {path}, made with other settings (differing in "
                                  f"{', '.join(differ)}); use another out directory")
        return store

    # ---- metadata --------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return self.spec.get("datamodels", {})

    @property
    def masks(self) -> np.memmap:
        return self.arrays["masks"]

    @property
    def margins(self) -> np.memmap:
        return self.arrays["margins"]

    @property
    def num_train(self) -> int:
        return int(self.spec["schema"]["masks"]["shape"][0])

    @property
    def num_targets(self) -> int:
        return int(self.spec["schema"]["margins"]["shape"][0])

    @property
    def alpha(self) -> Optional[float]:
        return self.meta.get("alpha")

    @property
    def seed(self) -> Optional[int]:
        return self.meta.get("seed")

    @property
    def is_eval(self) -> np.ndarray:
        if self.eval_override is not None:
            return _ranges_to_bool(self.eval_override, self.num_models)
        return _ranges_to_bool(self.meta.get("eval_ranges", []), self.num_models)

    @property
    def reference_layout(self) -> bool:
        """Written by another pipeline: no alpha/seed metadata, so it cannot grow or resume."""
        return self.alpha is None or self.seed is None

    @property
    def num_eval(self) -> int:
        return int(self.is_eval.sum())

    def rows(self, split: str = "fit", completed_only: bool = True) -> np.ndarray:
        """Row indices of the ``fit`` or ``eval`` split (or ``all``), completed ones by default."""
        if split == "all":
            keep = np.ones(self.num_models, dtype=bool)
        elif split == "fit":
            keep = ~self.is_eval
        elif split == "eval":
            keep = self.is_eval
        else:
            raise ValueError(f"split must be fit, eval or all, got {split!r}")
        if completed_only:
            keep &= np.asarray(self.completed, dtype=bool)
        return np.flatnonzero(keep)

    def failures(self) -> Dict[int, str]:
        p = self.path / FAILURES
        if not p.exists():
            return {}
        try:
            failures = json.loads(p.read_text())
            return {int(k): str(v) for k, v in failures.items()}
        except OSError as exc:
            raise DatamodelsError(f"store {self.path}: cannot read {FAILURES} ({reason(exc)})") from None
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, ValueError, RecursionError):
            raise DatamodelsError(f"store {self.path}: {FAILURES} is damaged (not a JSON object of row: message); "
                                  f"delete it to forget the recorded failures (their rows stay incomplete and are "
                                  f"retried)") from None

    def summary(self) -> dict:
        done = np.asarray(self.completed, dtype=bool)
        is_eval = self.is_eval
        return {
            "path": str(self.path),
            "num_models": self.num_models,
            "completed": int(done.sum()),
            "fit": {"total": int((~is_eval).sum()), "completed": int((done & ~is_eval).sum())},
            "eval": {"total": int(is_eval.sum()), "completed": int((done & is_eval).sum())},
            "num_train": self.num_train,
            "num_targets": self.num_targets,
            "alpha": self.alpha,
            "seed": self.seed,
            "failures": {str(k): v for k, v in self.failures().items()},
            "spec": self.spec_source if self.spec_source != SPEC else str(self.path / SPEC),
            "eval_rows": self.eval_override[0] if self.eval_override is not None else None,
            "can_grow": not self.reference_layout,
        }

    # ---- writing (driver only) -------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive write access for this process.  The lock is an OS file lock, released if its
        holder dies, so a crashed sweep never leaves a stale lock behind."""
        lock = _writer_lock(self.path)
        if lock.is_locked:  # another Store of this process holds it
            raise DatamodelsError(f"store {self.path} is locked: another sweep is writing to it")
        self._acquire(lock)
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Around every write: the lock, held by this process already or taken for the write, so
        nothing writes into a store another process is writing."""
        self._writable()
        lock = _writer_lock(self.path)
        if lock.is_locked:
            yield
            return
        self._acquire(lock)
        try:
            yield
        finally:
            lock.release()

    def _acquire(self, lock: FileLock) -> None:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise DatamodelsError(f"store {self.path} is locked: another sweep is writing to it") from None
        except OSError as exc:
            raise DatamodelsError(f"store {self.path}: cannot take its lock {LOCK} ({reason(exc)})") from None

    def grow(self, num_fit: int, num_eval: int, chunk: int = 4096,
             on_allocated: Optional[Callable[[], None]] = None) -> Tuple[int, int]:
        """Add rows until the store has at least ``num_fit`` fitting and ``num_eval`` evaluation
        models, writing each new row's mask.  Returns the (fit, eval) rows added.

        ``on_allocated()`` is called once the files have their new length and their blocks are
        reserved (whether or not rows were added): from then on only the masks (~50 us a row)
        and the spec remain to be written, so a caller can start other work."""
        with self._writing():
            return self._grow(num_fit, num_eval, chunk, on_allocated)

    def _grow(self, num_fit: int, num_eval: int, chunk: int,
              on_allocated: Optional[Callable[[], None]]) -> Tuple[int, int]:
        alpha, seed = self.alpha, self.seed
        if alpha is None or seed is None:
            raise DatamodelsError(f"store {self.path} has no alpha/seed metadata (it was written by another pipeline), "
                                  f"so it cannot grow: its masks are not a function of a seed. Fit, evaluate and "
                                  f"analyse it as it is, or train new models into another store")
        cur_eval = self.num_eval
        cur_fit = self.num_models - cur_eval
        add_fit, add_eval = max(0, num_fit - cur_fit), max(0, num_eval - cur_eval)
        if add_fit + add_eval == 0:
            if on_allocated is not None:
                on_allocated()
            return 0, 0
        old, new = self.num_models, self.num_models + add_fit + add_eval
        # Extend the files first (zero rows: incomplete), fill in masks, then publish the new
        # size in the spec.  A crash before the spec is written leaves longer files than the
        # spec says, which opening tolerates and the next grow overwrites.  A failed write (a
        # full disk) is undone, so the store is left exactly as it was.
        files = [self.path / f"{key}.npy" for key in self.spec["schema"]] + [self.path / COMPLETED]
        saved = [save_npy_head(p) for p in files]
        current = files[0]
        try:
            for current in files:
                _extend_npy(current, new)
            if on_allocated is not None:
                on_allocated()
            current = self.path / "masks.npy"
            masks = np.lib.format.open_memmap(current, mode="r+")
            # Held-out rows come in groups of eval_seeds models of one mask (the group's first row's).
            first_eval, seeds_per_mask = old + add_fit, int(self.meta.get("eval_seeds", 1))
            for start in range(old, new, chunk):
                stop = min(new, start + chunk)
                masks[start:stop] = np.stack([subset_mask(seed, i if i < first_eval else first_eval + (
                    i - first_eval) // seeds_per_mask * seeds_per_mask, self.num_train, alpha)
                    for i in range(start, stop)])
            masks.flush()
            del masks
            spec = json.loads(json.dumps(self.spec))
            spec["num_models"] = new
            if add_eval:
                spec["datamodels"]["eval_ranges"] = self.meta.get("eval_ranges", []) + [[old + add_fit, new]]
            current = self.path / SPEC
            atomic_write_text(current, json.dumps(spec, indent=2))
        except (OSError, DatamodelsError) as exc:
            for p, head in zip(files, saved):
                restore_npy_head(p, head)
            if isinstance(exc, DatamodelsError):
                raise
            raise DatamodelsError(f"cannot grow store {self.path} from {old} to {new} models: {current.name}: "
                                  f"{reason(exc)}; the store is unchanged") from None
        finally:
            self.__init__(self.path, mode=self.mode, spec=self._spec_arg, eval_rows=self._eval_rows_arg)
        return add_fit, add_eval

    def write(self, indices: Sequence[int], margins: np.ndarray) -> None:
        """Store finished rows: margins first, flushed, then their completion flags.  Only finite
        margins are stored (in the store's dtype: a float64 beyond float16's range is refused
        too), so a completed row never holds NaN or inf."""
        indices = np.asarray(indices, dtype=np.int64)
        margins = np.asarray(margins)
        if margins.shape != (len(indices), self.num_targets):
            raise DatamodelsError(f"margins of shape {margins.shape} do not fit rows {len(indices)} x "
                                  f"{self.num_targets} targets")
        if len(indices) and (indices.min() < 0 or indices.max() >= self.num_models):
            raise DatamodelsError(f"rows {indices.min()}..{indices.max()} are outside store {self.path}'s "
                                  f"{self.num_models} models")
        with np.errstate(over="ignore", invalid="ignore"):
            stored = margins.astype(self.margins.dtype)
        bad = ~np.isfinite(stored).all(axis=1)
        if bad.any():
            raise DatamodelsError(f"margins of row {int(indices[np.argmax(bad)])} ({int(bad.sum())} of {len(indices)} "
                                  f"rows) are NaN, infinite or beyond {self.margins.dtype}; nothing was stored")
        with self._writing():
            self.margins[indices] = stored
            self.margins.flush()
            self.completed[indices] = True
            self.completed.flush()

    def record_failures(self, failures: Dict[int, str]) -> None:
        with self._writing():
            current = self.failures()
            current.update({int(k): str(v) for k, v in failures.items()})
            self._write_failures(current)

    def clear_failures(self, indices: Sequence[int]) -> None:
        current = self.failures()
        if any(int(i) in current for i in indices):
            with self._writing():
                for i in indices:
                    current.pop(int(i), None)
                self._write_failures(current)

    def _write_failures(self, failures: Dict[int, str]) -> None:
        text = json.dumps({str(k): v for k, v in sorted(failures.items())}, indent=1)
        try:
            atomic_write_text(self.path / FAILURES, text)
        except OSError as exc:
            raise DatamodelsError(f"store {self.path}: cannot write {FAILURES} ({reason(exc)})") from None

    # ---- internals -------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.mode != "r+":
            raise RuntimeError("store opened read-only")

    def _open_array(self, name: str, shape: List[int], dtype: str) -> np.memmap:
        p = self.path / name
        where = f"store {self.path}: {name}"
        if not p.is_file():
            raise DatamodelsError(f"{where} is a directory, not a .npy file" if p.is_dir() else f"{where} is missing")
        # The header is checked against spec.json, and the file's length against the header,
        # before mapping: numpy's own errors for a damaged file are neither one line nor clear.
        file_shape, fortran, file_dtype, offset = read_npy_header(p, where)
        source = self.spec_source
        if file_dtype != np.dtype(dtype):
            raise DatamodelsError(f"{where} has dtype {file_dtype}, but {source} says {np.dtype(dtype)}")
        # More rows than the spec says is a grow interrupted before publishing its new size; a
        # spec from elsewhere was never updated by a grow, so it must match exactly.
        if len(file_shape) != len(shape) or list(file_shape[1:]) != list(shape[1:]) or file_shape[0] < shape[0] \
                or (self.external_spec and file_shape[0] != shape[0]):
            raise DatamodelsError(f"{where} has shape {list(file_shape)}, but {source} says {list(shape)}")
        if fortran and len(file_shape) > 1:
            raise DatamodelsError(f"{where} is in Fortran order; rows must be contiguous (C order)")
        needed = offset + math.prod(file_shape) * file_dtype.itemsize  # exact: Python integers
        size = p.stat().st_size
        if size < needed:
            raise DatamodelsError(f"{where} is truncated: {size} bytes, but its header describes {needed}")
        try:
            arr = np.lib.format.open_memmap(p, mode=self.mode)
        except OSError as exc:
            purpose = "writing" if self.mode == "r+" else "reading"
            raise DatamodelsError(f"{where}: cannot open it for {purpose} ({reason(exc)})") from None
        except ValueError as exc:
            raise DatamodelsError(f"{where} is corrupt ({first_line(exc)})") from None
        if name == COMPLETED and (np.asarray(arr[: shape[0]]).view(np.uint8) > 1).any():
            # A bool byte other than 0 or 1 reads as both done and not done (~2 is true).
            raise DatamodelsError(f"{where} is corrupt: it holds bytes other than 0 and 1")
        return arr[: shape[0]]


_WRITER_LOCKS: Dict[str, FileLock] = {}
_WRITER_LOCKS_GUARD = threading.Lock()
# A forked child is another process: it holds none of its parent's locks.
os.register_at_fork(after_in_child=_WRITER_LOCKS.clear)


def _writer_lock(path: Path) -> FileLock:
    """The process's one lock object for a store: shared by its threads and its Store objects,
    so a process that holds it may write through any of them."""
    key = os.path.realpath(path / LOCK)
    with _WRITER_LOCKS_GUARD:
        if key not in _WRITER_LOCKS:
            _WRITER_LOCKS[key] = FileLock(key, thread_local=False)
        return _WRITER_LOCKS[key]


def _build_and_rename(path: Path, spec: dict) -> None:
    """Write the empty store of ``spec`` into a hidden sibling of ``path``, locked before its
    first file, and rename it to ``path``.  A creator whose rename finds a store already there
    (another creator's, whole) discards its own."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}{CREATING}", dir=path.parent))
    except OSError as exc:
        raise DatamodelsError(f"cannot create store {path}: {reason(exc)}") from None
    lock = FileLock(str(tmp / LOCK))
    try:
        lock.acquire(timeout=0)
        for key, field in spec["schema"].items():
            create_npy(tmp / f"{key}.npy", (0, *field["shape"]), field["dtype"])
        create_npy(tmp / COMPLETED, (0,), "bool_")
        atomic_write_text(tmp / SPEC, json.dumps(spec, indent=2))
        fsync_dir(tmp)
        try:
            os.rename(tmp, path)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        else:
            fsync_dir(path.parent)
    except (OSError, Timeout) as exc:
        raise DatamodelsError(f"cannot create store {path}: {reason(exc) if isinstance(exc, OSError) else exc}") \
            from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
        lock.release()


def _remove_abandoned_creations(path: Path) -> None:
    """Delete hidden creation directories of ``path`` left by creators that died: unlocked and
    older than a creation takes."""
    import glob

    for tmp in path.parent.glob(f".{glob.escape(path.name)}{CREATING}*"):
        lock = FileLock(str(tmp / LOCK))
        try:
            if time.time() - tmp.stat().st_mtime < STALE_CREATION_S:
                continue
            lock.acquire(timeout=0)
        except (OSError, Timeout):
            continue
        try:
            shutil.rmtree(tmp, ignore_errors=True)
        finally:
            lock.release()


def parse_rows(rows, num_models: int) -> Tuple[int, int]:
    """``(start, stop)`` of a row range given as ``"A:B"`` (either end may be left out or
    negative, as in Python), ``(A, B)`` or a ``range`` of step 1, checked against the store."""
    text = rows if isinstance(rows, str) else None
    try:
        if isinstance(rows, str):
            parts = rows.split(":")
            if len(parts) != 2:
                raise ValueError
            start, stop = (int(p) if p.strip() else None for p in parts)
        elif isinstance(rows, range):
            if rows.step != 1:
                raise ValueError
            start, stop = rows.start, rows.stop
        else:
            start, stop = (None if v is None else int(v) for v in rows)
    except (ValueError, TypeError):
        raise DatamodelsError(f"eval rows must look like A:B (rows A to B-1), got {rows!r}") from None
    text = text or f"{start}:{stop}"
    lo = 0 if start is None else (start + num_models if start < 0 else start)
    hi = num_models if stop is None else (stop + num_models if stop < 0 else stop)
    if 0 <= lo and hi <= num_models and lo >= hi:
        raise DatamodelsError(f"eval rows {text} are empty: give A:B with A < B")
    if not 0 <= lo < hi <= num_models:
        raise DatamodelsError(f"eval rows {text} are out of range: the store has rows 0:{num_models}")
    return lo, hi


def _extend_npy(path: Path, num_rows: int) -> None:
    """Grow a ``.npy`` file's first axis in place: rewrite the header (numpy leaves room for a
    longer shape) and extend the file; the new rows read as zeros."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read_header, write_header = HEADER_IO[version]
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
        if shape[0] >= num_rows:
            return
        header = {"shape": (num_rows, *shape[1:]), "fortran_order": fortran,
                  "descr": np.lib.format.dtype_to_descr(dtype)}
        buf = io.BytesIO()
        write_header(buf, header)
        if len(buf.getvalue()) != offset:
            raise DatamodelsError(f"cannot grow {path}: its header has no room for {num_rows} rows")
        size = offset + num_rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        f.truncate(size)
        # Reserve the blocks now: a sparse file on a full disk would fail only later, as SIGBUS
        # on a write through the memory map.
        old = offset + shape[0] * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        _reserve(f.fileno(), old, size - old)
        f.seek(0)
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def _reserve(fd: int, offset: int, length: int) -> None:
    if length <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # file systems without it
            raise
