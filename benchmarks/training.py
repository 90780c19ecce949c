"""Training throughput of the digits sweep: one model per task (K = 1) against K models per task.

Runs the real sweep (``datamodels.sweep.sweep``: Ray tasks, driver-side store writes) with
the default digits config and fewer models, for K = 1 (one model per task, as the published
pipeline trains them) and larger K, all in one run with the same model, epochs and data, in
float32 (the default) and, where the CPU computes bf16 natively, bfloat16.  For each run it
reports models/s, the speed-up over K = 1 and the share of wall time spent outside training.
Beside them runs ``benchmarks/plain_mlp.py``, the same model trained the plain PyTorch way
(nn.Module, autograd, torch.optim, one model per task, as the published pipeline trains),
so the stacked worker's gain shows against both its own K = 1 and that reference.

Training time is measured inside the Ray tasks: the sweep runs ``benchmarks/timed_worker.py``,
which wraps ``workers.mlp`` and logs how long each ``train`` call took.  The share outside
training is ``1 - sum(train seconds) / (task slots * wall seconds)``: Ray scheduling, data
transfer, store writes, and slots left idle at the end of a sweep.  Ray is started (and its
worker processes warmed up: torch import, FFCV pipeline compile, data cache) before the timed
runs; those one-off costs are reported separately as ``startup_s``.  Wall-clock figures
suffer from anything else running on the machine (the load averages are recorded); the
``train_models_per_cpu_s`` column and the ``direct`` section (the worker alone on one thread,
timed in CPU seconds) do not.

    python benchmarks/training.py                      # writes benchmarks/results/training_cpu.json
    python benchmarks/training.py --num-models 300 --ks 1,100
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from machine import machine_info  # noqa: E402  (benchmarks/machine.py)


def run_config(base: dict, out: Path, data_dir: Path, num_models: int, k: int, precision: str,
               inner: str = "workers.mlp") -> dict:
    """The digits config with a fresh output directory (the prepared data copied in)."""
    shutil.copytree(data_dir, out / "data")
    cfg = json.loads(json.dumps(base))
    cfg["out"] = str(out)
    cfg["sweep"].update(num_models=num_models, num_eval_models=0, models_per_task=k)
    worker = {key: value for key, value in cfg["worker"].items() if key != "name"}
    cfg["worker"] = {"name": "timed_worker", "inner": inner, **worker, "precision": precision}
    return cfg


def logged_train_seconds(log_dir: Path) -> tuple:
    """Models trained, and wall and CPU seconds spent inside train(), since the last call."""
    models, seconds, cpu = 0, 0.0, 0.0
    for path in log_dir.glob("*.log"):
        for line in path.read_text().split("\n"):
            if line:
                m, s, c = line.split()
                models, seconds, cpu = models + int(m), seconds + float(s), cpu + float(c)
        path.unlink()
    return models, seconds, cpu


def direct(base: dict, ks, precisions, num_models: int) -> list:
    """The worker alone, without Ray or data loading: one thread, CPU seconds (immune to other load)."""
    import torch
    from sklearn.datasets import load_digits

    from datamodels.prepare import digits_split
    from datamodels.store import model_seed, subset_mask
    from workers import mlp

    torch.set_num_threads(1)
    d = load_digits()
    images, labels = d.images.astype(np.uint8)[..., None], d.target.astype(np.int64)
    train, test = digits_split(len(labels), base["data"]["num_test"], base["data"]["split_seed"])
    arrays = (images[train], labels[train], images[test], labels[test])
    settings = {k: v for k, v in base["worker"].items() if k != "name"}
    rows = []
    for precision in precisions:
        cfg = mlp.Config(**{**settings, "precision": precision})
        for k in ks:
            count = max(k, min(num_models, 200))
            masks = np.stack([subset_mask(0, i, len(train), base["sweep"]["alpha"]) for i in range(count)])
            seeds = np.array([model_seed(0, i) for i in range(count)])
            mlp.train_arrays(*arrays, masks[:k], seeds[:k], cfg)  # warm-up
            started = time.process_time()
            for first in range(0, count, k):
                mlp.train_arrays(*arrays, masks[first:first + k], seeds[first:first + k], cfg)
            rows.append({"precision": precision, "models_per_task": k, "models": count,
                         "models_per_cpu_s": round(count / (time.process_time() - started), 2)})
            print(f"direct {precision:9s} K={k:4d}  {rows[-1]['models_per_cpu_s']:8.1f} models per CPU second",
                  flush=True)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    parser.add_argument("--num-models", type=int, default=600)
    parser.add_argument("--ks", default="1,25,100", help="models per task to compare; 1 is always included")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting; the table shows medians")
    parser.add_argument("--precisions", default="auto", help="float32,bfloat16; auto: bfloat16 only if native")
    parser.add_argument("--plain-models", type=int, default=150,
                        help="models of the plain reference per run (it is slow; its rate does not depend on this)")
    parser.add_argument("--no-plain", dest="plain", action="store_false",
                        help="skip the plain PyTorch reference (benchmarks/plain_mlp.py, K = 1)")
    parser.add_argument("--no-direct", dest="direct", action="store_false",
                        help="skip timing the worker alone (no Ray, no data loading)")
    parser.add_argument("--out", default=str(HERE / "results" / "training_cpu.json"))
    args = parser.parse_args(argv)

    log_dir = Path(tempfile.mkdtemp(prefix="training-bench-log-"))
    os.environ["TRAINING_BENCH_LOG"] = str(log_dir)
    # Ray's worker processes inherit the environment: this is how they find timed_worker.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(HERE))
    import ray

    from datamodels import config as config_lib
    from datamodels.prepare import prepare
    from datamodels.store import Store
    from datamodels.sweep import sweep

    info = machine_info("ray")
    import torch

    info["native_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    ks = sorted({1, *(int(k) for k in args.ks.split(","))})
    precisions = (["float32", "bfloat16"] if info["native_bf16"] else ["float32"]) if args.precisions == "auto" \
        else args.precisions.split(",")
    base = config_lib.to_dict(config_lib.load(args.config))
    slots = os.cpu_count() // max(1, int(base["sweep"]["cpus_per_task"]))

    direct_rows = direct(base, ks, precisions, args.num_models) if args.direct else []
    tmp = Path(tempfile.mkdtemp(prefix="training-bench-"))
    runs, margins, startup = [], {}, {}
    try:
        data_dir = prepare(config_lib.from_dict({**base, "out": str(tmp / "prepared")}), progress=False)
        started = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
        startup["ray_init_s"] = time.perf_counter() - started
        for precision in precisions:
            # Warm-up: every worker process imports torch, compiles the FFCV pipeline, caches the data,
            # and creates its bf16/fp32 kernels, once; a long sweep pays this once per process.
            started = time.perf_counter()
            sweep(config_lib.from_dict(run_config(base, tmp / f"warmup-{precision}", data_dir, 2 * slots, 1,
                                                  precision)), progress=False)
            startup[f"warmup_{precision}_s"] = time.perf_counter() - started
        logged_train_seconds(log_dir)
        def timed_sweep(label: str, k: int, precision: str, inner: str, repeat: int, num_models: int) -> None:
            out = tmp / f"{label}-k{k}-{repeat}"
            cfg = config_lib.from_dict(run_config(base, out, data_dir, num_models, k, precision, inner))
            started = time.perf_counter()
            sweep(cfg, progress=False)
            wall = time.perf_counter() - started
            models, train_s, train_cpu_s = logged_train_seconds(log_dir)
            runs.append({"precision": label, "models_per_task": k, "repeat": repeat, "models": models,
                         "wall_s": round(wall, 3), "models_per_s": round(models / wall, 2),
                         "train_s": round(train_s, 3), "train_cpu_s": round(train_cpu_s, 3),
                         "share_outside_training": round(1 - train_s / (slots * wall), 4)})
            if repeat == 0:
                margins[label, k] = np.asarray(Store(out / "store").margins)
            shutil.rmtree(out)
            print(f"{label:9s} K={k:4d}  {models / wall:8.1f} models/s  "
                  f"outside training {runs[-1]['share_outside_training']:6.1%}", flush=True)

        # Repeats interleaved, so that a burst of other load on the machine hits every setting alike.
        for repeat in range(args.repeats):
            for precision in precisions:
                for k in ks:
                    timed_sweep(precision, k, precision, "workers.mlp", repeat, args.num_models)
            if args.plain:
                timed_sweep("plain", 1, "float32", "plain_mlp", repeat, args.plain_models)
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)

    results = []
    for precision in precisions:
        for k in ks:
            mine = [r for r in runs if r["precision"] == precision and r["models_per_task"] == k]
            m, ref = margins[precision, k], margins[precision, 1]
            results.append({
                "precision": precision, "models_per_task": k, "repeats": len(mine),
                "models_per_s": round(float(np.median([r["models_per_s"] for r in mine])), 2),
                "share_outside_training": round(float(np.median([r["share_outside_training"] for r in mine])), 4),
                "train_models_per_cpu_s": round(sum(r["models"] for r in mine) / sum(r["train_cpu_s"] for r in mine), 2),
                "test_accuracy": round(float((m > 0).mean()), 4),
                "margin_spread": round(float(m.std(0).mean()), 4),
                # The same masks and seeds in every run: a model's margins should not depend on its task-mates.
                "max_abs_margin_diff_vs_k1": float(np.abs(m - ref).max()),
            })
    if args.plain:
        mine = [r for r in runs if r["precision"] == "plain"]
        m = margins["plain", 1]
        plain = {"precision": "plain", "models_per_task": 1, "repeats": len(mine),
                 "models_per_s": round(float(np.median([r["models_per_s"] for r in mine])), 2),
                 "share_outside_training": round(float(np.median([r["share_outside_training"] for r in mine])), 4),
                 "train_models_per_cpu_s": round(sum(r["models"] for r in mine) / sum(r["train_cpu_s"] for r in mine), 2),
                 "test_accuracy": round(float((m > 0).mean()), 4), "margin_spread": round(float(m.std(0).mean()), 4)}
    reference = {r["precision"]: r for r in results if r["models_per_task"] == 1}
    for r in results:
        r["speedup_vs_k1_same_precision"] = round(r["models_per_s"] / reference[r["precision"]]["models_per_s"], 2)
        r["speedup_vs_k1_float32"] = round(r["models_per_s"] / reference["float32"]["models_per_s"], 2) \
            if "float32" in reference else None
        if args.plain:
            r["speedup_vs_plain_k1"] = round(r["models_per_s"] / plain["models_per_s"], 2)
    best = {p: max((r for r in results if r["precision"] == p), key=lambda r: r["models_per_s"]) for p in precisions}

    header = f"{'precision':9s} {'K':>4s} {'models/s':>9s} {'x K=1':>6s} {'x K=1 fp32':>10s} {'outside':>8s} " \
             f"{'per CPU-s':>9s} {'acc':>6s} {'spread':>6s} {'max|dm|':>8s}"
    print(f"\nmedians of {args.repeats} runs of {args.num_models} models\n" + header)
    for r in results:
        print(f"{r['precision']:9s} {r['models_per_task']:4d} {r['models_per_s']:9.1f} "
              f"{r['speedup_vs_k1_same_precision']:6.2f} {r['speedup_vs_k1_float32'] or float('nan'):10.2f} "
              f"{r['share_outside_training']:8.1%} {r['train_models_per_cpu_s']:9.1f} {r['test_accuracy']:6.3f} "
              f"{r['margin_spread']:6.3f} {r['max_abs_margin_diff_vs_k1']:8.2g}")
    if args.plain:
        print(f"plain PyTorch, K=1: {plain['models_per_s']:.1f} models/s, accuracy {plain['test_accuracy']:.3f}, "
              f"spread {plain['margin_spread']:.3f}")
    print("startup (one-off): " + ", ".join(f"{k} {v:.1f}" for k, v in startup.items()))

    info["load_average_at_end"] = list(os.getloadavg())
    report = {
        "benchmark": "digits sweep throughput, K models per task",
        "machine": info,
        "settings": {"config": os.path.relpath(args.config, ROOT), "num_models": args.num_models,
                     "repeats": args.repeats,
                     "task_slots": slots, "worker": base["worker"], "alpha": base["sweep"]["alpha"]},
        "startup_s": {k: round(v, 2) for k, v in startup.items()},
        "results": results,
        "runs": runs,
        "direct": direct_rows,
        "best": {p: {"models_per_task": r["models_per_task"], "models_per_s": r["models_per_s"],
                     "speedup_vs_k1_same_precision": r["speedup_vs_k1_same_precision"],
                     "speedup_vs_k1_float32": r["speedup_vs_k1_float32"],
                     "share_outside_training": r["share_outside_training"],
                     **({"speedup_vs_plain_k1": r["speedup_vs_plain_k1"]} if args.plain else {})}
                 for p, r in best.items()},
        "plain_k1": plain if args.plain else None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
