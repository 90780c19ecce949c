"""Priors for the fit: TRAK scores from a few of the sweep's own models.

A datamodel fitted on few models is mostly noise (digits: LDS 0.36 from 100 models), while
TRAK (Park et al. 2023), a gradient-based attribution, ranks training examples well from a
single model and then stalls (0.75 from 1 model, 0.79 from 100).  ``datamodels.fit(...,
prior=...)`` uses TRAK's scores as the prior mean of each datamodel: it fits one scale per
target to the prior on the training rows, then the lasso on what the prior leaves unexplained.
With few models the lasso's path stops at λ_max and the datamodel is the scaled prior; with
many, the lasso corrects the prior where the data disagree.

The scores come from models the sweep trained: this module retrains the store's first
``num_models`` fitting models, with their own masks and seeds (the workers are deterministic,
so these are the same models), and asks the worker for the kernels of its per-example
gradients (``gradient_kernels``; ``workers.mlp`` has it).  For model m with training-gradient
kernel Kₘ = ΦₘΦₘᵀ and target kernel Kₜ,ₘ = Φₜ,ₘΦₘᵀ,

    τ = mean_m [Kₜ,ₘ (Kₘ + λₘ I)⁻¹] ⊙ mean_m Qₘ,    λₘ = ridge · trace(Kₘ) / N,

which is TRAK's φₜᵀ(ΦᵀΦ + λI)⁻¹Φᵀ Q written with kernels (N×N instead of the gradient
dimension), without random projection.  The ridge matters (without it, LDS falls as the
gradient dimension nears N), so several ridges are returned and the fit picks one on its
validation rows.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import config as config_lib
from .errors import DatamodelsError

# Ridges relative to the kernel's mean diagonal; the fit picks one on its validation rows.
RIDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


def trak(config, num_models: Optional[int] = None, ridges: Sequence[float] = RIDGES,
         rows: Optional[np.ndarray] = None, progress: bool = True) -> Dict[float, np.ndarray]:
    """TRAK scores from the store's first ``num_models`` (default: the config's
    ``fit.prior_models``) completed fitting models (or ``rows``), retrained here in this
    process: ``{ridge: float32 [N, T]}``, positive where including a training example raises the
    target's margin (``datamodels evaluate --scores`` convention)."""
    from .prepare import prepare, read_meta
    from .store import Store
    from .store import model_seeds
    from .sweep import resolve_worker, stored_worker_settings

    cfg = config_lib.coerce(config)
    if num_models is not None:
        config_lib.check_fit_options(config_lib.fit_options(cfg, prior_models=num_models))
    num_models = int(num_models if num_models is not None else cfg.fit.prior_models)
    if not ridges or any(not (r > 0) for r in ridges):
        raise DatamodelsError(f"prior ridges must be positive numbers, got {list(ridges)}")
    name = config_lib.to_dict(cfg.worker)["name"]
    kernels = getattr(config_lib.load_worker(name), "gradient_kernels", None)
    if kernels is None:
        raise DatamodelsError(f"fit.prior: worker {name!r} has no gradient_kernels(masks, seeds, config), "
                              f"which TRAK priors need")
    store = Store(f"{cfg.out}/store")
    data_dir = prepare(cfg, progress=False)
    meta = read_meta(data_dir)
    worker, _ = resolve_worker(cfg, meta, stored_worker_settings(cfg.out))
    if rows is None:
        rows = store.rows("fit")[:int(num_models)]
    if len(rows) == 0:
        raise DatamodelsError(f"store {store.path} has no completed fitting rows: run the sweep first")
    masks, seeds = np.asarray(store.masks[rows]), model_seeds(store.seed, rows)
    N, T = store.num_train, store.num_targets
    sums = {r: torch.zeros(T, N, dtype=torch.float64) for r in ridges}
    q_sum = torch.zeros(N, dtype=torch.float64)
    data = {"dir": str(data_dir), "targets": cfg.data.targets}
    bar = tqdm(total=len(rows), desc="prior: TRAK", unit="model", disable=not progress)
    for _, k_train, k_target, q in kernels(masks, seeds, {"worker": worker, "data": data}):
        k_train, k_target = torch.from_numpy(k_train).double(), torch.from_numpy(k_target).double()
        if k_target.shape != (T, N):
            raise DatamodelsError(f"fit.prior: the worker's gradient kernels are for {k_target.shape[0]} targets and "
                                  f"{k_target.shape[1]} training examples, the store has {T} and {N}: is "
                                  f"data.targets the one the store was made with?")
        scale = float(torch.diagonal(k_train).mean()) or 1.0
        for r in ridges:
            factor = torch.linalg.cholesky(k_train + r * scale * torch.eye(N, dtype=torch.float64))
            sums[r] += torch.cholesky_solve(k_target.T, factor).T  # Kₜ (K + λI)⁻¹
        q_sum += torch.from_numpy(q).double()
        bar.update(1)
    bar.close()
    q_mean = q_sum / len(rows)
    return {r: (s / len(rows) * q_mean[None, :]).T.float().numpy() for r, s in sums.items()}
