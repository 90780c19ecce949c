"""A prior mean of the weights: its scale per target, the choice among candidates, and the
adaptive-lasso penalty weights it gives the correction."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..errors import DatamodelsError
from ..store import Store
from .stats import Stats

# Added to |pᵢ| / mean |p| before the power, so examples the prior puts at zero are not
# frozen there (their penalty is at most ε^−γ times the mean).
_PRIOR_EPSILON = 0.1


def prior_candidates(prior, store: Store, cols: np.ndarray) -> dict:
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


def penalty_weights(prior: torch.Tensor, gamma: float) -> Optional[torch.Tensor]:
    """Adaptive-lasso weights [N, T] from a prior [N, T]: (|pᵢ| / mean |p| + ε)^−γ per target,
    scaled to mean 1 so that λ keeps its meaning; None for γ = 0 (the plain penalty)."""
    if gamma == 0:
        return None
    size = prior.abs()
    relative = size / size.mean(0).clamp(min=1e-300)  # a zero prior: every weight equal
    weights = (relative + _PRIOR_EPSILON) ** -float(gamma)
    return weights / weights.mean(0)


def scaled_prior(train: "Stats", val: "Stats", candidates: dict):
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
