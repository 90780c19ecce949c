import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from datamodels.errors import DatamodelsError
from datamodels.store import Store, subset_mask
from datamodels.sweep import pack_tasks, sweep, train_masks


def test_pack_tasks_groups_rows_by_block():
    tasks = pack_tasks(np.array([0, 1, 2, 5, 6, 11, 12, 30]), 5)
    assert [t.tolist() for t in tasks] == [[0, 1, 2], [5, 6], [11, 12], [30]]


def test_sweep_fills_the_store(run_config, ray_local):
    summary = sweep(run_config, progress=False)
    store = Store(summary["store"])
    assert summary["trained"] == 50 and store.num_models == 50
    assert store.completed.all()
    assert store.num_eval == 10 and len(store.rows("fit")) == 40
    assert store.margins.shape == (50, 100) and np.isfinite(store.margins).all()
    assert np.array_equal(store.masks[17], subset_mask(0, 17, store.num_train, 0.5))
    # trained models are mostly right on the test examples, and they differ from each other
    assert (np.asarray(store.margins) > 0).mean() > 0.7
    assert np.asarray(store.margins).std(0).mean() > 0.1
    again = sweep(run_config, progress=False)  # nothing left to do
    assert again["trained"] == 0 and again["already_done"] == 50


def test_resumed_sweep_equals_uninterrupted(tmp_path, run_config, ray_local):
    # Each task sleeps half a second first, so the kill below lands between tasks, not after the
    # last: tiny models otherwise finish all tasks within one polling interval.
    run_config = dict(run_config, worker=dict(run_config["worker"], name="flaky_worker", sleep=0.5))
    reference = Store(sweep(run_config, progress=False)["store"])
    # Interrupted: the same run, in a fresh directory, killed mid-sweep in a subprocess.
    import shutil

    other = dict(run_config, out=str(tmp_path / "resumed"))
    shutil.copytree(tmp_path / "run" / "data", tmp_path / "resumed" / "data")
    overrides = [f"out={other['out']}"] + [f"{sec}.{k}={v}" for sec in ("data", "sweep", "worker")
                                            for k, v in run_config[sec].items()]
    proc = subprocess.Popen([sys.executable, "-m", "datamodels.cli", "sweep", "configs/digits.yaml", *overrides],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    completed = tmp_path / "resumed" / "store" / "_completed.npy"
    deadline = time.time() + 120
    while time.time() < deadline:
        if completed.exists():
            try:
                done = np.load(completed, mmap_mode="r").sum()
            except ValueError:
                done = 0
            if done >= 10:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = Store(tmp_path / "resumed" / "store")
    assert 0 < partial.completed.sum() < 50, "the kill should land mid-sweep"
    sweep(other, progress=False)
    resumed = Store(tmp_path / "resumed" / "store")
    assert resumed.completed.all()
    assert np.array_equal(np.asarray(resumed.masks), np.asarray(reference.masks))
    assert np.array_equal(np.asarray(resumed.margins), np.asarray(reference.margins))


def test_growing_keeps_finished_rows(run_config, ray_local):
    small = dict(run_config, sweep=dict(run_config["sweep"], num_models=20, num_eval_models=5))
    first = Store(sweep(small, progress=False)["store"])
    before = np.asarray(first.margins).copy()
    summary = sweep(run_config, progress=False)
    assert summary["already_done"] == 25 and summary["trained"] == 25
    grown = Store(summary["store"])
    assert np.array_equal(np.asarray(grown.margins[:25]), before)
    assert grown.num_eval == 10


@pytest.mark.parametrize("mode", ["raise", "nan", "shape"])
def test_failing_models_are_recorded_and_the_rest_finish(run_config, ray_local, mode):
    cfg = dict(run_config, worker=dict(run_config["worker"], name="flaky_worker", fail=mode))
    with pytest.raises(DatamodelsError, match="failed models"):
        sweep(cfg, progress=False)
    store = Store(os.path.join(run_config["out"], "store"))
    failures = store.failures()
    assert failures and all(not store.completed[i] for i in failures)
    assert store.completed.sum() + len(failures) == store.num_models
    expected = {"raise": "planted failure", "nan": "non-finite", "shape": "shape"}[mode]
    assert all(expected in message for message in failures.values())


def test_store_from_another_config_is_refused(run_config, ray_local):
    sweep(run_config, progress=False)
    other = dict(run_config, sweep=dict(run_config["sweep"], alpha=0.3))
    with pytest.raises(DatamodelsError, match="alpha"):
        sweep(other, progress=False)


def test_train_masks_retrains_given_subsets(run_config, ray_local):
    store = Store(sweep(run_config, progress=False)["store"])
    from datamodels.store import model_seed

    rows = np.array([3, 4])
    seeds = np.array([model_seed(0, i) for i in rows])
    margins = train_masks(run_config, np.asarray(store.masks[rows]), seeds, progress=False)
    # the same masks and seeds through the same worker give the same margins
    np.testing.assert_allclose(margins, np.asarray(store.margins[rows]), rtol=1e-5, atol=1e-5)
    with pytest.raises(DatamodelsError, match="masks must have shape"):
        train_masks(run_config, np.ones((2, 5), bool), progress=False)


def test_store_from_other_training_settings_is_refused(run_config, ray_local):
    sweep(run_config, progress=False)
    other = dict(run_config, worker=dict(run_config["worker"], epochs=4))
    with pytest.raises(DatamodelsError, match="worker.epochs=3, but the config asks for 4"):
        sweep(other, progress=False)
