"""Live LDS during the sweep: checkpoints, the forecast and the stop rules."""
import json
import os
import time

import numpy as np
import pytest
import torch

from datamodels import config as config_lib
from datamodels import live
from datamodels.errors import DatamodelsError
from datamodels.metrics import spearman
from datamodels.regression import Stats, solve_path
from datamodels.store import Store, model_seeds
from datamodels.sweep import sweep


@pytest.fixture
def run_config(tmp_path):
    """150 training examples drawn from digits, so that a few hundred models give datamodels
    whose LDS clearly grows from checkpoint to checkpoint."""
    from conftest import tiny_config
    from small_digits import small_digits  # tests/helpers

    cfg = tiny_config(tmp_path, data={"source": "npz", "path": str(small_digits(tmp_path / "small.npz", 150, 60))})
    cfg["data"].pop("num_test")
    return cfg


def live_config(run_config, **sweep_settings):
    return dict(run_config, sweep=dict(run_config["sweep"], num_models=320, num_eval_models=40, checkpoint_every=80,
                                       checkpoint_targets=30, models_per_task=20, **sweep_settings),
                worker=dict(run_config["worker"], epochs=5))


def offline_checkpoint(store: Store, record: dict, n: int, cfg) -> np.ndarray:
    """Per-target LDS at n fitting models recomputed from the store alone, cold: the first n
    fitting rows, the per-row validation split, the recorded targets."""
    cols = np.array(record["targets"])
    fit_rows = store.rows("fit", completed_only=False)[:n]
    eval_rows = store.rows("eval")
    actual = np.asarray(store.margins[eval_rows], dtype=np.float64)[:, cols]
    offset = actual.mean(axis=0)
    is_val = np.random.default_rng(cfg.seed).random(store.num_models)[fit_rows] < cfg.fit.val_fraction
    x = torch.from_numpy(np.asarray(store.masks[fit_rows]))
    y = torch.from_numpy(np.asarray(store.margins[fit_rows], dtype=np.float64)[:, cols] - offset)
    v = torch.from_numpy(is_val)
    train, val = Stats.pair(store.num_train, len(cols), len(fit_rows), "cpu")
    train.add(x[~v], y[~v])
    val.add(x[v], y[v])
    params = {k: record["settings"][k] for k in ("num_lambdas", "lambda_min_ratio", "max_iter", "tol")}
    dm = solve_path(train, val, offset, config_lib.FitOptions(**params), "cpu", **live.SOLVE)
    predicted = np.asarray(store.masks[eval_rows], dtype=np.float32) @ dm["weight"] + dm["bias"]
    return spearman(predicted, actual)


def test_checkpoints_are_logged_and_match_a_refit_from_the_store(run_config, ray_local):
    cfg = live_config(run_config)
    summary = sweep(cfg, progress=False)
    store = Store(summary["store"])
    records = live.read_log(store.path)
    assert [r["num_fit_models"] for r in records] == [80, 160, 240, 320]
    assert summary["checkpoints"] == 4 and summary["live_lds"]["num_fit_models"] == 320
    assert summary["checkpoint_solve_s"] > 0
    for r in records:
        assert r["num_targets"] == 30 and len(r["per_target"]) == 30 and r["num_eval_models"] == 40
        assert set(r["quantiles"]) == {"p10", "p50", "p90"} and r["quantiles"]["p10"] <= r["quantiles"]["p90"]
    # A checkpoint is a function of the store alone (the first n fitting rows, whatever order the
    # tasks finished in): recomputed from the finished store, every record is the same.
    replayed = live.replay(store, cfg)
    assert [r["per_target"] for r in replayed] == [r["per_target"] for r in records]
    # The first checkpoint, rebuilt here from the rows by hand (cold), agrees to
    # the 5 decimals logged: the live machinery folds the rows it should.
    first = offline_checkpoint(store, records[0], 80, config_lib.coerce(cfg))
    logged = np.array([np.nan if v is None else v for v in records[0]["per_target"]])
    assert np.allclose(logged, first, atol=1e-5, rtol=0, equal_nan=True)
    # More models, better datamodels.
    assert records[-1]["lds"] > records[0]["lds"] + 0.05


def store_path(summary):
    return Store(summary["store"]).path


