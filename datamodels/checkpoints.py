"""Anytime datamodels: LDS measured while the sweep runs, a forecast of how many models are
enough, and rules that stop the sweep once more models would not pay.

How many models to train is the costly decision of a datamodels user.  The sweep answers it
as it goes:

* **Held-out models first.**  The sweep trains the store's evaluation rows before its fitting
  rows (``datamodels.sweep``), so LDS can be scored from the first checkpoint on.
* **Checkpoints.**  Every ``sweep.checkpoint_every`` fitting models, :class:`LiveLDS` folds the
  rows that arrived since the last checkpoint into the same sufficient statistics ``fit``
  uses (never re-reading a folded row), solves the λ path for a fixed random sample of
  ``sweep.checkpoint_targets`` targets, and scores LDS on the held-out models.  A checkpoint
  at n uses exactly the first n fitting rows of the store, whatever order the tasks finished
  in, and a fixed per-row validation split, so its result depends on the store alone: a
  resumed or repeated sweep logs the same numbers.  The solve runs in a driver thread with one
  torch thread while the tasks keep training.  Records go to ``STORE/checkpoints.jsonl``.
* **Forecast.**  :func:`forecast` fits the learning curve LDS(n) = a − b·n^(−c) to the
  checkpoints (the estimation error of a regression from n samples shrinks like a power of
  n; on the digits default, c ≈ 0.9 over 100 to 10,000 models) and reads off the models
  needed for a given LDS, the LDS at a given budget, and the gain from doubling; the band is
  the 10th–90th percentile over a bootstrap of the targets.
* **Stop rules.**  ``sweep.until_lds`` stops at the first checkpoint whose LDS reaches it;
  ``sweep.until_gain`` once the forecast gain from doubling the models falls below it.  The
  sweep then lets the tasks in flight finish, keeps every completed row, and the store stays
  resumable and growable.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .errors import DatamodelsError
from .store import Store

LOG = "checkpoints.jsonl"
WARM = "checkpoints_warm.npz"
# Auto interval: about this many checkpoints per sweep, none closer than MIN_INTERVAL models
# (below that the regression has too few models per validation split to mean much).
AUTO_CHECKPOINTS = 20
MIN_INTERVAL = 100
BAND = (10, 90)  # percentiles of the bootstrap shown as the forecast's band
LEVELS = (0.8, 0.85, 0.9, 0.95)  # LDS levels `datamodels status` forecasts when none is given


def interval(sweep_cfg) -> int:
    """Fitting models between checkpoints: ``sweep.checkpoint_every``, or when it is unset
    (None) about 1/20 of the sweep, at least 100 models; 0 (no checkpoints) when unset and
    the sweep has no held-out models or is too small for two checkpoints."""
    every = sweep_cfg.checkpoint_every
    if every is not None:
        return int(every)
    if sweep_cfg.num_eval_models < 2:
        return 0
    every = max(MIN_INTERVAL, int(sweep_cfg.num_models) // AUTO_CHECKPOINTS)
    return every if 2 * every <= sweep_cfg.num_models else 0


def read_log(store_path) -> List[dict]:
    """The checkpoint records of a store, oldest first (empty if it has none)."""
    path = Path(store_path) / LOG
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(path.read_text().splitlines()):
                continue  # a record cut short by a crash mid-write: the checkpoint is redone
            raise DatamodelsError(f"{path}: line {number} is not JSON; delete the file to start the log afresh")
    return records


def comparable(records: List[dict]) -> List[dict]:
    """The records made with the latest record's settings (targets, held-out rows, fit settings),
    one per number of models: only these lie on one learning curve."""
    if not records:
        return []
    key = records[-1]["settings_key"]
    by_n = {r["num_fit_models"]: r for r in records if r["settings_key"] == key}
    return [by_n[n] for n in sorted(by_n)]


class LiveLDS:
    """Checkpoints of one sweep: rows are handed in as they arrive (``add``); a checkpoint is
    solved in a background thread as soon as the first n fitting rows are all complete.

    After each checkpoint the config's stop rules (``sweep.until_lds``, ``sweep.until_gain``)
    are checked against the log; ``stop`` then says why the sweep should stop (it is also set
    at the start when the log already satisfies a rule).  ``on_checkpoint(record)`` is called
    from the thread after each record is logged."""

    def __init__(self, store: Store, cfg, every: int, on_checkpoint: Optional[Callable[[dict], None]] = None,
                 log: bool = True):
        from .fit import gram_kernel

        self.store, self.every, self.on_checkpoint, self.log = store, int(every), on_checkpoint, log
        s, f = cfg.sweep, cfg.fit
        self.rules = (s.until_lds, s.until_gain) if log else (None, None)
        T = store.num_targets
        count = T if not s.checkpoint_targets or s.checkpoint_targets >= T else int(s.checkpoint_targets)
        rng = np.random.default_rng([int(cfg.seed), 0xC4EC])
        self.cols = np.arange(T) if count == T else np.sort(rng.choice(T, count, replace=False))
        self.eval_rows = store.rows("eval", completed_only=False)
        self.fit_rows = store.rows("fit", completed_only=False)
        # A fixed validation split per row index (not per set of rows, as ``fit`` draws it), so
        # folded statistics never need a row moved across.
        self.is_val = np.random.default_rng(int(cfg.seed)).random(store.num_models) < f.val_fraction
        self.params = dict(num_lambdas=int(f.num_lambdas), lambda_min_ratio=float(f.lambda_min_ratio),
                           max_iter=int(f.max_iter), tol=float(f.tol))
        self.settings = {"targets": self.cols.tolist(), "eval_rows": [int(self.eval_rows[0]), int(self.eval_rows[-1]),
                                                                       len(self.eval_rows)] if len(self.eval_rows) else [],
                         "val_fraction": float(f.val_fraction), "seed": int(cfg.seed), "every": self.every,
                         **self.params}
        self.key = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        # Checkpoints logged earlier with these settings (a resumed or grown sweep): not redone.
        self.history = [r for r in read_log(store.path) if r.get("settings_key") == self.key] if log else []
        self.logged = {r["num_fit_models"] for r in self.history}
        self.stop = stop_reason(self.history, *self.rules)
        self.completed = np.asarray(store.completed, dtype=bool).copy()
        self.arrived: Dict[int, tuple] = {}  # fit row -> (mask, margins of the sampled targets), until folded
        self.ready = 0  # leading fitting rows (in row order) that are complete
        self.folded = 0  # leading fitting rows folded into the statistics
        self.train = self.val = self.offset = self.eval = None
        self.warm = self._load_warm()
        self.gram = None
        self.gram_kernel = gram_kernel
        self.records: List[dict] = []
        self.latest: Optional[dict] = None
        self.error: Optional[BaseException] = None
        self.solve_s = 0.0
        self._thread: Optional[threading.Thread] = None
        self.stopped = False  # no new checkpoint threads (the sweep is stopping or done)
        self._started = time.time()
        self._advance()

    # ---- rows in ------------------------------------------------------------------------------
    def add(self, rows: np.ndarray, masks: np.ndarray, margins: np.ndarray) -> None:
        """Rows just written to the store, with their masks and margins."""
        rows = np.asarray(rows)
        self.completed[rows] = True
        fit = ~np.isin(rows, self.eval_rows)
        for i in np.flatnonzero(fit):
            self.arrived[int(rows[i])] = (masks[i], margins[i, self.cols].astype(np.float64))
        self._advance()
        self.poll()

    def _advance(self) -> None:
        while self.ready < len(self.fit_rows) and self.completed[self.fit_rows[self.ready]]:
            self.ready += 1

    def _eval_complete(self) -> bool:
        return len(self.eval_rows) >= 2 and bool(self.completed[self.eval_rows].all())

    def due(self, final: bool = False) -> Optional[int]:
        """The next checkpoint (a number of fitting models) whose rows are all complete, if any;
        ``final``: also the last, partial one once every fitting row is complete."""
        if not self._eval_complete() or self.error is not None:
            return None
        n = max(self.every, -(-self.folded // self.every) * self.every)  # the first multiple not yet folded past
        while n in self.logged:
            n += self.every
        if n <= self.ready:
            return n
        last = max(self.logged, default=0)
        if final and self.ready == len(self.fit_rows) and self.ready > max(last, self.folded) \
                and self.ready not in self.logged:
            return self.ready
        return None

    def poll(self) -> None:
        """Start the next due checkpoint if none is being solved."""
        if self.stopped or self.stop or (self._thread is not None and self._thread.is_alive()):
            return
        n = self.due()
        if n is not None:
            self._thread = threading.Thread(target=self._run, args=(n,), name="datamodels-checkpoint", daemon=True)
            self._thread.start()

    def finish(self, catch_up: bool = True, final: bool = True) -> Optional[str]:
        """Wait for the checkpoint in progress; with ``catch_up``, then solve the remaining due
        ones here (``final``: the last, partial one too).  Returns what went wrong in a
        checkpoint, if anything did: the models are trained and stored all the same."""
        self.stopped = True
        if self._thread is not None:
            self._thread.join()
        while catch_up and not self.stop:
            n = self.due(final=final)
            if n is None:
                break
            self._run(n)
        if self.error is not None:
            return f"live LDS checkpoint failed: {type(self.error).__name__}: {self.error}"
        return None

    # ---- one checkpoint -----------------------------------------------------------------------
    def _run(self, n: int) -> None:
        try:
            self._checkpoint(n)
        except BaseException as exc:  # reported by finish(); the sweep itself goes on
            self.error = exc

    def _fold(self, upto: int) -> None:
        """Fold fitting rows [folded, upto) into the statistics, in blocks that end at multiples of
        the interval: the same additions in the same order whether the rows came in one sweep or
        in several (float sums depend on the order), so a resumed sweep logs what an undisturbed
        one does, to the last bit.  Rows that arrived during this sweep come from memory, the
        ones completed before it from the store."""
        while self.folded < upto:
            self._fold_block(min(upto, (self.folded // self.every + 1) * self.every))

    def _fold_block(self, upto: int) -> None:
        import torch

        from .fit import _EXACT_FLOAT32, _GRAM_KERNELS, _Stats

        if self.train is None:
            N, T = self.store.num_train, len(self.cols)
            xx_dtype = torch.float32 if len(self.fit_rows) < _EXACT_FLOAT32 else torch.float64
            self.train = _Stats.zeros(N, T, xx_dtype, "cpu")
            self.val = _Stats.zeros(N, T, xx_dtype, "cpu")
            self.gram = _GRAM_KERNELS[self.gram_kernel(N, "cpu", len(self.fit_rows))]
        rows = self.fit_rows[self.folded:upto]
        masks = np.empty((len(rows), self.store.num_train), dtype=bool)
        margins = np.empty((len(rows), len(self.cols)), dtype=np.float64)
        stored = []
        for i, r in enumerate(rows):
            got = self.arrived.pop(int(r), None)
            if got is None:
                stored.append(i)
            else:
                masks[i], margins[i] = got
        if stored:
            idx = rows[stored]
            masks[stored] = np.asarray(self.store.masks[idx])
            margins[stored] = np.asarray(self.store.margins[idx], dtype=np.float64)[:, self.cols]
        v = torch.from_numpy(self.is_val[rows])
        x = torch.from_numpy(masks)
        y = torch.from_numpy(margins - self.offset)
        self.train.add(x[~v], y[~v], self.gram)
        self.val.add(x[v], y[v], self.gram)
        self.folded = upto

    # The solution of the latest checkpoint, which warm-starts the next (``fit._solve``'s
    # ``warm``), kept beside the log so that a resumed sweep continues the same chain.
    def _warm_path(self) -> Path:
        return self.store.path / WARM

    def _load_warm(self) -> Optional[dict]:
        if not self.log or not self.history or not self._warm_path().exists():
            return None
        try:
            with np.load(self._warm_path(), allow_pickle=False) as z:
                warm = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError):
            return None
        latest = max(r["num_fit_models"] for r in self.history)
        if str(warm.get("settings_key")) != self.key or int(warm.get("num_fit_models", -1)) != latest:
            return None
        return {"weight": warm["weight"], "path_index": warm["path_index"]}

    def _save_warm(self, n: int) -> None:
        tmp = self._warm_path().with_name(WARM + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, weight=self.warm["weight"], path_index=self.warm["path_index"], num_fit_models=n,
                     settings_key=self.key)
        os.replace(tmp, self._warm_path())

    def _checkpoint(self, n: int) -> dict:
        import torch

        from .evaluate import spearman
        from .fit import _solve

        started, threads = time.perf_counter(), torch.get_num_threads()
        torch.set_num_threads(1)  # the driver shares its machine with the tasks
        try:
            if self.eval is None:
                masks = np.asarray(self.store.masks[self.eval_rows], dtype=np.float32)
                actual = np.asarray(self.store.margins[self.eval_rows], dtype=np.float64)[:, self.cols]
                self.eval = (masks, actual)
                # Margins are folded relative to a per-target offset (their held-out mean), so
                # Xᵀy and yᵀy keep their precision, as ``fit`` does with its first rows.
                self.offset = actual.mean(axis=0)
            self._fold(n)
            if self.train.n < 2 or self.val.n < 2:
                raise DatamodelsError(f"a checkpoint at {n} fitting models has {self.train.n} training and "
                                      f"{self.val.n} validation models; raise sweep.checkpoint_every")
            dm = _solve(self.train.copy(), self.val.copy(), self.offset, self.params, torch.device("cpu"), False,
                        warm=self.warm)
            # The next checkpoint's path starts near this one's choice, from its solution.
            self.warm = {"weight": dm["weight"], "path_index": dm["path_index"]}
            predicted = self.eval[0] @ dm["weight"] + dm["bias"]
            per_target = spearman(predicted, self.eval[1])
        finally:
            torch.set_num_threads(threads)
        defined = per_target[np.isfinite(per_target)]
        solve_s = time.perf_counter() - started
        self.solve_s += solve_s
        record = {
            "num_fit_models": int(n),
            "lds": float(defined.mean()) if len(defined) else float("nan"),
            "quantiles": {f"p{q}": float(np.percentile(defined, q)) for q in (10, 50, 90)} if len(defined) else {},
            "num_undefined": int(len(per_target) - len(defined)),
            "num_targets": int(len(self.cols)),
            "num_eval_models": int(len(self.eval_rows)),
            "time": time.time(),
            "sweep_started": self._started,
            "solve_s": round(solve_s, 4),
            "per_target": [None if not math.isfinite(v) else round(float(v), 5) for v in per_target],
            "settings_key": self.key,
            "settings": self.settings,
        }
        if self.log:
            with open(self.store.path / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
            self._save_warm(n)
        self.records.append(record)
        self.history.append(record)
        self.logged.add(int(n))
        self.latest = record
        self.stop = self.stop or stop_reason(self.history, *self.rules)
        if self.on_checkpoint is not None:
            self.on_checkpoint(record)
        return record


def replay(store, config, every: Optional[int] = None) -> List[dict]:
    """The checkpoints a sweep with ``config`` logs, recomputed from the store's completed rows
    (the same code and order of sums, so equal to the live log to the last bit), without writing
    anything: a learning curve for a store swept without live LDS, one made before it existed
    included.  ``every``: the interval (default: the config's)."""
    from . import config as config_lib

    cfg = config_lib.coerce(config)
    store = store if isinstance(store, Store) else Store(store)
    every = int(every or interval(cfg.sweep))
    if every < 1:
        raise DatamodelsError("replay needs a checkpoint interval: give every, or sweep.checkpoint_every in the config")
    if len(store.rows("eval")) < 2:
        raise DatamodelsError(f"store {store.path} has no completed held-out models to score LDS on")
    live = LiveLDS(store, cfg, every, log=False)
    problem = live.finish(final=False)  # the whole path of checkpoints: as the sweep logged them
    if problem:
        raise DatamodelsError(problem)
    return live.records


# ---- the learning curve and its forecast --------------------------------------------------------

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


def _curve_at(p: tuple, n) -> np.ndarray:
    a, b, c = p
    return a - b * np.asarray(n, dtype=np.float64) ** (-c)


def _models_for(p: tuple, level: float) -> float:
    a, b, c = p
    if level >= a:
        return math.inf
    return float((b / (a - level)) ** (1.0 / c))


def forecast(records: List[dict], levels: Sequence[float] = (), budgets: Sequence[int] = (),
             bootstrap: int = 200, seed: int = 0, curve_to: Optional[int] = None) -> dict:
    """The learning curve through the comparable checkpoints, and what it predicts.

    Returns ``{"curve": {a, b, c}, "limit", "num_fit_models" (the latest n), "lds" (measured
    there), "models_for": {level: {estimate, band}}, "lds_at": {budget: {...}},
    "gain_from_doubling": {...}, "rate_models_per_s"}``; each band is the BAND percentiles
    over ``bootstrap`` resamples of the targets.  ``models_for`` is ``inf`` where the curve's
    limit stays below the level.  ``curve_to``: also ``curve_band``, the curve's band on a grid
    from the first checkpoint to that many models (for plots).  Empty dict with fewer than two
    checkpoints."""
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

    def summarise(fn) -> dict:
        values = np.sort(np.array([fn(q) for q in samples], dtype=np.float64))
        # Order statistics rather than np.percentile's interpolation, which turns inf into nan.
        band = [float(values[int(round(q / 100 * (len(values) - 1)))]) for q in BAND] if len(values) else []
        return {"estimate": float(fn(p)), "band": band}

    def gain(q):
        return float(_curve_at(q, 2 * now) - _curve_at(q, now))

    out = {
        "curve": {"a": p[0], "b": p[1], "c": p[2]},
        "num_checkpoints": len(points),
        "num_fit_models": int(now),
        "lds": float(mean[-1]),
        "limit": summarise(lambda q: q[0]),
        "gain_from_doubling": summarise(gain),
        "models_for": {f"{level:g}": summarise(lambda q, level=level: _models_for(q, level)) for level in levels},
        "lds_at": {str(int(b)): summarise(lambda q, b=b: float(_curve_at(q, b))) for b in budgets},
        "rate_models_per_s": _rate(points),
    }
    if curve_to:
        grid = np.geomspace(n[0], max(float(curve_to), n[-1]), 100)
        curves = np.array([_curve_at(q, grid) for q in samples])
        lo, hi = np.percentile(curves, BAND, axis=0) if len(curves) else ([], [])
        out["curve_band"] = {"n": grid.tolist(), "lo": list(map(float, lo)), "hi": list(map(float, hi))}
    return out


def _rate(points: List[dict]) -> Optional[float]:
    """Fitting models per second over the latest sweep's checkpoints (None with fewer than two)."""
    latest = [r for r in points if r.get("sweep_started") == points[-1].get("sweep_started")]
    if len(latest) < 2 or latest[-1]["time"] <= latest[0]["time"]:
        return None
    return (latest[-1]["num_fit_models"] - latest[0]["num_fit_models"]) / (latest[-1]["time"] - latest[0]["time"])


def checkpoints(store, levels: Sequence[float] = (), budgets: Sequence[int] = (),
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


# ---- stop rules ------------------------------------------------------------------------------------

def stop_reason(records: List[dict], until_lds: Optional[float], until_gain: Optional[float]) -> Optional[str]:
    """Why the sweep should stop after the latest checkpoint, or None."""
    if not records:
        return None
    latest = records[-1]
    if until_lds is not None and latest["lds"] >= until_lds:
        return (f"LDS {latest['lds']:.4f} at {latest['num_fit_models']} fitting models reached "
                f"sweep.until_lds={until_lds:g}")
    if until_gain is not None:
        points = comparable(records)
        if len(points) >= 3:
            p = fit_curve([r["num_fit_models"] for r in points], [r["lds"] for r in points])
            now = points[-1]["num_fit_models"]
            gain = float(_curve_at(p, 2 * now) - _curve_at(p, now))
            if gain < until_gain:
                return (f"forecast gain from doubling {now} fitting models is {gain:.4f}, below "
                        f"sweep.until_gain={until_gain:g}")
    return None


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
                 f"{BAND[0]}th-{BAND[1]}th percentile over targets): limit {band(fc['limit'], lambda v: f'{v:.3f}')}, "
                 f"doubling to {2 * fc['num_fit_models']:,} models gains {band(fc['gain_from_doubling'], lambda v: f'{v:+.4f}')}")
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
