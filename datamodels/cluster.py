"""Starting, joining and stopping Ray.

A sweep either joins a cluster the user names (``--address`` / ``sweep.address``) or starts a
local Ray instance for the length of the command and stops it afterwards.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from contextlib import contextmanager
from typing import Optional

from .errors import DatamodelsError

log = logging.getLogger(__name__)


def check_reachable(address: Optional[str], timeout_s: float = 5.0) -> None:
    """Fail in seconds when nothing answers at a cluster's address: ``ray.init`` retries an
    unreachable cluster for minutes before it gives up."""
    address = address or os.environ.get("RAY_ADDRESS")
    ray = sys.modules.get("ray")
    if not address or address in ("auto", "local") or (ray is not None and ray.is_initialized()):
        return
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port; Ray has its own message for that
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except socket.timeout:
        problem = f"no answer within {timeout_s:g} s"
    except socket.gaierror as exc:
        problem = f"unknown host {host} ({exc.strerror or exc})"
    except OSError as exc:
        problem = (exc.strerror or str(exc)).lower()
    else:
        return
    raise DatamodelsError(f"cannot reach a Ray cluster at {address}: {problem} (is `ray start --head` running "
                          f"there, and port {port} open to this machine?)")


def _connect(address: Optional[str]) -> bool:
    """Connect to ``address`` or start a local Ray instance; returns whether we started it."""
    import ray

    if ray.is_initialized():
        return False
    check_reachable(address)
    kwargs = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=True)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"Ray cluster at {address}" if address else "a local Ray instance"
        raise DatamodelsError(f"cannot connect to {where}: {str(exc).splitlines()[0]}") from None
    return True


@contextmanager
def ray_session(address: Optional[str]):
    """Ray for the duration of a block: an existing connection, a cluster at ``address``, or a
    local instance started here and stopped afterwards."""
    import ray

    started = _connect(address)
    try:
        yield
    finally:
        if started:
            stop_local_ray()


def stop_local_ray() -> None:
    """``ray.shutdown()``, a second sooner.  Ray stops its GCS server before the autoscaler's
    monitor process, whose SIGTERM handler then tries to report to the stopped server until
    Ray's 1 s grace period runs out and it is killed: 1.2-1.5 s of every shutdown on a 2-core
    CPU, against 0.2-0.4 s without it.  The monitor of a Ray instance this process started
    (a direct child) scales nothing, so it is ended first.  Without psutil, or if Ray names
    the monitor differently, this is the plain shutdown."""
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
    ray.shutdown()
