"""``benchmarks/perf/regression.py --size scale``: time and peak memory of ``datamodels fit`` as the
number of training examples N grows, against the memory bound and the machine's GEMM rate.

For each N a synthetic store in the project's layout (T targets, each a few planted weights
plus small dense ones and noise; ``regression.synthetic_store``), M fitting and E held-out
models.  ``datamodels.fit`` runs in a fresh process under ``/usr/bin/time -v`` (peak RSS),
which also reports, from inside the fit:

- seconds reading the store and accumulating XᵀX, and the rest (path and refit);
- the XᵀX rate (2·M·N² flops over the reading time) against the same process's GEMM rate for
  the chosen kernel on one chunk of the same shape, measured just before the fit;
- seconds per λ step of the path (the median over steps), and the mean support size;
- the estimate ``datamodels.regression.memory_estimate`` made, and the bound the README states:
  2 · N² · (bytes of a Gram entry) + O(N·T) + 1.5 GiB.

The held-out LDS is reported beside the planted truth's own LDS (the oracle) on the same models.

    python benchmarks/perf/regression.py --size scale                       # N = 2,000 ... 20,000
    python benchmarks/perf/regression.py --size scale --n 50000 --models 3000
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import save_result

HERE = Path(__file__).resolve().parent

CHILD = r'''
import importlib, json, statistics, sys, time
import numpy as np, torch
from datamodels.regression import api as F, gram, solver, stats
from datamodels import artifacts, hardware
from datamodels.store import Store

store_path, out = sys.argv[1], sys.argv[2]
store = Store(store_path)
N, rows = store.num_train, store.rows("fit")
kernel = gram.GRAM_KERNELS[gram.gram_kernel(N, "cpu", len(rows))]
m = min(stats.chunk_step(8192, N), len(rows))
x = torch.from_numpy(np.asarray(store.masks[rows[:m]]))
xx = torch.zeros(N, N)
times = []
for _ in range(3):
    t = time.perf_counter(); kernel(x, x.float(), out=xx); times.append(time.perf_counter() - t)
gemm_rate = 2 * m * N * N / statistics.median(times)
del x, xx
phases, steps = {}, []
def timed(name, f):
    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
    return g
F.accumulate = timed("read_s", F.accumulate)
F.solve_path = timed("solve_s", F.solve_path)
solve = solver.Lasso.solve
def step(self, C, lam, W, R, lam_prev):
    t = time.perf_counter(); res = solve(self, C, lam, W, R, lam_prev)
    steps.append((time.perf_counter() - t, float((res[0] != 0).sum(0).float().mean())))
    print(f"solve {len(steps)}: {steps[-1][0]:.2f} s, mean support {steps[-1][1]:.0f}", file=sys.stderr, flush=True)
    return res
solver.Lasso.solve = step
t = time.perf_counter()
dm = F.fit(store_path, progress=False)
total = time.perf_counter() - t
artifacts.save(dm, out)
path = steps[:-1]  # the last solve is the refit
print(json.dumps({**phases, "total_s": total, "gemm_rate_gflops": gemm_rate / 1e9,
                  "xtx_rate_gflops": 2 * len(rows) * N * N / phases["read_s"] / 1e9,
                  "gram_kernel": hardware.choices().get("fit.gram_kernel.cpu", {}).get("value"),
                  "path_steps": len(path), "step_s_median": statistics.median(s for s, _ in path),
                  "step_s_max": max(s for s, _ in path), "support_mean": statistics.mean(n for _, n in path),
                  "refit_s": steps[-1][0]}))
'''


def _save(args, sizes, machine, results) -> Path:
    report = {"size": "scale", "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
              "settings": {"kernel": "chosen by datamodels.fit (probe)", "peak": "/usr/bin/time -v, max RSS",
                           "models": "M = min(2N, 6000) unless --models"},
              "results": results}
    name = f"regression_scale{'_' + '_'.join(map(str, sizes)) if args.n else ''}.json"
    path = Path(args.out) if args.out else HERE.parent / "results" / name
    return save_result(path, report)


def run(args, synthetic_store, machine_info) -> int:
    from datamodels.evaluate import lds
    from datamodels.artifacts import load
    from datamodels.regression import memory_estimate

    sizes = [int(n) for n in str(args.n).split(",")] if args.n else [2000, 5000, 10000, 20000]
    results = []
    machine = machine_info("scipy")
    for N in sizes:
        M = args.models or min(2 * N, 6000)
        with tempfile.TemporaryDirectory(prefix="fit_scale_") as tmp:
            store_path, out = Path(tmp) / "store", Path(tmp) / "dm.npz"
            print(f"N = {N:,}: building a store with {M:,} fitting and {args.eval:,} held-out models ...", flush=True)
            t = time.perf_counter()
            store, weight, bias = synthetic_store(store_path, num_train=N, num_targets=args.targets, num_fit=M,
                                                  num_eval=args.eval, planted=10, return_truth=True)
            built_s = time.perf_counter() - t
            # The child's λ steps go to the terminal as they finish (a large N takes many minutes);
            # /usr/bin/time's report goes to a file.
            timing = Path(tmp) / "time.txt"
            proc = subprocess.run(["/usr/bin/time", "-v", "-o", str(timing), sys.executable, "-c", CHILD,
                                   str(store_path), str(out)], stdout=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                print(f"the fit failed with exit code {proc.returncode}", file=sys.stderr)
                return 1
            inside = json.loads(proc.stdout.strip().splitlines()[-1])
            peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", timing.read_text()).group(1)) * 1024
            dm = load(out)
            truth = {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32),
                     "targets": np.arange(args.targets)}
            estimate = memory_estimate(N, args.targets, M)
            bound = 2 * N * N * 4 + 2 * estimate["targets"] + 1.5 * 2 ** 30
            r = {"num_train": N, "num_targets": args.targets, "num_fit_models": M, "num_eval_models": args.eval,
                 "store_build_s": built_s, **inside, "peak_rss_mib": peak / 2 ** 20,
                 "one_gram_mib": N * N * 4 / 2 ** 20, "estimate_mib": estimate["host"] / 2 ** 20,
                 "bound_mib": bound / 2 ** 20, "within_bound": bool(peak <= bound),
                 "xtx_share_of_gemm_rate": inside["xtx_rate_gflops"] / inside["gemm_rate_gflops"],
                 "lds": lds(store, dm)["lds"], "oracle_lds": lds(store, truth)["lds"],
                 "mean_nnz": float((dm["weight"] != 0).sum(0).mean())}
            results.append(r)
            print(f"  fit {r['total_s']:.1f} s (XᵀX {r['read_s']:.1f} s at {r['xtx_rate_gflops']:.0f} GFLOP/s = "
                  f"{r['xtx_share_of_gemm_rate']:.0%} of the GEMM rate; solve {r['solve_s']:.1f} s, "
                  f"{r['step_s_median']:.2f} s per λ step), peak {r['peak_rss_mib']:,.0f} MiB "
                  f"(estimate {r['estimate_mib']:,.0f} + baseline; bound {r['bound_mib']:,.0f}), "
                  f"LDS {r['lds']:.3f} / oracle {r['oracle_lds']:.3f}", flush=True)
            path = _save(args, sizes, machine, results)  # after every N: a stopped run keeps what it measured
    print(f"saved {path}")
    return 0
