"""Target slices solved as Ray tasks, one per GPU or per group of cores."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..cluster import ray_session
from ..config import FitOptions
from ..errors import DatamodelsError
from .memory import return_freed_memory, torch_device
from .path import solve_path
from .progress import progress_bar
from .stats import Stats

# Result arrays and the axis along which target slices are put side by side.
_TARGET_AXIS = {"weight": 1, "bias": 0, "lam": 0, "nnz": 0, "val_mse": 0, "converged": 0, "lambda_path": 1,
                "val_mse_path": 1, "path_index": 0}


def _solve_slice(shared: dict, columns: dict, offset, options: FitOptions, device: str, penalty=None,
                 around_prior: bool = False) -> dict:
    """A Ray task: the solve for one slice of targets (shared: n, sx, xx of both row sets)."""
    return_freed_memory()
    train = Stats.from_numpy(shared["train"], columns["train"])
    val = Stats.from_numpy(shared["val"], columns["val"])
    penalty = None if penalty is None else torch.from_numpy(np.array(penalty))
    return solve_path(train, val, np.array(offset), options, torch_device(device), penalty=penalty,
                      around_prior=around_prior)


def solve_on_ray(train: Stats, val: Stats, offset, options: FitOptions, dev, address, slices, progress: bool,
                 penalty: Optional[torch.Tensor] = None, around_prior: bool = False) -> dict:
    """``solve_path`` for ``slices`` groups of targets, each a Ray task on ``address``'s cluster;
    the statistics travel through the object store.  Equals the single-process solve."""
    import ray

    with ray_session(address):
        resources = ray.cluster_resources()
        if dev.type == "cuda":
            gpus = int(resources.get("GPU", 0))
            if gpus < 1:
                raise DatamodelsError("fit.device=cuda but the Ray cluster has no GPUs")
            slices = slices or gpus
            resources_per_task = dict(num_gpus=1, num_cpus=1)
        else:
            cpus = max(1, int(resources.get("CPU", 1)))
            slices = slices or max(1, len([n for n in ray.nodes() if n.get("Alive")]))
            resources_per_task = dict(num_cpus=max(1, cpus // slices))
        T = train.xy.shape[1]
        parts = [p for p in np.array_split(np.arange(T), min(slices, T)) if len(p)]
        shared = ray.put({"train": train.shared_numpy(), "val": val.shared_numpy()})
        task = ray.remote(_solve_slice).options(max_retries=2, **resources_per_task)
        refs = [task.remote(shared, {"train": train.columns_numpy(p), "val": val.columns_numpy(p)},
                            np.asarray(offset)[p], options, str(dev),
                            None if penalty is None else penalty[:, p].cpu().numpy(), around_prior) for p in parts]
        bar = progress_bar(len(refs), progress, "fit: target slices", "slice")
        pending, done = list(refs), {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done[ready[0]] = ray.get(ready[0])
            bar.update(1)
        bar.close()
    results = [done[r] for r in refs]
    return {key: np.concatenate([r[key] for r in results], axis=axis) for key, axis in _TARGET_AXIS.items()}
