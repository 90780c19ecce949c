"""Hardware-dependent choices, made on the machine at hand and recorded.

Machines that look alike differ where it matters: two "2-core AMD EPYC" servers, one with
AVX512-VNNI/BF16 and one with AVX2 only, disagree by 25× on an int8 GEMM and by 8× on a
bfloat16 one.  So no kernel, precision or batch size is hard-coded because it won on one
CPU.  A choice is made by :func:`choose`: each candidate is timed on a small probe of the
real work, the fastest wins, and the winner is cached (in memory and in a JSON file keyed
by everything that changes the answer: CPU model and flags, torch's kernel capability, the
ISA limits set in the environment, torch version and threads) so the probe runs once per
machine.  Every choice made in a process is logged once and kept in :func:`choices`, which
``datamodels run`` writes into ``metrics.json``.

A choice that depends on what runs beside it is measured that way: K (models per task) of a
CPU sweep is timed with one probe process per task slot running the same candidate at once
(:class:`Together`), since tasks that share the chip's caches and memory bandwidth favour
smaller stacks than a process alone on it does.

``DATAMODELS_CACHE_DIR`` moves the cache file (default ``~/.cache/datamodels``);
``DATAMODELS_NO_CHOICE_CACHE=1`` ignores it (every process measures afresh).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

log = logging.getLogger("datamodels")

# CPU flags that decide which low-precision kernels can be fast (from /proc/cpuinfo).
_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                      "amx_tile", "avx512_fp16")
# Environment variables that limit the kernels torch and oneDNN dispatch to.
_ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")

_CHOICES: Dict[str, dict] = {}  # name -> the latest choice made in this process
_MEASURED: Dict[str, dict] = {}  # full cache key -> what this process measured
_HELD: Optional[List[tuple]] = None  # log lines held back by ``log_on_success``


def cpu_flags() -> list:
    """The flags of interest that this CPU reports (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in _FLAGS_OF_INTEREST if f in have]
    return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What a speed figure depends on: recorded with every choice and every benchmark."""
    import torch

    info = {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "isa_env": {k: os.environ[k] for k in _ISA_ENV if k in os.environ},
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return info


def _fingerprint() -> str:
    m = machine()
    key = json.dumps({k: m[k] for k in ("cpu", "cpu_capability", "cpu_flags", "torch_threads", "torch", "isa_env")}
                     | {"gpu": m.get("gpu")}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _cache_file() -> Path:
    root = os.environ.get("DATAMODELS_CACHE_DIR") or Path.home() / ".cache" / "datamodels"
    return Path(root) / "choices.json"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict) -> None:
    """Add one entry; a cache that cannot be written only costs a re-measurement later."""
    from filelock import FileLock, Timeout

    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=10):
            cache = _read_cache()
            cache[key] = entry
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
            os.replace(tmp, path)
    except (OSError, Timeout):
        pass


def time_call(fn: Callable[[], object], repeats: int = 3, warm_up: bool = True) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def record(name: str, value, how: str, seconds: Optional[dict] = None) -> None:
    """Keep (and log once) a choice made in this process."""
    entry = {"value": value, "how": how}
    if seconds:
        entry["seconds"] = seconds
    if _CHOICES.get(name, {}).get("value") != value or name not in _CHOICES:
        detail = f" ({', '.join(f'{k}: {v * 1e3:.2f} ms' for k, v in seconds.items())})" if seconds else ""
        line = ("%s = %s, %s%s", name, value, how, detail)
        if _HELD is None:
            log.info(*line)
        else:
            _HELD.append(line)
    _CHOICES[name] = entry


@contextlib.contextmanager
def log_on_success() -> Iterator[None]:
    """Log the choices made inside the block only once it has succeeded: a command that stops
    at bad input (a store made with other settings, a held lock, a full disk) reports its
    one-line error alone.  The choices are kept in :func:`choices` and cached all the same."""
    global _HELD
    if _HELD is not None:  # nested: the outer block decides
        yield
        return
    _HELD = []
    try:
        yield
        held = _HELD
    finally:
        _HELD = None
    for line in held:
        log.info(*line)


@dataclass(frozen=True)
class Together:
    """Time the candidates in ``copies`` processes at once, as the tasks of a sweep run.

    ``build`` ("module:function") called with ``args`` in each process returns the same
    ``{label: probe}`` as the candidates given to :func:`choose`; every process runs one
    candidate at a time, all starting it together, with ``threads`` torch threads."""
    build: str
    args: tuple
    copies: int
    threads: int = 1


def task_slots(threads_per_task: int = 1, most: int = 8) -> int:
    """How many tasks of ``threads_per_task`` threads run at once on this machine's CPUs (at most
    ``most``: beyond a CCX's eight cores, more copies add no new kind of contention to a probe)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(most, cores // max(1, threads_per_task)))


