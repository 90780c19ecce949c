"""A worker that runs another worker (``worker.inner``) and logs where each ``train`` call's time went.

benchmarks/perf/training.py sweeps with it to split a sweep's wall time into training and everything
else (Ray scheduling, driver writes, idle slots).  Each Ray worker process appends one JSON line
per call to its own file in ``$TRAINING_BENCH_LOG``: models, wall-clock start and end (comparable
across the processes of one machine), when the process started and when it had imported this
module, CPU seconds, torch's thread count, and the seconds spent in phases (import: the inner
worker's module; for ``workers.mlp`` also data: reading the prepared data; setup: a stack's
initialisation and batch orders; fit: the SGD steps; predict: the margins).

The phases are timed by wrapping the inner worker's functions in this process only: the
measurement changes nothing the worker computes.
"""
import functools
import importlib
import json
import os
import time

_IMPORTED = time.time()  # when this Ray worker process got as far as this module
_PHASES = {}  # phase -> seconds, within the current call
_INSTRUMENTED = set()


def _timed(phase, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _PHASES[phase] = _PHASES.get(phase, 0.0) + time.perf_counter() - start
    return wrapper


def _instrument(inner) -> None:
    if inner.__name__ in _INSTRUMENTED:
        return
    _INSTRUMENTED.add(inner.__name__)
    if inner.__name__ == "workers.mlp":
        inner.load_split = _timed("data", inner.load_split)
        inner.targets = _timed("data", inner.targets)
        stack = inner._StackedMLP
        stack.__init__ = _timed("setup", stack.__init__)
        stack.fit = _timed("fit", stack.fit)
        stack.logits = _timed("predict", stack.logits)


def _inner(worker: dict):
    return importlib.import_module(worker["inner"])


def resolve(worker: dict, meta: dict, models_per_task: int = 0) -> dict:
    """The inner worker's resolution of ``auto`` settings, if it has one."""
    hook = getattr(_inner(worker), "resolve", None)
    if hook is None:
        return worker
    return {**hook({**worker, "name": worker["inner"]}, meta, models_per_task), "name": worker["name"]}


def default_models_per_task(worker: dict, meta: dict = None) -> int:
    hook = getattr(_inner(worker), "default_models_per_task", None)
    return hook({**worker, "name": worker["inner"]}, meta) if hook else 1


def train(masks, seeds, config):
    start, start_cpu = time.time(), time.process_time()
    _PHASES.clear()
    import_start = time.perf_counter()
    import psutil
    import torch
    _PHASES["import"] = time.perf_counter() - import_start

    worker = dict(config["worker"])
    inner = _timed("import", _inner)(worker)
    worker.pop("inner")
    worker["name"] = inner.__name__
    _instrument(inner)
    out = inner.train(masks, seeds, {**config, "worker": worker})
    end, cpu = time.time(), time.process_time() - start_cpu
    record = {"pid": os.getpid(), "process_started": psutil.Process().create_time(), "imported": _IMPORTED,
              "models": len(masks), "start": start, "end": end, "cpu": cpu,
              "threads": torch.get_num_threads(), "phases": dict(_PHASES)}
    with open(os.path.join(os.environ["TRAINING_BENCH_LOG"], f"{os.getpid()}.log"), "a") as f:
        f.write(json.dumps(record) + "\n")
    return out
