"""Pieces shared by workers: reading the prepared data once per process, and margins."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

_CACHE: Dict[Tuple[str, str, float], Tuple[np.ndarray, np.ndarray]] = {}


def load_split(data_dir: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images [n, H, W, C] and labels [n] of one split, from its FFCV ``.beton`` file.

    Read with numpy (``datamodels.prepare.read_arrays``), not through FFCV's loader, whose
    import and pipeline compile cost seconds in every worker process, and cached per process:
    a Ray worker process runs many tasks.
    """
    from datamodels.prepare import read_arrays

    path = Path(data_dir) / f"{split}.beton"
    key = (str(path.resolve()), split, path.stat().st_mtime)
    if key not in _CACHE:
        _CACHE[key] = read_arrays(data_dir, split)
    return _CACHE[key]


def targets(data_dir: str, which: str) -> Tuple[np.ndarray, np.ndarray]:
    """The target examples, in store column order: the test split, then optionally the training split."""
    x, y = load_split(data_dir, "test")
    if which == "test+train":
        x_train, y_train = load_split(data_dir, "train")
        x, y = np.concatenate([x, x_train]), np.concatenate([y, y_train])
    return x, y


def equal_size_groups(masks: np.ndarray):
    """Row indices of ``masks`` grouped by subset size: a stack of models trains in lockstep,
    so only models with the same number of steps per epoch can share one."""
    sizes = masks.sum(1)
    for size in np.unique(sizes):
        yield np.flatnonzero(sizes == size)


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Correct-class logit minus the largest other logit, over the last axis."""
    correct = logits.gather(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1), float("-inf"))
    return correct - others.amax(-1)
