"""A worker that runs another worker (``worker.inner``) and logs how long its ``train`` took.

benchmarks/training.py sweeps with it to split a sweep's wall time into training and
everything else (Ray scheduling, data loading, store writes).  Each Ray worker process
appends ``<models> <wall seconds> <CPU seconds>`` lines to its own file in ``$TRAINING_BENCH_LOG``.
"""
import importlib
import os
import time


def train(masks, seeds, config):
    worker = dict(config["worker"])
    inner = importlib.import_module(worker.pop("inner"))
    worker["name"] = inner.__name__
    start, start_cpu = time.perf_counter(), time.process_time()
    out = inner.train(masks, seeds, {**config, "worker": worker})
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    with open(os.path.join(os.environ["TRAINING_BENCH_LOG"], f"{os.getpid()}.log"), "a") as f:
        f.write(f"{len(masks)} {elapsed:.6f} {cpu:.6f}\n")
    return out
