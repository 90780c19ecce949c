"""Sparse linear datamodels: L1-regularised least squares for every target at once.

For each target t the datamodel predicts ``margin_t ≈ mask · weight_t + bias_t``.  It is
fitted on the completed *fitting* rows of a store by the LASSO

    minimise over w   (1/2n) ‖y_t − ȳ_t − X̃ w‖² + λ_t ‖w‖₁

where X̃ holds the masks centred and scaled to unit variance (over the training part of
the fitting rows).  ``lam`` in the results is this λ_t, in these standardised units; the
returned ``weight`` and ``bias`` are converted back to mask units.

How it runs, and why:

1. **Stream once.**  Rows are read from the memory-mapped store in chunks and folded into
   sufficient statistics (XᵀX, Xᵀ1, Xᵀy, 1ᵀy, yᵀy, n), separately for the training and the
   validation rows.  Memory depends on N², N·T and the chunk size, never on the number of
   models, and the products are large GEMMs, the fastest thing CPUs and GPUs do.
2. **Centre and standardise analytically** on those statistics: the Gram G = X̃ᵀX̃/n and
   C = X̃ᵀ(y − ȳ)/n are all the solver needs.
3. **A λ path per target**, geometric from λ_max (where w = 0) down to
   ``lambda_min_ratio``·λ_max, each λ warm-started from the previous solution.  Each step is
   solved for all targets together by FISTA (accelerated proximal gradient, step 1/L with
   L the top eigenvalue of G).  Targets whose solutions are sparse are solved on a working
   set (current support plus the features the sequential strong rule cannot rule out): each
   such target's small sub-Gram is gathered and the small problems run as one batched
   matmul, then one GEMM checks the optimality (KKT) conditions on all features and any
   violators join the working set.  Targets with large supports run FISTA on all features,
   one GEMM per iteration for all of them.
4. **Choose λ per target by validation MSE**, computed from the validation statistics
   alone, then **refit** on all fitting rows (training + validation statistics added) at the
   chosen λ, warm-started from the training solution.
"""
from __future__ import annotations

import contextlib
import functools
import math
import mmap
import os
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from .errors import DatamodelsError
from .store import Store

# Float32 holds every integer below 2**24 exactly, so XᵀX of 0/1 masks (integer counts)
# accumulates exactly in float32 up to that many rows; beyond, float64 takes over.
_EXACT_FLOAT32 = 2 ** 24
# Bytes of a chunk of masks and its copies while XᵀX accumulates (``_chunk_step``).
_CHUNK_BYTES = 256 << 20
# Bytes per (training example, target) a fit holds: float64 Xᵀy of both row sets, the
# solver's float32 iterates and residuals and the validation's float64 correlations.
_TARGET_BYTES = 96
# The solver's other working memory: gathered sub-Grams (``_GATHER_BUDGET``) and their
# products, row blocks of the centring, Lanczos vectors.
_SOLVER_BYTES = 64 << 20
# Elements (not bytes) of gathered sub-Grams held at once; 2**25 float32 = 128 MiB.
_GATHER_BUDGET = 2 ** 25
# Grams up to this size are read by dense FISTA iterations from cache rather than memory
# (``_Lasso.capped``).  On the digits store (N = 1,297, 6.4 MiB) capped working sets fitted in
# 9.7–10.5 s against 9.0–9.5 s uncapped; at N = 20,000 (1.5 GiB, M = 6,000 models) capping
# halved the median λ step (1.76 → 0.92 s; AVX2 CPU).
_CACHED_GRAM_BYTES = 64 << 20
# Rows of the store used to pick the per-target offset subtracted from margins before
# accumulating, so that Xᵀy and yᵀy do not lose precision to a large common mean.
_OFFSET_ROWS = 1024
# The path's solves only rank λs by validation error and warm-start the refit, which is solved
# to ``tol``; looser there changes the validation errors far less than the differences between
# neighbouring λs.  On the digits default (AVX2 CPU) 30x rather than 10x fitted 14-16% faster
# (4.66-5.41 s against 5.44-6.43 s) with the LDS unchanged to four decimals (0.86499 against
# 0.86498); 50-100x gained a little more and moved it by 2e-5.
_PATH_TOL_FACTOR = 30
# Below this many validation models a fit around a prior takes the same step of the λ path for
# every target (``_path_and_refit``).  On digits, with a TRAK prior from 30 models: LDS 0.781 /
# 0.791 / 0.792 / 0.802 at 10 / 30 / 100 / 300 models against 0.768 / 0.777 / 0.785 / 0.799
# per target, and the same at 1,000 (100 validation models).  Without a prior it helped at 300
# models (+0.011) and hurt at 10-100 (-0.003 to -0.011), so the plain fit stays per target.
_POOLED_BELOW = 100
# The adaptive lasso around a prior (``prior_gamma``).  Digits, TRAK prior from 30 models, LDS at
# 100 / 300 / 1,000 / 3,000 models (benchmarks/adaptive_prior.py): γ = 0: 0.792 / 0.802 / 0.829 /
# 0.852; γ = 0.5: 0.801 / 0.818 / 0.841 / 0.858; γ = 1 and 2 lower than 0.5 at every budget.  The
# second data set at 100 / 300: 0.776 / 0.778 against 0.777 / 0.781 (γ = 0.5, again the best).
PRIOR_GAMMA = 0.5
# Added to |pᵢ| / mean |p| before the power, so examples the prior puts at zero are not
# frozen there (their penalty is at most ε^−γ times the mean).
_PRIOR_EPSILON = 0.1
# Steps along the λ path without a better validation error after which a target stops.
_PATIENCE = 4
# The same for a path warm-started near an earlier solve's choice (``_solve``'s ``warm``).
_WARM_PATIENCE = 2
# Rounds of "solve on the working set, check KKT on all features" before a target falls
# back to FISTA on all features.
_MAX_ROUNDS = 4
# A feature outside the working set violates optimality when |Cⱼ − Gⱼw| > λ(1 + this);
# the slack keeps round-off from reopening a solved problem.  A feature missed within the
# slack would have a weight below this fraction of λ.
_KKT_SLACK = 1e-3

# ---- public API -------------------------------------------------------------------------
def fit(store, out=None, *, device="cpu", val_fraction=0.1, num_lambdas=40, lambda_min_ratio=1e-3,
        max_iter=300, tol=1e-4, chunk_rows=8192, seed=0, targets=None, address=None, slices=None,
        prior=None, prior_gamma=PRIOR_GAMMA, progress=True) -> dict:
    """Fit sparse linear datamodels for the store's targets; save them to ``out`` (.npz) if given.

    Uses only the completed rows of the fitting split (``store.rows("fit")``).  A fraction
    ``val_fraction`` of them, chosen from ``seed`` and each row's index (so adding rows later
    leaves the existing rows' assignment nearly unchanged), chooses λ per target; the final
    model is refitted on all of them.  ``targets`` (indices or a slice of the store's target
    columns) fits a subset; its results equal the same columns of a fit of all targets.

    ``address`` (a Ray cluster, or ``"local"``) or ``slices`` > 1 splits the targets into
    ``slices`` groups solved as Ray tasks, one per GPU (``device="cuda"``) or per group of
    cores; the store is read once, here, and the tasks receive its sufficient statistics
    through Ray's object store, so worker nodes need no access to it.  The result equals the
    single-process fit.

    ``prior`` (``datamodels.priors``): a prior mean of the weights, float [N, T] in mask units
    (one column per target fitted, or per store target), or a dict of such candidates.  Each
    target's prior is scaled by least squares on the training rows, the candidate with the
    lowest validation error over all targets is kept (``prior_choice`` in the result), and the
    lasso fits the difference: the weights are the scaled prior plus a sparse correction.  With
    fewer than 100 validation models, all targets take the λ step of least total validation error.
    ``prior_gamma`` γ ≥ 0 weights the correction's L1 penalty by the prior (the adaptive lasso,
    Zou 2006): weight i of a target costs λ·(|pᵢ| / mean |p| + 0.1)^−γ (scaled to mean λ), so the
    examples the prior ranks as influential move more easily; γ = 0 penalises all alike.

    Returns a dict of numpy arrays:

    - ``weight`` float32 [N, T], ``bias`` float32 [T]: mask units, i.e.
      ``prediction = mask.astype(float32) @ weight + bias``;
    - ``lam`` [T]: chosen λ in the standardised units solved in (see the module docstring);
    - ``nnz`` [T], ``val_mse`` [T] (validation MSE at the chosen λ), ``converged`` [T]
      (the solves at the chosen λ, on the training part and in the refit, both converged);
    - ``lambda_path`` [num_lambdas, T], ``val_mse_path`` [num_lambdas, T] (NaN where a target
      left the path early: its validation error had stopped improving), ``path_index`` [T] (the
      step of the path chosen);
    - ``targets`` [T]: the store's target columns fitted; ``num_models``: fitting rows used.
    """
    _check_params(val_fraction, num_lambdas, lambda_min_ratio, max_iter, tol, chunk_rows)
    check_prior_gamma(prior_gamma)
    _return_freed_memory()
    if slices is not None and (int(slices) != slices or slices < 1):
        raise DatamodelsError(f"fit slices must be an integer >= 1, got {slices}")
    distributed = address is not None or (slices or 1) > 1
    dev = _device(device, check_local=not distributed)
    if out is not None:
        _check_writable(out)  # before minutes of work, not after
    store = store if isinstance(store, Store) else Store(store)
    cols = _target_columns(targets, store.num_targets)
    rows = store.rows("fit")
    if len(rows) == 0:
        raise DatamodelsError(f"store {store.path} has no completed fitting rows: run the sweep first")
    is_val = _validation_rows(rows, store.num_models, val_fraction, seed)
    if not distributed:
        _check_memory(store, len(cols), len(rows), dev, chunk_rows)

    offset = _margins(store, rows[:_OFFSET_ROWS], cols).mean(axis=0)
    reading = torch.device("cpu") if distributed else dev
    train, val = _accumulate(store, rows, is_val, cols, offset, chunk_rows, reading, progress)
    base, choice, penalty = None, None, None
    if prior is not None:
        candidates = _prior_candidates(prior, store, cols)
        base, choice = _scaled_prior(train, val, candidates)
        train, val = train.minus(base), val.minus(base)
        penalty = _penalty_weights(candidates[choice], prior_gamma)
    params = dict(num_lambdas=num_lambdas, lambda_min_ratio=lambda_min_ratio, max_iter=max_iter, tol=tol,
                  pooled_below=_POOLED_BELOW if prior is not None else 0, around_prior=prior is not None)
    if distributed:
        result = _solve_on_ray(train, val, offset, params, dev, address, slices, progress, penalty)
    else:
        result = _solve(train, val, offset, params, dev, progress, penalty=penalty)
    if base is not None:  # y − X·base was fitted: its bias is already that of y
        result["weight"] = (result["weight"] + base.cpu().numpy()).astype(np.float32)
        result["nnz"] = (result["weight"] != 0).sum(0).astype(np.int64)
        result["prior_choice"] = np.asarray(choice)
    result["targets"] = cols
    result["num_models"] = np.int64(len(rows))
    _warn_unconverged(result["converged"], cols, max_iter)
    if out is not None:
        save(result, out)
    return result


