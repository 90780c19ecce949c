"""Questions asked of fitted datamodels: which training examples matter, which targets are alike."""
from __future__ import annotations

from typing import List

import numpy as np

from .artifacts import as_datamodels
from .errors import DatamodelsError


def _weights(datamodels) -> np.ndarray:
    return np.asarray(as_datamodels(datamodels)["weight"], dtype=np.float32)


def _column(weight: np.ndarray, target: int) -> np.ndarray:
    if not 0 <= target < weight.shape[1]:
        raise DatamodelsError(f"--target {target} is out of range: the datamodels cover targets 0..{weight.shape[1] - 1}")
    return weight[:, target]


def top(datamodels, target: int, k: int = 10) -> dict:
    """The ``k`` training examples with the most positive and the most negative weight for one target.

    A positive weight means including that example raises the target's margin."""
    w = _column(_weights(datamodels), target)
    k = max(1, min(k, len(w)))
    pos = np.argsort(-w, kind="stable")[:k]
    neg = np.argsort(w, kind="stable")[:k]
    as_rows = lambda idx: [{"train_index": int(i), "weight": float(w[i])} for i in idx]
    return {"target": int(target), "positive": as_rows(pos), "negative": as_rows(neg)}


def nearest(datamodels, target: int, k: int = 10) -> dict:
    """The ``k`` other targets whose datamodel vectors are closest by cosine similarity."""
    weight = _weights(datamodels)
    w = _column(weight, target)
    norms = np.linalg.norm(weight, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = (weight.T @ w) / (norms * np.linalg.norm(w))
    cosine = np.nan_to_num(cosine, nan=-np.inf)  # all-zero datamodels are close to nothing
    cosine[target] = -np.inf
    order = np.argsort(-cosine, kind="stable")[: max(1, min(k, len(cosine) - 1))]
    return {"target": int(target),
            "nearest": [{"target": int(i), "cosine": float(cosine[i])} for i in order if np.isfinite(cosine[i])]}


def format_table(rows: List[dict], columns: List[str]) -> str:
    """A plain aligned text table."""
    cells = [columns] + [[f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(wd) for v, wd in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
