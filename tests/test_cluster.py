"""Ray as datamodels starts and joins it: addresses, resource requests, loopback, clean ends."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from datamodels import cluster, config
from datamodels.cluster import check_request, ray_session, resolve_address
from datamodels.errors import DatamodelsError
from datamodels.sweep import sweep, train_masks

ROOT = Path(__file__).resolve().parent.parent


def _node(ip, **resources):
    """A node as ``ray.nodes()`` lists it."""
    return {"NodeManagerAddress": ip, "Alive": True, "Resources": {"memory": 1e9, f"node:{ip}": 1.0, **resources}}


# ---- addresses and requests, without Ray -----------------------------------------------------

@pytest.mark.parametrize("address, expected", [
    (None, None), ("", None), ("local", None), ("auto", "auto"), ("10.0.0.1:6379", "10.0.0.1:6379"),
    ("head.example.org:6379", "head.example.org:6379"), ("[fd00::1]:6379", "[fd00::1]:6379"),
    ("ray://10.0.0.1", "ray://10.0.0.1"), ("ray://10.0.0.1:10001", "ray://10.0.0.1:10001")])
def test_addresses_that_are_ray_addresses(monkeypatch, address, expected):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(address) == expected


@pytest.mark.parametrize("address", ["head", "head:", ":6379", "head:port", "head:0", "head:70000", "http://head:6379",
                                     "ray://", "head:1:2", "[::1]", "two words:6379"])
def test_malformed_addresses_are_one_line_errors(monkeypatch, address):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(DatamodelsError, match="is malformed") as info:
        resolve_address(address)
    assert "\n" not in str(info.value) and repr(address) in str(info.value)


def test_ray_address_from_the_environment_is_checked_too(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_address(None) == resolve_address("auto") == "10.0.0.1:6379"
    assert resolve_address("10.0.0.2:6379") == "10.0.0.2:6379"  # an explicit address wins, as in ray.init
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1")
    with pytest.raises(DatamodelsError, match=r"'10.0.0.1' \(from RAY_ADDRESS\) is malformed"):
        resolve_address(None)


def test_requests_no_node_can_run_are_refused_with_the_nodes_named():
    head, gpu_node = _node("10.0.0.1", CPU=16.0), _node("10.0.0.2", CPU=2.0, GPU=4.0, accel=1.0)
    nodes = [head, gpu_node]
    check_request({"CPU": 16, "GPU": 0}, nodes)  # the head runs it
    check_request({"CPU": 2, "GPU": 4, "accel": 1}, nodes)  # the GPU node runs it
    with pytest.raises(DatamodelsError) as info:
        check_request({"CPU": 1, "GPU": 1}, [head])
    assert str(info.value) == "sweep.gpus_per_task=1 but the cluster has no GPUs (nodes: 10.0.0.1 CPU=16 GPU=0)"
    with pytest.raises(DatamodelsError, match=r"^sweep.cpus_per_task=32 but the cluster offers at most 16 CPUs on "
                                              r"one node \(nodes: 10.0.0.1 CPU=16 GPU=0; 10.0.0.2 CPU=2 GPU=4\)$"):
        check_request({"CPU": 32}, nodes)
    with pytest.raises(DatamodelsError, match=r"^sweep.gpus_per_task=8 but the cluster offers at most 4 GPUs"):
        check_request({"CPU": 1, "GPU": 8}, nodes)
    with pytest.raises(DatamodelsError, match=r"^sweep.resources.tpu=1 but the cluster has no 'tpu' resource "
                                              r"\(nodes: 10.0.0.1 CPU=16 GPU=0 tpu=0; 10.0.0.2 CPU=2 GPU=4 tpu=0\)$"):
        check_request({"CPU": 1, "tpu": 1}, nodes)
    # each amount exists somewhere, but on no single node: a task would wait forever
    with pytest.raises(DatamodelsError, match=r"^no node of the cluster offers sweep.cpus_per_task=4, "
                                              r"sweep.gpus_per_task=1 together"):
        check_request({"CPU": 4, "GPU": 1}, nodes)
    with pytest.raises(DatamodelsError, match=r"has no CPUs \(nodes: none alive\)"):
        check_request({"CPU": 1}, [])


def test_a_local_request_is_checked_against_this_machine(monkeypatch):
    import ray

    if ray.is_initialized():  # connected, the check asks that cluster instead of this machine
        cluster.stop_local_ray()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cluster, "_cuda_devices", lambda: 0)
    cpus = cluster.local_resources({})["CPU"]
    assert cpus >= 1
    cluster.check_cluster(None, {"CPU": cpus, "GPU": 0})
    with pytest.raises(DatamodelsError, match=r"^sweep.gpus_per_task=0.5 but this machine has no GPUs"):
        cluster.check_cluster(None, {"CPU": 1, "GPU": 0.5})
    with pytest.raises(DatamodelsError, match=rf"^sweep.cpus_per_task={cpus + 1:g} but this machine offers at most "
                                              rf"{cpus:g} CPUs \(nodes: 127.0.0.1 CPU={cpus:g} GPU=0\)$"):
        cluster.check_cluster(None, {"CPU": cpus + 1})
    with pytest.raises(DatamodelsError, match=r"this machine has no 'accel' resource"):
        cluster.check_cluster(None, {"CPU": 1, "accel": 1})


# ---- before anything is written --------------------------------------------------------------

def _fresh(tmp_path, run_config, **sweep_settings):
    """A config whose out directory does not exist yet: a check that writes anything shows."""
    return dict(run_config, out=str(tmp_path / "fresh"), sweep=dict(run_config["sweep"], **sweep_settings))


@pytest.mark.integration
@pytest.mark.parametrize("address, message", [
    ("nohost", "'nohost' is malformed"),
    ("127.0.0.1:1", "cannot reach a Ray cluster at 127.0.0.1:1: connection refused"),
    ("ray://127.0.0.1:1", "cannot reach a Ray cluster at ray://127.0.0.1:1")])
def test_bad_addresses_fail_before_any_file_is_written(tmp_path, run_config, address, message):
    import ray

    ray.shutdown()
    cfg = _fresh(tmp_path, run_config)
    started = time.time()
    for run in (lambda: sweep(cfg, address=address, progress=False),
                lambda: train_masks(cfg, np.ones((1, 1697), bool), address=address, progress=False)):
        with pytest.raises(DatamodelsError, match=message):
            run()
    assert time.time() - started < 15
    assert not (tmp_path / "fresh").exists()
    assert not ray.is_initialized()


@pytest.mark.integration
def test_gpus_on_a_machine_without_them_fail_before_ray_starts_or_the_store_grows(tmp_path, run_config):
    import ray

    if cluster._cuda_devices():
        pytest.skip("this machine has a CUDA device")
    ray.shutdown()
    started = time.time()
    with pytest.raises(DatamodelsError, match=r"^sweep.gpus_per_task=1 but this machine has no GPUs \(nodes: "
                                              r"127.0.0.1 CPU=\d+ GPU=0\)$"):
        sweep(_fresh(tmp_path, run_config, gpus_per_task=1), progress=False)
    assert time.time() - started < 15
    assert not (tmp_path / "fresh").exists() and not ray.is_initialized()
    # A store that exists already is left byte for byte as it was.
    store = Path(run_config["out"]) / "store"
    sweep(dict(run_config, sweep=dict(run_config["sweep"], num_models=10, num_eval_models=0)), progress=False)
    before = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()}
    with pytest.raises(DatamodelsError, match="sweep.gpus_per_task=1 but this machine has no GPUs"):
        sweep(dict(run_config, sweep=dict(run_config["sweep"], gpus_per_task=1)), progress=False)
    assert {p.name: p.read_bytes() for p in store.iterdir() if p.is_file()} == before


@pytest.mark.integration
def test_requests_a_joined_cluster_cannot_run_fail_in_seconds_before_the_store_grows(tmp_path, run_config):
    """A real two-node cluster (head: 1 CPU; the other node: 2 CPUs, 1 GPU as Ray counts it, and a
    custom resource): what no node offers is refused once connected, before a file is written,
    and the connection is closed again; what a node offers passes."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    ring = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ring.add_node(num_cpus=2, num_gpus=1, resources={"accel": 1})
    try:
        for settings, message in [
                ({"gpus_per_task": 2}, r"^sweep.gpus_per_task=2 but the cluster offers at most 1 GPUs on one node "
                                       r"\(nodes: "),
                ({"cpus_per_task": 3}, r"^sweep.cpus_per_task=3 but the cluster offers at most 2 CPUs on one node"),
                ({"cpus_per_task": 2, "gpus_per_task": 0}, None)]:  # the second node runs it
            cfg = _fresh(tmp_path, run_config, **settings)
            started = time.time()
            if message is None:
                with ray_session(ring.address, cluster.task_request(config.coerce(cfg).sweep)):
                    assert ray.is_initialized()
                assert not ray.is_initialized()  # left the cluster it joined
                continue
            with pytest.raises(DatamodelsError, match=message):
                sweep(cfg, address=ring.address, progress=False)
            assert time.time() - started < 30
            assert not (tmp_path / "fresh").exists() and not ray.is_initialized()
        with pytest.raises(DatamodelsError, match=r"^sweep.resources.tpu=1 but the cluster has no 'tpu' resource"):
            with ray_session(ring.address, {"CPU": 1, "tpu": 1}):
                pass
        assert not ray.is_initialized()
        with ray_session(ring.address, {"CPU": 1, "accel": 1}):
            @ray.remote(num_cpus=1, resources={"accel": 1})
            def where():
                return ray.get_runtime_context().get_node_id()

            assert ray.get(where.remote(), timeout=60)  # it runs: the request was a real one
    finally:
        ray.shutdown()
        ring.shutdown()


