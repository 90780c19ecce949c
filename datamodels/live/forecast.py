"""The learning curve LDS(n) = a − b·n^(−c) through the checkpoints, what it forecasts, and
the lines ``datamodels status`` prints."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np

from ..store import Store
from .checkpoints import comparable, read_log

BAND = (10, 90)  # percentiles of the forecast's samples shown as its band
# The extrapolation error, in LDS per e-fold of models beyond the latest checkpoint, assumed when
# the log has too few checkpoints to measure it (fewer than MIN_BACKTESTS misses of earlier
# prefixes): draws spread evenly over +-DEFAULT_DRIFT.  See docs/lds-protocols.md for its calibration.
DEFAULT_DRIFT = 0.02
MIN_BACKTESTS = 3
LEVELS = (0.8, 0.85, 0.9, 0.95)  # LDS levels `datamodels status` forecasts when none is given


def fit_curve(n: Sequence[float], lds: Sequence[float]) -> Optional[tuple]:
    """(a, b, c) of LDS(n) = a − b·n^(−c), least squares over the points; with two points c = 1
    (the rate of an ordinary regression's error).  None with fewer than two."""
    from scipy.optimize import least_squares

    n, lds = np.asarray(n, dtype=np.float64), np.asarray(lds, dtype=np.float64)
    ok = np.isfinite(lds)
    n, lds = n[ok], lds[ok]
    if len(n) < 2:
        return None
    scale = float(n.max())
    u = n / scale  # the fit in units of the largest n keeps b of order one
    # Start from the c = 1 line L = a − b'/u, solved exactly by least squares.
    A = np.stack([np.ones_like(u), -1.0 / u], axis=1)
    a0, b0 = np.linalg.lstsq(A, lds, rcond=None)[0]
    a0, b0 = min(max(a0, lds.max() + 1e-6), 1.0), max(b0, 1e-6)
    if len(n) == 2:
        return float(a0), float(b0 * scale), 1.0

    def residual(p):
        a, b, c = p
        return a - b * u ** (-c) - lds

    hi_a = 1.0
    start = [min(a0, hi_a - 1e-9), b0, 1.0]
    result = least_squares(residual, start, bounds=([lds.max() - 0.05, 0.0, 0.1], [hi_a, np.inf, 4.0]))
    a, b, c = result.x
    return float(a), float(b * scale ** c), float(c)


def curve_at(p: tuple, n) -> np.ndarray:
    a, b, c = p
    return a - b * np.asarray(n, dtype=np.float64) ** (-c)


def _models_for(p: tuple, level: float) -> float:
    a, b, c = p
    if level >= a:
        return math.inf
    return float((b / (a - level)) ** (1.0 / c))


def backtest_drifts(n: np.ndarray, lds: np.ndarray) -> np.ndarray:
    """How far earlier prefixes of the curve missed their later checkpoints: for the curve through
    the checkpoints up to n_j and each later checkpoint n_k, (LDS_k - curve_j(n_k)) / ln(n_k / n_j),
    the miss per e-fold of extrapolation."""
    drifts = []
    for j in range(2, len(n) - 1):  # prefixes of three checkpoints or more: two fix c = 1, a cruder curve
        q = fit_curve(n[:j + 1], lds[:j + 1])
        if q is not None:
            later = slice(j + 1, None)
            drifts.extend((lds[later] - curve_at(q, n[later])) / np.log(n[later] / n[j]))
    return np.asarray(drifts, dtype=np.float64)


def forecast(records: List[dict], levels: Sequence[float] = (), budgets: Sequence[int] = (),
             bootstrap: int = 200, seed: int = 0, curve_to: Optional[int] = None) -> dict:
    """The learning curve through the comparable checkpoints, and what it predicts.

    Returns ``{"curve": {a, b, c}, "limit", "num_fit_models" (the latest n), "lds" (measured
    there), "models_for": {level: {estimate, band}}, "lds_at": {budget: {...}},
    "gain_from_doubling": {...}, "rate_models_per_s", "band_method"}``.  The estimates are the
    curve's.  Each band is the BAND percentiles over ``bootstrap`` samples that join two sources
    of error: the curve refitted on a resample of the targets, and an extrapolation drift (LDS per
    e-fold of models beyond the latest checkpoint) drawn from how far the curves through earlier
    prefixes of the log missed their later checkpoints (``backtest_drifts``; +-DEFAULT_DRIFT
    while there are fewer than MIN_BACKTESTS).  The limit's band is the targets' alone.
    ``models_for`` is ``inf`` where the curve's limit stays below the level.  ``curve_to``:
    also ``curve_band``, the curve's band on a grid from the first checkpoint to that many models
    (for plots).  Empty dict with fewer than two checkpoints."""
    points = comparable(records)
    if len(points) < 2:
        return {}
    n = np.array([r["num_fit_models"] for r in points], dtype=np.float64)
    per = np.array([[np.nan if v is None else v for v in r["per_target"]] for r in points], dtype=np.float64)
    mean = np.array([r["lds"] for r in points])
    p = fit_curve(n, mean)
    if p is None:
        return {}
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        pick = rng.integers(0, per.shape[1], per.shape[1])
        with np.errstate(invalid="ignore"):
            q = fit_curve(n, np.nanmean(per[:, pick], axis=1))
        if q is not None:
            samples.append(q)
    now = float(n[-1])
    drifts = backtest_drifts(n, mean)
    measured = len(drifts) >= MIN_BACKTESTS
    # The misses' sizes count, not their sign: a curve that ran ahead of its early fits slows later
    # (digits: early prefixes under-forecast, later ones over-forecast), so each miss counts both ways.
    pool = np.concatenate([drifts, -drifts]) if measured else np.linspace(-DEFAULT_DRIFT, DEFAULT_DRIFT, 21)
    drift = rng.choice(pool, len(samples)) if len(samples) else np.empty(0)

    def sampled(i: int, q: tuple, at) -> np.ndarray:
        """Sample i's LDS at ``at`` models: its curve plus its drift beyond the latest checkpoint."""
        at = np.asarray(at, dtype=np.float64)
        return curve_at(q, at) + drift[i] * np.log(np.maximum(at, now) / now)

    grid_ahead = now * np.geomspace(1.0, 1e4, 401)

    def models_for(level: float) -> List[float]:
        """Per sample, the models where it first reaches ``level`` (inf if not within 10^4 x now)."""
        out = []
        for i, q in enumerate(samples):
            if curve_at(q, now) >= level:
                out.append(_models_for(q, level))
                continue
            ahead = sampled(i, q, grid_ahead)
            k = int(np.argmax(ahead >= level))
            if ahead[k] < level:
                out.append(math.inf)
                continue
            lo, hi = math.log(grid_ahead[k - 1]), math.log(grid_ahead[k])  # k >= 1: below the level at now
            t = (level - ahead[k - 1]) / (ahead[k] - ahead[k - 1])
            out.append(float(math.exp(lo + t * (hi - lo))))
        return out

    def summarise(fn, values=None) -> dict:
        values = np.sort(np.array(values if values is not None else [fn(i, q) for i, q in enumerate(samples)],
                                  dtype=np.float64))
        # Order statistics rather than np.percentile's interpolation, which turns inf into nan.
        band = [float(values[int(round(q / 100 * (len(values) - 1)))]) for q in BAND] if len(values) else []
        return {"estimate": float(fn(-1, p)), "band": band}

    def gain(i, q):
        return float(curve_at(q, 2 * now) - curve_at(q, now)) + (drift[i] * math.log(2) if i >= 0 else 0.0)

    def lds_at(b):
        return lambda i, q: float(sampled(i, q, b) if i >= 0 else curve_at(q, b))

    out = {
        "curve": {"a": p[0], "b": p[1], "c": p[2]},
        "num_checkpoints": len(points),
        "num_fit_models": int(now),
        "lds": float(mean[-1]),
        "limit": summarise(lambda i, q: q[0]),
        "gain_from_doubling": summarise(gain),
        "models_for": {f"{level:g}": summarise(lambda i, q, level=level: _models_for(q, level), models_for(level))
                       for level in levels},
        "lds_at": {str(int(b)): summarise(lds_at(b)) for b in budgets},
        "rate_models_per_s": _rate(points),
        "band_method": (f"targets resampled and the drift of {len(drifts)} backtests of earlier prefixes" if measured
                        else f"targets resampled and a drift of +-{DEFAULT_DRIFT} LDS per e-fold (too few "
                             f"checkpoints to backtest)"),
    }
    if curve_to:
        grid = np.geomspace(n[0], max(float(curve_to), n[-1]), 100)
        curves = np.array([sampled(i, q, grid) for i, q in enumerate(samples)])
        lo, hi = np.percentile(curves, BAND, axis=0) if len(curves) else ([], [])
        out["curve_band"] = {"n": grid.tolist(), "lo": list(map(float, lo)), "hi": list(map(float, hi))}
    return out


def _rate(points: List[dict]) -> Optional[float]:
    """Fitting models per second over the latest sweep's checkpoints (None with fewer than two)."""
    latest = [r for r in points if r.get("sweep_started") == points[-1].get("sweep_started")]
    if len(latest) < 2 or latest[-1]["time"] <= latest[0]["time"]:
        return None
    return (latest[-1]["num_fit_models"] - latest[0]["num_fit_models"]) / (latest[-1]["time"] - latest[0]["time"])


def live_lds(store, levels: Sequence[float] = (), budgets: Sequence[int] = (),
                curve_to: Optional[int] = None) -> dict:
    """The checkpoint log of ``store`` (a path or Store) and the forecast from it: the Python
    side of ``datamodels status``.  Returns ``{"checkpoints": [...], "forecast": {...}}``, the
    records without their per-target values (``read_log`` has those)."""
    store = store if isinstance(store, Store) else Store(store)
    records = read_log(store.path)
    points = comparable(records)
    budgets = list(budgets) or [store.num_models - store.num_eval]
    levels = list(levels) or [x for x in LEVELS if not points or x > points[-1]["lds"]][:3]
    slim = [{k: v for k, v in r.items() if k not in ("per_target", "settings")} for r in points]
    return {"checkpoints": slim, "forecast": forecast(records, levels, budgets, curve_to=curve_to)}


def describe(result: dict) -> List[str]:
    """Lines for ``datamodels status``: the latest checkpoint and the forecast."""
    points, fc = result["checkpoints"], result["forecast"]
    if not points:
        return ["no live LDS checkpoints yet (the sweep logs them every sweep.checkpoint_every fitting models)"]
    last = points[-1]
    q = last.get("quantiles", {})
    lines = [f"live LDS {last['lds']:.4f} at {last['num_fit_models']} fitting models "
             f"(p10 {q.get('p10', float('nan')):.3f}, median {q.get('p50', float('nan')):.3f}, "
             f"p90 {q.get('p90', float('nan')):.3f}; {last['num_targets']} targets, {last['num_eval_models']} "
             f"held-out models; {len(points)} checkpoints)"]
    if not fc:
        lines.append("forecast: needs at least two checkpoints")
        return lines
    rate = fc.get("rate_models_per_s")
    band = lambda s, fmt: f"{fmt(s['estimate'])} [{fmt(s['band'][0])}, {fmt(s['band'][1])}]" if s["band"] \
        else fmt(s["estimate"])
    models = lambda v: "never" if not math.isfinite(v) else f"{v:,.0f}"
    lines.append(f"forecast (LDS = a - b*n^-c, a={fc['curve']['a']:.4f}, c={fc['curve']['c']:.2f}; band: "
                 f"{BAND[0]}th-{BAND[1]}th percentile over targets and extrapolation): limit "
                 f"{band(fc['limit'], lambda v: f'{v:.3f}')}, "
                 f"doubling to {2 * fc['num_fit_models']:,} models gains "
                 f"{band(fc['gain_from_doubling'], lambda v: f'{v:+.4f}')}")
    for level, s in fc["models_for"].items():
        more = s["estimate"] - fc["num_fit_models"]
        eta = ""
        if math.isfinite(s["estimate"]) and more > 0 and rate:
            eta = f", {more:,.0f} more: {more / rate / 3600:.2f} h at {rate:.1f} models/s"
        elif math.isfinite(s["estimate"]) and more <= 0:
            eta = ", reached"
        lines.append(f"  LDS {level}: {band(s, models)} fitting models{eta}")
    for budget, s in fc["lds_at"].items():
        lines.append(f"  at {int(budget):,} fitting models: LDS {band(s, lambda v: f'{v:.4f}')}")
    return lines
