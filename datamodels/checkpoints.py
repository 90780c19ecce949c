"""Anytime datamodels: LDS measured while the sweep runs, a forecast of how many models are
enough, and rules that stop the sweep once more models would not pay.

How many models to train is the costly decision of a datamodels user.  The sweep answers it
as it goes:

* **Held-out models first.**  The sweep trains the store's evaluation rows before its fitting
  rows (``datamodels.sweep``), so LDS can be scored from the first checkpoint on.
* **Checkpoints.**  Every ``sweep.checkpoint_every`` fitting models (default: a tenth of the
  sweep), the rows that arrived since the last checkpoint are folded into the same sufficient
  statistics ``fit`` uses (never re-reading a folded row), the λ path is solved for a fixed
  sample of ``sweep.checkpoint_targets`` targets (stratified by their margins' spread on the
  held-out models), warm-started from the previous checkpoint, and LDS is scored on the
  held-out models.  A checkpoint at n uses exactly the first n fitting rows of the store,
  whatever order the tasks finished in, and a fixed per-row validation split, so its result
  depends on the store alone: a resumed sweep logs what an undisturbed one does, to the last
  bit, and :func:`replay` recomputes a log from a finished store.  The solves run in a driver
  thread at idle CPU priority while the tasks keep training.  Records go to
  ``STORE/checkpoints.jsonl``.
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
import queue
import threading
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .config import interval
from .errors import DatamodelsError
from .store import Store

LOG = "checkpoints.jsonl"
WARM = "checkpoints_warm.npz"
# A checkpoint is an estimate, made cheaply: the path solved at 100x fit.tol (fit solves its path
# at 30x and its refit at 1x); the path stopped 2 steps past the validation minimum rather than
# 4; and no refit on the validation rows, so a checkpoint at n scores the datamodels of its 0.9n
# training rows.  This puts the LDS 0.001-0.005 below that of `fit` on the same n models, a bias
# every checkpoint shares.  On the digits default's ten checkpoints (AVX2 CPU, one thread), 100x
# rather than 10x cut the solves' CPU time from 8.4 to 4.9 s and moved no checkpoint's LDS by
# more than 0.0011 (30x: 6.2 s and 0.0006).
TOL_FACTOR = 100
SOLVE = {"refit": False, "patience": 2}
BAND = (10, 90)  # percentiles of the bootstrap shown as the forecast's band
LEVELS = (0.8, 0.85, 0.9, 0.95)  # LDS levels `datamodels status` forecasts when none is given


def read_log(store_path) -> List[dict]:
    """The checkpoint records of a store, oldest first (empty if it has none)."""
    path = Path(store_path) / LOG
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
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


def sample_targets(eval_margins: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` target columns, one at random from each of ``count`` equal strata of the targets
    ordered by the spread of their margins across the held-out models.  A target's LDS goes
    with that spread (Spearman 0.69 on the digits default), so the strata make the sample's mean
    LDS a steadier estimate of all targets' than a plain random sample: its standard deviation
    over samples of 100 was 0.0029 against 0.0040."""
    T = eval_margins.shape[1]
    if count >= T:
        return np.arange(T)
    order = np.argsort(eval_margins.std(axis=0), kind="stable")
    rng = np.random.default_rng([seed, 0xC4EC])
    return np.sort([int(rng.choice(stratum)) for stratum in np.array_split(order, count)])


