"""Starting, joining and stopping Ray, and checking that a cluster can run what is asked of it.

A sweep either joins a cluster the user names (``--address`` / ``sweep.address``) or starts a
local Ray instance for the length of the command and stops it afterwards.

A local instance listens on 127.0.0.1 only (Ray has no authentication: a server on another
interface is open to anyone who can reach it), and nothing of it outlives the command: when the
command ends, however it ends, a small watchdog process ends whatever Ray left behind.

Before any file is written, ``check_cluster`` refuses in seconds, with one line, an address that
is malformed or where nothing answers, and a request (CPUs, GPUs, custom resources per task)
that no node can satisfy; Ray itself would wait for minutes, or forever, without a word.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from contextlib import contextmanager
from typing import Dict, List, Mapping, Optional

from .errors import DatamodelsError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
RAY_CLIENT_PORT = 10001  # Ray Client's default port, for ray://HOST without one
ADDRESS_FORMS = "HOST:PORT, ray://HOST[:PORT], auto or local"

Request = Mapping[str, float]  # Ray resource name (CPU, GPU, custom) -> amount one task needs


# ---- addresses -------------------------------------------------------------------------------

def resolve_address(address: Optional[str]) -> Optional[str]:
    """The cluster address a command joins, ``None`` for a local instance of its own.

    ``address`` falls back to ``$RAY_ADDRESS`` (as ``ray.init`` does); ``local`` (or nothing)
    means a local instance.  A malformed address is a one-line error here, not Ray's minutes of
    retries later."""
    source = ""
    if not address or address == "auto":
        env = os.environ.get("RAY_ADDRESS")
        if env:
            address, source = env, " (from RAY_ADDRESS)"
    if not address or address == "local":
        return None
    address = str(address).strip()
    if address == "auto":
        return address
    scheme, sep, rest = address.rpartition("://")
    if sep and scheme != "ray":
        raise DatamodelsError(f"Ray address {address!r}{source} is malformed: Ray speaks no {scheme}:// "
                              f"(expected {ADDRESS_FORMS})")
    host, port = _split_host_port(rest)
    if not host or (port is None and scheme != "ray") or (port is not None and not 0 < port < 65536):
        raise DatamodelsError(f"Ray address {address!r}{source} is malformed (expected {ADDRESS_FORMS})")
    return address


def _split_host_port(hostport: str):
    """``(host, port)`` of ``host:port`` / ``[v6]:port`` / ``host``; port ``None`` when absent, -1
    when not a number; host ``""`` when malformed."""
    if hostport.startswith("["):
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\w*))?", hostport)
        if not match:
            return "", None
        host, port = match.group(1), match.group(2)
    else:
        host, sep, port = hostport.partition(":")
        port = port if sep else None
        if ":" in (port or "") or not re.fullmatch(r"[\w.-]+", host):
            return "", None
    if port is None:
        return host, None
    return host, int(port) if port.isdigit() else -1


def check_reachable(address: Optional[str], timeout_s: float = 5.0) -> None:
    """Fail in seconds when an address is malformed, or nothing answers there: ``ray.init``
    retries an unreachable cluster for minutes before it gives up."""
    target = resolve_address(address)
    ray = sys.modules.get("ray")
    if target is None or target == "auto" or (ray is not None and ray.is_initialized()):
        return  # a local instance, or the one on this machine (Ray says at once if there is none)
    scheme, _, rest = target.rpartition("://")
    host, port = _split_host_port(rest)
    port = port if port is not None else RAY_CLIENT_PORT
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except socket.timeout:
        problem = f"no answer within {timeout_s:g} s"
    except socket.gaierror as exc:
        problem = f"unknown host {host} ({exc.strerror or exc})"
    except OSError as exc:
        problem = (exc.strerror or str(exc)).lower()
    else:
        return
    raise DatamodelsError(f"cannot reach a Ray cluster at {target}: {problem} (is `ray start --head` running "
                          f"there, and port {port} open to this machine?)")


# ---- what a task asks for --------------------------------------------------------------------

def task_request(sweep_cfg) -> Dict[str, float]:
    """What one training task asks Ray for: ``sweep.cpus_per_task``, ``sweep.gpus_per_task`` and
    ``sweep.resources`` (custom resources, where the config has them)."""
    request = {"CPU": float(sweep_cfg.cpus_per_task), "GPU": float(sweep_cfg.gpus_per_task)}
    for name, amount in dict(getattr(sweep_cfg, "resources", None) or {}).items():
        request[str(name)] = float(amount)
    return request


def _label(resource: str) -> str:
    return {"CPU": "sweep.cpus_per_task", "GPU": "sweep.gpus_per_task"}.get(resource, f"sweep.resources.{resource}")


def check_request(request: Request, nodes: Optional[List[dict]], where: str = "the cluster") -> None:
    """One line, when no node of ``nodes`` (``ray.nodes()``'s entries) offers everything one task
    of ``request`` needs: Ray would keep the task pending forever, without a word."""
    wanted = {name: float(amount) for name, amount in request.items() if amount and float(amount) > 0}
    if not wanted or nodes is None:
        return
    offers = [dict(node.get("Resources") or {}) for node in nodes]
    listing = _describe_nodes(nodes, wanted)
    for name, amount in wanted.items():
        most = max((offer.get(name, 0.0) for offer in offers), default=0.0)
        if most >= amount:
            continue
        unit = {"CPU": "CPUs", "GPU": "GPUs"}.get(name, f"'{name}' resource")
        if most <= 0:
            raise DatamodelsError(f"{_label(name)}={amount:g} but {where} has no {unit} (nodes: {listing})")
        on_one = " on one node" if len(nodes) > 1 else ""
        raise DatamodelsError(f"{_label(name)}={amount:g} but {where} offers at most {most:g} {unit}{on_one} "
                              f"(nodes: {listing})")
    if not any(all(offer.get(name, 0.0) >= amount for name, amount in wanted.items()) for offer in offers):
        asked = ", ".join(f"{_label(name)}={amount:g}" for name, amount in wanted.items())
        raise DatamodelsError(f"no node of {where} offers {asked} together (nodes: {listing})")


def _describe_nodes(nodes: List[dict], wanted: Mapping[str, float], most: int = 4) -> str:
    if not nodes:
        return "none alive"
    shown = []
    for node in nodes[:most]:
        offer = node.get("Resources") or {}
        names = ["CPU", "GPU"] + [n for n in wanted if n not in ("CPU", "GPU")]
        amounts = " ".join(f"{n}={offer.get(n, 0):g}" for n in names)
        shown.append(f"{node.get('NodeManagerAddress', '?')} {amounts}")
    more = f"; {len(nodes) - most} more" if len(nodes) > most else ""
    return "; ".join(shown) + more


def _live_nodes() -> Optional[List[dict]]:
    """The cluster's live nodes; ``None`` where Ray cannot list them (then nothing is checked)."""
    import ray

    try:
        return [node for node in ray.nodes() if node.get("Alive")]
    except Exception as exc:  # Ray Client of another version, a cluster going down: Ray reports it later
        log.warning("cannot list the Ray cluster's nodes to check the request against them: %s", exc)
        return None


def local_resources(request: Request) -> Dict[str, float]:
    """What a local Ray instance started here offers (``_connect`` starts it with exactly these):
    Ray's count of this machine's CPUs, and when GPUs are asked for, the CUDA devices torch sees."""
    try:
        from ray._private.utils import get_num_cpus  # Ray's own count: cgroup limits included

        cpus = float(get_num_cpus())
    except Exception:  # another Ray layout: the plain count
        cpus = float(os.cpu_count() or 1)
    offer = {"CPU": cpus}
    if float(request.get("GPU", 0) or 0) > 0:
        offer["GPU"] = float(_cuda_devices())
    return offer


def _cuda_devices() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # no torch, or a broken CUDA install: no GPU a task could use
        return 0


def check_cluster(address: Optional[str], request: Optional[Request] = None) -> None:
    """Everything that can be checked before a command writes a file: the address is well formed
    and answers; and the request fits a node: of the cluster Ray is connected to, or, for a
    local instance still to start, of this machine (no CUDA device, more CPUs per task than the
    machine has, custom resources a local instance does not have).  A cluster still to be
    joined is checked by ``ray_session`` once connected."""
    target = resolve_address(address)
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        if request:
            check_request(request, _live_nodes())
        return
    if target is None:
        _check_local(request)
        return
    check_reachable(target)


def _check_local(request: Optional[Request]) -> Dict[str, float]:
    """What a local instance would offer (``local_resources``), checked against the request."""
    offer = local_resources(request or {})
    if request:
        check_request(request, [{"NodeManagerAddress": LOOPBACK, "Resources": offer}], "this machine")
    return offer


def needs_connection_first(address: Optional[str]) -> bool:
    """Whether a command should join Ray before it writes anything: a cluster's resources are
    known only once connected.  A local instance (checked against this machine by
    ``check_cluster``) may start later, alongside other work."""
    return resolve_address(address) is not None


# ---- starting and stopping -------------------------------------------------------------------

_watchdog: Optional[subprocess.Popen] = None

# The watchdog: a process of its own session (a terminal's Ctrl-C does not reach it) that
# notes, every half second, the Ray processes below the driver (its children started from Ray's
# package, and all their descendants).  When the driver ends, however it ends (a SIGKILL too),
# its end of the pipe closes; the watchdog then SIGTERMs what is left, SIGKILLs it a second
# later and exits.  Ray's own fate sharing ends the GCS and raylet with the driver, but its
# agents (dashboard agent, runtime-env agent) were seen to linger for minutes.
_WATCHDOG = r"""
import os, select, signal, sys
import psutil
signal.signal(signal.SIGINT, signal.SIG_IGN)
driver, ray_dir = psutil.Process(int(sys.argv[1])), sys.argv[2]
old = {c.pid for c in driver.children()}
roots, known = {}, {}
def scan():
    try:
        children = driver.children()
    except psutil.Error:
        return
    for child in children:
        if child.pid in old or child.pid in roots or child.pid == os.getpid():
            continue
        try:
            if any(ray_dir in part for part in child.cmdline()):
                roots[child.pid] = known[child.pid] = child
        except psutil.Error:
            pass
    for root in list(roots.values()):
        try:
            known.update((p.pid, p) for p in root.children(recursive=True))
        except psutil.Error:
            pass
print("ready", flush=True)
while driver.is_running():
    ready, _, _ = select.select([0], [], [], 0.5)
    if ready and not os.read(0, 4096):
        break
    scan()
left = [p for p in known.values() if p.is_running()]
for p in left:
    try:
        p.terminate()
    except psutil.Error:
        pass
_, left = psutil.wait_procs(left, timeout=1.0)
for p in left:
    try:
        p.kill()
    except psutil.Error:
        pass
psutil.wait_procs(left, timeout=1.0)
"""


def _start_watchdog() -> None:
    global _watchdog
    import ray

    _stop_watchdog()
    try:
        import psutil  # noqa: F401  (installed with FFCV; without it, Ray's own fate sharing only)
    except ImportError:
        return
    try:
        proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), os.path.dirname(ray.__file__)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
        ready = proc.stdout.readline()  # its list of older children is made before Ray starts
    except OSError as exc:
        log.warning("cannot start the watchdog that ends Ray's processes with this one: %s", exc)
        return
    if ready.strip() != b"ready":
        log.warning("the watchdog that ends Ray's processes with this one did not start")
        proc.wait()
        return
    _watchdog = proc


