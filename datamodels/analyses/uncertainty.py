"""Verified claims with their uncertainty: per-item standard errors, summaries that one noisy item
cannot decide, and bootstrap confidence intervals over items.

A verified counterfactual's actual change is a mean over R retrained model pairs, so it has a
standard error (SE) of its own; a target whose margin is very noisy under retraining can have an
SE many times the others'.  Its point can then land anywhere, and an unweighted correlation over
items lets it decide the summary.  So ``verified_summary`` reports, beside the plain Pearson and
Spearman correlations:

* ``weighted_pearson``: the Pearson correlation with each item weighted by 1 / (SE^2 + s0^2),
  s0 the median SE over items: items measured as well as most count alike, and an item measured
  much worse than most counts for correspondingly less;
* the *too noisy to judge* rule: an item whose SE exceeds ``NOISY_FRACTION`` (1/2) of the
  standard deviation of the predicted changes over items is flagged (its 95% interval spans two
  standard deviations of the predictions: the check cannot tell its prediction from a typical
  other one), ``pearson_judged`` leaves the flagged items out, and each flagged item says how many
  retrained model pairs would bring its SE down to that limit (SE falls as 1/sqrt(R));
* a confidence interval (``level``, default 95%) for each correlation: the percentiles of the
  statistic over ``boot`` resamples of the items with replacement, seeded.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

NOISY_FRACTION = 0.5
Z = 1.96  # two-sided 95% normal quantile, for "surely below/above 0" verdicts
BOOTSTRAP = 2000


def weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """Pearson correlation of x and y with non-negative weights w (NaN when undefined)."""
    x, y, w = (np.asarray(a, dtype=np.float64) for a in (x, y, w))
    if len(x) < 3 or w.sum() <= 0:
        return float("nan")
    w = w / w.sum()
    dx, dy = x - w @ x, y - w @ y
    sxx, syy = w @ (dx * dx), w @ (dy * dy)
    if sxx <= 0 or syy <= 0:
        return float("nan")
    return float(np.clip((w @ (dx * dy)) / math.sqrt(sxx * syy), -1.0, 1.0))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata

    return weighted_pearson(rankdata(x), rankdata(y), np.ones(len(x)))


def bootstrap_ci(stat, n: int, *, seed: int = 0, boot: int = BOOTSTRAP, level: float = 0.95) -> list:
    """[low, high] percentile interval of ``stat(indices)`` over ``boot`` resamples of n items
    (seeded; resamples where the statistic is undefined are skipped; NaNs when fewer than half
    are defined)."""
    if n < 3:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng([int(seed), 7711])
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(int(boot))], dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < boot / 2:
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def verified_summary(predicted: Sequence[float], actual: Sequence[float], se: Sequence[float], *,
                     repeats: Optional[int] = None, seed: int = 0, boot: int = BOOTSTRAP,
                     level: float = 0.95) -> dict:
    """How well predicted changes match verified ones, accounting for each verified value's SE.

    Returns ``n``, ``pearson``, ``spearman``, ``weighted_pearson``, ``pearson_judged`` (each with a
    ``*_ci`` interval), ``noisy_limit`` (the SE above which an item is too noisy to judge),
    ``noisy`` (the flagged items' indices), ``judged`` (how many are not), and with ``repeats``
    (the model pairs behind each SE) ``models_to_settle`` per flagged item."""
    p, a = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    s = np.asarray(se, dtype=np.float64)
    n = len(p)
    spread = float(p.std(ddof=1)) if n > 1 else float("nan")
    known = np.isfinite(s)
    floor = float(np.median(s[known])) if known.any() else 0.0
    # An unknown SE (one model per item) gets the typical weight: nothing says it is worse.
    w = 1.0 / (np.where(known, s, floor) ** 2 + floor ** 2) if floor > 0 else np.ones(n)
    limit = NOISY_FRACTION * spread
    noisy = np.flatnonzero(known & (s > limit)) if np.isfinite(limit) and limit > 0 else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(n), noisy)

    def pearson(i):
        return weighted_pearson(p[i], a[i], np.ones(len(i)))

    out = {"n": int(n), "level": level, "bootstrap": int(boot), "seed": int(seed),
           "pearson": pearson(np.arange(n)), "pearson_ci": bootstrap_ci(pearson, n, seed=seed, boot=boot, level=level),
           "spearman": _spearman(p, a) if n >= 3 else float("nan"),
           "spearman_ci": bootstrap_ci(lambda i: _spearman(p[i], a[i]), n, seed=seed, boot=boot, level=level),
           "weighted_pearson": weighted_pearson(p, a, w),
           "weighted_pearson_ci": bootstrap_ci(lambda i: weighted_pearson(p[i], a[i], w[i]), n, seed=seed, boot=boot,
                                               level=level),
           "se_median": floor, "noisy_limit": limit, "noisy": noisy.tolist(), "judged": int(len(keep)),
           "pearson_judged": pearson(keep),
           "pearson_judged_ci": bootstrap_ci(lambda i: pearson(keep[i]), len(keep), seed=seed, boot=boot,
                                             level=level)}
    if repeats:
        out["models_to_settle"] = {int(i): models_for_se(repeats, s[i], limit) for i in noisy}
    return out


def models_for_se(repeats: int, se: float, wanted: float) -> int:
    """Retrained models (or pairs) for an SE of ``wanted``, given ``se`` from ``repeats`` of them."""
    if not (np.isfinite(se) and wanted > 0):
        return 0
    return int(math.ceil(repeats * (se / wanted) ** 2))


def verdict(mean: float, se: float, repeats: int) -> dict:
    """Whether a retrained mean margin is surely below 0 (``flipped``), surely at or above it
    (``holds``), or neither (``undecided``) at about 95% (``Z`` standard errors), and for an
    undecided one the models that would settle it if the mean stayed where it is."""
    if not np.isfinite(se):
        return {"verdict": "undecided", "models_to_settle": None}
    if mean + Z * se < 0:
        return {"verdict": "flipped"}
    if mean - Z * se > 0:
        return {"verdict": "holds"}
    return {"verdict": "undecided",
            "models_to_settle": models_for_se(repeats, se, abs(mean) / Z) if mean != 0 else None}


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def summary_lines(s: dict, repeats: int) -> list:
    """The counterfactual summary, each correlation with its bootstrap interval, and the rule for noisy items."""
    lines = [f"predicted vs actual margin change over {s['n']} counterfactuals ({s['level']:.0%} bootstrap intervals "
             f"over counterfactuals): Pearson r = {s['pearson']:.3f} {_ci(s['pearson_ci'])}, Spearman = "
             f"{s['spearman']:.3f} {_ci(s['spearman_ci'])}",
             f"weighted by the precision of each actual change (1 / (se^2 + median se^2)): r = "
             f"{s['weighted_pearson']:.3f} {_ci(s['weighted_pearson_ci'])}"]
    if s["noisy"]:
        worst = max(s.get("models_to_settle", {}).values(), default=None)
        lines.append(f"{len(s['noisy'])} too noisy to judge (se above half the sd of the predicted changes, "
                     f"{s['noisy_limit']:.3g}; up to {worst} model pairs each would judge them, {repeats} were "
                     f"trained); without them r = {s['pearson_judged']:.3f} {_ci(s['pearson_judged_ci'])}")
    return lines
