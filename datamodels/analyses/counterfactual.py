"""Counterfactuals: what happens to a target's margin when a set R of training examples goes.

A linear datamodel predicts that removing R from any training set that contains it changes
the target's margin by ``-sum(weight[R])``.  Two settings are reported:

* ``full``: the model trained on the whole training set, before and after removing R;
* ``subset``: models trained on α-subsets (the sweep's setting) that contain R, before
  and after removing R from them.

Verification trains ``verify`` pairs of models per counterfactual through the sweep
machinery: each pair shares its seed and, in the subset setting, its subset, and differs
only by R, so the noise of drawing subsets and seeds cancels in the difference.  In the
full setting the "before" models (the whole training set) are shared by all
counterfactuals.
"""
from __future__ import annotations

from typing import Iterable, List, Sequence, Union

import numpy as np

from ..errors import DatamodelsError
from ._run import Run, correlation, open_run, parse_remove, pool_masks, rng_for, seeds_for
from .uncertainty import verified_summary

BASES = ("subset", "full")


def counterfactual(run: Union[Run, str], targets: Union[int, Sequence[int]], remove: Union[str, Iterable[str]] = "top:10",
                   *, verify: int = 0, base: str = "subset", seed: int = 0, progress: bool = True) -> dict:
    """Predicted (and, with ``verify`` > 0, actual) margins after removing training examples.

    ``targets``: one datamodel column or several; ``remove``: one spec or several, each
    ``top:K`` (the K examples with the largest weights for that target), ``bottom:K``,
    ``random:K`` or a file of training indices; every (target, spec) pair is one
    counterfactual.  Returns ``{"counterfactuals": [...], "correlation": ...}``; the
    correlation between predicted and actual margin changes over all counterfactuals
    (Pearson and Spearman) is there when verified, and ``summary``
    (``uncertainty.verified_summary``): the correlations with bootstrap confidence intervals, one
    weighted by each actual change's standard error, and the items too noisy to judge."""
    run = open_run(run)
    if base not in BASES:
        raise DatamodelsError(f"--base must be subset or full, got {base!r}")
    if int(verify) < 0:
        raise DatamodelsError(f"--verify must be >= 0 models per mask, got {verify}")
    targets = run.targets(np.atleast_1d(targets))
    specs = [remove] if isinstance(remove, str) else list(remove)
    if not specs:
        raise DatamodelsError("--remove needs at least one spec, e.g. top:10")
    N, s = run.num_train, run.subset_size
    items: List[dict] = []
    for t in targets:
        w = run.weight[:, t].astype(np.float64)
        for spec in specs:
            removed = parse_remove(spec, w, rng_for(seed, "random-removal", t))
            items.append(_predict(run, int(t), spec, removed, w, N, s))
    result = {"base": base, "verify": int(verify), "alpha": run.alpha, "num_train": N, "seed": int(seed),
              "fingerprint": run.fingerprint(), "counterfactuals": items}
    if verify:
        _verify(run, items, base, int(verify), seed, progress)
        result["correlation"] = correlation([c["verified"]["predicted_change"] for c in items],
                                            [c["verified"]["actual_change"] for c in items])
        result["summary"] = summarise(items, int(verify), seed)
        result["by_spec"] = {spec: correlation([c["verified"]["predicted_change"] for c in items if c["remove"] == spec],
                                               [c["verified"]["actual_change"] for c in items if c["remove"] == spec])
                             for spec in specs}
    return result


def _predict(run: Run, t: int, spec: str, removed: np.ndarray, w: np.ndarray, N: int, s: int) -> dict:
    k = len(removed)
    w_removed = float(w[removed].sum())
    total = float(w.sum())
    b = float(run.bias[t])
    full_before = b + total
    item = {"target": t, "remove": str(spec), "removed": removed.tolist(), "num_removed": k,
            "predicted_change": -w_removed,
            "full": {"before": full_before, "after": full_before - w_removed}}
    if k < s:
        # An α-subset containing R: R plus s-k of the other N-k examples, each with chance (s-k)/(N-k).
        before = b + w_removed + (s - k) / (N - k) * (total - w_removed)
        item["subset"] = {"before": before, "after": before - w_removed}
    return item


