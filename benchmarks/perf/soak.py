"""Soak: a long digits sweep on a multi-node Ray cluster that keeps losing nodes and workers.

A head node (no task slots by default) and ``--nodes`` worker nodes, all on this machine
(``ray.cluster_utils.Cluster``), each worker node with its own data cache directory, so
the prepared data reaches every node through Ray's object store as on a cluster without a
shared file system.  While ``datamodels.sweep.sweep`` trains ``--num-models`` models with the
digits defaults (``configs/digits.yaml``; ``--epochs`` may shorten training), every
``--kill-every`` seconds a disturber thread

* removes a random worker node without warning and adds a fresh one (new cache directory),
* SIGKILLs a random Ray worker process of this cluster that is running a training task.

A run that injected fewer disturbances than asked (``--min-disturbances``, at least one of
each kind ``--disturb`` names) FAILS with the reason printed: a sweep that finishes before
the first disturbance tested nothing.

At the end it checks that every model was completed exactly once (the store's rows are all
complete, none recorded as failed, and the sweep wrote as many rows as the store has), then
retrains a random sample of rows without disturbance (``datamodels.sweep.train_masks`` with
the rows' own masks and seeds) and compares their margins with the store's, bit for bit.

    scripts/loopback.sh python benchmarks/perf/soak.py                   # -> benchmarks/results/soak.json
    scripts/loopback.sh python benchmarks/perf/soak.py --num-models 500 --kill-every 10 --out /tmp/soak.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))


def machine_info() -> dict:
    import ray

    from benchmarks.harness import machine_info as common  # CPU, capability, flags, versions, commit

    return {**common(), "ray": ray.__version__}


class Disturber:
    """Replaces a random worker node, and SIGKILLs a random training process of this cluster
    (found below its raylets, so no other Ray instance is touched).  Nodes are added from the
    main thread: Ray's node start installs signal handlers."""

    def __init__(self, cluster, nodes, cache_root: Path, node_cpus: int, seed: int):
        self.cluster, self.nodes, self.cache_root, self.node_cpus = cluster, nodes, cache_root, node_cpus
        self.rng = random.Random(seed)
        self.removals = self.kills = self.kill_misses = self.rounds = 0
        self.next_cache = len(nodes)

    def replace_node(self):
        victim = self.rng.choice(self.nodes)
        self.cluster.remove_node(victim, allow_graceful=False)
        self.nodes.remove(victim)
        self.removals += 1
        self.nodes.append(add_node(self.cluster, self.cache_root, self.next_cache, self.node_cpus))
        self.next_cache += 1

    def kill_worker(self):
        targets = training_processes(self.nodes)
        if not targets:
            self.kill_misses += 1
            return
        try:
            os.kill(self.rng.choice(targets), signal.SIGKILL)
        except ProcessLookupError:
            self.kill_misses += 1
            return
        self.kills += 1


def add_node(cluster, cache_root: Path, index: int, cpus: int):
    cache = cache_root / f"node{index}"
    return cluster.add_node(num_cpus=cpus, env_vars={"DATAMODELS_CACHE": str(cache)})


