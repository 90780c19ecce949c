"""Training throughput of the digits sweep against the worker alone, and where the difference goes.

For each setting (precision, K models per task) it runs, interleaved, in one process:

* **standalone**: the worker alone (``workers.mlp.train_arrays`` on the data in memory, one
  torch thread, no Ray), models per wall second and per CPU second;
* **sweep**: the real sweep (``datamodels.sweep.sweep``: Ray tasks of ``sweep.cpus_per_task``
  CPUs, data read through FFCV, driver-side store writes) of the default digits config with
  fewer models, models per wall second;

and prints the **ratio** sweep / (task slots x standalone): the share of the machine that went
into training at the worker's own speed.  Beside it, the standalone loop in one process per
task slot at once (``side_by_side``): what the cores deliver for this work when all run it,
without Ray, FFCV or a driver, and the sweep's ratio to that.  The rest is broken down from
per-task timestamps logged inside the Ray tasks (``benchmarks/perf/timed_worker.py``), as shares of the sweep's
slot-seconds (task slots x wall seconds):

* ``train_slower_than_alone``: a task's ``train`` call took longer than the same models alone
  (``descheduled``: of that, wall minus CPU time, i.e. waiting for a core; ``data``: reading the
  prepared data, once per process; the rest: the same work done slower, e.g. contention for
  caches and memory between the two processes);
* ``between_tasks``: a worker process idle between two of its tasks (Ray scheduling and
  transfers, and a driver busy writing results);
* ``head``: from the call of ``sweep`` to each slot's first task (store and mask writes, the
  worker's settings resolved, submission);
* ``tail``: from each slot's last task to the return of ``sweep`` (slots idle while the last
  tasks finish, the last writes).

Ray is started and its worker processes warmed up (torch import, FFCV pipeline compile, data
cache) before the timed runs; those one-off costs are reported as ``startup_s``.  Models per
task K and the precision may be ``auto``: resolved as the sweep resolves them (the worker's
measured, cached choice on this machine).  Beside them, optionally, ``benchmarks/perf/plain_mlp.py``:
the same model the plain PyTorch way (nn.Module, autograd, torch.optim), one model per task.

Wall-clock figures suffer from anything else running on the machine (load averages recorded).

    python benchmarks/perf/training.py                    # -> benchmarks/results/training_cpu.json (AVX512 CPU)
                                                     #    or training_cpu_avx2_native.json (AVX2-only CPU)
    python benchmarks/perf/training.py --emulate-avx2     # torch limited to AVX2 kernels -> training_cpu_avx2.json
    python benchmarks/perf/training.py --ks auto --repeats 3 --num-models 1200
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
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))  # timed_worker and plain_mlp, imported by name as workers
sys.path.insert(0, str(ROOT))
# Torch reads these when it loads its kernels: an AVX2-only machine's kernels on this CPU.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


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


def read_log(log_dir: Path) -> list:
    """The records the tasks logged since the last call (and forget them)."""
    records = []
    for path in log_dir.glob("*.log"):
        records += [json.loads(line) for line in path.read_text().splitlines() if line]
        path.unlink()
    return records


def cpu_seconds() -> dict:
    """CPU seconds used so far: by the machine, and per process, labelled ``driver`` (this one),
    ``ours`` (its descendants: Ray's processes and worker processes) or ``other``."""
    import psutil

    me = os.getpid()
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    busy = psutil.cpu_times()
    out = {"machine": busy.user + busy.system + getattr(busy, "nice", 0.0) + getattr(busy, "irq", 0.0)
           + getattr(busy, "softirq", 0.0)}
    for p in psutil.process_iter(["pid", "cpu_times", "create_time"]):
        times = p.info["cpu_times"]
        if times is not None:
            kind = "driver" if p.info["pid"] == me else "ours" if p.info["pid"] in ours else "other"
            out[p.info["pid"], p.info["create_time"]] = (kind, times.user + times.system)
    return out


def cpu_use(before: dict, after: dict, worker_pids: set, wall: float) -> dict:
    """Cores used during a sweep: by the whole machine, and by the processes alive at both ends:
    the driver, Ray's own, its workers and other work (a cold sweep's Ray processes live only
    inside it: there ``machine`` minus the rest is Ray's)."""
    use = {"machine": after["machine"] - before["machine"], "driver": 0.0, "workers": 0.0, "ray_system": 0.0,
           "others": 0.0}
    for key, (kind, seconds) in ((k, v) for k, v in after.items() if k != "machine" and k in before):
        spent = seconds - before[key][1]
        if kind == "driver":
            use["driver"] += spent
        elif kind == "ours":
            use["workers" if key[0] in worker_pids else "ray_system"] += spent
        else:
            use["others"] += spent
    return {k: round(v / wall, 3) for k, v in use.items()}


def breakdown(records: list, t0: float, t1: float, slots: int, standalone_rate: float) -> dict:
    """Where the sweep's slot-seconds (slots x wall) went, as shares that sum to 1 (``unaccounted``:
    the rest, non-zero when Ray ran more worker processes than there are slots, see ``processes``).

    ``training_at_standalone_speed`` (= the ratio): the models at the worker's standalone rate.
    ``startup``: from the call of ``sweep`` to each slot's first task (Ray started, store and masks
    written, worker process started, Python and Ray imported: ``to_process_start``,
    ``process_to_first_task``), plus the one-off work inside the first tasks (the worker module
    and torch imported, the data read through FFCV with its pipeline compiled: ``import``, ``data``).
    ``train_slower_than_alone``: the rest of the tasks' ``train`` time beyond the standalone rate
    (``descheduled``: wall minus CPU time inside ``train``, waiting for a core).
    ``between_tasks``: a worker process idle between two of its tasks (Ray's dispatch, transfers,
    a busy driver).  ``tail``: each slot's idle time after its last task (imbalance, last writes)."""
    total = slots * (t1 - t0)
    by_pid = {}
    for r in sorted(records, key=lambda r: r["start"]):
        by_pid.setdefault(r["pid"], []).append(r)
    models = sum(r["models"] for r in records)
    phases = {}
    for r in records:
        for name, seconds in r["phases"].items():
            phases[name] = phases.get(name, 0.0) + seconds
    one_off = phases.get("import", 0.0) + phases.get("data", 0.0)
    firsts = [rs[0] for rs in by_pid.values()]
    head = sum(r["start"] - t0 for r in firsts)
    to_process = sum(min(max(0.0, r["process_started"] - t0), r["start"] - t0) for r in firsts)
    alone = models / standalone_rate
    parts = {
        "training_at_standalone_speed": alone,
        "startup": head + one_off,
        "train_slower_than_alone": sum(r["end"] - r["start"] for r in records) - one_off - alone,
        "between_tasks": sum(b["start"] - a["end"] for rs in by_pid.values() for a, b in zip(rs, rs[1:])),
        "tail": sum(t1 - rs[-1]["end"] for rs in by_pid.values()),
    }
    parts["unaccounted"] = total - sum(parts.values())
    out = {k: round(v / total, 4) for k, v in parts.items()}
    out["of_startup"] = {k: round(v / total, 4) for k, v in {
        "to_process_start": to_process, "process_to_first_task": head - to_process,
        "import": phases.get("import", 0.0), "data": phases.get("data", 0.0)}.items()}
    out["of_train_slower"] = {"descheduled": round(sum(r["end"] - r["start"] - r["cpu"] for r in records) / total, 4)}
    out["train_phases_s"] = {k: round(v, 3) for k, v in sorted(phases.items())}
    out["processes"] = len(by_pid)
    out["torch_threads_in_tasks"] = sorted({r["threads"] for r in records})
    out["tasks"] = len(records)
    out["slot_seconds"] = round(total, 3)
    return out


class Standalone:
    """The worker alone on the prepared data in memory, one torch thread (as in a one-CPU task)."""

    def __init__(self, data_dir: Path, base: dict):
        from datamodels.store import model_seed, subset_mask
        from workers.common import load_split, targets

        x, y = load_split(str(data_dir), "train")
        self.arrays = (x, y, *targets(str(data_dir), base["data"]["targets"]))
        self.settings = {k: v for k, v in base["worker"].items() if k != "name"}
        count = 400
        self.masks = np.stack([subset_mask(base["seed"], i, len(y), base["sweep"]["alpha"]) for i in range(count)])
        self.seeds = np.array([model_seed(base["seed"], i) for i in range(count)])

    def rate(self, precision: str, k: int, seconds: float, start_at: float = 0.0) -> dict:
        """Models, wall and CPU seconds of tasks of ``k`` models trained for about ``seconds`` (at
        least three tasks): long enough to see the slow spells of a shared virtual machine's CPU
        as often as a sweep of the same length does.  ``start_at``: a time.time() to wait for
        after the warm-up, so that copies in several processes time the same span."""
        import torch

        from workers import mlp

        cfg = mlp.Config(**{**self.settings, "precision": precision})
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            mlp.train_arrays(*self.arrays, self.masks[:k], self.seeds[:k], cfg)  # warm-up
            time.sleep(max(0.0, start_at - time.time()))
            models, calls = 0, 0
            wall, cpu = time.perf_counter(), time.process_time()
            while calls < 3 or time.perf_counter() - wall < seconds:
                first = (calls * k) % (len(self.masks) - k + 1)
                mlp.train_arrays(*self.arrays, self.masks[first:first + k], self.seeds[first:first + k], cfg)
                models, calls = models + k, calls + 1
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            torch.set_num_threads(threads)
        return {"models": models, "wall_s": wall, "cpu_s": cpu}


def _standalone_copy(data_dir: str, base: dict, precision: str, k: int, seconds: float, start_at: float) -> dict:
    return Standalone(Path(data_dir), base).rate(precision, k, seconds, start_at)


def side_by_side(data_dir: Path, base: dict, precision: str, k: int, seconds: float, copies: int) -> dict:
    """The standalone loop in ``copies`` processes at once, one per task slot, timed over the same
    span: what this machine's cores deliver for this work when all of them run it, without Ray,
    FFCV or a driver.  On a CPU whose cores share execution units or caches (SMT siblings,
    a busy host) this is below copies x the one-copy rate, and no sweep can beat it."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process with torch's thread pools
    with ctx.Pool(copies) as pool:
        start_at = time.time() + 15.0  # spawn, imports, data and a warm-up task fit well within
        results = pool.starmap(_standalone_copy, [(str(data_dir), base, precision, k, seconds, start_at)] * copies)
    return {"models_per_s": round(sum(r["models"] / r["wall_s"] for r in results), 2),
            "per_copy_models_per_s": [round(r["models"] / r["wall_s"], 2) for r in results]}


def bf16_slowdown() -> float:
    """How much slower a bf16 batched matmul of the worker's shape runs than float32 here: ~0.5x
    with AVX512-BF16/AMX, several times slower without (so an emulated AVX2 machine shows it)."""
    import torch

    from datamodels.hardware import time_call

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(25, 64, 65), torch.randn(25, 65, 64)
        seconds = {}
        for dtype in (torch.float32, torch.bfloat16):
            x, y = a.to(dtype), b.to(dtype)
            seconds[dtype] = time_call(lambda: [torch.bmm(x, y) for _ in range(50)], repeats=5)
    finally:
        torch.set_num_threads(threads)
    return round(seconds[torch.bfloat16] / seconds[torch.float32], 2)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    parser.add_argument("--precisions", default="auto",
                        help="comma-separated: float32, bfloat16, auto (the worker's choice on this machine)")
    parser.add_argument("--cold-models", type=int, default=10500,
                        help="models of the headline sweep, run as `datamodels sweep` runs it (Ray started by the "
                             "sweep, fresh worker processes); default: the digits config's 10,000 + 500; 0: skip")
    parser.add_argument("--cold-ks", default="auto", help="models per task of the headline sweeps")
    parser.add_argument("--ks", default="1,100",
                        help="models per task compared on a warm Ray (worker processes started, data cached); "
                             "auto: the sweep's default; empty: skip")
    parser.add_argument("--num-models", type=int, default=1200, help="models per warm sweep")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting; tables show medians")
    parser.add_argument("--standalone-s", type=float, default=16.0,
                        help="seconds of standalone training per sweep, half before it and half after")
    parser.add_argument("--plain-models", type=int, default=0,
                        help="also time the plain PyTorch reference (benchmarks/perf/plain_mlp.py, K = 1) on this "
                             "many models per warm run (it is slow; ~150 is plenty)")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help=f"run with {' '.join(f'{k}={v}' for k, v in AVX2_ENV.items())}: torch's kernels of "
                             f"an AVX2-only machine (default --out: training_cpu_avx2.json)")
    parser.add_argument("--out", default=None,
                        help="JSON file (default benchmarks/results/training_cpu[_avx2|_avx2_native].json)")
    args = parser.parse_args(argv)

    if args.emulate_avx2 and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        # Torch picks its kernels when it loads, and Ray's worker processes inherit the environment:
        # start again with the limits in place from the first import on.
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], {**os.environ, **AVX2_ENV})

    log_dir = Path(tempfile.mkdtemp(prefix="training-bench-log-"))
    os.environ["TRAINING_BENCH_LOG"] = str(log_dir)
    # Ray's worker processes inherit the environment: this is how they find timed_worker.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(ROOT), os.environ.get("PYTHONPATH")]))
    import ray

    from datamodels import config as config_lib
    from datamodels import hardware
    from datamodels.prepare import prepare, read_meta
    from datamodels.store import Store
    from datamodels.sweep import resolve_worker, sweep
    from benchmarks.harness import machine_info, save_result

    info = machine_info("ray")
    info["bf16_matmul_x_slower_than_float32"] = bf16_slowdown()
    if args.emulate_avx2 and info["cpu_capability"] != "AVX2":
        sys.exit(f"--emulate-avx2: torch still dispatches to {info['cpu_capability']} kernels")
    # training_cpu.json: an AVX512 CPU; _avx2: the same limited to AVX2; _avx2_native: an AVX2-only CPU.
    native = "" if args.emulate_avx2 or info["cpu_capability"].startswith("AVX512") else \
        f"_{info['cpu_capability'].lower()}_native"
    name = f"training_cpu{'_avx2' if args.emulate_avx2 else native}.json"
    out_path = Path(args.out or HERE.parent / "results" / name)
    base = config_lib.to_dict(config_lib.load(args.config))
    slots = int(os.cpu_count() // max(1, base["sweep"]["cpus_per_task"]))

    tmp = Path(tempfile.mkdtemp(prefix="training-bench-"))
    runs, standalone_runs, margins, startup = [], [], {}, {}
    try:
        data_dir = prepare(config_lib.from_dict({**base, "out": str(tmp / "prepared")}), progress=False)
        meta = read_meta(data_dir)

        def settings_for(ks: str) -> list:
            """(label, precision, K) as the sweep resolves them: ``auto`` is the worker's cached choice."""
            out = []
            for precision in args.precisions.split(","):
                for k in filter(None, ks.split(",")):
                    cfg = config_lib.from_dict({**base, "worker": {**base["worker"], "precision": precision},
                                                "sweep": {**base["sweep"],
                                                          "models_per_task": 0 if k == "auto" else int(k)}})
                    worker, k_used = resolve_worker(cfg, meta)
                    label = f"{precision}{'=' + worker['precision'] if precision == 'auto' else ''}, K={k}" + \
                            (f"={k_used}" if k == "auto" else "")
                    if all(s["label"] != label for s in out):
                        out.append({"label": label, "precision": worker["precision"], "k": k_used})
            return out

        cold_settings = settings_for(args.cold_ks) if args.cold_models else []
        warm_settings = settings_for(args.ks)
        standalone = Standalone(data_dir, base)

        def timed_sweep(kind: str, s: dict, inner: str, repeat: int, num_models: int) -> None:
            """One sweep, between two standalone measurements of the same setting (the plain
            reference is scaled by the stacked worker's K = 1), whose mean is the standalone rate."""
            alone_as = {**s, "precision": "float32", "k": 1} if inner == "plain_mlp" else s
            before = standalone.rate(alone_as["precision"], alone_as["k"], args.standalone_s / 2)
            out = tmp / f"run-{len(runs)}"
            cfg = config_lib.from_dict(run_config(base, out, data_dir, num_models, s["k"], s["precision"], inner))
            cpu_before = cpu_seconds()
            t0 = time.time()
            sweep(cfg, progress=False)
            t1 = time.time()
            cpu_after = cpu_seconds()
            records = read_log(log_dir)
            after = standalone.rate(alone_as["precision"], alone_as["k"], args.standalone_s / 2)
            alone = {k: before[k] + after[k] for k in before}
            standalone_runs.append({"kind": kind, "label": s["label"], "repeat": repeat, **alone,
                                    "models_per_s": alone["models"] / alone["wall_s"],
                                    "models_per_cpu_s": alone["models"] / alone["cpu_s"],
                                    "before_after_models_per_s": [round(x["models"] / x["wall_s"], 2)
                                                                  for x in (before, after)]})
            rate = alone["models"] / alone["wall_s"]
            models = sum(r["models"] for r in records)
            run = {"kind": kind, "label": s["label"], "precision": s["precision"], "models_per_task": s["k"],
                   "repeat": repeat, "models": models, "wall_s": round(t1 - t0, 3),
                   "models_per_s": round(models / (t1 - t0), 2), "standalone_models_per_s": round(rate, 2),
                   "ratio": round(models / (t1 - t0) / (slots * rate), 4),
                   "breakdown": breakdown(records, t0, t1, slots, rate),
                   "cores_used": cpu_use(cpu_before, cpu_after, {r["pid"] for r in records}, t1 - t0)}
            pair = side_by_side(data_dir, base, alone_as["precision"], alone_as["k"], args.standalone_s / 2, slots)
            run["side_by_side_models_per_s"] = pair["models_per_s"]
            run["side_by_side_per_copy"] = pair["per_copy_models_per_s"]
            run["ratio_to_side_by_side"] = round(models / (t1 - t0) / pair["models_per_s"], 4)
            runs.append(run)
            if repeat == 0:
                margins[kind, s["label"]] = np.asarray(Store(out / "store").margins)
            shutil.rmtree(out)
            b = run["breakdown"]
            print(f"{kind} {s['label']:22s} {models:6d} models: sweep {run['models_per_s']:6.1f}/s, standalone "
                  f"{rate:6.1f}/s x {slots} (before, after: {standalone_runs[-1]['before_after_models_per_s']}), "
                  f"ratio {run['ratio']:.1%}; {slots} copies side by side {pair['per_copy_models_per_s']}/s, "
                  f"ratio to them {run['ratio_to_side_by_side']:.1%} | startup {b['startup']:.1%} {b['of_startup']}, "
                  f"slower in train "
                  f"{b['train_slower_than_alone']:.1%} (descheduled {b['of_train_slower']['descheduled']:.1%}), "
                  f"between tasks {b['between_tasks']:.1%}, tail {b['tail']:.1%}; torch threads "
                  f"{b['torch_threads_in_tasks']}; cores {run['cores_used']}", flush=True)

        def measure(kind: str, settings: list, num_models: int) -> None:
            # Repeats interleaved: a burst of other load on the machine then hits every setting alike.
            for repeat in range(args.repeats):
                for s in settings:
                    timed_sweep(kind, s, "workers.mlp", repeat, num_models)
                if kind == "warm" and args.plain_models:
                    timed_sweep(kind, {"label": "plain", "precision": "float32", "k": 1}, "plain_mlp", repeat,
                                args.plain_models)

        # The headline: the sweep as a user runs it, Ray and its worker processes started by the sweep.
        measure("cold", cold_settings, args.cold_models)
        if warm_settings:
            started = time.perf_counter()
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
            startup["ray_init_s"] = time.perf_counter() - started
            for precision in sorted({s["precision"] for s in warm_settings}):
                # Warm-up: every worker process imports torch, compiles the FFCV pipeline, caches the
                # data and creates its kernels, once.
                started = time.perf_counter()
                sweep(config_lib.from_dict(run_config(base, tmp / f"warmup-{precision}", data_dir, 4 * slots, 2,
                                                      precision)), progress=False)
                startup[f"warmup_{precision}_s"] = time.perf_counter() - started
            read_log(log_dir)
            measure("warm", warm_settings, args.num_models)
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)

    def median(values):
        return round(float(np.median(values)), 4)

    results = []
    labels = [("cold", s) for s in cold_settings] + [("warm", s) for s in warm_settings]
    if args.plain_models and warm_settings:
        labels.append(("warm", {"label": "plain", "precision": "float32", "k": 1}))
    for kind, s in labels:
        mine = [r for r in runs if r["kind"] == kind and r["label"] == s["label"]]
        alone = [r for r in standalone_runs if r["kind"] == kind and r["label"] == s["label"]]
        m = margins[kind, s["label"]]
        b = [r["breakdown"] for r in mine]
        row = {"kind": kind, "setting": s["label"], "precision": s["precision"], "models_per_task": s["k"],
               "models": mine[0]["models"], "repeats": len(mine),
               "models_per_s": median([r["models_per_s"] for r in mine]),
               "standalone_models_per_s": median([r["standalone_models_per_s"] for r in mine]),
               "standalone_models_per_cpu_s": median([r["models_per_cpu_s"] for r in alone]) if alone else None,
               "ratio": median([r["ratio"] for r in mine]),
               "side_by_side_models_per_s": median([r["side_by_side_models_per_s"] for r in mine]),
               "ratio_to_side_by_side": median([r["ratio_to_side_by_side"] for r in mine]),
               "breakdown": {key: median([x[key] for x in b])
                             for key in ("training_at_standalone_speed", "startup", "train_slower_than_alone",
                                         "between_tasks", "tail", "unaccounted")},
               "test_accuracy": round(float((m > 0).mean()), 4),
               "margin_spread": round(float(m.std(0).mean()), 4)}
        row["breakdown"]["of_startup"] = {key: median([x["of_startup"][key] for x in b]) for key in b[0]["of_startup"]}
        row["breakdown"]["of_train_slower"] = {"descheduled": median([x["of_train_slower"]["descheduled"] for x in b])}
        row["cores_used"] = {key: median([r["cores_used"][key] for r in mine]) for key in mine[0]["cores_used"]}
        results.append(row)
    # The same masks and seeds in every run: a model's margins must not depend on its task-mates.
    for r in results:
        same = [x for x in results if x["precision"] == r["precision"] and x["setting"] != "plain"]
        if r["setting"] != "plain" and len(same) > 1:
            rows = min(len(margins[x["kind"], x["setting"]]) for x in same)
            r["max_abs_margin_diff_vs_other_k"] = max(
                float(np.abs(margins[r["kind"], r["setting"]][:rows] - margins[x["kind"], x["setting"]][:rows]).max())
                for x in same)

    print(f"\n{info['cpu_model']}, torch kernels {info['cpu_capability']}, {slots} task slots, medians of "
          f"{args.repeats}; ratio = sweep / ({slots} x standalone one-thread rate)")
    print(f"{'':5s} {'setting':22s} {'models':>6s} {'sweep/s':>8s} {'alone/s':>8s} {'ratio':>6s} {'startup':>8s} "
          f"{'slower':>7s} {'between':>8s} {'tail':>6s} {'acc':>6s} {'side/s':>7s} {'vs side':>7s}")
    for r in results:
        b = r["breakdown"]
        print(f"{r['kind']:5s} {r['setting']:22s} {r['models']:6d} {r['models_per_s']:8.1f} "
              f"{r['standalone_models_per_s']:8.1f} {r['ratio']:6.1%} {b['startup']:8.1%} "
              f"{b['train_slower_than_alone']:7.1%} {b['between_tasks']:8.1%} {b['tail']:6.1%} "
              f"{r['test_accuracy']:6.3f} "
              f"{r['side_by_side_models_per_s']:7.1f} {r['ratio_to_side_by_side']:7.1%}")
    if startup:
        print("warm Ray's one-off startup: " + ", ".join(f"{k} {v:.1f}" for k, v in startup.items()))

    info["load_average_at_end"] = list(os.getloadavg())
    report = {
        "benchmark": "digits sweep throughput against the worker alone (ratio = sweep / (slots x standalone))",
        "cpu_capability": info["cpu_capability"],
        "machine": info,
        "settings": {"config": os.path.relpath(args.config, ROOT), "cold_models": args.cold_models,
                     "warm_models": args.num_models, "repeats": args.repeats, "task_slots": slots,
                     "worker": base["worker"], "alpha": base["sweep"]["alpha"], "emulated_avx2": args.emulate_avx2},
        "choices": hardware.choices(),
        "warm_startup_s": {k: round(v, 2) for k, v in startup.items()},
        "results": results,
        "runs": runs,
        "standalone": standalone_runs,
    }
    save_result(out_path, report)
    return report


if __name__ == "__main__":
    main()