def _verify(run: Run, items: List[dict], base: str, repeats: int, seed: int, progress: bool) -> None:
    N, s = run.num_train, run.subset_size
    seeds = seeds_for(seed, "counterfactual", repeats)
    rng = rng_for(seed, "counterfactual")
    masks, pair_seeds = [], []
    if base == "full":
        masks.append(np.ones((repeats, N), dtype=bool))  # "before" for every counterfactual
        pair_seeds.append(seeds)
    for item in items:
        removed = np.zeros(N, dtype=bool)
        removed[item["removed"]] = True
        if base == "full":
            without = np.tile(~removed, (repeats, 1))
            masks.append(without)
        else:
            if item["num_removed"] >= s:
                raise DatamodelsError(f"removing {item['num_removed']} examples leaves nothing of an α-subset of "
                                      f"{s}; use --base full or remove fewer")
            with_r = pool_masks(rng, removed, s - item["num_removed"], repeats) | removed
            masks += [with_r, with_r & ~removed]
            pair_seeds.append(seeds)
        pair_seeds.append(seeds)
    all_masks = np.concatenate(masks)
    margins = run.retrain(all_masks, np.concatenate(pair_seeds), progress=progress)
    preds = all_masks.astype(np.float32) @ run.weight + run.bias

    pos = 0
    if base == "full":
        before_rows = np.arange(repeats)
        pos = repeats
    for item in items:
        t = item["target"]
        if base == "subset":
            before_rows = np.arange(pos, pos + repeats)
            pos += repeats
        after_rows = np.arange(pos, pos + repeats)
        pos += repeats
        diff = margins[after_rows, t] - margins[before_rows, t]
        item["verified"] = {
            "models": repeats,
            "actual_before": float(margins[before_rows, t].mean()),
            "actual_after": float(margins[after_rows, t].mean()),
            "actual_change": float(diff.mean()),
            "actual_change_se": float(diff.std(ddof=1) / np.sqrt(repeats)) if repeats > 1 else float("nan"),
            "predicted_before": float(preds[before_rows, t].mean()),
            "predicted_after": float(preds[after_rows, t].mean()),
            "predicted_change": float((preds[after_rows, t] - preds[before_rows, t]).mean()),
        }


def summarise(items: List[dict], repeats: int, seed: int = 0) -> dict:
    """``uncertainty.verified_summary`` of verified counterfactuals; marks each flagged item
    ``verified.judged = False`` with the model pairs that would settle it."""
    v = [c["verified"] for c in items]
    summary = verified_summary([x["predicted_change"] for x in v], [x["actual_change"] for x in v],
                               [x["actual_change_se"] for x in v], repeats=repeats, seed=seed)
    settle = summary.get("models_to_settle", {})
    for i, x in enumerate(v):
        x["judged"] = i not in settle
        if i in settle:
            x["models_to_settle"] = settle[i]
    summary["models_to_settle"] = {str(i): m for i, m in settle.items()}  # JSON keys are strings
    return summary


def pick_targets(run: Union[Run, str], count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct targets drawn at random (sorted), for batch counterfactuals."""
    run = open_run(run)
    if not 1 <= count <= run.num_targets:
        raise DatamodelsError(f"--batch must be between 1 and {run.num_targets} targets, got {count}")
    return np.sort(rng_for(seed, "counterfactual", 1).choice(run.num_targets, count, replace=False))


def table(result: dict) -> List[dict]:
    """Rows for a text table, one per counterfactual."""
    rows = []
    setting = result["base"]
    for c in result["counterfactuals"]:
        row = {"target": c["target"], "remove": c["remove"], "k": c["num_removed"]}
        level = c.get(setting) or c["full"]
        row["before"], row["after"], row["pred_change"] = level["before"], level["after"], c["predicted_change"]
        if "verified" in c:
            v = c["verified"]
            row["actual_before"], row["actual_after"] = v["actual_before"], v["actual_after"]
            row["actual_change"], row["se"] = v["actual_change"], v["actual_change_se"]
            row["judged"] = "yes" if v.get("judged", True) else f"no: {v.get('models_to_settle')} pairs"
        rows.append(row)
    return rows