def training_processes(nodes) -> list:
    """PIDs of Ray worker processes, below these nodes' raylets, that are running a task."""
    import psutil

    pids = []
    for node in list(nodes):
        for info in node.all_processes.get("raylet", []):
            try:
                children = psutil.Process(info.process.pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                try:
                    if "ray::run_task" in " ".join(child.cmdline()):
                        pids.append(child.pid)
                except psutil.Error:
                    continue
    return pids


def verdict_reasons(result: dict, args) -> list:
    """Why the run fails, empty when it passes.  A run that injected no disturbance (or fewer
    than asked) fails too: it shows nothing about surviving faults."""
    reasons = []
    if not result:
        return ["the run produced no results"]
    if result["lost"]:
        reasons.append(f"{result['lost']} models were never completed")
    if result["failed"]:
        reasons.append(f"{result['failed']} models were recorded as failed")
    if result["written_more_than_once"]:
        reasons.append(f"{result['written_more_than_once']} models were written more than once")
    if not result["reference"]["bitwise_equal"]:
        reasons.append(f"{result['reference']['rows_differing']} retrained rows differ from the store")
    injected = result["node_removals"] + result["worker_kills"]
    if injected == 0:
        reasons.append(f"no disturbance was injected: the sweep took {result['sweep_wall_s']} s and the first "
                       f"disturbance was due after {args.kill_every} s (use more --num-models or a smaller "
                       f"--kill-every)")
    elif injected < args.min_disturbances:
        reasons.append(f"only {injected} disturbances were injected, fewer than --min-disturbances "
                       f"{args.min_disturbances}")
    if injected and args.disturb in ("both", "workers") and result["worker_kills"] == 0:
        reasons.append(f"no training process was killed ({result['worker_kill_misses']} attempts found none)")
    if injected and args.disturb in ("both", "nodes") and result["node_removals"] == 0:
        reasons.append("no worker node was replaced")
    return reasons


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    parser.add_argument("--num-models", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=None, help="worker.epochs (default: the config's)")
    parser.add_argument("--models-per-task", type=int, default=25)
    parser.add_argument("--nodes", type=int, default=3, help="worker nodes, kept at this number")
    parser.add_argument("--node-cpus", type=int, default=1, help="task slots per worker node")
    parser.add_argument("--head-cpus", type=int, default=0,
                        help="task slots on the head node, which is never disturbed (default 0: none)")
    parser.add_argument("--kill-every", type=float, default=10.0, help="seconds between disturbances")
    parser.add_argument("--disturb", choices=["both", "nodes", "workers"], default="both",
                        help="what each disturbance does: replace a node, kill a worker process, or both")
    parser.add_argument("--min-disturbances", type=int, default=1,
                        help="fail unless at least this many disturbances (node replacements plus worker kills) "
                             "were injected, and at least one of each kind --disturb names")
    parser.add_argument("--max-retries", type=int, default=50,
                        help="retries per task; generous, since every disturbance fails the tasks it hits")
    parser.add_argument("--reference-rows", type=int, default=250, help="rows retrained without disturbance")
    parser.add_argument("--seed", type=int, default=0, help="seed of the disturbances and the reference sample")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "soak.json"))
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    args = parser.parse_args(argv)

    import ray
    from ray.cluster_utils import Cluster

    from datamodels import config as config_lib
    from datamodels.prepare import prepare
    from datamodels.store import Store
    from datamodels.store import model_seeds
    from datamodels.sweep import sweep, train_masks

    info = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="datamodels-soak-"))
    overrides = [f"out={tmp / 'run'}", f"sweep.num_models={args.num_models}", "sweep.num_eval_models=0",
                 f"sweep.models_per_task={args.models_per_task}", f"sweep.max_retries={args.max_retries}",
                 f"seed={args.seed}"]
    if args.epochs is not None:
        overrides.append(f"worker.epochs={args.epochs}")
    cfg = config_lib.load(args.config, overrides)
    prepare(cfg, progress=False)  # on the driver's machine only: the nodes get it through Ray

    settings = {"config": os.path.relpath(args.config, ROOT), "overrides": overrides[1:],
                "num_models": args.num_models, "epochs": int(cfg.worker.epochs),
                "models_per_task": args.models_per_task,
                "worker": config_lib.to_dict(cfg.worker), "alpha": float(cfg.sweep.alpha),
                "nodes": args.nodes, "node_cpus": args.node_cpus, "head_cpus": args.head_cpus,
                "kill_every_s": args.kill_every, "disturb": args.disturb, "max_retries": args.max_retries,
                "reference_rows": args.reference_rows, "seed": args.seed}
    print(json.dumps({"settings": settings}, indent=1), flush=True)

    caches = tmp / "caches"
    started = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": args.head_cpus, "env_vars": {"DATAMODELS_CACHE": str(caches / "head")}})
    nodes = [add_node(cluster, caches, i, args.node_cpus) for i in range(args.nodes)]
    disturber = Disturber(cluster, nodes, caches, args.node_cpus, args.seed)
    result = {}
    try:
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
        startup_s = time.time() - started
        print(f"cluster of {args.nodes} worker nodes up in {startup_s:.1f} s", flush=True)

        outcome = {}

        def run_sweep():
            try:
                outcome["summary"] = sweep(cfg, progress=True)
            except BaseException as exc:  # re-raised in the main thread
                outcome["error"] = exc

        sweep_started = time.time()
        thread = threading.Thread(target=run_sweep, daemon=True)
        thread.start()
        while True:
            thread.join(timeout=args.kill_every)
            if not thread.is_alive():
                break
            disturber.rounds += 1
            if args.disturb in ("both", "workers"):
                disturber.kill_worker()
            if args.disturb in ("both", "nodes"):
                disturber.replace_node()
        sweep_s = time.time() - sweep_started
        if "error" in outcome:
            raise outcome["error"]
        summary = outcome["summary"]
        print(f"sweep done in {sweep_s:.1f} s: {summary['trained']} models trained, {summary['retried']} task "
              f"retries, {disturber.removals} nodes replaced, {disturber.kills} workers killed", flush=True)

        store = Store(summary["store"])
        completed = np.asarray(store.completed, dtype=bool)
        rng = np.random.default_rng(args.seed)
        rows = np.sort(rng.choice(store.num_models, size=min(args.reference_rows, store.num_models), replace=False))
        ref_started = time.time()
        reference = train_masks(cfg, np.asarray(store.masks[rows]), model_seeds(store.seed, rows), progress=False)
        ref_s = time.time() - ref_started
        stored = np.asarray(store.margins[rows], dtype=np.float32)
        equal = np.array_equal(reference, stored)
        result = {
            "models": store.num_models,
            "completed": int(completed.sum()),
            "trained_by_this_sweep": int(summary["trained"]),
            "written_more_than_once": int(summary["trained"]) - int(completed.sum()),
            "failed": len(summary["failed"]) + len(store.failures()),
            "lost": int(store.num_models - completed.sum()),
            "retried_tasks": int(summary["retried"]),
            "node_removals": disturber.removals,
            "worker_kills": disturber.kills,
            "worker_kill_misses": disturber.kill_misses,
            "disturbance_rounds": disturber.rounds,
            "cluster_startup_s": round(startup_s, 1),
            "sweep_wall_s": round(sweep_s, 1),
            "models_per_s": round(summary["trained"] / sweep_s, 2),
            "reference": {"rows": int(len(rows)), "bitwise_equal": bool(equal),
                          "rows_differing": int((reference != stored).any(axis=1).sum()),
                          "max_abs_diff": float(np.abs(reference - stored).max()), "wall_s": round(ref_s, 1)},
            "node_caches_used": sum(1 for c in caches.glob("*") if any(c.glob("*/meta.json"))),
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    info["load_average_at_end"] = list(os.getloadavg())
    reasons = verdict_reasons(result, args)
    ok = not reasons
    out = {"benchmark": "soak: digits sweep while worker nodes are replaced and training processes killed",
           "machine": info, "settings": settings, "results": result, "passed": bool(ok), "reasons": reasons,
           "total_wall_s": round(time.time() - started, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["results"], indent=1))
    for reason in reasons:
        print(f"FAILED: {reason}", flush=True)
    print(f"{'PASSED' if ok else 'FAILED'}; wrote {args.out}", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["passed"] else 1)