def predict(datamodels, masks) -> np.ndarray:
    """Predicted margins [m, T] (or [T] for one mask) of the given masks [m, N]."""
    dm = load(datamodels) if not isinstance(datamodels, dict) else datamodels
    weight = np.asarray(dm["weight"], dtype=np.float32)
    masks = np.asarray(masks)
    one = masks.ndim == 1
    masks = masks[None] if one else masks
    if masks.ndim != 2 or masks.shape[1] != weight.shape[0]:
        raise DatamodelsError(f"masks of shape {list(np.shape(masks))} do not match datamodels over "
                              f"{weight.shape[0]} training examples")
    pred = masks.astype(np.float32) @ weight + np.asarray(dm["bias"], dtype=np.float32)
    return pred[0] if one else pred


def load(path) -> dict:
    """Fitted datamodels saved by ``fit(..., out=path)``."""
    path = Path(path)
    if not path.is_file():
        raise DatamodelsError(f"datamodels file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            dm = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatamodelsError(f"{path} is not a datamodels .npz file ({exc})") from None
    missing = [k for k in ("weight", "bias", "targets") if k not in dm]
    if missing:
        raise DatamodelsError(f"{path} is not a datamodels file: it lacks {', '.join(missing)}")
    if "num_models" in dm:
        dm["num_models"] = int(dm["num_models"])
    return dm


def save(datamodels: dict, path) -> None:
    """Write datamodels to ``path`` (.npz), atomically: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
            np.savez(f, **{k: np.asarray(v) for k, v in datamodels.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def memory_estimate(num_train: int, num_targets: int, num_rows: int, device="cpu", chunk_rows: int = 8192) -> dict:
    """Bytes a local fit of ``num_targets`` targets over ``num_rows`` fitting rows of a store
    with ``num_train`` training examples adds to its process, on ``device`` and on the host.

    Two N×N Grams (training and validation rows; their float32 counts are exact below 2**24
    rows, float64 beyond), ``_TARGET_BYTES`` per (training example, target) for the N×T
    statistics and the solver's iterates, a chunk of masks being read, and a fixed budget for
    gathered sub-Grams and row blocks.  Independent of the number of rows otherwise: pages of
    the store are unmapped as they are read."""
    N, T = int(num_train), int(num_targets)
    gram = 2 * N * N * (4 if num_rows < _EXACT_FLOAT32 else 8)
    targets = _TARGET_BYTES * N * T
    chunk = 7 * N * min(_chunk_step(chunk_rows, N), max(1, int(num_rows)))
    on_device = gram + targets + chunk + _SOLVER_BYTES
    if torch.device(device).type == "cpu":
        return {"device": 0, "host": on_device, "gram": gram, "targets": targets}
    return {"device": on_device, "host": chunk, "gram": gram, "targets": targets}


def _available_memory(device) -> Tuple[int, str]:
    """Bytes free for this process on ``device``: the GPU's free memory, or the host's available
    memory (MemAvailable, and the cgroup's limit where one is set)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0]), f"free on {dev}"
    free = None
    try:
        with open("/proc/meminfo") as f:
            free = next(int(l.split()[1]) * 1024 for l in f if l.startswith("MemAvailable:"))
        limit, used = (Path("/sys/fs/cgroup") / name for name in ("memory.max", "memory.current"))
        if limit.exists() and limit.read_text().strip() != "max":
            free = min(free, int(limit.read_text()) - int(used.read_text()))
    except (OSError, StopIteration, ValueError):
        pass
    return (free if free is not None else -1), "available"


def _check_memory(store: Store, num_targets: int, num_rows: int, device, chunk_rows: int) -> None:
    """Stop before reading the store if the fit cannot fit in memory (instead of the OOM killer)."""
    need = memory_estimate(store.num_train, num_targets, num_rows, device, chunk_rows)
    dev = torch.device(device)
    amount = need["device"] if dev.type == "cuda" else need["host"]
    free, where = _available_memory(dev)
    if os.environ.get("DATAMODELS_SKIP_MEMORY_CHECK") or free < 0 or amount <= free:
        return
    gib = lambda b: f"{b / 2 ** 30:.1f} GiB"
    if need["targets"] > need["gram"]:
        hint = "fit fewer targets at a time (--targets A:B, or --slices S --address ADDR to spread them over a cluster)"
    elif dev.type == "cuda":
        hint = "fit on a GPU with more memory, or on the host (--device cpu) if it has more"
    else:
        hint = "fit on a device with more memory (--device cuda)"
    raise DatamodelsError(f"fit needs about {gib(amount)} ({store.num_train:,} training examples: {gib(need['gram'])} "
                          f"for two XᵀX; {num_targets:,} targets: {gib(need['targets'])}) but {gib(free)} is {where}: "
                          f"{hint}, or set DATAMODELS_SKIP_MEMORY_CHECK=1 to try anyway")


def _check_writable(path) -> None:
    """Raise the OSError that ``save(…, path)`` would, by creating and removing its temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb"):
        pass
    tmp.unlink()


def _prior_candidates(prior, store: Store, cols: np.ndarray) -> dict:
    """``prior`` as {name: float64 [N, len(cols)] tensor}, checked against the store."""
    items = prior.items() if isinstance(prior, dict) else [("prior", prior)]
    out = {}
    for name, p in items:
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != store.num_train or p.shape[1] not in (len(cols), store.num_targets):
            raise DatamodelsError(f"prior {name}: expected shape [{store.num_train}, {len(cols)}] (training examples "
                                  f"x targets fitted) or [{store.num_train}, {store.num_targets}], got {list(p.shape)}")
        if not np.isfinite(p).all():
            raise DatamodelsError(f"prior {name}: has NaN or infinite entries")
        out[name] = torch.from_numpy(p[:, cols] if p.shape[1] == store.num_targets else p)
    return out


def check_prior_gamma(gamma) -> None:
    if not (isinstance(gamma, (int, float)) and 0 <= gamma < math.inf):
        raise DatamodelsError(f"fit.prior_gamma must be a number >= 0, got {gamma!r}")


def _penalty_weights(prior: torch.Tensor, gamma: float) -> Optional[torch.Tensor]:
    """Adaptive-lasso weights [N, T] from a prior [N, T]: (|pᵢ| / mean |p| + ε)^−γ per target,
    scaled to mean 1 so that λ keeps its meaning; None for γ = 0 (the plain penalty)."""
    if gamma == 0:
        return None
    size = prior.abs()
    relative = size / size.mean(0).clamp(min=1e-300)  # a zero prior: every weight equal
    weights = (relative + _PRIOR_EPSILON) ** -float(gamma)
    return weights / weights.mean(0)


def _scaled_prior(train: "_Stats", val: "_Stats", candidates: dict):
    """(a·p [N, T] float64, name of p): the candidate prior p, scaled per target by the least-squares
    a ≥ 0 of the centred margins on the centred predictions Xp over the training rows, whose
    scaled prediction has the lowest validation error summed over targets."""
    best = None
    my = train.sy / train.n
    for name, p in candidates.items():
        p = p.to(train.xy.device)
        xxp = train.xx_times(p)
        mz = (train.sx @ p) / train.n  # mean prediction
        var = ((p * xxp).sum(0) / train.n - mz * mz).clamp(min=0)
        cov = (p * train.xy).sum(0) / train.n - mz * my
        a = torch.where(var > 0, cov / var.clamp(min=1e-300), torch.zeros_like(var)).clamp(min=0)
        # validation SSE of ȳ + a·(x − x̄)ᵀp, from the validation statistics
        sz, szz, syz = val.sx @ p, (p * val.xx_times(p)).sum(0), (p * val.xy).sum(0)
        syy = val.yy - 2 * my * val.sy + val.n * my * my
        sdz = szz - 2 * mz * sz + val.n * mz * mz
        syd = syz - mz * val.sy - my * sz + val.n * my * mz
        sse = float((syy - 2 * a * syd + a * a * sdz).sum())
        if best is None or sse < best[0]:
            best = (sse, p * a[None, :], name)
    return best[1], best[2]


# ---- memory policy ------------------------------------------------------------------------------
# glibc's mallopt parameters (malloc.h); the calls are no-ops on other C libraries.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_DEFAULT_TRIM_THRESHOLD = 128 << 10
# Solver temporaries never come from the heap above this size (``_temporaries_on_the_heap``).
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
def _return_freed_memory() -> None:
    """Make glibc hand every allocation of 1 MiB or more back to the system when it is freed.

    By default glibc raises its mmap threshold (up to 32 MiB) each time a large block is
    freed, so later N×N temporaries land on the heap, which fragments and is not returned:
    the same fit's peak memory then varies by several N×N matrices from run to run (N = 1,500:
    330 to 450 MiB).  A fixed threshold turns that off (330 MiB every run), at the price of a
    page fault per page of each large allocation: cheap next to the GEMMs that fill the
    chunks of masks, too dear for the solver (``_temporaries_on_the_heap``)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


@contextlib.contextmanager
def _temporaries_on_the_heap(nbytes: int):
    """Within: allocations up to ``nbytes`` (at least 15 MiB, at most 64 MiB) come from the heap,
    and freed heap memory stays there for reuse.

    The solver allocates and frees [N, T] iterates, products and residuals tens of thousands
    of times (2.6 MB each on the digits store).  Mapped afresh each time, every page of each
    one faults on first write: on digits, 1.3 million page faults and 5-6 s of kernel time in a
    7.5-9 s fit; on the heap, 0.18 million and 0.8 s (AVX2 CPU).  Larger blocks (the 16 MiB row
    blocks of the centring and of ``_gram_times``, most gathered sub-Grams) are still mapped and
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


# ---- the path, choice of λ and refit, from sufficient statistics -----------------------------------
def _solve(train: "_Stats", val: "_Stats", offset, params: dict, dev, progress: bool,
           warm: Optional[dict] = None, refit: bool = True, patience: int = _PATIENCE,
           penalty: Optional[torch.Tensor] = None) -> dict:
    """Everything after reading the store; a pure function of the statistics, so target
    slices can be solved anywhere and put side by side (``_path_and_refit``).  ``penalty``
    [N, T] (positive): each weight's L1 penalty is λ times its entry (``_penalty_weights``)."""
    N, T = train.xy.shape
    with _temporaries_on_the_heap(8 * N * T):  # the solver's [N, T] matrices, float64 at most
        return _path_and_refit(train, val, offset, params, dev, progress, warm, refit, patience, penalty)


def _path_and_refit(train: "_Stats", val: "_Stats", offset, params: dict, dev, progress: bool,
                    warm: Optional[dict], refit: bool, patience: int, penalty: Optional[torch.Tensor] = None) -> dict:
    """The λ path on the training rows, each target's λ chosen on the validation rows, and the
    refit on all rows.

    ``warm`` (the live LDS's checkpoints, ``datamodels.checkpoints``): ``{"weight": [N, T] in
    mask units, "path_index": [T]}`` of an earlier solve of the same targets on fewer rows.
    Each target's path then starts one step above the λ step it chose there, from that
    solution, instead of at λ_max from zero, and stops after ``_WARM_PATIENCE`` steps without
    a better validation error: a few steps instead of the whole path.  (With a few hundred
    more rows, the chosen step moves by at most one or two, and the path follows it.)"""
    num_lambdas, lambda_min_ratio = params["num_lambdas"], params["lambda_min_ratio"]
    tol, max_iter = params["tol"], params["max_iter"]
    dtype = torch.float32
    train, val = train.to(dev), val.to(dev)
    # The two N×N matrices held from here on: the training rows' Gram and the validation rows'.
    prob = _standardise(train, dtype)
    valid = _Validation(prob, val, dtype)
    # Without a refit the path's solution is the answer: solved to ``tol`` itself.
    solver = _Lasso(prob.G, tol=tol * (_PATH_TOL_FACTOR if refit else 1), max_iter=max_iter)

    N, T = prob.C.shape
    if penalty is not None:
        penalty = torch.as_tensor(penalty).to(device=dev, dtype=dtype)
    lam_max = (prob.C.abs() if penalty is None else prob.C.abs() / penalty).amax(dim=0).double()
    ratios = torch.logspace(0.0, math.log10(lambda_min_ratio), num_lambdas, dtype=torch.float64, device=dev)
    step_ratio = float(ratios[1] / ratios[0]) if num_lambdas > 1 else 1.0  # a geometric grid: one ratio
    lam_path = ratios[:, None] * lam_max[None, :]
    mse_path = torch.full((num_lambdas, T), math.nan, dtype=torch.float64, device=dev)
    path_converged = torch.zeros(num_lambdas, T, dtype=torch.bool, device=dev)

    # W, W_prev, R, C and first hold only the targets still on the path (``act``); target t is
    # at step first[t] + step of its path.
    act = torch.arange(T, device=dev)
    C = prob.C
    first = torch.zeros(T, dtype=torch.long, device=dev)
    W = torch.zeros(N, T, dtype=dtype, device=dev)
    if warm is not None:
        first = (torch.as_tensor(warm["path_index"], dtype=torch.long, device=dev) - 1).clamp(0, num_lambdas - 1)
        weight = torch.as_tensor(warm["weight"], dtype=torch.float64, device=dev)
        # mask units to these standardised units: w = β / scale (0 for constant features)
        W = torch.where(prob.scale[:, None] > 0, weight / prob.scale.clamp(min=1e-300)[:, None], 0.0).to(dtype)
    W_prev = W
    R = C - _gram_times(prob.G, W) if warm is not None else C.clone()  # C − G·W, the features' correlation with the residual
    best_w = W.clone()
    best_k = first.clone()
    best_mse = torch.full((T,), math.inf, dtype=torch.float64, device=dev)
    # Around a prior, with few validation models: one λ step for all targets (the step of least
    # validation error summed over targets).  Each target's own minimum over a handful of rows is
    # mostly noise, and how far to move from the prior is much the same for every target.
    pooled = refit and warm is None and val.n < params.get("pooled_below", 0)
    if pooled:
        patience = num_lambdas  # every target's whole path, so the sums compare like with like
    bar = _progress(num_lambdas + 1, progress, "fit: lambda path", "step")
    for step in range(num_lambdas):
        k = first[act] + step
        inside = k < num_lambdas
        if not bool(inside.all()):  # the end of the grid
            act, W, W_prev, R, C, k = (act[inside], _cols(W, inside), _cols(W_prev, inside), _cols(R, inside),
                                       _cols(C, inside), k[inside])
            if len(act) == 0:
                break
        lam = lam_path[k, act].to(dtype)
        lam_prev = lam_path[(k - 1).clamp(min=0), act].to(dtype) if warm is None or step else lam
        start = _extrapolate(W, W_prev, step_ratio) if step >= 2 else W
        W_prev = W
        W, R, path_converged[k, act] = solver.solve(C, lam, start, R, lam_prev,
                                                    None if penalty is None else _cols(penalty, act))
        mse = valid.mse(W, act)
        mse_path[k, act] = mse
        better = mse < best_mse[act]  # strict: ties keep the larger λ, the sparser model
        best_mse[act] = torch.where(better, mse, best_mse[act])
        best_k[act] = torch.where(better, k, best_k[act])
        chosen = torch.nonzero(better).squeeze(1)
        _put_cols(best_w, act[chosen], _cols(W, chosen))
        bar.update(1)
        bar.set_postfix(nnz=int((W != 0).sum(0).median()), targets=len(act), refresh=False)
        # Early stop: a target whose validation error has not improved for _PATIENCE steps is
        # past its minimum, and the rest of its path (the densest, slowest solves) cannot be
        # chosen unless the error curve turns down again; its val_mse_path there stays NaN.
        keep = (k - best_k[act]) < (patience if warm is None else min(patience, _WARM_PATIENCE))
        if not bool(keep.all()):
            act, W, W_prev, R, C = act[keep], _cols(W, keep), _cols(W_prev, keep), _cols(R, keep), _cols(C, keep)
            if len(act) == 0:
                bar.update(num_lambdas - 1 - step)
                break

    if pooled and T > 1:  # the refit solves at the common step, warm-started from each target's own best
        best_k = torch.full_like(best_k, int(torch.argmin(torch.nansum(mse_path, 1))))
        best_mse = mse_path.gather(0, best_k[None]).squeeze(0)
    lam_best = lam_path.gather(0, best_k[None]).squeeze(0)
    del solver
    if refit:  # on all rows: both Grams turned back into counts and added, in place
        train.xx, val.xx = prob.centring.undo(prob.G), valid.centring.undo(valid.G)
        prob.G = valid = None
        uncorrected = (best_k == 0) if params.get("around_prior") else None
        weight, bias, refit_converged = _refit(train.absorb(val), prob, best_w, lam_best, dtype, tol, max_iter,
                                               penalty, uncorrected)
    else:  # the path's solution, in mask units
        prob.G = valid = None
        weight = best_w.double() * prob.scale[:, None]
        bias, refit_converged = prob.my - prob.mx @ weight, torch.ones(T, dtype=torch.bool, device=dev)
    bar.update(1)
    bar.close()
    bias = bias + torch.as_tensor(offset, device=dev)
    weight = weight.float()

    converged = path_converged.gather(0, best_k[None]).squeeze(0) & refit_converged
    return {
        "weight": weight.cpu().numpy(),
        "bias": bias.float().cpu().numpy(),
        "lam": lam_best.cpu().numpy(),
        "nnz": (weight != 0).sum(0).cpu().numpy().astype(np.int64),
        "val_mse": best_mse.cpu().numpy(),
        "converged": converged.cpu().numpy(),
        "lambda_path": lam_path.cpu().numpy(),
        "val_mse_path": mse_path.cpu().numpy(),
        "path_index": best_k.cpu().numpy(),
    }


# Result arrays and the axis along which target slices are put side by side.
_TARGET_AXIS = {"weight": 1, "bias": 0, "lam": 0, "nnz": 0, "val_mse": 0, "converged": 0, "lambda_path": 1,
                "val_mse_path": 1, "path_index": 0}


def _solve_slice(shared: dict, columns: dict, offset, params: dict, device: str, penalty=None) -> dict:
    """A Ray task: the solve for one slice of targets (shared: n, sx, xx of both row sets)."""
    _return_freed_memory()
    train = _Stats.from_numpy(shared["train"], columns["train"])
    val = _Stats.from_numpy(shared["val"], columns["val"])
    penalty = None if penalty is None else torch.from_numpy(np.array(penalty))
    return _solve(train, val, np.array(offset), params, _device(device), progress=False, penalty=penalty)


def _solve_on_ray(train: "_Stats", val: "_Stats", offset, params: dict, dev, address, slices, progress,
                  penalty: Optional[torch.Tensor] = None) -> dict:
    import ray

    from .cluster import ray_session

    with ray_session(address):
        resources = ray.cluster_resources()
        if dev.type == "cuda":
            gpus = int(resources.get("GPU", 0))
            if gpus < 1:
                raise DatamodelsError("fit.device=cuda but the Ray cluster has no GPUs")
            slices = slices or gpus
            options = dict(num_gpus=1, num_cpus=1)
        else:
            cpus = max(1, int(resources.get("CPU", 1)))
            slices = slices or max(1, len([n for n in ray.nodes() if n.get("Alive")]))
            options = dict(num_cpus=max(1, cpus // slices))
        T = train.xy.shape[1]
        parts = [p for p in np.array_split(np.arange(T), min(slices, T)) if len(p)]
        shared = ray.put({"train": train.shared_numpy(), "val": val.shared_numpy()})
        task = ray.remote(_solve_slice).options(max_retries=2, **options)
        refs = [task.remote(shared, {"train": train.columns_numpy(p), "val": val.columns_numpy(p)},
                            np.asarray(offset)[p], params, str(dev),
                            None if penalty is None else penalty[:, p].cpu().numpy()) for p in parts]
        bar = _progress(len(refs), progress, "fit: target slices", "slice")
        pending, done = list(refs), {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done[ready[0]] = ray.get(ready[0])
            bar.update(1)
        bar.close()
    results = [done[r] for r in refs]
    return {key: np.concatenate([r[key] for r in results], axis=axis) for key, axis in _TARGET_AXIS.items()}


# ---- inputs ---------------------------------------------------------------------------------
def _check_params(val_fraction, num_lambdas, lambda_min_ratio, max_iter, tol, chunk_rows) -> None:
    checks = [
        (0.0 < val_fraction < 1.0, f"fit.val_fraction must be in (0, 1), got {val_fraction}"),
        (int(num_lambdas) == num_lambdas and num_lambdas >= 1, f"fit.num_lambdas must be an integer >= 1, got {num_lambdas}"),
        (0.0 < lambda_min_ratio < 1.0, f"fit.lambda_min_ratio must be in (0, 1), got {lambda_min_ratio}"),
        (int(max_iter) == max_iter and max_iter >= 1, f"fit.max_iter must be an integer >= 1, got {max_iter}"),
        (tol > 0, f"fit.tol must be positive, got {tol}"),
        (int(chunk_rows) == chunk_rows and chunk_rows >= 1, f"fit.chunk_rows must be an integer >= 1, got {chunk_rows}"),
    ]
    for ok, message in checks:
        if not ok:
            raise DatamodelsError(message)


def _device(device, check_local: bool = True) -> torch.device:
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


def _target_columns(targets, num_targets: int) -> np.ndarray:
    everything = np.arange(num_targets)
    if targets is None:
        return everything
    if isinstance(targets, slice):
        cols = everything[targets]
    else:
        cols = np.asarray(targets).reshape(-1)
        if cols.dtype == bool or not np.issubdtype(cols.dtype, np.integer):
            raise DatamodelsError("targets must be integer column indices or a slice")
        if len(cols) and (cols.min() < 0 or cols.max() >= num_targets):
            raise DatamodelsError(f"targets must lie in 0..{num_targets - 1}, the store's target columns")
    if len(cols) == 0:
        raise DatamodelsError("targets selects no target columns")
    return cols.astype(np.int64)


def _validation_rows(rows: np.ndarray, num_models: int, val_fraction: float, seed: int) -> np.ndarray:
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


def _margins(store: Store, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    y = np.asarray(store.margins[rows], dtype=np.float64)[:, cols]
    bad = ~np.isfinite(y).all(axis=1)
    if bad.any():
        raise DatamodelsError(f"store {store.path}: completed row {int(rows[np.argmax(bad)])} has non-finite margins "
                              f"({int(bad.sum())} such rows in this chunk)")
    return y


# ---- sufficient statistics ----------------------------------------------------------------
@dataclass
class _Stats:
    """Sufficient statistics of (X, y − offset) over a set of rows."""
    n: int
    sx: torch.Tensor  # [N]    Xᵀ1, float64
    sy: torch.Tensor  # [T]    1ᵀy, float64
    xx: torch.Tensor  # [N, N] XᵀX, integer counts: float32 (exact below 2**24 rows) or float64
    xy: torch.Tensor  # [N, T] Xᵀy, float64
    yy: torch.Tensor  # [T]    Σ y², float64

    @classmethod
    def zeros(cls, N: int, T: int, xx_dtype, device) -> "_Stats":
        z = lambda *shape, dtype=torch.float64: torch.zeros(*shape, dtype=dtype, device=device)
        return cls(0, z(N), z(T), z(N, N, dtype=xx_dtype), z(N, T), z(T))

    def add(self, masks: torch.Tensor, y: torch.Tensor, gram: Optional[Callable] = None) -> None:
        """Fold in a chunk: masks bool [m, N], y float64 [m, T]; ``gram`` computes XᵀX
        (one of ``_GRAM_KERNELS``, all exact; float32 when not given)."""
        if len(masks) == 0:
            return
        x = masks.float()
        self.n += len(x)
        self.sx += x.sum(0).double()  # float32 sums of 0/1 are exact (chunks < 2**24 rows)
        self.sy += y.sum(0)
        (gram or _gram_float32)(masks, x, out=self.xx)
        self.xy += (x.T @ y.float()).double()
        self.yy += (y * y).sum(0)

    def xx_times(self, beta: torch.Tensor) -> torch.Tensor:
        """XᵀX·beta in float64, beta [N, T] float64 (in XᵀX's own dtype: no N×N float64 copy)."""
        beta = beta.to(self.xx.device)
        return self.xx @ beta if self.xx.dtype == torch.float64 else _gram_times(self.xx, beta.to(self.xx.dtype)).double()

    def minus(self, beta: torch.Tensor) -> "_Stats":
        """The statistics of (X, y − X·beta), beta [N, T] float64; XᵀX is shared, not copied."""
        beta = beta.to(self.xy.device)
        xxb = self.xx_times(beta)
        return _Stats(self.n, self.sx, self.sy - self.sx @ beta, self.xx, self.xy - xxb,
                      self.yy - 2 * (beta * self.xy).sum(0) + (beta * xxb).sum(0))

    def copy(self) -> "_Stats":
        """An independent copy (``_solve`` adds the validation statistics into the training ones)."""
        return _Stats(self.n, self.sx.clone(), self.sy.clone(), self.xx.clone(), self.xy.clone(), self.yy.clone())

    def to(self, device) -> "_Stats":
        move = lambda t: t.to(device)
        return _Stats(self.n, move(self.sx), move(self.sy), move(self.xx), move(self.xy), move(self.yy))

    # For Ray: the parts every target slice shares (n, Xᵀ1, XᵀX), and one slice's columns.
    def shared_numpy(self) -> dict:
        return {"n": self.n, "sx": self.sx.cpu().numpy(), "xx": self.xx.cpu().numpy()}

    def columns_numpy(self, cols: np.ndarray) -> dict:
        idx = torch.as_tensor(cols, device=self.xy.device)
        return {"sy": self.sy[idx].cpu().numpy(), "xy": self.xy[:, idx].cpu().numpy(),
                "yy": self.yy[idx].cpu().numpy()}

    @classmethod
    def from_numpy(cls, shared: dict, columns: dict) -> "_Stats":
        t = torch.from_numpy
        # The object store hands out read-only arrays; the solver adds into xx in place.
        return cls(shared["n"], t(shared["sx"].copy()), t(columns["sy"].copy()), t(shared["xx"].copy()),
                   t(columns["xy"].copy()), t(columns["yy"].copy()))

    def absorb(self, other: "_Stats") -> "_Stats":
        """Add ``other`` into these statistics in place (and drop its XᵀX); returns self."""
        self.n += other.n
        for name in ("sx", "sy", "xx", "xy", "yy"):
            getattr(self, name).add_(getattr(other, name))
        other.xx = None
        return self


# Each kernel takes the bool masks [m, N] and, when the caller has it, their float32 copy,
# and returns XᵀX, or adds it into ``out`` in place: with N = 50,000 an N×N temporary is 10 GB.
def _gram_int8(masks: torch.Tensor, x: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None):
    """XᵀX of 0/1 masks as an int8 GEMM with int32 sums: exact, and several times faster
    than float32 where the CPU has int8 dot products (VNNI, AMX); 25-100x slower where not."""
    xi = masks.to(torch.int8)
    xt = xi.T.contiguous()

    def rows(i, j):
        try:
            return torch._int_mm(xt[i:j], xi)
        except RuntimeError:  # shapes some backends reject (e.g. CUDA wants multiples of 8)
            xf = masks.float() if x is None else x
            return xf.T[i:j] @ xf
    return _into(out, rows, masks.shape[1])


def _gram_float32(masks: torch.Tensor, x: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None):
    """XᵀX in float32: exact for 0/1 inputs while every count stays below 2**24."""
    x = masks.float() if x is None else x
    if out is None:
        return x.T @ x
    if out.dtype == x.dtype:
        return out.addmm_(x.T, x)
    return _into(out, lambda i, j: x.T[i:j] @ x, x.shape[1])


def _gram_float16(masks: torch.Tensor, x: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None):
    """XᵀX from float16 inputs with float32 sums (tensor cores): exact like float32 where the
    backend has ``mm(..., out_dtype=float32)`` (CUDA); elsewhere the probe rejects it."""
    h = masks.half()
    return _into(out, lambda i, j: torch.mm(h.T[i:j], h, out_dtype=torch.float32), masks.shape[1])


def _into(out: Optional[torch.Tensor], rows: Callable, N: int) -> torch.Tensor:
    """All of XᵀX from ``rows(i, j)`` (its rows i:j), or added into ``out`` a row block at a time."""
    if out is None:
        return rows(0, N)
    for i, j in _row_blocks(N, N):
        out[i:j] += rows(i, j).to(out.dtype)
    return out


_GRAM_KERNELS = {"int8": _gram_int8, "float32": _gram_float32, "float16": _gram_float16}
# The probe: a chunk of this many random masks over at most this many features, timed with
# every kernel.  At N = 1,024 the int8 GEMM's slow path costs ~0.1 s (AVX2), and which kernel
# wins depends on the instruction set, not on N.
_PROBE_ROWS, _PROBE_FEATURES = 512, 1024


# CPU flags of int8 dot-product instructions, without which int8 is no candidate (``gram_kernel``).
_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# Below this many rows the whole XᵀX costs a few probes: float32, exact and the baseline every
# CPU and GPU runs well, without measuring.
_PROBE_MIN_ROWS = 16 * _PROBE_ROWS


def gram_kernel(num_train: int, device, num_rows: Optional[int] = None) -> str:
    """The XᵀX kernel for this machine and device: the faster of int8 and float32 (and float16
    with float32 sums where the device has it) on a probe of the real work (all are exact on
    0/1 masks), measured once and cached per machine (``datamodels.hardware.choose``); float32
    when ``num_rows`` is too few to repay the probe, and int8 not even probed on a CPU without
    int8 dot products.  ``DATAMODELS_GRAM_KERNEL`` forces one."""
    from . import hardware

    dev = torch.device(device)
    forced = os.environ.get("DATAMODELS_GRAM_KERNEL")
    if forced:
        if forced not in _GRAM_KERNELS:
            raise DatamodelsError(f"DATAMODELS_GRAM_KERNEL must be one of {', '.join(_GRAM_KERNELS)}, got {forced!r}")
        hardware.record(f"fit.gram_kernel.{dev.type}", forced, "set by DATAMODELS_GRAM_KERNEL")
        return forced
    if num_rows is not None and num_rows < _PROBE_MIN_ROWS:
        hardware.record(f"fit.gram_kernel.{dev.type}", "float32", f"fewer than {_PROBE_MIN_ROWS} rows: not worth a probe")
        return "float32"
    # Without int8 dot products oneDNN's int8 GEMM runs 25-100x slower than float32: a probe of
    # it alone would cost seconds (~2 s a call on the probe, AVX2), for an answer known in advance.
    skip = {"int8"} if dev.type == "cpu" and not set(hardware.cpu_flags()) & _INT8_DOT_FLAGS else set()
    n = min(num_train, _PROBE_FEATURES)
    probe = torch.rand(_PROBE_ROWS, n, generator=torch.Generator().manual_seed(0)) < 0.5
    probe = probe.to(dev)
    reference = _gram_float32(probe)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    candidates = {}
    for name, kernel in _GRAM_KERNELS.items():
        if name in skip:
            continue
        try:  # a kernel this torch or device lacks, or one that is not exact here, is no candidate
            if not torch.equal(kernel(probe).to(reference.dtype), reference):
                continue
        except (RuntimeError, AttributeError, NotImplementedError, TypeError):
            continue
        candidates[name] = lambda kernel=kernel: (kernel(probe), sync())
    if skip and list(candidates) == ["float32"]:
        hardware.record(f"fit.gram_kernel.{dev.type}", "float32",
                        f"this CPU has no int8 dot products ({', '.join(sorted(_INT8_DOT_FLAGS))})")
        return "float32"
    bucket = 1 << max(0, (n - 1).bit_length())
    return hardware.choose(f"fit.gram_kernel.{dev.type}", candidates, key=f"n{bucket}")


def _accumulate(store: Store, rows, is_val, cols, offset, chunk_rows: int, dev,
                progress: bool = False) -> Tuple[_Stats, _Stats]:
    N, T = store.num_train, len(cols)
    xx_dtype = torch.float32 if len(rows) < _EXACT_FLOAT32 else torch.float64
    step = _chunk_step(chunk_rows, N)
    train = _Stats.zeros(N, T, xx_dtype, dev)
    val = _Stats.zeros(N, T, xx_dtype, dev)
    offset = torch.as_tensor(offset, dtype=torch.float64, device=dev)
    gram = _GRAM_KERNELS[gram_kernel(N, dev, len(rows))]
    bar = _progress(len(rows), progress and len(rows) > 8 * step, "fit: reading the store", "model")
    for start in range(0, len(rows), step):
        r = rows[start:start + step]
        v = torch.as_tensor(is_val[start:start + step], device=dev)
        x = torch.from_numpy(np.asarray(store.masks[r])).to(dev)
        y = torch.from_numpy(_margins(store, r, cols)).to(dev) - offset
        train.add(x[~v], y[~v], gram)
        val.add(x[v], y[v], gram)
        _drop_pages(store.masks, store.margins)
        bar.update(len(r))
    bar.close()
    return train, val


def _chunk_step(chunk_rows: int, N: int) -> int:
    """Rows read per chunk: ``chunk_rows``, fewer where a chunk's copies (bool, int8 and its
    transpose, float32: ~8 bytes per mask entry) would pass ``_CHUNK_BYTES``.  A float32 chunk
    product is exact only while its own counts stay below 2**24."""
    return max(1, min(int(chunk_rows), _EXACT_FLOAT32 - 1, max(256, _CHUNK_BYTES // (8 * N))))


def _drop_pages(*arrays) -> None:
    """Unmap the store pages read so far.  They stay in the page cache, but no longer count
    toward this process's memory, so peak memory does not grow with the number of models
    (a 300,000 × 50,000 mask matrix is 15 GB)."""
    for array in arrays:
        mapping = getattr(array, "_mmap", None)
        if mapping is not None and hasattr(mapping, "madvise"):
            mapping.madvise(mmap.MADV_DONTNEED)


# ---- the standardised problem ------------------------------------------------------------------
@dataclass
class _Problem:
    G: Optional[torch.Tensor]  # [N, N] X̃ᵀX̃/n, solver dtype
    C: torch.Tensor      # [N, T] X̃ᵀ(y − ȳ)/n, solver dtype
    scale: torch.Tensor  # [N] 1/std of each feature (0 for a constant feature), float64
    mx: torch.Tensor     # [N] feature means, float64
    my: torch.Tensor     # [T] target means (offset removed), float64
    centring: Optional["_Centring"] = None  # how G was made from XᵀX, to get XᵀX back


def _row_blocks(N: int, cols: int):
    """Row blocks small enough that a float64 block of ``cols`` columns stays near 16 MiB."""
    step = max(1, (2 << 20) // max(1, cols))
    return ((i, min(N, i + step)) for i in range(0, N, step))


@dataclass
class _Centring:
    """The map XᵀX ↦ scale · (XᵀX − s_row mxᵀ − mx s_colᵀ + n_term mx mxᵀ) · scale / divide,
    applied in place and undone exactly.

    N×N matrices are what bound the fit's memory, so the standardised Gram overwrites the
    integer counts it is made from instead of sitting beside them, and the refit gets the
    counts back by inverting the map: each count is an integer below 2**24 and the float32
    round-off of a standardised entry is at most ~1e-7 of a centred count (≤ n/4), far below
    ½ while n < 2**24, so rounding restores it exactly.  Rows of constant features (scale 0)
    carry no information after the map and are kept aside."""
    s_row: torch.Tensor
    s_col: torch.Tensor
    mx: torch.Tensor
    n_term: float
    scale: torch.Tensor
    divide: float
    constant: Optional[torch.Tensor] = None  # indices of the constant features
    kept: Optional[torch.Tensor] = None      # their rows of XᵀX
    raw: Optional[torch.Tensor] = None   # XᵀX itself, where the map could not work in place

    def apply(self, xx: torch.Tensor, dtype) -> torch.Tensor:
        """The centred, scaled Gram in ``dtype``, written over ``xx`` when it has that dtype
        (in row blocks, so the float64 working copy never holds all N² entries)."""
        N = xx.shape[0]
        constant = torch.nonzero(self.scale == 0).squeeze(1)
        self.constant, self.kept = constant, xx[constant].clone()
        out = xx if xx.dtype == dtype else torch.empty(N, N, dtype=dtype, device=xx.device)
        if out is not xx:
            self.raw = xx
        mx, sc = self.mx, self.scale
        for i, j in _row_blocks(N, N):  # in place on one float64 block: no other temporaries
            block = xx[i:j].double()
            block.addr_(self.s_row[i:j], mx, alpha=-1).addr_(mx[i:j], self.s_col, alpha=-1)
            block.addr_(mx[i:j], mx, alpha=self.n_term).mul_(sc[i:j, None]).mul_(sc[None]).div_(self.divide)
            out[i:j] = block
        return out

    def undo(self, G: torch.Tensor) -> torch.Tensor:
        """XᵀX again, from the output of :meth:`apply` (overwritten)."""
        if self.raw is not None:
            return self.raw
        mx = self.mx
        inv = torch.where(self.scale > 0, 1 / self.scale.clamp(min=1e-300), torch.zeros_like(self.scale))
        for i, j in _row_blocks(*G.shape):
            block = G[i:j].double().mul_(inv[i:j, None]).mul_(inv[None]).mul_(self.divide)
            block.addr_(self.s_row[i:j], mx).addr_(mx[i:j], self.s_col).addr_(mx[i:j], mx, alpha=-self.n_term)
            G[i:j] = block.round_()
        G[self.constant] = self.kept
        G[:, self.constant] = self.kept.T  # XᵀX is symmetric
        return G


def _standardise(s: _Stats, dtype) -> _Problem:
    """The standardised problem of ``s``; its Gram takes the place of ``s.xx`` (``_Centring``)."""
    n = s.n
    mx, my = s.sx / n, s.sy / n
    var = torch.diagonal(s.xx).double() / n - mx * mx
    # A 0/1 feature's variance is p(1−p) >= (n−1)/n² unless it is constant (exactly 0 here).
    scale = torch.where(var > 0.5 / n ** 2, var.clamp(min=1e-300).rsqrt(), torch.zeros_like(var))
    # Centring: XcᵀXc = XᵀX − n·mx·mxᵀ, the general form with s_row = s_col = 0.
    zero = torch.zeros_like(mx)
    centring = _Centring(zero, zero, mx, -n, scale, n)
    C = ((s.xy - n * mx[:, None] * my[None]) * scale[:, None] / n).to(dtype)
    G = centring.apply(s.xx, dtype)
    s.xx = None
    return _Problem(G, C, scale, mx, my, centring)


class _Validation:
    """Validation MSE of standardised weights from the validation rows' statistics alone.

    With X', y' the validation rows centred at the *training* means and X' scaled by the
    training scale, SSE(w) = y'ᵀy' − 2 wᵀX'ᵀy' + wᵀX'ᵀX'w: the same prediction
    ȳ + (x − x̄)·(scale ⊙ w) the fitted model makes."""

    def __init__(self, p: _Problem, v: _Stats, dtype):
        n, mx, my = v.n, p.mx, p.my
        self.centring = _Centring(v.sx, v.sx, mx, n, p.scale, n)
        self.G = self.centring.apply(v.xx, dtype)  # in place of v.xx
        v.xx = None
        xy = v.xy - v.sx[:, None] * my[None] - mx[:, None] * v.sy[None] + n * mx[:, None] * my[None]
        self.c = (xy * p.scale[:, None] / n).double()
        self.yy = (v.yy - 2 * my * v.sy + n * my * my) / n

    def mse(self, W: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Validation MSE of the columns W of targets ``cols``."""
        whole = len(cols) == self.c.shape[1]
        c, yy = (self.c, self.yy) if whole else (_cols(self.c, cols), self.yy[cols])
        return yy - 2 * (W.double() * c).sum(0) + _quadratic(self.G, W)


def _quadratic(G: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """wᵀGw for every column w of W (float64 [T]), touching only each column's support when small."""
    out = torch.zeros(W.shape[1], dtype=torch.float64, device=W.device)
    support = W != 0
    sizes = support.sum(0)
    small = sizes <= _dense_cutoff(G.shape[0])
    for group in _groups(torch.nonzero(small).squeeze(1), sizes):
        idx, valid = _working_set_indices(_cols(support, group), sizes[group])
        if idx.shape[1] == 0:
            continue
        w = (_cols(W, group).gather(0, idx.T).T * valid).unsqueeze(2)  # [g, K, 1]
        out[group] = (w * torch.bmm(_gather(G, idx, valid), w)).sum((1, 2)).double()
    big = torch.nonzero(~small).squeeze(1)
    if len(big):
        Wb = _cols(W, big)
        out[big] = (Wb * (G @ Wb)).sum(0).double()
    return out


# ---- the solver ---------------------------------------------------------------------------------
def _dense_cutoff(N: int) -> int:
    """Working sets up to this size are solved on gathered sub-Grams; larger ones join the
    dense FISTA, one GEMM per iteration for all of them.  Gathering is latency-bound (~8 ns
    per entry on CPU) while the GEMM runs near peak, so the dense side wins early: on the
    digits store (N = 1,297, supports of ~700) N/20 fitted 16% faster than N/10, and N/40
    no faster than N/20."""
    return max(16, N // 20)


def _groups(todo: torch.Tensor, sizes: torch.Tensor):
    """Split targets into groups of similar working-set size whose gathered sub-Grams fit the
    memory budget (sorted by size, so padding to the largest in a group wastes little)."""
    if len(todo) == 0:
        return
    order = todo[torch.argsort(sizes[todo], stable=True)]
    s = sizes[order].tolist()
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * max(1, s[stop]) ** 2 <= _GATHER_BUDGET:
            stop += 1
        yield order[start:stop]
        start = stop


def _working_set_indices(S: torch.Tensor, sizes: torch.Tensor):
    """[g, K] feature indices of each column's working set in index order, padded with
    feature 0, and the [g, K] mask of real entries."""
    K = int(sizes.max()) if len(sizes) else 0
    g = S.shape[1]
    col, feature = torch.nonzero(S.T, as_tuple=True)  # sorted by column, then feature
    start = torch.cumsum(sizes, 0) - sizes
    pos = torch.arange(len(col), device=S.device) - start[col]
    idx = torch.zeros(g, K, dtype=torch.long, device=S.device)
    idx[col, pos] = feature
    valid = torch.arange(K, device=S.device)[None, :] < sizes[:, None]
    return idx, valid


def _cols(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[:, idx] for an index or boolean mask tensor: ``index_select`` copies whole rows' worth of
    columns at a time, 3-4x faster than advanced indexing on the solver's [N, T] matrices."""
    if idx.dtype == torch.bool:
        idx = torch.nonzero(idx).squeeze(1)
    return x.index_select(1, idx)


def _put_cols(x: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """x[:, idx] = src, in place (``index_copy_``, faster than advanced-index assignment)."""
    x.index_copy_(1, idx, src.to(x.dtype))


def _gather(G: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The [g, K, K] sub-Grams G[idx_t, idx_t], zero in padded rows and columns."""
    sub = G[idx[:, :, None], idx[:, None, :]]
    return sub.masked_fill_(~(valid[:, :, None] & valid[:, None, :]), 0)


def _gram_times(G: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """G·W reading only the rows of G where some column of W is nonzero (G is symmetric, so
    those rows are the columns the product needs): while solutions are sparse, a λ step's
    optimality check costs |support|·N·T instead of N²·T (N = 50,000: 10 GB of G per pass)."""
    rows = torch.nonzero((W != 0).any(1)).squeeze(1)
    if len(rows) > G.shape[0] // 2:
        return G @ W
    out = torch.zeros(G.shape[0], W.shape[1], dtype=W.dtype, device=W.device)
    step = max(1, (4 << 20) // G.shape[0])  # gathered rows of ~16 MiB
    for i in range(0, len(rows), step):
        r = rows[i:i + step]
        out.addmm_(G[r].T, W[r])
    return out


def _top_eigenvalue(G: torch.Tensor) -> float:
    """An upper estimate of G's largest eigenvalue (the gradient's Lipschitz constant).

    The spectrum of a random-mask Gram has no gap at the top, so power iteration creeps;
    Lanczos with full reorthogonalisation pins the top Ritz value in a few dozen matvecs,
    and adding its residual bound guards against stopping just below it."""
    N = G.shape[0]
    if N <= 64:
        return float(torch.linalg.eigvalsh(G.double())[-1].clamp(min=1e-12)) * (1 + 1e-6)
    steps = min(N, 60)
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(N, generator=gen, dtype=torch.float64).to(G.device)
    Q = torch.zeros(steps, N, dtype=torch.float64, device=G.device)
    Q[0] = q / q.norm()
    alpha, beta = [], []
    for j in range(steps):
        w = (G @ Q[j].to(G.dtype)).double()  # float32 products: an upper estimate needs no more
        alpha.append(float(w @ Q[j]))
        for _ in range(2):  # twice is enough to keep the basis orthogonal in floating point
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = float(w.norm())
        beta.append(b)
        if j + 1 == steps or b < 1e-10:
            break
        Q[j + 1] = w / b
    m = len(alpha)
    Tm = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(beta[: m - 1], dtype=torch.float64)
        Tm += torch.diag(off, 1) + torch.diag(off, -1)
    theta, vecs = torch.linalg.eigh(Tm)
    residual = abs(beta[m - 1] * float(vecs[-1, -1]))
    return max(float(theta[-1]) + residual, 1e-12) * (1 + 1e-3)


def _fista(matvec: Callable, c: torch.Tensor, lam: torch.Tensor, x0: torch.Tensor, L: float, tol: float,
           max_iter: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FISTA for min ½xᵀAx − cᵀx + λ‖x‖₁, one problem per column of c [n, T]; ``lam`` is [T],
    or [n, T] for a penalty per entry (λ‖x‖₁ is then Σᵢ λᵢ|xᵢ|).

    ``matvec(z, cols)`` returns A·z for the columns ``cols`` still running.  A column stops
    once its largest change is at most ``tol`` times its largest entry; stopped columns drop
    out of the matvec, so each column's result is the same whichever others run beside it.
    Momentum restarts when it points uphill (O'Donoghue and Candès), which keeps the linear
    rate of the well-conditioned Grams of random masks.  Returns (x, c − A·z at each
    column's last step, converged).

    The elementwise work is written to make few passes over [n, T]: with a GEMM of ~N
    multiply-adds per entry it is cheap, but a naive version costs half as much again."""
    T = c.shape[1]
    x, z = x0.clone(), x0.clone()
    resid = c.clone()
    t = torch.ones(T, dtype=c.dtype, device=c.device)
    thresh = lam / L
    converged = torch.zeros(T, dtype=torch.bool, device=c.device)
    act = torch.arange(T, device=c.device)
    for _ in range(max_iter):
        whole = len(act) == T
        za = z if whole else z.index_select(1, act)
        xa = x if whole else x.index_select(1, act)
        ta, th = (t, thresh) if whole else (t[act], thresh.index_select(thresh.dim() - 1, act))
        u = za - (matvec(za, act) - (c if whole else c.index_select(1, act))) / L  # gradient step
        xn = u - u.clamp(-th, th)  # soft threshold
        d = xn - xa
        t_next = (1 + torch.sqrt(1 + 4 * ta * ta)) / 2
        uphill = torch.linalg.vecdot(za, d, dim=0) > torch.linalg.vecdot(xn, d, dim=0)
        momentum = torch.where(uphill, torch.zeros_like(ta), (ta - 1) / t_next)
        t_next = torch.where(uphill, torch.ones_like(t_next), t_next)
        # (abs().amax(0) is much faster here than vector_norm(inf) or einsum along dim 0)
        done = d.abs().amax(0) <= tol * xn.abs().amax(0)
        zn = d.mul_(momentum).add_(xn)
        if whole:
            x, z, t = xn, zn, t_next
        else:
            x.index_copy_(1, act, xn)
            z.index_copy_(1, act, zn)
            t[act] = t_next
        if done.any():
            stop = torch.nonzero(done).squeeze(1)
            # c − A·z from the step: A·z − c = L·(z − u)
            resid.index_copy_(1, act[stop], (u.index_select(1, stop) - za.index_select(1, stop)) * L)
            converged[act[stop]] = True
            act = act[~done]
            if len(act) == 0:
                break
    else:  # out of iterations: the residual of the columns still running, computed afresh
        if len(act):
            za = z.index_select(1, act)
            resid.index_copy_(1, act, c.index_select(1, act) - matvec(za, act))
    return x, resid, converged


class _Batched:
    """A×z for a group of gathered sub-Grams [g, K, K]; as columns stop it computes on the
    last compacted superset and compacts only when a quarter of that has stopped."""

    def __init__(self, sub: torch.Tensor):
        self.sub = sub
        self.cols = torch.arange(sub.shape[0], device=sub.device)

    def __call__(self, z: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        if len(act) <= 0.75 * len(self.cols):
            keep = torch.isin(self.cols, act)
            self.sub, self.cols = self.sub[keep], self.cols[keep]
        if len(act) == len(self.cols):
            return torch.bmm(self.sub, z.T.unsqueeze(2)).squeeze(2).T
        pos = torch.searchsorted(self.cols, act)
        full = torch.zeros(z.shape[0], len(self.cols), dtype=z.dtype, device=z.device)
        full[:, pos] = z
        return torch.bmm(self.sub, full.T.unsqueeze(2)).squeeze(2).T[:, pos]


class _Lasso:
    """min_w ½wᵀGw − cᵀw + λ‖w‖₁ for every column c of C, at one λ per column."""

    def __init__(self, G: torch.Tensor, tol: float, max_iter: int):
        self.G, self.tol, self.max_iter = G, tol, max_iter
        self.L = _top_eigenvalue(G)
        self.cutoff = _dense_cutoff(G.shape[0])
        # While G fits in cache a dense FISTA iteration for many targets costs less than
        # gathering their sub-Grams, and a strong-rule set past the cutoff goes dense.  A
        # larger G is read from memory on every dense iteration (N = 50,000: 10 GB), so
        # working sets are capped at the cutoff instead (``_prioritised``) and only a
        # support that fills the cap goes dense.
        self.capped = G.numel() * G.element_size() > _CACHED_GRAM_BYTES

    def _limit(self, candidates, support, score):
        return _prioritised(candidates, support, score, self.cutoff) if self.capped else candidates

    def _too_big(self, sizes, support):
        """Targets to solve on all features: a working set past the cutoff, or a support that fills it."""
        return (sizes > self.cutoff) | (support.sum(0) >= self.cutoff)

    def solve(self, C, lam, W, R, lam_prev, penalty=None):
        """Warm-started from W, with R = C − G·W at the previous λ (``lam_prev``) for the
        strong rule; ``penalty`` [N, T] weights each feature's λ.  Returns (W, C − G·W, converged)."""
        G = self.G
        scaled = (lambda v: v[None, :]) if penalty is None else (lambda v: v[None, :] * penalty)
        T = C.shape[1]
        W, R = W.clone(), R.clone()
        converged = torch.zeros(T, dtype=torch.bool, device=C.device)
        # Sequential strong rule (Tibshirani et al. 2012): a feature with |Rⱼ| < 2λ − λ_prev
        # at the previous solution is very likely zero now.  The KKT check below catches
        # the rare exceptions, so the rule only decides where to look first.
        support = W != 0
        S = self._limit(support | (R.abs() >= scaled(2 * lam - lam_prev)), support, R)
        sizes = S.sum(0)
        big = self._too_big(sizes, support)
        dense = [torch.nonzero(big).squeeze(1)]
        todo = torch.nonzero(~big).squeeze(1)
        for _ in range(_MAX_ROUNDS):
            if len(todo) == 0:
                break
            for group in _groups(todo, sizes):
                w, converged[group] = self._on_working_sets(
                    _cols(C, group), lam[group], _cols(W, group), _cols(S, group), sizes[group],
                    None if penalty is None else _cols(penalty, group))
                _put_cols(W, group, w)
            Wt = _cols(W, todo)
            Rt = _cols(C, todo) - _gram_times(G, Wt)
            _put_cols(R, todo, Rt)
            St, lt = _cols(S, todo), _cols(scaled(lam), todo)
            violated = (Rt.abs() > lt * (1 + _KKT_SLACK)) & ~St
            # The next working set: this one and the violators (largest |Rⱼ| first where capped).
            support = Wt != 0
            score = torch.where(violated, Rt.abs() + lt, Rt.abs()) if self.capped else None
            S_next = self._limit(violated | St, support, score)
            sizes_next = S_next.sum(0)
            again = violated.any(0)
            too_big = again & self._too_big(sizes_next, support)
            dense.append(todo[too_big])
            keep = again & ~too_big
            todo = todo[keep]
            _put_cols(S, todo, _cols(S_next, keep))
            sizes[todo] = sizes_next[keep]
        dense.append(todo)  # still finding violators after every round: solve on all features
        dense = torch.cat(dense)
        if len(dense):
            dense = torch.sort(dense).values
            lam_dense = lam[dense] if penalty is None else _cols(scaled(lam), dense)
            w, r, converged[dense] = _fista(
                lambda z, act: G @ z, _cols(C, dense), lam_dense, _cols(W, dense), self.L, self.tol, self.max_iter)
            _put_cols(W, dense, w)
            _put_cols(R, dense, r)
        return W, R, converged

    def _on_working_sets(self, C, lam, W, S, sizes, penalty=None):
        idx, valid = _working_set_indices(S, sizes)
        if idx.shape[1] == 0:  # nothing can be nonzero: w = 0 (the KKT check confirms it)
            return torch.zeros_like(W), torch.ones(W.shape[1], dtype=torch.bool, device=W.device)
        c = C.gather(0, idx.T) * valid.T
        w0 = W.gather(0, idx.T) * valid.T
        if penalty is not None:  # padded entries have c = w0 = 0 and stay 0 under any threshold
            lam = lam[None, :] * penalty.gather(0, idx.T)
        w, _, converged = _fista(_Batched(_gather(self.G, idx, valid)), c, lam, w0, self.L, self.tol,
                                 self.max_iter)
        out = torch.zeros_like(W)
        col, pos = torch.nonzero(valid, as_tuple=True)
        out[idx[col, pos], col] = w[pos, col]
        return out, converged


def _prioritised(candidates: torch.Tensor, support: torch.Tensor, score: torch.Tensor, limit: int) -> torch.Tensor:
    """Working sets [N, T]: each column's ``candidates``, but where they number more than
    ``limit``, only the support and then the candidates of largest |score| up to ``limit``
    features (as working-set solvers such as celer and skglm prioritise).  Without the limit a
    path on fewer models than features (M < N) would send its targets to FISTA on all N
    features as soon as the strong rule's set passes the cutoff, long before the solutions
    stop being sparse: at N = 20,000 most of the path's time went there."""
    over = torch.nonzero(candidates.sum(0) > limit).squeeze(1)
    if len(over) == 0:
        return candidates
    rank = score[:, over].abs().masked_fill(~candidates[:, over], -1.0)
    rank = rank.masked_fill_(support[:, over], math.inf)
    top = torch.topk(rank, limit, dim=0).indices
    chosen = torch.zeros(candidates.shape[0], len(over), dtype=torch.bool, device=candidates.device)
    chosen.scatter_(0, top, True)
    out = candidates.clone()
    out[:, over] = chosen & candidates[:, over]
    return out


def _extrapolate(W: torch.Tensor, W_prev: torch.Tensor, ratio) -> torch.Tensor:
    """A warm start for the next λ: the LASSO path is piecewise linear in λ, so continue the
    last step (λ steps shrink by ``ratio``); entries that would change sign start at 0."""
    guess = W + (W - W_prev) * float(ratio)
    return torch.where(torch.sign(guess) == torch.sign(W), guess, torch.zeros_like(guess))


def _refit(everything: _Stats, prob: _Problem, w_train, lam, dtype, tol, max_iter, penalty=None, uncorrected=None):
    """Refit on all fitting rows at the chosen λ; returns (weight, bias, converged) in mask units
    (bias still without the margin offset).  ``uncorrected`` [T]: targets whose validation chose
    the path's first step (around a prior: no correction), which stay uncorrected."""
    full = _standardise(everything, dtype)
    beta = w_train.double() * prob.scale[:, None]  # mask units: unchanged by restandardising
    inv = torch.where(full.scale > 0, 1 / full.scale.clamp(min=1e-300), torch.zeros_like(full.scale))
    start = (beta * inv[:, None]).to(dtype)
    solver = _Lasso(full.G, tol=tol, max_iter=max_iter)
    lam = lam.to(dtype)
    if uncorrected is not None and bool(uncorrected.any()):
        # λ_max of all rows can exceed that of the training rows, and the chosen λ would then fit
        # a correction from the validation rows alone: with 2 of 10 models, noise (digits, TRAK
        # prior: LDS 0.783 against the prior's own 0.791).
        top = (full.C.abs() if penalty is None else full.C.abs() / penalty).amax(0)
        lam = torch.where(uncorrected, torch.maximum(lam, top), lam)
    R = full.C - _gram_times(full.G, start)
    w, _, converged = solver.solve(full.C, lam, start, R, lam, penalty)
    weight = w.double() * full.scale[:, None]
    bias = full.my - full.mx @ weight
    return weight, bias, converged


# ---- reporting --------------------------------------------------------------------------------
class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool, desc: str, unit: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "model")


def _warn_unconverged(converged: np.ndarray, cols: np.ndarray, max_iter: int) -> None:
    bad = cols[~converged]
    if len(bad):
        shown = ", ".join(str(int(i)) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
        warnings.warn(f"fit: {len(bad)} of {len(cols)} targets did not converge within fit.max_iter={max_iter} "
                      f"(targets {shown}); raise fit.max_iter or fit.tol", RuntimeWarning, stacklevel=3)
