"""Checkpoints: the first n fitting rows folded into the regression's statistics, the λ path
solved for a sample of targets, LDS scored on the held-out models, and the log of records
(``STORE/checkpoints.jsonl``); ``replay`` recomputes the log from a finished store."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from .. import config as config_lib
from .. import metrics
from ..errors import DatamodelsError
from ..files import atomic_save
from ..resources import check_memory
from ..store import Store

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
# The per-target LDS quantiles a record keeps.
QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}


def live_memory(num_train: int, num_targets: int, num_rows: int, chunk_rows: int) -> int:
    """Bytes the live LDS holds in the sweep's driver: a fit's (``memory_estimate``: two XᵀX,
    the N×T statistics of the sampled targets, the solver's working memory) and two XᵀX more:
    the folded statistics stay while each checkpoint solves on a copy of them."""
    from ..regression import EXACT_FLOAT32, memory_estimate

    gram = num_train * num_train * (4 if num_rows < EXACT_FLOAT32 else 8)
    return memory_estimate(num_train, num_targets, num_rows, "cpu", chunk_rows)["host"] + 2 * gram


def check_live_memory(cfg, num_train: Optional[int] = None) -> None:
    """Refuse a sweep with live LDS checkpoints whose statistics would not fit in memory, with
    one line; ``num_train`` (default: the config's, known before the data are prepared only for
    the synthetic source) is the store's training set size.  No checkpoints, nothing to check."""
    cfg = config_lib.coerce(cfg)
    if not config_lib.interval(cfg.sweep):
        return
    if num_train is None:
        if cfg.data.source != "synthetic":
            return
        num_train = int(cfg.data.num_train)
    targets = int(cfg.data.num_test) + (num_train if cfg.data.targets == "test+train" else 0)
    sampled = min(int(cfg.sweep.checkpoint_targets) or targets, targets)
    _refuse_unless_fits(num_train, sampled, int(cfg.sweep.num_models), config_lib.fit_options(cfg).chunk_rows)


def _refuse_unless_fits(num_train: int, num_targets: int, num_rows: int, chunk_rows: int) -> None:
    check_memory("the live LDS (sweep.checkpoint_every)", live_memory(num_train, num_targets, num_rows, chunk_rows),
                 f"{num_train:,} training examples: four XᵀX in the sweep's driver",
                 "set sweep.checkpoint_every: 0 to sweep without checkpoints (datamodels.live.replay recomputes them "
                 "later, where there is more memory)")


def read_log(store_path) -> List[dict]:
    """The checkpoint records of a store, oldest first (empty if it has none)."""
    path = Path(store_path) / LOG
    if not path.exists():
        return []
    records = []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise DatamodelsError(f"{path} is not text; delete the file to start the log afresh") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a record cut short by a crash mid-write: the checkpoint is redone
            raise DatamodelsError(f"{path}: line {number} is not JSON; delete the file to start the log afresh")
        if not _is_record(record):
            raise DatamodelsError(f"{path}: line {number} is not a checkpoint record; delete the file to start the "
                                  f"log afresh")
        records.append(record)
    return records


def _interval(predicted: np.ndarray, actual: np.ndarray) -> Optional[list]:
    ci = metrics.lds_interval(predicted, actual, draws=100)
    return [round(ci["low"], 5), round(ci["high"], 5)] if math.isfinite(ci["low"]) else None


def _is_record(record) -> bool:
    """The fields every reader of the log relies on, of the types it writes."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return (isinstance(record, dict) and isinstance(record.get("settings_key"), str)
            and isinstance(record.get("num_fit_models"), int) and record["num_fit_models"] >= 0
            and number(record.get("lds")) and isinstance(record.get("quantiles", {}), dict)
            and isinstance(record.get("per_target", []), list)
            and all(v is None or number(v) for v in record.get("per_target", [])))


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

    The sweep runs this in a driver thread (``Monitor``); ``replay`` runs it in the caller."""

    def __init__(self, store: Store, cfg, every: int, log: bool = True):
        self.store, self.every, self.log = store, int(every), log
        s, f = cfg.sweep, config_lib.fit_options(cfg)
        T = store.num_targets
        self.count = T if not s.checkpoint_targets or s.checkpoint_targets >= T else int(s.checkpoint_targets)
        _refuse_unless_fits(store.num_train, self.count, store.num_models, f.chunk_rows)
        self.seed = int(cfg.seed)
        self.cols: Optional[np.ndarray] = None  # chosen from the held-out margins at the first checkpoint
        self.eval_rows = store.rows("eval", completed_only=False)
        self.fit_rows = store.rows("fit", completed_only=False)
        # A fixed validation split per row index (not per set of rows, as ``fit`` draws it), so
        # folded statistics never need a row moved across.
        self.is_val = np.random.default_rng(int(cfg.seed)).random(store.num_models) < f.val_fraction
        self.params = dict(num_lambdas=int(f.num_lambdas), lambda_min_ratio=float(f.lambda_min_ratio),
                           max_iter=int(f.max_iter), tol=float(f.tol) * TOL_FACTOR)
        self.options = dataclasses.replace(f, **self.params)
        eval_span = [int(self.eval_rows[0]), int(self.eval_rows[-1]), len(self.eval_rows)] \
            if len(self.eval_rows) else []
        self.settings = {"targets": f"{self.count} of {T}, stratified by held-out margin spread",
                         "eval_rows": eval_span, "val_fraction": float(f.val_fraction), "seed": int(cfg.seed),
                         "every": self.every, **self.params}
        self.key = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        # Checkpoints logged before this object existed with these settings (a resumed or grown
        # sweep): not redone.  Those made here are in ``records``.
        self.history = [r for r in read_log(store.path) if r.get("settings_key") == self.key] if log else []
        self.logged = {r["num_fit_models"] for r in self.history}
        self.folded = 0  # leading fitting rows folded into the statistics
        self.train = self.val = self.offset = self.eval = None
        self.warm = self._load_warm()
        self.kernel: Optional[str] = None  # the XᵀX kernel, chosen at the first fold
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
        from ..regression import Stats, accumulate, gram_kernel

        if self.train is None:
            N = self.store.num_train
            self.train, self.val = Stats.pair(N, len(self.cols), len(self.fit_rows), "cpu")
            self.kernel = gram_kernel(N, "cpu", len(self.fit_rows))
        rows = self.fit_rows[self.folded:upto]
        accumulate(self.store, rows, self.is_val[rows], self.cols, self.offset, self.options.chunk_rows, "cpu",
                   into=(self.train, self.val), kernel=self.kernel)
        self.folded = upto

    # The solution of the latest checkpoint, which warm-starts the next (``solve_path``'s
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
        atomic_save(self._warm_path(), weight=self.warm["weight"], path_index=self.warm["path_index"],
                    num_fit_models=n, settings_key=self.key)

    def checkpoint(self, n: int, sweep_started: Optional[float] = None) -> dict:
        """Fold, solve and score the first ``n`` fitting rows; log and return the record
        (``sweep_started``: the sweep's start time, kept in the record for its rate)."""
        from ..regression import solve_path

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
        dm = solve_path(self.train.copy(), self.val.copy(), self.offset, self.options, "cpu", warm=self.warm, **SOLVE)
        # The next checkpoint's path starts near this one's choice, from its solution.
        self.warm = {"weight": dm["weight"], "path_index": dm["path_index"]}
        scores = metrics.lds(self.eval[0] @ dm["weight"] + dm["bias"], self.eval[1], QUANTILES)
        solve_s, cpu = time.perf_counter() - started, time.thread_time() - cpu
        record = {
            "num_fit_models": int(n),
            "lds": scores["lds"],
            "quantiles": scores["quantiles"],
            "num_undefined": scores["num_undefined"],
            # 95% bootstrap interval over the held-out models (metrics.lds_interval); None where undefined
            "lds_ci": _interval(self.eval[0] @ dm["weight"] + dm["bias"], self.eval[1]),
            "num_targets": int(len(self.cols)),
            "targets": self.cols.tolist(),
            "num_eval_models": int(len(self.eval_rows)),
            "time": time.time(),
            "sweep_started": sweep_started,
            "solve_s": round(solve_s, 4),
            "cpu_s": round(cpu, 4),
            "per_target": [None if not math.isfinite(v) else round(float(v), 5) for v in scores["per_target"]],
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


def replay(store, config, every: Optional[int] = None) -> List[dict]:
    """The checkpoints a sweep with ``config`` logs, recomputed from the store's completed rows
    (the same code and order of sums, so equal to the live log to the last bit), without writing
    anything: a learning curve for a store swept without live LDS, one made before it existed
    included.  ``every``: the interval (default: the config's)."""
    cfg = config_lib.coerce(config)
    store = store if isinstance(store, Store) else Store(store)
    every = int(every or config_lib.interval(cfg.sweep))
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
