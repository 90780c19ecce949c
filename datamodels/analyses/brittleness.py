"""Brittle predictions: how few training examples hold up each correct prediction.

For a target the datamodel predicts correctly, remove training examples in order of
decreasing positive weight; its *support size* is the smallest number whose removal is
predicted to flip the prediction (margin below 0).  Predictions follow the setting:

* ``subset`` (default): models trained on α-subsets of the training set drawn without the
  removed examples, predicted as bias + s/(N-k) * (sum of the remaining weights), s the
  subset size; before any removal this is the mean margin of the sweep's models;
* ``full``: the model trained on the whole training set minus the removed examples.

A target already predicted wrong has support size 0; one that no removal of positively
weighted examples flips has none (``None``).  Verification retrains ``verify`` models per
target without its support set (in the same setting) and counts a flip when their mean
margin is below 0.  Each verified target carries the standard error of that mean and a verdict
(``uncertainty.verdict``): ``flipped`` or ``holds`` when the mean is more than 1.96 standard
errors below or above 0, else ``undecided``, with the retrained models that would settle it were
the mean to stay where it is; the share that flip comes with a bootstrap 95% interval over targets.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np

from ..errors import DatamodelsError
from ._run import Run, open_run, pool_masks, rng_for, seeds_for
from .counterfactual import BASES
from .uncertainty import bootstrap_ci, verdict


def support_sizes(run: Union[Run, str], base: str = "subset", targets: Optional[Sequence[int]] = None,
                  chunk: int = 256):
    """Per target: (support size or -1 for none, baseline predicted margin, predicted margin
    after removing the support)."""
    run = open_run(run)
    if base not in BASES:
        raise DatamodelsError(f"--base must be subset or full, got {base!r}")
    targets = run.targets(targets)
    N, s = run.num_train, run.subset_size
    baseline = run.baseline(base)[targets].astype(np.float64)
    k = np.arange(1, N + 1)[:, None]
    scale = (s / (N - k).clip(min=1)) if base == "subset" else np.ones((N, 1))
    # Removing k examples must leave enough to draw a subset of s (or anything, on the full set).
    room = k <= (N - s if base == "subset" else N - 1)
    size = np.empty(len(targets), dtype=np.int64)
    after_at = np.empty(len(targets))
    for start in range(0, len(targets), chunk):  # [N, chunk] at a time: N x T may not fit in memory
        cols = targets[start:start + chunk]
        W = run.weight[:, cols].astype(np.float64)
        # The predicted margin after removing the top k depends on the sum of the k largest
        # positive weights alone; removing examples without positive weight cannot help a flip.
        cum = np.cumsum(-np.sort(-np.clip(W, 0, None), axis=0), axis=0)
        after = run.bias[cols][None].astype(np.float64) + scale * (W.sum(0)[None] - cum)
        flips = (after < 0) & room & (k <= (W > 0).sum(0)[None])
        found = flips.any(0)
        first = flips.argmax(0)
        size[start:start + len(cols)] = np.where(found, first + 1, -1)
        after_at[start:start + len(cols)] = after[first, np.arange(len(cols))]
    size = np.where(baseline <= 0, 0, size)
    after_at = np.where(size > 0, after_at, baseline)
    return targets, size, baseline, after_at


def brittleness(run: Union[Run, str], *, base: str = "subset", targets: Optional[Sequence[int]] = None,
                verify: int = 0, max_support: int = 20, seed: int = 0, progress: bool = True) -> dict:
    """Support sizes of every target (or ``targets``), their distribution, and with ``verify``
    > 0 the share of targets with support size in 1..``max_support`` whose prediction truly
    flips when ``verify`` models are retrained without the support set."""
    run = open_run(run)
    if int(verify) < 0:
        raise DatamodelsError(f"--verify must be >= 0 models per target, got {verify}")
    if int(max_support) < 1:
        raise DatamodelsError(f"--max-support must be >= 1, got {max_support}")
    targets, size, baseline, after = support_sizes(run, base, targets)
    W = run.weight
    rows = []
    for i, t in enumerate(targets):
        k = int(size[i])
        support = np.argsort(-W[:, t], kind="stable")[:k].tolist() if k > 0 else []
        rows.append({"target": int(t), "support_size": k if k >= 0 else None,
                     "predicted_before": float(baseline[i]), "predicted_after": float(after[i]), "support": support})
    sizes = np.array([r["support_size"] for r in rows if r["support_size"]], dtype=np.int64)
    result = {"base": base, "alpha": run.alpha, "num_targets": len(rows), "max_support": int(max_support),
              "seed": int(seed), "fingerprint": run.fingerprint(),
              "counts": {"already_wrong": int((size == 0).sum()), "flippable": int((size > 0).sum()),
                         "never_flips": int((size < 0).sum()),
                         f"at_most_{int(max_support)}": int(((size > 0) & (size <= max_support)).sum())},
              "quantiles": ({f"q{q}": float(np.percentile(sizes, q)) for q in (10, 25, 50, 75, 90)}
                            if len(sizes) else {}),
              "targets": rows}
    if verify:
        result["verified"] = _verify(run, rows, base, int(verify), int(max_support), seed, progress)
    return result


def _verify(run: Run, rows: List[dict], base: str, repeats: int, max_support: int, seed: int,
            progress: bool) -> dict:
    N, s = run.num_train, run.subset_size
    chosen = [r for r in rows if r["support_size"] and r["support_size"] <= max_support]
    if not chosen:
        return {"models": repeats, "checked": 0, "flipped": 0, "share": float("nan"), "share_ci": [float("nan")] * 2,
                "surely_flipped": 0, "surely_holds": 0, "undecided": 0, "models_to_settle": None}
    rng = rng_for(seed, "brittleness")
    seeds = seeds_for(seed, "brittleness", repeats)
    masks = []
    for r in chosen:
        removed = np.zeros(N, dtype=bool)
        removed[r["support"]] = True
        masks.append(np.tile(~removed, (repeats, 1)) if base == "full" else pool_masks(rng, removed, s, repeats))
    margins = run.retrain(np.concatenate(masks), np.tile(seeds, len(chosen)), progress=progress)
    flips = np.zeros(len(chosen), dtype=bool)
    verdicts = []
    for i, r in enumerate(chosen):
        m = margins[i * repeats:(i + 1) * repeats, r["target"]].astype(np.float64)
        se = float(m.std(ddof=1) / np.sqrt(repeats)) if repeats > 1 else float("nan")
        r["verified"] = {"actual_after": float(m.mean()), "actual_after_se": se,
                         "share_of_models_wrong": float((m < 0).mean()), "flipped": bool(m.mean() < 0),
                         **verdict(float(m.mean()), se, repeats)}
        flips[i] = m.mean() < 0
        verdicts.append(r["verified"]["verdict"])
    undecided = [r["verified"]["models_to_settle"] for r in chosen if r["verified"]["verdict"] == "undecided"]
    return {"models": repeats, "checked": len(chosen), "flipped": int(flips.sum()), "share": float(flips.mean()),
            "share_ci": bootstrap_ci(lambda i: float(flips[i].mean()), len(chosen), seed=seed),
            "surely_flipped": verdicts.count("flipped"), "surely_holds": verdicts.count("holds"),
            "undecided": len(undecided),
            "models_to_settle": max((m for m in undecided if m is not None), default=None)}


def histogram(result: dict) -> List[dict]:
    """Counts of support sizes in bins 1, 2, 3-5, 6-10, 11-20, 21-50, 51-100, >100."""
    edges = [(1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, None)]
    sizes = [r["support_size"] for r in result["targets"] if r["support_size"]]
    out = []
    for lo, hi in edges:
        n = sum(1 for v in sizes if v >= lo and (hi is None or v <= hi))
        out.append({"support_size": f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi else f">{lo - 1}"), "targets": n})
    return out