class LiveLDS:
    """The checkpoints of one store: ``checkpoint(n)`` folds the first n fitting rows into the
    statistics (those not folded yet, read once from the store), solves, scores and logs.

    The sweep runs this in a driver thread (:class:`Monitor`); ``replay`` runs it in the caller."""

    def __init__(self, store: Store, cfg, every: int, log: bool = True):
        from .fit import gram_kernel

        self.store, self.every, self.log = store, int(every), log
        s, f = cfg.sweep, cfg.fit
        self.rules = (s.until_lds, s.until_gain)
        T = store.num_targets
        self.count = T if not s.checkpoint_targets or s.checkpoint_targets >= T else int(s.checkpoint_targets)
        self.seed = int(cfg.seed)
        self.cols: Optional[np.ndarray] = None  # chosen from the held-out margins at the first checkpoint
        self.eval_rows = store.rows("eval", completed_only=False)
        self.fit_rows = store.rows("fit", completed_only=False)
        # A fixed validation split per row index (not per set of rows, as ``fit`` draws it), so
        # folded statistics never need a row moved across.
        self.is_val = np.random.default_rng(int(cfg.seed)).random(store.num_models) < f.val_fraction
        self.params = dict(num_lambdas=int(f.num_lambdas), lambda_min_ratio=float(f.lambda_min_ratio),
                           max_iter=int(f.max_iter), tol=float(f.tol) * TOL_FACTOR)
        eval_span = [int(self.eval_rows[0]), int(self.eval_rows[-1]), len(self.eval_rows)] if len(self.eval_rows) else []
        self.settings = {"targets": f"{self.count} of {T}, stratified by held-out margin spread", "eval_rows": eval_span,
                         "val_fraction": float(f.val_fraction), "seed": int(cfg.seed), "every": self.every,
                         **self.params}
        self.key = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        # Checkpoints logged before this object existed with these settings (a resumed or grown
        # sweep): not redone.  Those made here are in ``records``.
        self.history = [r for r in read_log(store.path) if r.get("settings_key") == self.key] if log else []
        self.logged = {r["num_fit_models"] for r in self.history}
        self.folded = 0  # leading fitting rows folded into the statistics
        self.train = self.val = self.offset = self.eval = None
        self.warm = self._load_warm()
        self.gram = None
        self.gram_kernel = gram_kernel
        self.records: List[dict] = []

    def next_due(self, ready: int, final: bool = False, after: int = 0) -> Optional[int]:
        """The next checkpoint (a number of fitting models) above ``after`` whose rows are all
        complete when the first ``ready`` fitting rows are; ``final``: also the last, partial one
        once every fitting row is complete."""
        floor = max(after, self.folded)
        n = (floor // self.every + 1) * self.every
        while n in self.logged:
            n += self.every
        if n <= ready:
            return n
        if final and ready == len(self.fit_rows) and ready > max(max(self.logged, default=0), floor):
            return ready
        return None

    # ---- one checkpoint -----------------------------------------------------------------------
    def _fold(self, upto: int) -> None:
        """Fold fitting rows [folded, upto) into the statistics, read from the store, in blocks that
        end at multiples of the interval: the same additions in the same order whether the rows
        came in one sweep or in several (float sums depend on the order), so a resumed sweep logs
        what an undisturbed one does, to the last bit."""
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
        masks = np.asarray(self.store.masks[rows])
        margins = np.asarray(self.store.margins[rows], dtype=np.float64)[:, self.cols]
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

    def checkpoint(self, n: int, sweep_started: Optional[float] = None) -> dict:
        """Fold, solve and score the first ``n`` fitting rows; log and return the record
        (``sweep_started``: the sweep's start time, kept in the record for its rate)."""
        import torch

        from .evaluate import spearman
        from .fit import _solve

        started, cpu = time.perf_counter(), time.thread_time()
        if self.eval is None:
            masks = np.asarray(self.store.masks[self.eval_rows], dtype=np.float32)
            actual = np.asarray(self.store.margins[self.eval_rows], dtype=np.float64)
            self.cols = sample_targets(actual, self.count, self.seed)
            actual = actual[:, self.cols]
            self.eval = (masks, actual)
            # Margins are folded relative to a per-target offset (their held-out mean), so
            # Xᵀy and yᵀy keep their precision, as ``fit`` does with its first rows.
            self.offset = actual.mean(axis=0)
        self._fold(n)
        if self.train.n < 2 or self.val.n < 2:
            raise DatamodelsError(f"a checkpoint at {n} fitting models has {self.train.n} training and "
                                  f"{self.val.n} validation models; raise sweep.checkpoint_every")
        dm = _solve(self.train.copy(), self.val.copy(), self.offset, self.params, torch.device("cpu"), False,
                    warm=self.warm, **SOLVE)
        # The next checkpoint's path starts near this one's choice, from its solution.
        self.warm = {"weight": dm["weight"], "path_index": dm["path_index"]}
        predicted = self.eval[0] @ dm["weight"] + dm["bias"]
        per_target = spearman(predicted, self.eval[1])
        defined = per_target[np.isfinite(per_target)]
        solve_s, cpu = time.perf_counter() - started, time.thread_time() - cpu
        record = {
            "num_fit_models": int(n),
            "lds": float(defined.mean()) if len(defined) else float("nan"),
            "quantiles": {f"p{q}": float(np.percentile(defined, q)) for q in (10, 50, 90)} if len(defined) else {},
            "num_undefined": int(len(per_target) - len(defined)),
            "num_targets": int(len(self.cols)),
            "targets": self.cols.tolist(),
            "num_eval_models": int(len(self.eval_rows)),
            "time": time.time(),
            "sweep_started": sweep_started,
            "solve_s": round(solve_s, 4),
            "cpu_s": round(cpu, 4),
            "per_target": [None if not math.isfinite(v) else round(float(v), 5) for v in per_target],
            "settings_key": self.key,
            "settings": self.settings,
        }
        if self.log:
            with open(self.store.path / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
            self._save_warm(n)
        self.records.append(record)
        self.logged.add(int(n))
        return record


class Monitor:
    """The sweep's side of the live LDS: it follows which rows are complete and hands each due
    checkpoint, one at a time, to a driver thread that runs :class:`LiveLDS` with one torch
    thread under Linux's ``SCHED_IDLE`` policy (Linux schedules each thread by its own policy),
    so that the solves take the cores' idle moments and leave the tasks theirs.

    Why idle priority: Ray runs its task workers at nice 15, so at nice 19 the thread still had
    two fifths of a worker's share of a core (CFS weights 15 against 36), and the digits
    default's sweep took 7-21 % longer with live LDS than without; ``SCHED_IDLE`` weighs 3.
    Why a thread: a child process would import torch again, which cost 2.7 CPU-seconds per
    sweep, as much as its solves.  After each record the config's stop rules are
    checked (``stop``: why the sweep should stop; set at the start too when the log already
    satisfies a rule)."""

    def __init__(self, store: Store, cfg, every: int):
        self.live = LiveLDS(store, cfg, every)
        self.completed = np.asarray(store.completed, dtype=bool).copy()
        self.ready = 0
        self.history = list(self.live.history)
        self.records: List[dict] = []
        self.stop = stop_reason(self.history, *self.live.rules)
        self.error: Optional[str] = None
        self.solve_s = 0.0
        self.started = time.time()
        self._asked: Optional[int] = None  # the checkpoint being solved
        self._last = 0  # the latest checkpoint asked for
        self._thread: Optional[threading.Thread] = None
        self._requests: "queue.Queue[Optional[int]]" = queue.Queue()
        self._results: "queue.Queue[dict]" = queue.Queue()
        self._threads_before: Optional[int] = None
        self._advance()

    @property
    def latest(self) -> Optional[dict]:
        """The latest checkpoint's record, this sweep's or an earlier one's."""
        return self.history[-1] if self.history else None

    def add(self, rows: np.ndarray) -> None:
        """Rows just written to the store."""
        self.completed[np.asarray(rows)] = True
        self._advance()
        self.poll()

    def _advance(self) -> None:
        fit_rows = self.live.fit_rows
        while self.ready < len(fit_rows) and self.completed[fit_rows[self.ready]]:
            self.ready += 1

    def _eval_complete(self) -> bool:
        rows = self.live.eval_rows
        return len(rows) >= 2 and bool(self.completed[rows].all())

    def poll(self, wait: bool = False) -> None:
        """Take a finished checkpoint's record, if there is one (``wait``: wait for it), and ask
        for the next due one."""
        if self._asked is not None:
            try:
                self._receive(self._results.get(block=wait))
            except queue.Empty:
                return
        if self._asked is None and not self.stop and self.error is None:
            self._ask()

    def _ask(self, final: bool = False) -> bool:
        if not self._eval_complete():
            return False
        n = self.live.next_due(self.ready, final=final, after=self._last)
        if n is None:
            return False
        if self._thread is None:
            import torch

            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(1)  # process-wide: the driver's own thread does no torch work meanwhile
            self._thread = threading.Thread(target=self._serve, name="datamodels-checkpoints", daemon=True)
            self._thread.start()
        self._requests.put(n)
        self._asked, self._last = n, n
        return True

    def _receive(self, message: dict) -> None:
        self._asked = None
        if "error" in message:
            self.error = message["error"]
            return
        self.records.append(message)
        self.history.append(message)
        self.solve_s += message["cpu_s"]
        self.stop = self.stop or stop_reason(self.history, *self.live.rules)

    def _serve(self) -> None:
        """The checkpoint thread: solve each n asked for, hand back its record."""
        _idle_priority()
        while True:
            n = self._requests.get()
            if n is None:
                return
            try:
                self._results.put(self.live.checkpoint(n, self.started))
            except Exception as exc:  # reported by the driver; the sweep goes on
                self._results.put({"error": f"{type(exc).__name__}: {exc}"})
                return

    def finish(self, final: bool = True) -> Optional[str]:
        """Wait for the checkpoint in progress; unless a stop rule fired, solve the remaining due
        ones (``final``: the last, partial one too).  Returns what went wrong in a checkpoint,
        if anything did: the models are trained and stored all the same."""
        try:
            while True:
                if self._asked is not None:
                    self.poll(wait=True)  # which asks for the next due one, if any
                elif self.stop or self.error or not self._ask(final=final):
                    break
        finally:
            self.close()
        return f"live LDS checkpoint failed: {self.error}" if self.error else None

    def close(self) -> None:
        """End the checkpoint thread once it is done with the checkpoint in progress."""
        if self._thread is None:
            return
        import torch

        self._requests.put(None)
        self._thread.join()
        self._thread = None
        torch.set_num_threads(self._threads_before)


def _idle_priority() -> None:
    """``SCHED_IDLE`` for the calling thread (Linux: pid 0 names the calling thread); where that
    policy does not exist, nice 19."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


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
    fit_rows = live.fit_rows
    completed = np.asarray(store.completed, dtype=bool)[fit_rows]
    ready = int(np.argmin(completed)) if not completed.all() else len(fit_rows)
    n = live.next_due(ready)
    while n is not None:
        live.checkpoint(n)
        n = live.next_due(ready)
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