def _stop_watchdog(timeout_s: float = 5.0) -> None:
    """Tell the watchdog the driver is done (it ends what Ray left) and wait for it."""
    global _watchdog
    proc, _watchdog = _watchdog, None
    if proc is None:
        return
    try:
        proc.stdin.close()
        proc.wait(timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("watchdog: %s", exc)
        proc.kill()
        proc.wait()
    finally:
        proc.stdout.close()


@contextmanager
def _loopback_node():
    """Ray on Linux turns a node address of 127.0.0.1 into the machine's outward address, and its
    servers then listen on every interface; with its cluster mode off (what it does on macOS
    and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) it keeps 127.0.0.1, and every server of
    the node (GCS, raylet, object manager, workers, agents) listens there alone.  The switch
    is read when Ray starts, so it is flipped for ``ray.init`` only."""
    try:
        from ray._private import ray_constants
    except ImportError:
        yield
        return
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved


def start_local(request: Optional[Request] = None) -> None:
    """Start a local Ray instance on 127.0.0.1 alone, sized to this machine (or ``request``), with
    the watchdog that ends its processes with this one; ``stop_local_ray`` stops it."""
    import ray

    offer = _check_local(request)
    _start_watchdog()
    try:
        with _loopback_node():
            ray.init(num_cpus=int(offer["CPU"]), num_gpus=int(offer["GPU"]) if "GPU" in offer else None,
                     include_dashboard=False, dashboard_host=LOOPBACK, _node_ip_address=LOOPBACK,
                     logging_level="ERROR", log_to_driver=True)
        where = {node.get("NodeManagerAddress") for node in _live_nodes() or ()}
        if where and where != {LOOPBACK}:
            raise DatamodelsError(f"a local Ray instance came up on {', '.join(sorted(map(str, where)))}, not "
                                  f"{LOOPBACK} alone (Ray {ray.__version__}); see docs/cluster.md for starting one on "
                                  f"loopback yourself (then pass --address auto)")
    except BaseException:
        stop_local_ray()
        raise


def _connect(address: Optional[str], request: Optional[Request] = None) -> bool:
    """Connect to ``address`` or start a local Ray instance; returns whether we started it.
    The request is checked against the nodes either way (an existing connection's too)."""
    import ray

    if ray.is_initialized():
        if request:
            check_request(request, _live_nodes())
        return False
    target = resolve_address(address)
    check_reachable(target)
    try:
        if target is None:
            start_local(request)
        else:
            ray.init(address=target, logging_level="ERROR", log_to_driver=True)
    except DatamodelsError:
        raise
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"Ray cluster at {target}" if target else "a local Ray instance"
        raise DatamodelsError(f"cannot connect to {where}: {str(exc).strip().splitlines()[0]}") from None
    if target is not None and request:
        try:
            check_request(request, _live_nodes())
        except DatamodelsError:
            ray.shutdown()  # leaves the cluster; stops nothing of it
            raise
    return True


@contextmanager
def ray_session(address: Optional[str], request: Optional[Request] = None):
    """Ray for the duration of a block: an existing connection, a cluster at ``address``, or a
    local instance (on 127.0.0.1) started here and stopped afterwards.  With ``request`` (what
    one task asks for, ``task_request``), a cluster where no node can run such a task is
    refused at once."""
    target = resolve_address(address)
    started = _connect(address, request)
    try:
        yield
    finally:
        if started:
            if target is None:
                stop_local_ray()
            else:
                import ray

                ray.shutdown()


def stop_local_ray() -> None:
    """``ray.shutdown()``, a second sooner, then the watchdog ends anything Ray left.

    Ray stops its GCS server before the autoscaler's monitor process, whose SIGTERM handler
    then tries to report to the stopped server until Ray's 1 s grace period runs out and it is
    killed: 1.2-1.5 s of every shutdown on a 2-core CPU, against 0.2-0.4 s without it.  The
    monitor of a Ray instance this process started (a direct child) scales nothing, so it is
    ended first.  Without psutil, or if Ray names the monitor differently, this is the plain
    shutdown."""
    import ray

    try:
        import psutil
    except ImportError:
        psutil = None
    monitor = os.path.join("autoscaler", "_private", "monitor.py")
    for child in psutil.Process().children() if psutil is not None else ():
        try:
            if any(part.endswith(monitor) for part in child.cmdline()):
                child.kill()
                child.wait(timeout=5)
        except (psutil.Error, OSError) as exc:  # a zombie, or gone meanwhile: Ray's own shutdown copes
            log.debug("ending Ray's monitor first: %s", exc)
    try:
        ray.shutdown()
    finally:
        _stop_watchdog()