def choose(name: str, candidates: Dict[str, Callable[[], object]], key: str = "", prefer: Optional[str] = None,
           margin: float = 1.0, together: Optional[Together] = None) -> str:
    """The fastest of ``candidates`` (label → a call that runs a small probe of the real work).

    ``key`` names what else the answer depends on (a problem size bucket, a device).  With
    ``prefer``, another candidate wins only if it is at least ``margin`` times faster: for
    choices that change results (a compute precision), near-ties keep the safe default, so
    measurement noise cannot flip what a run computes.  With ``together`` (more than one copy),
    the candidates are timed in that many processes at once (:func:`time_together`); should that
    fail, here alone, and the choice says why.  Cached per machine (module docstring)."""
    if len(candidates) == 1:
        (only,) = candidates
        record(name, only, "the only candidate")
        return only
    if together is not None and together.copies > 1:
        key = f"{key} copies={together.copies}"
    else:
        together = None
    full_key = f"{name}|{key}|{_fingerprint()}"
    use_cache = os.environ.get("DATAMODELS_NO_CHOICE_CACHE") != "1"
    here = _MEASURED.get(full_key)
    if here and here["value"] in candidates:
        record(name, here["value"], "measured earlier in this process", here["seconds"])
        return here["value"]
    cached = _read_cache().get(full_key) if use_cache else None
    if cached and cached.get("value") in candidates:
        record(name, cached["value"], "measured earlier on this machine (cached)", cached.get("seconds"))
        return cached["value"]
    how = "measured now"
    seconds = None
    if together is not None:
        try:
            seconds = time_together(together)
            if set(seconds) != set(candidates):
                raise RuntimeError(f"the probe processes built {sorted(seconds)}, not {sorted(candidates)}")
            how += f", {together.copies} processes side by side"
        except RuntimeError as exc:
            seconds = None
            how += f", alone ({exc})"
    if seconds is None:
        seconds = {label: time_call(fn) for label, fn in candidates.items()}
    best = min(seconds, key=seconds.get)
    if prefer is not None and prefer in seconds and best != prefer and seconds[best] * margin > seconds[prefer]:
        best = prefer
    how += f" (others must be {margin:g}x faster than {prefer})" if prefer and margin != 1 else ""
    record(name, best, how, seconds)
    _MEASURED[full_key] = {"value": best, "seconds": seconds}
    if use_cache:
        _write_cache(full_key, {"value": best, "seconds": seconds})
    return best


def time_together(together: Together, repeats: int = 3, rounds: int = 3,
                  timeout_s: float = 120.0) -> Dict[str, float]:
    """Seconds per candidate of ``together.build(*args)`` run in ``together.copies`` fresh
    processes at once, candidate by candidate: all processes wait until every one is ready, then
    all time it (the median of ``repeats`` calls, after a warm-up in the first round).  Over
    processes the median, over ``rounds`` of all candidates the least: a burst of other load
    on a shared machine slows a round, it never speeds one up.  The processes are fresh
    interpreters (``python -m datamodels.hardware``), not forks of this one: torch's thread pools
    do not survive a fork, and a spawned copy of a user's script would rerun it.  Raises
    RuntimeError (one line) if a process fails or does not answer in ``timeout_s``."""
    spec = json.dumps({"build": together.build, "args": list(together.args), "threads": together.threads,
                       "repeats": repeats, "rounds": rounds, "path": sys.path})
    env = {**os.environ, "OMP_NUM_THREADS": str(together.threads), "MKL_NUM_THREADS": str(together.threads)}
    procs: List[subprocess.Popen] = []
    try:
        for _ in range(together.copies):
            procs.append(subprocess.Popen([sys.executable, "-m", "datamodels.hardware"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env))
    except OSError as exc:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise RuntimeError(f"cannot start a probe process: {exc}") from None
    lines = [queue.Queue() for _ in procs]  # per process: each says one line per step, in step

    def pump(proc, out):  # a reader per process, so that waiting on one has a deadline
        for line in proc.stdout:
            out.put(line)
        out.put(None)

    readers = [threading.Thread(target=pump, args=(p, q), daemon=True) for p, q in zip(procs, lines)]
    deadline = time.monotonic() + timeout_s

    def from_each() -> List[dict]:
        got = []
        for proc, out in zip(procs, lines):
            try:
                line = out.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"probe processes did not answer within {timeout_s:g} s") from None
            if line is None:
                raise RuntimeError(f"a probe process exited with code {proc.wait()}")
            message = json.loads(line)
            if "error" in message:
                raise RuntimeError(f"a probe process failed: {message['error']}")
            got.append(message)
        return got

    try:
        for proc in procs:
            proc.stdin.write(spec + "\n")
            proc.stdin.flush()
        for reader in readers:
            reader.start()
        labels = from_each()[0]["labels"]
        seconds: Dict[str, float] = {}
        for _ in range(rounds):
            for label in labels:
                from_each()  # every process is ready to time this candidate
                for proc in procs:
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                now = statistics.median(d["seconds"] for d in from_each())
                seconds[label] = min(now, seconds.get(label, now))
        return seconds
    except (OSError, ValueError, KeyError) as exc:
        raise RuntimeError(f"probe processes: {type(exc).__name__}: {exc}") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _probe_process() -> None:
    """One copy of :func:`time_together`'s probe: a JSON spec on stdin, JSON lines out."""
    def say(message):
        print(json.dumps(message), flush=True)

    try:
        spec = json.loads(sys.stdin.readline())
        sys.path[:] = spec["path"]
        import torch

        torch.set_num_threads(spec["threads"])
        module, function = spec["build"].split(":")
        candidates = getattr(importlib.import_module(module), function)(*spec["args"])
        say({"labels": list(candidates)})
        for round_ in range(spec["rounds"]):
            for label, fn in candidates.items():
                if round_ == 0:
                    fn()  # warm-up: builds the probe's state
                say({"ready": label})
                if sys.stdin.readline().strip() != "go":
                    return
                say({"label": label, "seconds": time_call(fn, spec["repeats"], warm_up=False)})
    except Exception as exc:  # reported to the parent, which falls back to timing alone
        say({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})


def choices() -> dict:
    """Every hardware-dependent choice made in this process so far: name → value, how, timings."""
    return {name: dict(entry) for name, entry in _CHOICES.items()}


if __name__ == "__main__":
    _probe_process()
