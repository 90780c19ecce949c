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
  bit, and ``replay`` recomputes a log from a finished store.  The solves run in a driver
  thread at idle CPU priority while the tasks keep training.  Records go to
  ``STORE/checkpoints.jsonl``.
* **Forecast.**  ``forecast`` fits the learning curve LDS(n) = a − b·n^(−c) to the
  checkpoints (the estimation error of a regression from n samples shrinks like a power of
  n; on the digits default, c ≈ 0.9 over 100 to 10,000 models) and reads off the models
  needed for a given LDS, the LDS at a given budget, and the gain from doubling; the band is
  the 10th–90th percentile over a bootstrap of the targets.
* **Stop rules.**  ``sweep.until_lds`` stops at the first checkpoint whose LDS reaches it;
  ``sweep.until_gain`` once the forecast gain from doubling the models falls below it.  The
  sweep then lets the tasks in flight finish, keeps every completed row, and the store stays
  resumable and growable.
"""
from .checkpoints import (LOG, SOLVE, TOL_FACTOR, LiveLDS, check_live_memory, comparable, live_memory, read_log, replay,
                          sample_targets)
from .forecast import curve_at, describe, fit_curve, forecast, live_lds
from .monitor import Monitor
from .stoprules import GainBelow, LdsReached, StopRule, stop_reason, stop_rules

__all__ = ["LOG", "SOLVE", "TOL_FACTOR", "LiveLDS", "check_live_memory", "live_memory", "comparable", "read_log", "replay", "sample_targets", "curve_at",
           "describe", "fit_curve", "forecast", "live_lds", "Monitor", "GainBelow", "LdsReached", "StopRule",
           "stop_reason", "stop_rules"]