def test_until_lds_stops_at_the_first_checkpoint_reaching_it_and_resumes(tmp_path, run_config, ray_local):
    run_config = dict(run_config, worker=dict(run_config["worker"], name="gated_worker"))
    reference_store = Store(store_path(sweep(live_config(run_config), progress=False)))
    reference = live.read_log(reference_store.path)
    level = reference[1]["lds"] - 1e-9  # reached at the second checkpoint, not at the first
    assert reference[0]["lds"] < level
    out = tmp_path / "stopped"
    # The tasks of fitting rows from 200 on wait until the second checkpoint (160 models) is logged,
    # so that the sweep is still running when the rule fires, on a machine however loaded (two
    # tasks in flight at most).
    held_back = model_seeds(reference_store.seed, reference_store.rows("fit", completed_only=False)[200:])
    # (A task time limit makes the driver look at the checkpoints every second, not only when a
    # task finishes: all the tasks in flight are waiting for one.)
    cfg = live_config(run_config, max_in_flight=2, task_timeout_s=600.0)
    cfg = dict(cfg, out=str(out), worker=dict(cfg["worker"], gate_seeds=held_back.tolist(),
                                              gate_file=str(out / "store" / live.LOG), gate_lines=2))
    summary = sweep(cfg, progress=False, until_lds=level)
    assert summary["stopped"] == (f"LDS {reference[1]['lds']:.4f} at 160 fitting models reached "
                                  f"sweep.until_lds={level:g}")
    records = live.read_log(out / "store")
    assert [r["num_fit_models"] for r in records] == [80, 160]
    store = Store(out / "store")
    # Held-out models came first, and the sweep stopped short of its 320 fitting models: it let
    # the tasks in flight finish and no more.
    assert len(store.rows("eval")) == 40
    assert 160 <= len(store.rows("fit")) < 320
    # The same command again trains nothing more; without the rule the store resumes to the end,
    # and its log is the undisturbed sweep's, to the last digit.
    again = sweep(cfg, progress=False, until_lds=level)
    assert again["trained"] == 0 and again["stopped"]
    done = sweep(cfg, progress=False)
    assert done["stopped"] is None and len(Store(out / "store").rows("fit")) == 320
    resumed = live.read_log(out / "store")
    assert [r["num_fit_models"] for r in resumed] == [80, 160, 240, 320]
    assert [r["per_target"] for r in resumed] == [r["per_target"] for r in reference]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_checkpoints_run_at_idle_priority_and_a_failed_one_is_reported(run_config, ray_local):
    cfg = config_lib.coerce(live_config(run_config))
    store = Store(sweep(cfg, progress=False)["store"])
    # Another interval: checkpoints not logged yet.
    monitor = live.Monitor(store, cfg, 160)
    monitor.add(store.rows("fit"))
    thread = monitor._thread
    deadline = time.monotonic() + 30
    while thread.is_alive() and os.sched_getscheduler(thread.native_id) != os.SCHED_IDLE \
            and time.monotonic() < deadline:
        time.sleep(0.001)
    # Idle priority, so that its solves take only what the sweep's tasks leave of the CPU.
    assert os.sched_getscheduler(thread.native_id) == os.SCHED_IDLE
    assert monitor.finish() is None and [r["num_fit_models"] for r in monitor.records] == [160, 320]
    # With almost no validation models the first checkpoint cannot choose λ: the monitor reports
    # it in one line, and what the sweep trained stays.
    few = config_lib.coerce(dict(live_config(run_config), fit={"val_fraction": 0.001}))
    monitor = live.Monitor(store, few, 160)
    monitor.add(store.rows("fit"))
    problem = monitor.finish()
    assert problem.startswith("live LDS checkpoint failed: DatamodelsError: a checkpoint at 160 fitting models has")
    assert problem.endswith("raise sweep.checkpoint_every") and monitor.records == []


def test_forecast_recovers_a_planted_learning_curve():
    rng = np.random.default_rng(0)
    a, b, c = 0.9, 3.0, 0.8
    n = np.arange(250, 2001, 250)
    # 200 targets whose LDS follows the curve with target-to-target scatter of 0.05
    offsets = rng.normal(0, 0.05, 200)
    records = [{"num_fit_models": int(m), "lds": float(np.mean(a - b * m ** -c + offsets)),
                "per_target": list(a - b * m ** -c + offsets), "settings_key": "k", "time": float(i),
                "sweep_started": 0.0} for i, m in enumerate(n)]
    fc = live.forecast(records, levels=[0.85], budgets=[10000])
    assert fc["curve"]["a"] == pytest.approx(a, abs=1e-3) and fc["curve"]["c"] == pytest.approx(c, abs=0.02)
    truth = (b / (a - 0.85)) ** (1 / c)
    assert fc["models_for"]["0.85"]["estimate"] == pytest.approx(truth, rel=0.05)
    lo, hi = fc["models_for"]["0.85"]["band"]
    assert lo < truth < hi  # the band over targets covers the truth
    assert fc["lds_at"]["10000"]["estimate"] == pytest.approx(a - b * 10000 ** -c, abs=2e-3)
    assert fc["gain_from_doubling"]["estimate"] == pytest.approx(b * 2000 ** -c * (1 - 2 ** -c), rel=0.05)
    assert fc["rate_models_per_s"] == pytest.approx(250.0)
    # A level above the curve's limit is never reached.
    assert live.forecast(records, levels=[0.95])["models_for"]["0.95"]["estimate"] == float("inf")


