"""Sufficient statistics of the fitting rows, streamed from the store in chunks.

Rows are read from the memory-mapped store in chunks and folded into XᵀX, Xᵀ1, Xᵀy, 1ᵀy, yᵀy
and n, separately for the training and the validation rows.  Memory depends on N², N·T and
the chunk size, never on the number of models, and the products are large GEMMs."""
from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from ..errors import DatamodelsError
from ..store import Store
from .gram import GRAM_KERNELS, gram_float32, gram_kernel, gram_times
from .progress import progress_bar

# Float32 holds every integer below 2**24 exactly, so XᵀX of 0/1 masks (integer counts)
# accumulates exactly in float32 up to that many rows; beyond, float64 takes over.
EXACT_FLOAT32 = 2 ** 24
# Bytes of a chunk of masks and its copies while XᵀX accumulates (``chunk_step``).
_CHUNK_BYTES = 256 << 20


def validation_rows(rows: np.ndarray, num_models: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which of ``rows`` validate: the ``val_fraction`` with the smallest per-row random keys.

    Keys depend only on (seed, row index), so the split does not depend on rows that are
    incomplete or held out, and adding rows moves only a few existing rows across."""
    n = len(rows)
    num_val = int(round(val_fraction * n))
    if num_val < 2 or n - num_val < 2:
        raise DatamodelsError(f"{n} completed fitting models give {num_val} validation and {n - num_val} training "
                              f"models at fit.val_fraction={val_fraction}; each needs at least 2")
    keys = np.random.default_rng(seed).random(num_models)[rows]
    is_val = np.zeros(n, dtype=bool)
    is_val[np.argsort(keys, kind="stable")[:num_val]] = True
    return is_val


def margins(store: Store, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Float64 margins [len(rows), len(cols)] of the store; a row with a non-finite one is an error."""
    y = np.asarray(store.margins[rows], dtype=np.float64)[:, cols]
    bad = ~np.isfinite(y).all(axis=1)
    if bad.any():
        raise DatamodelsError(f"store {store.path}: completed row {int(rows[np.argmax(bad)])} has non-finite margins "
                              f"({int(bad.sum())} such rows in this chunk)")
    return y


@dataclass
class Stats:
    """Sufficient statistics of (X, y − offset) over a set of rows."""
    n: int
    sx: torch.Tensor  # [N]    Xᵀ1, float64
    sy: torch.Tensor  # [T]    1ᵀy, float64
    xx: torch.Tensor  # [N, N] XᵀX, integer counts: float32 (exact below 2**24 rows) or float64
    xy: torch.Tensor  # [N, T] Xᵀy, float64
    yy: torch.Tensor  # [T]    Σ y², float64

    @classmethod
    def zeros(cls, N: int, T: int, xx_dtype, device) -> "Stats":
        z = lambda *shape, dtype=torch.float64: torch.zeros(*shape, dtype=dtype, device=device)
        return cls(0, z(N), z(T), z(N, N, dtype=xx_dtype), z(N, T), z(T))

    @classmethod
    def pair(cls, N: int, T: int, num_rows: int, device) -> Tuple["Stats", "Stats"]:
        """Empty statistics for the training and the validation rows, their XᵀX exact for up to
        ``num_rows`` rows (float32 counts below 2**24)."""
        xx_dtype = torch.float32 if num_rows < EXACT_FLOAT32 else torch.float64
        return cls.zeros(N, T, xx_dtype, device), cls.zeros(N, T, xx_dtype, device)

    def add(self, masks: torch.Tensor, y: torch.Tensor, gram: Optional[Callable] = None) -> None:
        """Fold in a chunk: masks bool [m, N], y float64 [m, T]; ``gram`` computes XᵀX
        (one of ``GRAM_KERNELS``, all exact; float32 when not given)."""
        if len(masks) == 0:
            return
        x = masks.float()
        self.n += len(x)
        self.sx += x.sum(0).double()  # float32 sums of 0/1 are exact (chunks < 2**24 rows)
        self.sy += y.sum(0)
        (gram or gram_float32)(masks, x, out=self.xx)
        self.xy += (x.T @ y.float()).double()
        self.yy += (y * y).sum(0)

    def xx_times(self, beta: torch.Tensor) -> torch.Tensor:
        """XᵀX·beta in float64, beta [N, T] float64 (in XᵀX's own dtype: no N×N float64 copy)."""
        beta = beta.to(self.xx.device)
        if self.xx.dtype == torch.float64:
            return self.xx @ beta
        return gram_times(self.xx, beta.to(self.xx.dtype)).double()

    def minus(self, beta: torch.Tensor) -> "Stats":
        """The statistics of (X, y − X·beta), beta [N, T] float64; XᵀX is shared, not copied."""
        beta = beta.to(self.xy.device)
        xxb = self.xx_times(beta)
        return Stats(self.n, self.sx, self.sy - self.sx @ beta, self.xx, self.xy - xxb,
                      self.yy - 2 * (beta * self.xy).sum(0) + (beta * xxb).sum(0))

    def copy(self) -> "Stats":
        """An independent copy (``solve_path`` adds the validation statistics into the training ones)."""
        return Stats(self.n, self.sx.clone(), self.sy.clone(), self.xx.clone(), self.xy.clone(), self.yy.clone())

    def to(self, device) -> "Stats":
        move = lambda t: t.to(device)
        return Stats(self.n, move(self.sx), move(self.sy), move(self.xx), move(self.xy), move(self.yy))

    # For Ray: the parts every target slice shares (n, Xᵀ1, XᵀX), and one slice's columns.
    def shared_numpy(self) -> dict:
        return {"n": self.n, "sx": self.sx.cpu().numpy(), "xx": self.xx.cpu().numpy()}

    def columns_numpy(self, cols: np.ndarray) -> dict:
        idx = torch.as_tensor(cols, device=self.xy.device)
        return {"sy": self.sy[idx].cpu().numpy(), "xy": self.xy[:, idx].cpu().numpy(),
                "yy": self.yy[idx].cpu().numpy()}

    @classmethod
    def from_numpy(cls, shared: dict, columns: dict) -> "Stats":
        t = torch.from_numpy
        # The object store hands out read-only arrays; the solver adds into xx in place.
        return cls(shared["n"], t(shared["sx"].copy()), t(columns["sy"].copy()), t(shared["xx"].copy()),
                   t(columns["xy"].copy()), t(columns["yy"].copy()))

    def absorb(self, other: "Stats") -> "Stats":
        """Add ``other`` into these statistics in place (and drop its XᵀX); returns self."""
        self.n += other.n
        for name in ("sx", "sy", "xx", "xy", "yy"):
            getattr(self, name).add_(getattr(other, name))
        other.xx = None
        return self


def accumulate(store: Store, rows: np.ndarray, is_val: np.ndarray, cols: np.ndarray, offset, chunk_rows: int,
               device="cpu", *, into: Optional[Tuple[Stats, Stats]] = None, kernel: Optional[str] = None,
               progress: bool = False) -> Tuple[Stats, Stats]:
    """The statistics (training, validation) of the store's ``rows`` (``is_val``: which of them
    validate), margins of target columns ``cols`` less ``offset`` [len(cols)], read in chunks of
    ``chunk_step(chunk_rows)`` rows; a row with non-finite margins is an error, and the store's
    pages are unmapped as they are read.  ``into``: statistics to add into (else new ones, exact
    for ``len(rows)`` rows); ``kernel``: the XᵀX kernel (else ``gram_kernel``'s choice)."""
    dev = torch.device(device)
    N, T = store.num_train, len(cols)
    step = chunk_step(chunk_rows, N)
    train, val = into if into is not None else Stats.pair(N, T, len(rows), dev)
    offset = torch.as_tensor(offset, dtype=torch.float64, device=dev)
    gram = GRAM_KERNELS[kernel or gram_kernel(N, dev, len(rows))]
    bar = progress_bar(len(rows), progress and len(rows) > 8 * step, "fit: reading the store", "model")
    for start in range(0, len(rows), step):
        r = rows[start:start + step]
        v = torch.as_tensor(is_val[start:start + step], device=dev)
        x = torch.from_numpy(np.asarray(store.masks[r])).to(dev)
        y = torch.from_numpy(margins(store, r, cols)).to(dev) - offset
        train.add(x[~v], y[~v], gram)
        val.add(x[v], y[v], gram)
        _drop_pages(store.masks, store.margins)
        bar.update(len(r))
    bar.close()
    return train, val


def chunk_step(chunk_rows: int, N: int) -> int:
    """Rows read per chunk: ``chunk_rows``, fewer where a chunk's copies (bool, int8 and its
    transpose, float32: ~8 bytes per mask entry) would pass ``_CHUNK_BYTES``.  A float32 chunk
    product is exact only while its own counts stay below 2**24."""
    return max(1, min(int(chunk_rows), EXACT_FLOAT32 - 1, max(256, _CHUNK_BYTES // (8 * N))))


def _drop_pages(*arrays) -> None:
    """Unmap the store pages read so far.  They stay in the page cache, but no longer count
    toward this process's memory, so peak memory does not grow with the number of models
    (a 300,000 × 50,000 mask matrix is 15 GB)."""
    for array in arrays:
        mapping = getattr(array, "_mmap", None)
        if mapping is not None and hasattr(mapping, "madvise"):
            mapping.madvise(mmap.MADV_DONTNEED)
