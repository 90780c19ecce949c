"""The λ path on the training rows, the choice of λ per target on the validation rows, and
the refit on all rows: a pure function of the sufficient statistics (``solve_path``), used by
``fit``, by its Ray tasks, by the live LDS and by the learning curve."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..config import FitOptions
from .gram import gram_times
from .memory import temporaries_on_the_heap
from .progress import progress_bar
from .solver import Lasso, put_cols, take_cols
from .standardise import Problem, Validation, standardise
from .stats import Stats

# The path's solves only rank λs by validation error and warm-start the refit, which is solved
# to ``tol``; looser there changes the validation errors far less than the differences between
# neighbouring λs.  On the digits default (AVX2 CPU) 30x rather than 10x fitted 14-16% faster
# (4.66-5.41 s against 5.44-6.43 s) with the LDS unchanged to four decimals (0.86499 against
# 0.86498); 50-100x gained a little more and moved it by 2e-5.
PATH_TOL_FACTOR = 30
# Below this many validation models a fit around a prior takes the same step of the λ path for
# every target (``_path_and_refit``).  On digits, with a TRAK prior from 30 models: LDS 0.781 /
# 0.791 / 0.792 / 0.802 at 10 / 30 / 100 / 300 models against 0.768 / 0.777 / 0.785 / 0.799
# per target, and the same at 1,000 (100 validation models).  Without a prior it helped at 300
# models (+0.011) and hurt at 10-100 (-0.003 to -0.011), so the plain fit stays per target.
_POOLED_BELOW = 100

# Steps along the λ path without a better validation error after which a target stops.
PATIENCE = 4
# The same for a path warm-started near an earlier solve's choice (``solve_path``'s ``warm``).
_WARM_PATIENCE = 2


def solve_path(train: Stats, val: Stats, offset, options: FitOptions, device="cpu", *, progress: bool = False,
               warm: Optional[dict] = None, refit: bool = True, patience: int = PATIENCE,
               penalty: Optional[torch.Tensor] = None, around_prior: bool = False) -> dict:
    """The λ path on the training statistics ``train``, each target's λ chosen on the validation
    statistics ``val``, and the refit on both (``refit``), with ``options``' path settings
    (``num_lambdas``, ``lambda_min_ratio``, ``max_iter``, ``tol``) on ``device``.  Returns the
    result arrays of ``fit`` (``weight``, ``bias`` with ``offset`` added back, ``lam``, ``nnz``,
    ``val_mse``, ``converged``, ``lambda_path``, ``val_mse_path``, ``path_index``).

    A pure function of the statistics, so target slices can be solved anywhere and put side by
    side; it consumes ``train`` and ``val`` (their Grams are overwritten).  ``penalty`` [N, T]
    (positive): each weight's L1 penalty is λ times its entry (``penalty_weights``).
    ``around_prior``: the statistics are those of the margins minus a prior's prediction; with
    few validation models every target takes one λ step, and a target whose validation keeps
    the prior keeps it in the refit.  ``patience``: steps without a better validation error
    after which a target leaves the path.

    ``warm`` (the live LDS's checkpoints, ``datamodels.live``): ``{"weight": [N, T] in mask
    units, "path_index": [T]}`` of an earlier solve of the same targets on fewer rows.  Each
    target's path then starts one step above the λ step it chose there, from that solution,
    instead of at λ_max from zero, and stops after ``_WARM_PATIENCE`` steps without a better
    validation error: a few steps instead of the whole path.  (With a few hundred more rows,
    the chosen step moves by at most one or two, and the path follows it.)"""
    N, T = train.xy.shape
    with temporaries_on_the_heap(8 * N * T):  # the solver's [N, T] matrices, float64 at most
        return _path_and_refit(train, val, offset, options, torch.device(device), progress, warm, refit, patience,
                               penalty, around_prior)


def _path_and_refit(train: Stats, val: Stats, offset, options: FitOptions, dev, progress: bool,
                    warm: Optional[dict], refit: bool, patience: int, penalty: Optional[torch.Tensor],
                    around_prior: bool) -> dict:
    num_lambdas, lambda_min_ratio = int(options.num_lambdas), float(options.lambda_min_ratio)
    tol, max_iter = float(options.tol), int(options.max_iter)
    dtype = torch.float32
    train, val = train.to(dev), val.to(dev)
    # The two N×N matrices held from here on: the training rows' Gram and the validation rows'.
    prob = standardise(train, dtype)
    valid = Validation(prob, val, dtype)
    # Without a refit the path's solution is the answer: solved to ``tol`` itself.
    solver = Lasso(prob.G, tol=tol * (PATH_TOL_FACTOR if refit else 1), max_iter=max_iter)

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
    # C − G·W, the features' correlation with the residual
    R = C - gram_times(prob.G, W) if warm is not None else C.clone()
    best_w = W.clone()
    best_k = first.clone()
    best_mse = torch.full((T,), math.inf, dtype=torch.float64, device=dev)
    # Around a prior, with few validation models: one λ step for all targets (the step of least
    # validation error summed over targets).  Each target's own minimum over a handful of rows is
    # mostly noise, and how far to move from the prior is much the same for every target.
    pooled = around_prior and refit and warm is None and val.n < _POOLED_BELOW
    if pooled:
        patience = num_lambdas  # every target's whole path, so the sums compare like with like
    bar = progress_bar(num_lambdas + 1, progress, "fit: lambda path", "step")
    for step in range(num_lambdas):
        k = first[act] + step
        inside = k < num_lambdas
        if not bool(inside.all()):  # the end of the grid
            act, W, W_prev, R, C, k = (act[inside], take_cols(W, inside), take_cols(W_prev, inside),
                                       take_cols(R, inside), take_cols(C, inside), k[inside])
            if len(act) == 0:
                break
        lam = lam_path[k, act].to(dtype)
        lam_prev = lam_path[(k - 1).clamp(min=0), act].to(dtype) if warm is None or step else lam
        start = _extrapolate(W, W_prev, step_ratio) if step >= 2 else W
        W_prev = W
        W, R, path_converged[k, act] = solver.solve(C, lam, start, R, lam_prev,
                                                    None if penalty is None else take_cols(penalty, act))
        mse = valid.mse(W, act)
        mse_path[k, act] = mse
        better = mse < best_mse[act]  # strict: ties keep the larger λ, the sparser model
        best_mse[act] = torch.where(better, mse, best_mse[act])
        best_k[act] = torch.where(better, k, best_k[act])
        chosen = torch.nonzero(better).squeeze(1)
        put_cols(best_w, act[chosen], take_cols(W, chosen))
        bar.update(1)
        bar.set_postfix(nnz=int((W != 0).sum(0).median()), targets=len(act), refresh=False)
        # Early stop: a target whose validation error has not improved for PATIENCE steps is
        # past its minimum, and the rest of its path (the densest, slowest solves) cannot be
        # chosen unless the error curve turns down again; its val_mse_path there stays NaN.
        keep = (k - best_k[act]) < (patience if warm is None else min(patience, _WARM_PATIENCE))
        if not bool(keep.all()):
            act, W, W_prev, R, C = (act[keep], take_cols(W, keep), take_cols(W_prev, keep), take_cols(R, keep),
                                    take_cols(C, keep))
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
        uncorrected = (best_k == 0) if around_prior else None
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


def _extrapolate(W: torch.Tensor, W_prev: torch.Tensor, ratio) -> torch.Tensor:
    """A warm start for the next λ: the LASSO path is piecewise linear in λ, so continue the
    last step (λ steps shrink by ``ratio``); entries that would change sign start at 0."""
    guess = W + (W - W_prev) * float(ratio)
    return torch.where(torch.sign(guess) == torch.sign(W), guess, torch.zeros_like(guess))


def _refit(everything: Stats, prob: Problem, w_train, lam, dtype, tol, max_iter, penalty=None, uncorrected=None):
    """Refit on all fitting rows at the chosen λ; returns (weight, bias, converged) in mask units
    (bias still without the margin offset).  ``uncorrected`` [T]: targets whose validation chose
    the path's first step (around a prior: no correction), which stay uncorrected."""
    full = standardise(everything, dtype)
    beta = w_train.double() * prob.scale[:, None]  # mask units: unchanged by restandardising
    inv = torch.where(full.scale > 0, 1 / full.scale.clamp(min=1e-300), torch.zeros_like(full.scale))
    start = (beta * inv[:, None]).to(dtype)
    solver = Lasso(full.G, tol=tol, max_iter=max_iter)
    lam = lam.to(dtype)
    if uncorrected is not None and bool(uncorrected.any()):
        # λ_max of all rows can exceed that of the training rows, and the chosen λ would then fit
        # a correction from the validation rows alone: with 2 of 10 models, noise (digits, TRAK
        # prior: LDS 0.783 against the prior's own 0.791).
        top = (full.C.abs() if penalty is None else full.C.abs() / penalty).amax(0)
        lam = torch.where(uncorrected, torch.maximum(lam, top), lam)
    R = full.C - gram_times(full.G, start)
    w, _, converged = solver.solve(full.C, lam, start, R, lam, penalty)
    weight = w.double() * full.scale[:, None]
    bias = full.my - full.mx @ weight
    return weight, bias, converged