# ---- a local instance: loopback only, and nothing outlives the command -------------------------

def _listeners(process) -> dict:
    """``(ip, port) -> process name`` of every TCP listener and UDP socket of ``process`` and its
    descendants."""
    import psutil

    procs = {}
    for p in [process] + process.children(recursive=True):
        try:
            procs[p.pid] = p.name()
        except psutil.Error:
            pass
    found = {}
    for conn in psutil.net_connections("inet"):
        if conn.pid in procs and conn.laddr and (conn.status == psutil.CONN_LISTEN or conn.type == 2):
            found[(conn.laddr.ip, conn.laddr.port)] = procs[conn.pid]
    return found


def _is_loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip)
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


@pytest.mark.integration
def test_a_local_sweep_listens_on_loopback_only(run_config):
    """Every socket a local sweep's Ray opens (GCS, raylet, object manager, workers, agents, the
    driver's own) is bound to loopback, none to every interface or to this machine's other
    addresses (scripts/loopback.sh gives its namespace one, 10.251.0.1 on dm0, for this)."""
    import psutil
    import ray

    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family.name in ("AF_INET", "AF_INET6") and not _is_loopback(a.address.split("%")[0])]
    if not others:
        pytest.skip("no address besides loopback here: a server bound to every interface would look the same")
    ray.shutdown()
    cfg = dict(run_config, worker=dict(run_config["worker"], name="flaky_worker", sleep=0.5))
    seen, done, result = {}, threading.Event(), {}

    def run():
        try:
            result["summary"] = sweep(cfg, progress=False)
        except BaseException as exc:  # raised in the test's thread
            result["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    while not done.wait(0.2):
        seen.update(_listeners(psutil.Process()))
    thread.join()
    if "error" in result:
        raise result["error"]
    assert result["summary"]["trained"] == 50
    names = set(seen.values())
    assert {"gcs_server", "raylet"} <= names, seen  # Ray's servers were seen while they ran
    assert len(seen) >= 4, seen
    assert all(_is_loopback(ip) for ip, _ in seen), {k: v for k, v in seen.items() if not _is_loopback(k[0])}
    assert not ray.is_initialized()


def _sweep_process(tmp_path, run_config):
    """A CLI sweep (slow tasks, so it is mid-sweep for a while) and its store's completed file."""
    out = tmp_path / "killed"
    import shutil

    shutil.copytree(Path(run_config["out"]) / "data", out / "data")
    overrides = [f"out={out}", "worker.name=flaky_worker", "worker.sleep=0.5", "worker.hidden=16",
                 "worker.epochs=3", "worker.batch_size=64", "data.num_test=100", "sweep.num_models=40",
                 "sweep.num_eval_models=10", "sweep.models_per_task=5", "sweep.max_retries=0"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "datamodels.cli", "sweep", str(ROOT / "configs" / "digits.yaml"),
                             *overrides], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    return proc, out / "store" / "_completed.npy"


@pytest.mark.integration
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["TERM", "INT", "KILL"])
def test_nothing_ray_started_outlives_a_killed_sweep(tmp_path, run_config, how):
    """The driver of a local sweep is killed mid-sweep; within seconds no process of its Ray
    instance (GCS, raylet, workers, agents; all found below the driver while it ran, so no
    other Ray instance on this machine is looked at) is left.  Without the watchdog, a SIGKILL
    left Ray's dashboard and runtime-env agents running for minutes."""
    import psutil

    proc, completed = _sweep_process(tmp_path, run_config)
    ray_procs = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if completed.exists() and np.load(completed, mmap_mode="r").sum() >= 5:
                    break
            except ValueError:  # being written
                pass
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        names = {_name(p) for p in ray_procs}
        assert {"gcs_server", "raylet"} <= names, names
        proc.send_signal(how)
        proc.wait(timeout=60)
        killed_at = time.time()
        _, alive = psutil.wait_procs(ray_procs, timeout=15)
        alive = [p for p in alive if _status(p) not in (None, psutil.STATUS_ZOMBIE)]
        assert not alive, [(p.pid, _name(p)) for p in alive]
        assert time.time() - killed_at < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in ray_procs:  # what the test itself started: never another test's Ray
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.stderr.close()


def _name(process) -> str:
    try:
        return process.name()
    except Exception:  # gone
        return "?"


def _status(process):
    try:
        return process.status()
    except Exception:  # gone
        return None
