import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from datamodels import hardware
from datamodels.errors import DatamodelsError
from datamodels.store import Store, subset_mask
from datamodels.cluster import ray_session, start_local
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
    # Trained models are mostly right on the test examples (3 epochs of a small MLP reach ~0.9 on
    # digits, chance is 0.1), and they are different models: a target's margin varies across
    # them by more than a tenth of the margins' typical size (models that differed only by
    # float32 rounding would vary by about 1e-7 of it).
    margins = np.asarray(store.margins)
    assert (margins > 0).mean() > 0.7
    assert margins.std(0).mean() > 0.1 * np.abs(margins).mean()
    # precision: auto was resolved once, on the driver, and the store records what was used
    assert store.meta["worker"]["precision"] == hardware.choices()["workers.mlp.precision"]["value"]
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
    # The same masks and seeds through the same worker give the same margins, bit for bit: a model
    # does not depend on its task-mates, and one-CPU tasks compute in the same order every time.
    np.testing.assert_array_equal(margins, np.asarray(store.margins[rows]))
    with pytest.raises(DatamodelsError, match="masks must have shape"):
        train_masks(run_config, np.ones((2, 5), bool), progress=False)


def test_store_from_other_training_settings_is_refused(run_config, ray_local):
    sweep(run_config, progress=False)
    other = dict(run_config, worker=dict(run_config["worker"], epochs=4))
    with pytest.raises(DatamodelsError, match="worker.epochs=3, but the config asks for 4"):
        sweep(other, progress=False)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_auto_precision_grows_a_store_in_its_own_precision(tmp_path, run_config, ray_local, precision):
    """A store's models share one precision.  A config that leaves worker.precision auto (the
    default) grows a store made with an explicit precision, float32 as every store before auto
    existed, in that precision, whatever auto would pick on this machine; an explicit other
    precision is refused."""
    import shutil

    small = dict(run_config, sweep=dict(run_config["sweep"], num_models=20, num_eval_models=5),
                 worker=dict(run_config["worker"], precision=precision))
    sweep(small, progress=False)
    summary = sweep(run_config, progress=False)  # precision: auto
    grown = Store(summary["store"])
    assert summary["trained"] == 25 and grown.meta["worker"]["precision"] == precision
    assert hardware.choices()["workers.mlp.precision"] == {"value": precision,
                                                           "how": "the store's models were made with it"}
    # The new rows are the models an explicit-precision sweep makes, bit for bit.
    shutil.copytree(tmp_path / "run" / "data", tmp_path / "reference" / "data")
    reference = Store(sweep(dict(run_config, out=str(tmp_path / "reference"),
                                 worker=dict(run_config["worker"], precision=precision)), progress=False)["store"])
    assert np.array_equal(np.asarray(grown.margins), np.asarray(reference.margins))
    other = {"float32": "bfloat16", "bfloat16": "float32"}[precision]
    with pytest.raises(DatamodelsError, match=f"worker.precision={precision}, but the config asks for {other}"):
        sweep(dict(run_config, worker=dict(run_config["worker"], precision=other)), progress=False)


@pytest.mark.parametrize("cpus", [1, 2])
def test_tasks_get_their_cpu_share_of_torch_threads(run_config, monkeypatch, cpus):
    """Torch in a task runs exactly sweep.cpus_per_task threads, whatever the driver's environment
    says (Ray passes OMP_NUM_THREADS on when it is set) and after FFCV, which resets the count."""
    import ray

    ray.shutdown()
    monkeypatch.setenv("OMP_NUM_THREADS", str(3 - cpus))  # the other count: 2 for one-CPU tasks, 1 for two
    start_local()
    try:
        cfg = dict(run_config, sweep=dict(run_config["sweep"], cpus_per_task=cpus, models_per_task=2),
                   worker={"name": "threads_worker"})
        masks = np.stack([subset_mask(0, i, 1697, 0.5) for i in range(4)])
        threads = train_masks(cfg, masks, progress=False)  # [at the start, after reading the data, ...]
        assert (threads == cpus).all()
    finally:
        ray.shutdown()


def test_a_local_ray_it_started_stops_monitor_first_and_leaves_nothing(monkeypatch):
    """A Ray instance a session started is stopped at its end, leaving no process behind, and
    Ray's autoscaler monitor is gone before ray.shutdown runs (otherwise its SIGTERM handler,
    reporting to the already stopped GCS, holds the shutdown for Ray's 1 s grace period)."""
    import psutil
    import ray

    ray.shutdown()
    real_shutdown, at_shutdown = ray.shutdown, []
    monkeypatch.setattr(ray, "shutdown", lambda *a, **k: (at_shutdown.append(_ray_children()), real_shutdown(*a, **k)))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with ray_session(None):
        assert ray.is_initialized()
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert any(_is_monitor(p) for p in started)  # Ray still runs one, else this checks nothing
    assert not ray.is_initialized()
    assert len(at_shutdown) == 1 and not any(_MONITOR in line for line in at_shutdown[0])
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [" ".join(p.cmdline()) for p in alive]


_MONITOR = os.path.join("autoscaler", "_private", "monitor.py")


def _ray_children() -> list:
    """The command lines of this process's children alive now."""
    import psutil

    lines = []
    for child in psutil.Process().children():
        try:
            lines.append(" ".join(child.cmdline()))
        except psutil.Error:  # exited meanwhile
            pass
    return lines


def _is_monitor(process) -> bool:
    import psutil

    try:
        return any(part.endswith(_MONITOR) for part in process.cmdline())
    except psutil.Error:
        return False
