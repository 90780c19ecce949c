"""Memory: what a fit needs, what is free, and glibc's malloc tuned for the solver."""
from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import Tuple

import torch

from ..config import FitOptions
from ..errors import DatamodelsError
from ..resources import available_memory as host_available_memory
from ..store import Store
from .stats import EXACT_FLOAT32, chunk_step

# Bytes per (training example, target) a fit holds: float64 Xᵀy of both row sets, the
# solver's float32 iterates and residuals and the validation's float64 correlations.
_TARGET_BYTES = 96
# The solver's other working memory: gathered sub-Grams (``_GATHER_BUDGET``) and their
# products, row blocks of the centring, Lanczos vectors.
_SOLVER_BYTES = 64 << 20


def memory_estimate(num_train: int, num_targets: int, num_rows: int, device="cpu",
                    chunk_rows: int = FitOptions.chunk_rows) -> dict:
    """Bytes a local fit of ``num_targets`` targets over ``num_rows`` fitting rows of a store
    with ``num_train`` training examples adds to its process, on ``device`` and on the host.

    Two N×N Grams (training and validation rows; their float32 counts are exact below 2**24
    rows, float64 beyond), ``_TARGET_BYTES`` per (training example, target) for the N×T
    statistics and the solver's iterates, a chunk of masks being read, and a fixed budget for
    gathered sub-Grams and row blocks.  Independent of the number of rows otherwise: pages of
    the store are unmapped as they are read."""
    N, T = int(num_train), int(num_targets)
    gram = 2 * N * N * (4 if num_rows < EXACT_FLOAT32 else 8)
    targets = _TARGET_BYTES * N * T
    chunk = 7 * N * min(chunk_step(chunk_rows, N), max(1, int(num_rows)))
    on_device = gram + targets + chunk + _SOLVER_BYTES
    if torch.device(device).type == "cpu":
        return {"device": 0, "host": on_device, "gram": gram, "targets": targets}
    return {"device": on_device, "host": chunk, "gram": gram, "targets": targets}


def available_memory(device) -> Tuple[int, str]:
    """Bytes free for this process on ``device``: the GPU's free memory, or the host's available
    memory (MemAvailable, and the cgroup's limit where one is set)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0]), f"free on {dev}"
    free = host_available_memory()
    return (free if free is not None else -1), "available"


def check_memory(store: Store, num_targets: int, num_rows: int, device, chunk_rows: int) -> None:
    """Stop before reading the store if the fit cannot fit in memory (instead of the OOM killer)."""
    need = memory_estimate(store.num_train, num_targets, num_rows, device, chunk_rows)
    dev = torch.device(device)
    amount = need["device"] if dev.type == "cuda" else need["host"]
    free, where = available_memory(dev)
    if os.environ.get("DATAMODELS_SKIP_MEMORY_CHECK") or free < 0 or amount <= free:
        return
    gib = lambda b: f"{b / 2 ** 30:.1f} GiB"
    if need["targets"] > need["gram"]:
        hint = "fit fewer targets at a time (--targets A:B, or --slices S --address ADDR to spread them over a cluster)"
    elif dev.type == "cuda":
        hint = "fit on a GPU with more memory, or on the host (--device cpu) if it has more"
    else:
        hint = "fit on a device with more memory (--device cuda)"
    raise DatamodelsError(f"fit needs about {gib(amount)} ({store.num_train:,} training examples: "
                          f"{gib(need['gram'])} for two XᵀX; {num_targets:,} targets: {gib(need['targets'])}) but "
                          f"{gib(free)} is {where}: {hint}, or set DATAMODELS_SKIP_MEMORY_CHECK=1 to try anyway")


# ---- memory policy ------------------------------------------------------------------------------
# glibc's mallopt parameters (malloc.h); the calls are no-ops on other C libraries.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DEFAULT_TRIM_THRESHOLD = 128 << 10
# Solver temporaries never come from the heap above this size (``temporaries_on_the_heap``).
_HEAP_TEMPORARIES = 64 << 20
_heap_lock = threading.Lock()
_heap_users = 0


@functools.lru_cache(maxsize=None)
def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@functools.lru_cache(maxsize=None)  # once per process
def return_freed_memory() -> None:
    """Make glibc hand every allocation of 1 MiB or more back to the system when it is freed.

    By default glibc raises its mmap threshold (up to 32 MiB) each time a large block is
    freed, so later N×N temporaries land on the heap, which fragments and is not returned:
    the same fit's peak memory then varies by several N×N matrices from run to run (N = 1,500:
    330 to 450 MiB).  A fixed threshold turns that off (330 MiB every run), at the price of a
    page fault per page of each large allocation: cheap next to the GEMMs that fill the
    chunks of masks, too dear for the solver (``temporaries_on_the_heap``)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


@contextlib.contextmanager
def temporaries_on_the_heap(nbytes: int):
    """Within: allocations up to ``nbytes`` (at least 15 MiB, at most 64 MiB) come from the heap,
    and freed heap memory stays there for reuse.

    The solver allocates and frees [N, T] iterates, products and residuals tens of thousands
    of times (2.6 MB each on the digits store).  Mapped afresh each time, every page of each
    one faults on first write: on digits, 1.3 million page faults and 5-6 s of kernel time in a
    7.5-9 s fit; on the heap, 0.18 million and 0.8 s (AVX2 CPU).  Larger blocks (the 16 MiB row
    blocks of the centring and of ``gram_times``, most gathered sub-Grams) are still mapped and
    returned, so what the heap can hold on to is a few of the solver's own [N, T] matrices,
    already in ``memory_estimate``; with them on the heap too, a fit's peak varied by 16-32 MB.
    On leaving, the 1 MiB threshold is back and the heap's free pages go back to the system."""
    global _heap_users
    libc = _libc()
    if libc is None:
        yield
        return
    threshold = int(min(max(nbytes + (64 << 10), 15 << 20), _HEAP_TEMPORARIES))  # + malloc's bookkeeping
    with _heap_lock:  # the live LDS solves in a thread of the sweep's driver
        _heap_users += 1
        if _heap_users == 1:
            libc.mallopt(_M_MMAP_THRESHOLD, threshold)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)
    try:
        yield
    finally:
        with _heap_lock:
            _heap_users -= 1
            if _heap_users == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def torch_device(device, check_local: bool = True) -> torch.device:
    """``device`` as a torch device, cpu or cuda; ``check_local``: one this process can use."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DatamodelsError(f"fit.device must be cpu or cuda, got {device!r}") from None
    # On a cluster the GPUs are the workers'; the driver need not have one.
    if check_local and dev.type == "cuda" and not torch.cuda.is_available():
        raise DatamodelsError(f"fit.device={device} but torch.cuda.is_available() is False")
    if dev.type not in ("cpu", "cuda"):
        raise DatamodelsError(f"fit.device must be cpu or cuda, got {device!r}")
    return dev
