"""The linear datamodeling score's math: Spearman rank correlations per target, and their summary."""
from __future__ import annotations

from typing import Dict

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
    return (f"LDS {scores['lds']:.4f}{what} over {over} targets and {scores['num_models']} held-out models"
            + (f"; {dropped}" if dropped else "") + "; quantiles " + ", ".join(f"{k}: {v:.3f}" for k, v in q.items()))
