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

import dataclasses
import warnings
from typing import Optional

import numpy as np
import torch

from .. import artifacts
from ..config import FitOptions, check_fit_options
from ..errors import DatamodelsError
from ..store import Store
from .distributed import solve_on_ray
from .memory import check_memory, return_freed_memory, torch_device
from .path import solve_path
from .prior import penalty_weights, prior_candidates, scaled_prior
from .stats import accumulate, margins, validation_rows

# Rows of the store used to pick the per-target offset subtracted from margins before
# accumulating, so that Xᵀy and yᵀy do not lose precision to a large common mean.
_OFFSET_ROWS = 1024


def resolve_options(options: Optional[FitOptions] = None, **overrides) -> FitOptions:
    """``options`` (default: ``FitOptions()``) with ``overrides`` replaced, checked."""
    names = {f.name for f in dataclasses.fields(FitOptions)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"fit() got unexpected options {', '.join(unknown)}; "
                        f"the options are {', '.join(sorted(names))}")
    options = dataclasses.replace(options if options is not None else FitOptions(), **overrides)
    check_fit_options(options)
    return options


def fit(store, out=None, *, options: Optional[FitOptions] = None, seed: int = 0, targets=None, rows=None,
        address=None, slices=None, prior=None, progress: bool = True, **overrides) -> dict:
    """Fit sparse linear datamodels for the store's targets; save them to ``out`` (.npz) if given.

    ``options`` (``datamodels.config.FitOptions``, the config's ``fit`` section; default: its
    defaults) sets the regression, and keywords override single options (``num_lambdas=10``).

    Uses only the completed rows of the fitting split (``store.rows("fit")``, or the subset
    ``rows`` of them).  A fraction ``val_fraction`` of them, chosen from ``seed`` and each row's
    index (so adding rows later leaves the existing rows' assignment nearly unchanged), chooses
    λ per target; the final model is refitted on all of them.  ``targets`` (indices or a slice
    of the store's target columns) fits a subset; its results equal the same columns of a fit
    of all targets.

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
    options = resolve_options(options, **overrides)
    return_freed_memory()
    if slices is not None and (int(slices) != slices or slices < 1):
        raise DatamodelsError(f"fit slices must be an integer >= 1, got {slices}")
    distributed = address is not None or (slices or 1) > 1
    dev = torch_device(options.device, check_local=not distributed)
    if out is not None:
        artifacts.check_writable(out)  # before minutes of work, not after
    store = store if isinstance(store, Store) else Store(store)
    cols = _target_columns(targets, store.num_targets)
    rows = _fitting_rows(store, rows)
    if len(rows) == 0:
        raise DatamodelsError(f"store {store.path} has no completed fitting rows: run the sweep first")
    is_val = validation_rows(rows, store.num_models, options.val_fraction, seed)
    if not distributed:
        check_memory(store, len(cols), len(rows), dev, options.chunk_rows)

    offset = margins(store, rows[:_OFFSET_ROWS], cols).mean(axis=0)
    reading = torch.device("cpu") if distributed else dev
    train, val = accumulate(store, rows, is_val, cols, offset, options.chunk_rows, reading, progress=progress)
    base, choice, penalty = None, None, None
    if prior is not None:
        candidates = prior_candidates(prior, store, cols)
        base, choice = scaled_prior(train, val, candidates)
        train, val = train.minus(base), val.minus(base)
        penalty = penalty_weights(candidates[choice], options.prior_gamma)
    around_prior = prior is not None
    if distributed:
        result = solve_on_ray(train, val, offset, options, dev, address, slices, progress, penalty, around_prior)
    else:
        result = solve_path(train, val, offset, options, dev, progress=progress, penalty=penalty,
                            around_prior=around_prior)
    if base is not None:  # y − X·base was fitted: its bias is already that of y
        result["weight"] = (result["weight"] + base.cpu().numpy()).astype(np.float32)
        result["nnz"] = (result["weight"] != 0).sum(0).astype(np.int64)
        result["prior_choice"] = np.asarray(choice)
    result["targets"] = cols
    result["num_models"] = np.int64(len(rows))
    _warn_unconverged(result["converged"], cols, options.max_iter)
    if out is not None:
        artifacts.save(result, out)
    return result


def _fitting_rows(store: Store, rows) -> np.ndarray:
    """The completed fitting rows to fit on: all of them, or ``rows`` (checked to be some of them)."""
    completed = store.rows("fit")
    if rows is None:
        return completed
    rows = np.asarray(rows).reshape(-1)
    if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer) or not np.isin(rows, completed).all():
        raise DatamodelsError(f"rows must be completed fitting rows of store {store.path}")
    return rows.astype(np.int64)


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


def _warn_unconverged(converged: np.ndarray, cols: np.ndarray, max_iter: int) -> None:
    bad = cols[~converged]
    if len(bad):
        shown = ", ".join(str(int(i)) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
        warnings.warn(f"fit: {len(bad)} of {len(cols)} targets did not converge within fit.max_iter={max_iter} "
                      f"(targets {shown}); raise fit.max_iter or fit.tol", RuntimeWarning, stacklevel=3)
