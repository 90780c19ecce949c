"""Faults: failing and straggling tasks, lost workers and nodes on a real multi-node Ray cluster."""
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from datamodels.errors import DatamodelsError
from datamodels.store import Store
from datamodels.sweep import sweep


def with_worker(cfg, **params):
    return dict(cfg, worker=dict(cfg["worker"], name="flaky_worker", **params))


def with_sweep(cfg, **params):
    return dict(cfg, sweep=dict(cfg["sweep"], **params))


def test_failing_task_is_retried_and_succeeds(run_config, ray_local, tmp_path):
    reference = Store(sweep(run_config, progress=False)["store"])
    once = tmp_path / "once"
    once.mkdir()
    cfg = with_sweep(with_worker(run_config, fail="raise", fail_once_dir=str(once)),
                     max_retries=1)
    cfg["out"] = str(tmp_path / "retried")
    summary = sweep(cfg, progress=False)
    assert summary["retried"] >= 1 and not summary["failed"]
    store = Store(summary["store"])
    assert store.completed.all() and not store.failures()
    np.testing.assert_array_equal(np.asarray(store.margins), np.asarray(reference.margins))


def test_straggler_is_cancelled_retried_then_recorded(run_config, ray_local):
    from datamodels.store import model_seed

    cfg = with_sweep(with_worker(run_config, hang_seeds=[model_seed(0, 5)]),
                     max_retries=1, task_timeout_s=8.0)
    started = time.time()
    with pytest.raises(DatamodelsError, match="failed models"):
        sweep(cfg, progress=False)
    store = Store(Path(run_config["out"]) / "store")
    failures = store.failures()
    assert sorted(failures) == list(range(0, 10))  # the task holding row 5 (rows 0..9)
    assert all("TimeoutError" in m and "2 attempts" in m for m in failures.values())
    assert store.completed.sum() == store.num_models - 10
    assert time.time() - started < 60


def _kill_one_task_process(nodes=None, wait_s: float = 10.0) -> bool:
    """SIGKILL one process running a ``run_task``.  With ``nodes`` (Ray cluster nodes), only a
    descendant of their raylets: other Ray instances on the machine (another test run, a
    benchmark) share the process table and must be left alone."""
    import psutil

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if nodes is None:
            candidates = [psutil.Process(int(p)) for p in subprocess.run(
                ["pgrep", "-f", "ray::run_task"], capture_output=True, text=True).stdout.split()]
        else:
            raylets = [proc.pid for node in nodes for kind, proc in node.live_processes() if kind == "raylet"]
            candidates = [c for pid in raylets for c in psutil.Process(pid).children(recursive=True)
                          if "ray::run_task" in " ".join(_cmdline(c))]
        for proc in candidates:
            try:
                proc.send_signal(signal.SIGKILL)
                return True
            except psutil.Error:
                continue
        time.sleep(0.05)
    return False


def _cmdline(proc) -> list:
    try:
        return proc.cmdline()
    except Exception:  # gone, or not ours to read
        return []


def test_multi_node_sweep_survives_killed_worker_and_lost_node(run_config, tmp_path):
    """Three nodes, each with its own cache directory (no shared file system for data).  Mid-sweep
    a task's worker process is SIGKILLed and a whole node is removed; every model still completes
    exactly once, bitwise equal to an undisturbed run."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    caches = [tmp_path / f"node{i}" for i in range(4)]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "env_vars": {"DATAMODELS_CACHE": str(caches[0])}})
    nodes = [cluster.add_node(num_cpus=1, env_vars={"DATAMODELS_CACHE": str(c)}) for c in caches[1:3]]
    try:
        ray.init(address=cluster.address, logging_level="ERROR")
        cfg = with_sweep(with_worker(run_config, sleep=0.4), models_per_task=2, max_retries=3)
        reference = Store(sweep(dict(cfg, out=str(tmp_path / "undisturbed")), progress=False)["store"])

        disturbed = dict(cfg, out=str(tmp_path / "disturbed"))
        result = {}
        thread = threading.Thread(target=lambda: result.update(sweep(disturbed, progress=False)))
        thread.start()
        completed = tmp_path / "disturbed" / "store" / "_completed.npy"
        while not (completed.exists() and np.load(completed, mmap_mode="r").sum() >= 6):
            time.sleep(0.05)
        assert _kill_one_task_process(cluster.list_all_nodes())
        time.sleep(0.3)
        cluster.remove_node(nodes[0], allow_graceful=False)
        cluster.add_node(num_cpus=1, env_vars={"DATAMODELS_CACHE": str(caches[3])})
        thread.join(timeout=300)
        assert not thread.is_alive()
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert result["retried"] >= 1 and not result["failed"]
    assert result["trained"] == 50  # each model written once: no row trained twice into the store
    store = Store(tmp_path / "disturbed" / "store")
    assert store.completed.all()
    np.testing.assert_array_equal(np.asarray(store.masks), np.asarray(reference.masks))
    np.testing.assert_array_equal(np.asarray(store.margins), np.asarray(reference.margins))
    # data reached the nodes through the object store, into each node's own directory
    assert sum(any(c.glob("*/meta.json")) for c in caches) >= 2