def test_until_gain_stops_once_doubling_would_gain_little():
    n = [40, 80, 120]
    flat = [{"num_fit_models": m, "lds": 0.80 - 0.2 / m, "settings_key": "k"} for m in n]
    assert live.GainBelow(0.01).check(flat) == ("forecast gain from doubling 120 fitting models is 0.0008, below "
                                                "sweep.until_gain=0.01")  # 0.2/120 - 0.2/240
    steep = [{"num_fit_models": m, "lds": 0.80 - 40 / m, "settings_key": "k"} for m in n]
    assert live.GainBelow(0.01).check(steep) is None
    assert live.GainBelow(0.5).check(steep[:2]) is None  # needs three checkpoints


def test_stop_rules_come_from_the_config_and_the_first_that_fires_says_why():
    cfg = config_lib.load(None, ["sweep.until_lds=0.75", "sweep.until_gain=0.01"])
    rules = live.stop_rules(cfg.sweep)
    assert rules == [live.LdsReached(0.75), live.GainBelow(0.01)]
    assert [r.name for r in rules] == ["until_lds", "until_gain"]
    assert live.stop_rules(config_lib.load(None, []).sweep) == []
    n = [40, 80, 120]
    flat = [{"num_fit_models": m, "lds": 0.80 - 0.2 / m, "settings_key": "k"} for m in n]
    # Both rules fire on these records: the LDS level is checked first.
    assert live.stop_reason(flat, rules) == "LDS 0.7983 at 120 fitting models reached sweep.until_lds=0.75"
    assert live.stop_reason(flat, rules[1:]).startswith("forecast gain from doubling 120 fitting models")
    assert live.LdsReached(0.8).check(flat) is None and live.stop_reason([], rules) is None


def test_status_prints_the_live_lds_and_forecast(tmp_path, run_config, ray_local, capsys):
    from datamodels.cli import main

    summary = sweep(live_config(run_config), progress=False)
    assert main(["status", summary["store"], "--lds", "0.99", "--budget", "1000"]) == 0
    out = capsys.readouterr().out
    assert "live LDS" in out and "at 320 fitting models" in out and "LDS 0.99" in out and "at 1,000 fitting" in out
    assert main(["status", summary["store"], "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert len(status["live"]["checkpoints"]) == 4 and status["live"]["forecast"]["num_checkpoints"] == 4


@pytest.mark.parametrize("overrides, message", [
    ({"until_lds": 0.0}, "sweep.until_lds must be in (0, 1)"),
    ({"until_gain": 2.0}, "sweep.until_gain must be in (0, 1)"),
    ({"checkpoint_every": 10}, "sweep.checkpoint_every must be 0 (off), >= 20"),
    ({"checkpoint_every": 0, "until_lds": 0.8}, "sweep.until_lds needs live LDS checkpoints"),
    ({"num_eval_models": 0, "until_lds": 0.8}, "sweep.until_lds needs held-out models"),
    ({"num_models": 150, "until_lds": 0.8}, "too short for the default checkpoint interval"),
])
def test_bad_live_settings_name_the_setting(tmp_path, overrides, message):
    from conftest import tiny_config

    run_config = tiny_config(tmp_path)
    with pytest.raises(DatamodelsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_lib.from_dict(dict(run_config, sweep=dict(run_config["sweep"], **overrides)))


def test_default_interval_scales_with_the_sweep():
    cfg = config_lib.load(None, [])
    assert config_lib.interval(cfg.sweep) == 1000  # the digits default: 10,000 fitting models
    small = config_lib.load(None, ["sweep.num_models=150"])
    assert config_lib.interval(small.sweep) == 0  # too short for two checkpoints: off, silently
