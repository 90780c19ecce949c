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

which is TRAK's φₜᵀ(ΦᵀΦ + λI)⁻¹Φᵀ Q written with kernels (N×N), without random projection.
Where the worker also gives the gradients themselves (``gradient_features``, P wide) and N > P,
each model is computed in that form instead, Φₜ(ΦᵀΦ + λI)⁻¹Φᵀ, the same matrix: P×P systems and
no N×N matrix at all (at N = 50,000 one N×N float64 matrix is 18.6 GiB; the MLP's P is ~5,000).
The ridge matters (without it, LDS falls as the gradient dimension nears N), so several ridges
are returned and the fit picks one on its validation rows.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import config as config_lib
from . import worker as worker_lib
from .errors import DatamodelsError
from .resources import check_memory

# Ridges relative to the kernel's mean diagonal; the fit picks one on its validation rows.
RIDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


# How the scores are computed: from the worker's kernels (N×N) or its gradient features (P wide);
# "auto": features where the worker has them, each model in the smaller of the two dimensions.
FORMS = ("auto", "kernel", "features")
# Rows of Φ made at a time in the feature form (float64 blocks of a few tens of MB).
_FEATURE_BLOCK = 2048


def trak(config, num_models: Optional[int] = None, ridges: Sequence[float] = RIDGES,
         rows: Optional[np.ndarray] = None, progress: bool = True, form: str = "auto") -> Dict[float, np.ndarray]:
    """TRAK scores from the store's first ``num_models`` (default: the config's
    ``fit.prior_models``) completed fitting models (or ``rows``), retrained here in this
    process: ``{ridge: float32 [N, T]}``, positive where including a training example raises the
    target's margin (``datamodels evaluate --scores`` convention).  ``form`` (``FORMS``): the
    kernel form solves N×N systems per model, the feature form P×P ones (the same scores)."""
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
    if form not in FORMS:
        raise DatamodelsError(f"TRAK prior form must be one of {', '.join(FORMS)}, got {form!r}")
    name = config_lib.to_dict(cfg.worker)["name"]
    module = worker_lib.load(name)
    kernels, features = worker_lib.hook(module, "gradient_kernels"), worker_lib.hook(module, "gradient_features")
    if form == "kernel" or features is None:
        features = None
    else:
        kernels = None
    if kernels is None and features is None:
        raise DatamodelsError(f"fit.prior: worker {name!r} has no gradient_kernels(masks, seeds, config)"
                              f"{' (the kernel form)' if form == 'kernel' else ''}, which TRAK priors need")
    store = Store(f"{cfg.out}/store")
    N, T = store.num_train, store.num_targets
    check_memory("the TRAK prior", trak_memory(N, T, len(ridges), None if features is None else _MAX_FEATURES),
                 f"{N:,} training examples x {T:,} targets x {len(ridges)} ridges"
                 + ("; an N×N kernel per model" if features is None else ""),
                 "give fewer ridges or targets, or use a worker with gradient_features")
    data_dir = prepare(cfg, progress=False)
    meta = read_meta(data_dir)
    worker, _ = resolve_worker(cfg, meta, stored_worker_settings(cfg.out))
    if rows is None:
        rows = store.rows("fit")[:int(num_models)]
    if len(rows) == 0:
        raise DatamodelsError(f"store {store.path} has no completed fitting rows: run the sweep first")
    masks, seeds = np.asarray(store.masks[rows]), model_seeds(store.seed, rows)
    sums = {r: torch.zeros(T, N, dtype=torch.float64) for r in ridges}
    q_sum = torch.zeros(N, dtype=torch.float64)
    data = {"dir": str(data_dir), "targets": cfg.data.targets}
    bar = tqdm(total=len(rows), desc="prior: TRAK", unit="model", disable=not progress)
    for _, train, target, q in (features or kernels)(masks, seeds, {"worker": worker, "data": data}):
        target = torch.from_numpy(target).double()
        if target.shape[0] != T or (features is None and target.shape[1] != N):
            raise DatamodelsError(f"fit.prior: the worker's gradient kernels are for {target.shape[0]} targets and "
                                  f"{target.shape[1]} training examples, the store has {T} and {N}: is "
                                  f"data.targets the one the store was made with?")
        if features is None:
            _add_kernel_form(sums, torch.from_numpy(train).double(), target)
        elif form == "features" or target.shape[1] < N:
            _add_feature_form(sums, train, target, N)
        else:  # no wider than N: the kernels from the features, as the kernel form
            phi = torch.from_numpy(train(0, N)).double()
            _add_kernel_form(sums, phi @ phi.T, target @ phi.T)
        q_sum += torch.from_numpy(q).double()
        bar.update(1)
    bar.close()
    q_mean = q_sum / len(rows)
    return {r: (s / len(rows) * q_mean[None, :]).T.float().numpy() for r, s in sums.items()}


def _add_kernel_form(sums: dict, k_train: torch.Tensor, k_target: torch.Tensor) -> None:
    """sums[r] += Kₜ (K + λI)⁻¹ for each ridge r, λ = r · trace(K) / N."""
    N = k_train.shape[0]
    scale = float(torch.diagonal(k_train).mean()) or 1.0
    for r in sums:
        factor = torch.linalg.cholesky(k_train + r * scale * torch.eye(N, dtype=torch.float64))
        sums[r] += torch.cholesky_solve(k_target.T, factor).T  # Kₜ (K + λI)⁻¹
        del factor


def _add_feature_form(sums: dict, train_features, phi_target: torch.Tensor, N: int) -> None:
    """The same as ``_add_kernel_form`` from Φ [N, P] and Φₜ [T, P]: Kₜ (K + λI)⁻¹ =
    Φₜ (ΦᵀΦ + λI)⁻¹ Φᵀ (push-through), with P×P systems, Φ made a block of rows at a time."""
    P = phi_target.shape[1]
    gram = torch.zeros(P, P, dtype=torch.float64)
    for start in range(0, N, _FEATURE_BLOCK):
        block = torch.from_numpy(train_features(start, min(N, start + _FEATURE_BLOCK))).double()
        gram.addmm_(block.T, block)
    scale = float(torch.diagonal(gram).sum()) / N or 1.0  # trace(ΦᵀΦ) = trace(ΦΦᵀ)
    solved = {}
    for r in sums:
        factor = torch.linalg.cholesky(gram + r * scale * torch.eye(P, dtype=torch.float64))
        solved[r] = torch.cholesky_solve(phi_target.T, factor)  # (ΦᵀΦ + λI)⁻¹ Φₜᵀ [P, T]
        del factor
    for start in range(0, N, _FEATURE_BLOCK):
        stop = min(N, start + _FEATURE_BLOCK)
        block = torch.from_numpy(train_features(start, stop)).double()
        for r, z in solved.items():
            sums[r][:, start:stop] += (block @ z).T


# The widest gradient features the memory estimate allows for where the worker gives features:
# P×P matrices are then no larger than this (the MLP workers' P is a few thousand).
_MAX_FEATURES = 8192


def trak_memory(num_train: int, num_targets: int, num_ridges: int, num_features: Optional[int] = None) -> int:
    """Bytes the TRAK prior adds to its process beside the worker's training: the float64 sums
    [T, N] per ridge and their float32 results, and per model either three N×N float64 matrices
    (the kernel, its shifted copy, the Cholesky factor: ``num_features`` None) or, in the
    feature form, three P×P ones, the [P, T] solutions per ridge and a block of Φ."""
    N, T, R = int(num_train), int(num_targets), int(num_ridges)
    scores = R * T * N * (8 + 4) + 2 * T * N * 8
    if num_features is None:
        per_model = 3 * N * N * 8
    else:
        P = min(int(num_features), N)
        per_model = 3 * P * P * 8 + R * P * T * 8 + 3 * min(N, _FEATURE_BLOCK) * P * 8
    return scores + per_model
