"""The linear datamodeling score's math: Spearman rank correlations per target, and their summary."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

# Quantiles of the per-target LDS that ``datamodels.evaluate.lds`` reports.
QUANTILES = {"min": 0.0, "p10": 0.1, "p25": 0.25, "median": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (ties get
    average ranks); NaN where either column is constant or holds non-finite values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"spearman needs two [rows, columns] arrays of one shape, got {a.shape} and {b.shape}")
    # Imported here: every Ray worker process imports this package, and scipy.stats costs it ~0.7 s.
    from scipy.stats import rankdata

    bad = ~(np.isfinite(a).all(0) & np.isfinite(b).all(0))
    ra = rankdata(np.where(np.isfinite(a), a, 0.0), axis=0)
    rb = rankdata(np.where(np.isfinite(b), b, 0.0), axis=0)
    ra -= ra.mean(0)
    rb -= rb.mean(0)
    denom = np.sqrt((ra * ra).sum(0) * (rb * rb).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(0) / denom
    rho[bad | (denom == 0)] = np.nan
    return rho


def lds_summary(per_target: np.ndarray, quantiles: Dict[str, float] = QUANTILES) -> dict:
    """``{"lds": mean of the defined per-target values, "num_undefined": NaN ones, "quantiles":
    {name: quantile of the defined values}}`` (an LDS of NaN and no quantiles when none is)."""
    per_target = np.asarray(per_target, dtype=np.float64)
    defined = per_target[np.isfinite(per_target)]
    return {"lds": float(defined.mean()) if len(defined) else float("nan"),
            "num_undefined": int(len(per_target) - len(defined)),
            "quantiles": {k: float(np.quantile(defined, q)) for k, q in quantiles.items()} if len(defined) else {}}


def lds(predicted: np.ndarray, actual: np.ndarray, quantiles: Dict[str, float] = QUANTILES) -> dict:
    """The LDS of predicted margins [models, targets] against the actual ones: ``lds_summary``
    of the per-target Spearman correlations, with them as ``per_target``."""
    per_target = spearman(predicted, actual)
    reasons = drop_reasons(predicted, actual)
    dropped = {why: int((reasons == i).sum()) for i, why in enumerate(DROP_REASONS) if (reasons == i).any()}
    return {"per_target": per_target, **lds_summary(per_target, quantiles), "dropped": dropped}


# Why a target has no rank correlation, in the order they are told (a target with several
# counts under the first).
DROP_REASONS = ("non-finite held-out margins", "non-finite predictions", "constant held-out margins",
                "constant predictions")


def drop_reasons(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """[T] the index in DROP_REASONS of why each target's rank correlation is undefined (-1 where
    it is defined): exactly the targets ``spearman`` leaves NaN."""
    finite_actual, finite_predicted = np.isfinite(actual).all(0), np.isfinite(predicted).all(0)
    with np.errstate(invalid="ignore"):
        tests = (~finite_actual, ~finite_predicted, finite_actual & (np.ptp(actual, 0) == 0),
                 finite_predicted & (np.ptp(predicted, 0) == 0))
    reason = np.full(np.shape(predicted)[1], -1)
    for i, test in reversed(list(enumerate(tests))):
        reason[test] = i
    return reason


def dropped_text(scores: dict) -> str:
    """``5 dropped: constant held-out margins (3), non-finite predictions (2)`` from an LDS result's
    ``dropped`` counts, or "" when every target has an LDS."""
    dropped = scores.get("dropped") or {}
    order = sorted(dropped.items(), key=lambda kv: -kv[1])  # stable: ties keep DROP_REASONS' order
    return f"{sum(dropped.values())} dropped: " + ", ".join(f"{why} ({n})" for why, n in order) if dropped else ""


def lds_line(scores: dict, what: str = "") -> str:
    """One line for people: the LDS, over how many targets, which were dropped and why.  Raises
    DatamodelsError when no target has an LDS (a bare ``nan`` says nothing)."""
    from .errors import DatamodelsError

    total, kept = scores["num_targets"], scores["num_targets"] - scores["num_undefined"]
    dropped = dropped_text(scores)
    if kept == 0:
        raise DatamodelsError(f"no LDS{what}: none of the {total} targets has a rank correlation over "
                              f"{scores['num_models']} held-out models; {dropped}")
    over = f"{kept} of {total}" if kept < total else f"{total}"
    q = scores.get("quantiles", {})
    return (f"LDS {scores['lds']:.4f}{what}{interval_text(scores.get('ci'))} over {over} targets and "
            f"{scores['num_models']} held-out models" + protocol_text(scores.get("protocol"))
            + (f"; {dropped}" if dropped else "") + "; quantiles " + ", ".join(f"{k}: {v:.3f}" for k, v in q.items())
            + ceiling_text(scores.get("ceiling")))


def interval_text(ci: Optional[dict]) -> str:
    """`` [0.712, 0.734] (95% CI)`` of an interval, or "" when there is none."""
    if not ci or not np.isfinite(ci.get("low", np.nan)):
        return ""
    return f" [{ci['low']:.4f}, {ci['high']:.4f}] ({100 * ci['level']:.0f}% CI)"


def protocol_text(protocol: Optional[dict]) -> str:
    if not protocol:
        return ""
    seeds = protocol["seeds_per_mask"]
    return (f" (protocol {protocol['name']}: {protocol['masks']} masks x {seeds} seed{'s' if seeds > 1 else ''}"
            + (" averaged)" if seeds > 1 else ")"))


def ceiling_text(ceiling: Optional[dict]) -> str:
    """``; noise ceiling 0.921 [0.918, 0.924]`` or ``; noise ceiling unavailable (why)``."""
    if not ceiling:
        return ""
    if not ceiling.get("available"):
        return f"; noise ceiling unavailable ({ceiling.get('reason', 'no repeated seeds')})"
    return f"; noise ceiling {ceiling['ceiling']:.4f} [{ceiling['low']:.4f}, {ceiling['high']:.4f}]"


# ---- protocols, confidence intervals, the noise ceiling ---------------------------------------

# How each published protocol builds its held-out ground truth from masks trained with r seeds
# each: (masks used, seeds averaged per mask); None: all there are.  single: one seed (the first)
# of every mask; mean: all seeds of every mask averaged (TRAK); dattri: its default of 100
# subsets x 1 run; kronfluence: its examples' 100 masks x 5 seeds, averaged.
PROTOCOLS = {"single": (None, 1), "mean": (None, None), "dattri": (100, 1), "kronfluence": (100, 5)}
CI_LEVEL = 0.95  # the confidence level of every LDS interval
CI_DRAWS = 200  # bootstrap resamples of the held-out masks


def protocol_shape(protocol: str, num_masks: int, seeds: int) -> tuple:
    """(masks, seeds per mask) the protocol uses out of ``num_masks`` masks with ``seeds`` each."""
    if protocol not in PROTOCOLS:
        from .errors import DatamodelsError

        raise DatamodelsError(f"unknown LDS protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    masks, per_mask = PROTOCOLS[protocol]
    return min(num_masks, masks or num_masks), min(seeds, per_mask or seeds)


def _rank_layout(x: np.ndarray) -> tuple:
    """Per column: the sort order, as flat indices, and (when the column has ties) each sorted
    position's first and last tie-group positions, flat; enough to rank any resample of the rows
    without sorting again."""
    n, t = x.shape
    order = np.argsort(x, axis=0, kind="stable")
    s = np.take_along_axis(x, order, 0)
    cols = np.arange(t)
    flat = (order * t + cols).ravel()
    unsort = np.empty_like(flat)
    unsort[flat] = np.arange(flat.size)
    if not (s[1:] == s[:-1]).any():
        return order.ravel(), unsort, None, None
    idx = np.arange(n)[:, None]
    new = np.ones(x.shape, dtype=bool)
    new[1:] = s[1:] != s[:-1]
    last = np.ones(x.shape, dtype=bool)
    last[:-1] = new[1:]
    start = np.maximum.accumulate(np.where(new, idx, 0), axis=0)
    end = np.minimum.accumulate(np.where(last, idx, n - 1)[::-1], axis=0)[::-1]
    return order.ravel(), unsort, (start * t + cols).ravel(), ((end + 1) * t + cols).ravel()


def _resampled_ranks(layout: tuple, counts: np.ndarray) -> np.ndarray:
    """Average ranks of every row within a resample that holds row i ``counts[i]`` times: what
    ``rankdata`` of the resampled column gives, each copy of a row sharing its rank."""
    order, unsort, start, end = layout
    t = len(order) // len(counts)
    sorted_counts = counts[order].reshape(-1, t)
    cum = np.zeros((sorted_counts.shape[0] + 1, t), dtype=np.float32)
    np.cumsum(sorted_counts, axis=0, out=cum[1:])
    if start is None:  # no ties: a row's copies take the ranks just below its cumulative count
        ranks = cum[1:] - (sorted_counts - 1) / 2
    else:
        below, upto = cum.ravel()[start], cum.ravel()[end]
        ranks = below + (upto - below + 1) / 2
    return ranks.ravel()[unsort].reshape(-1, t)


def _weighted_corr(ra: np.ndarray, rb: np.ndarray, counts: np.ndarray) -> np.ndarray:
    w = counts / counts.sum()
    ra, rb = ra - w @ ra, rb - w @ rb
    wa = w[:, None] * ra
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wa * rb).sum(0) / np.sqrt((wa * ra).sum(0) * (w @ (rb * rb)))


def _draws(num_masks: int, draws: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        yield np.bincount(rng.integers(0, num_masks, num_masks), minlength=num_masks).astype(np.float32)


def lds_interval(predicted: np.ndarray, actual: np.ndarray, level: float = CI_LEVEL, draws: int = CI_DRAWS,
                 seed: int = 0) -> dict:
    """A percentile bootstrap interval of the LDS over the held-out models (rows resampled with
    replacement, targets fixed: the uncertainty of having scored these models and not others).
    Seeded, so the same inputs give the same interval."""
    predicted, actual = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    keep = np.isfinite(spearman(predicted, actual))
    if not keep.any() or len(predicted) < 3:
        return {"low": float("nan"), "high": float("nan"), "level": level, "method": "unavailable"}
    lp, la = _rank_layout(predicted[:, keep]), _rank_layout(actual[:, keep])
    values = []
    for counts in _draws(len(predicted), draws, seed):
        rho = _weighted_corr(_resampled_ranks(lp, counts), _resampled_ranks(la, counts), counts)
        if np.isfinite(rho).any():
            values.append(np.nanmean(rho))
    low, high = _centred(values, float(np.nanmean(spearman(predicted, actual))), level)
    return {"low": low, "high": high, "level": level,
            "method": f"bootstrap over held-out models ({draws} resamples), centred on the LDS"}


def _centred(values, estimate: float, level: float) -> tuple:
    """The bootstrap's percentiles about its median, moved onto the estimate.  A resample repeats
    some held-out masks, and the ties this makes pull rank correlations down (by about 0.005 on
    100 masks): plain percentiles could leave the estimate outside its own interval."""
    low, mid, high = np.quantile(values, [(1 - level) / 2, 0.5, (1 + level) / 2])
    return float(estimate - (mid - low)), float(estimate + (high - mid))


def _to_pearson(rho_s):
    return 2 * np.sin(np.pi * np.asarray(rho_s) / 6)


def _to_spearman(rho_p):
    return 6 / np.pi * np.arcsin(np.clip(rho_p, -1, 1) / 2)


def _ceiling_from_pairs(pair_rho_s: np.ndarray, seeds_in_truth: int) -> np.ndarray:
    """Per target: the Spearman correlation of the noise-free margin with a truth that averages
    ``seeds_in_truth`` seeds, from the mean rank correlation between two seeds of one mask."""
    rel_1 = np.clip(_to_pearson(pair_rho_s), 0.0, 1.0)  # reliability of one seed's margin
    k = seeds_in_truth
    with np.errstate(invalid="ignore", divide="ignore"):
        rel_k = k * rel_1 / (1 + (k - 1) * rel_1)  # Spearman-Brown: the mean of k seeds
    return _to_spearman(np.sqrt(rel_k))


def noise_ceiling(margins: np.ndarray, seeds_in_truth: int, level: float = CI_LEVEL, draws: int = CI_DRAWS,
                  seed: int = 0) -> dict:
    """The highest LDS any predictor of the margin from the mask can reach on this truth.

    ``margins``: [masks, r, targets], each mask trained with r seeds.  A margin is f(mask) plus
    seed noise; the best predictor is f, and its correlation with a truth averaging k seeds is
    sqrt(reliability of that truth).  Estimator: the mean Spearman correlation over all pairs of
    seeds of the same masks, taken to the Pearson scale by the normal-copula relation
    (r = 2 sin(pi rho / 6)) as the reliability of one seed, Spearman-Brown to k seeds, the square
    root, back to the Spearman scale; the mean over targets.  Exact for Gaussian f and noise.
    Its error: a percentile bootstrap over the masks.  With r < 2 the noise cannot be told from
    f: the ceiling is unavailable."""
    margins = np.asarray(margins, dtype=np.float64)
    num_masks, r = margins.shape[:2]
    if r < 2 or num_masks < 3:
        why = (f"needs >= 2 seeds per held-out mask (sweep.eval_seeds), this store has {r}" if r < 2
               else f"needs >= 3 held-out masks, this store has {num_masks}")
        return {"available": False, "reason": why, "seeds_per_mask": int(r)}
    pairs = [(i, j) for i in range(r) for j in range(i + 1, r)]
    per_target = _ceiling_from_pairs(np.mean([spearman(margins[:, i], margins[:, j]) for i, j in pairs], 0),
                                     seeds_in_truth)
    layouts = [_rank_layout(margins[:, i]) for i in range(r)]
    values = []
    for counts in _draws(num_masks, draws, seed):
        ranks = [_resampled_ranks(lay, counts) for lay in layouts]
        rho = np.mean([_weighted_corr(ranks[i], ranks[j], counts) for i, j in pairs], 0)
        values.append(np.nanmean(_ceiling_from_pairs(rho, seeds_in_truth)))
    low, high = _centred(values, float(np.nanmean(per_target)), level)
    return {"available": True, "ceiling": float(np.nanmean(per_target)), "per_target": per_target,
            "low": low, "high": high, "error": float(np.std(values)), "level": level,
            "seeds_per_mask": int(r), "seeds_in_truth": int(seeds_in_truth), "num_masks": int(num_masks),
            "method": "pairwise seed rank correlation, normal copula, Spearman-Brown; bootstrap over masks"}
