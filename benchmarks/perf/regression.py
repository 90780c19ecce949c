"""Regression speed at equal accuracy: ``datamodels.fit`` against scikit-learn's ``lasso_path``,
celer and skglm (the fastest CPU lasso solvers on PyPI).

Both methods run on the same store, with the same procedure, and are scored with the same
held-out LDS (``datamodels.evaluate.lds``):

1. the completed fitting rows, split into training and validation rows by the same seeded
   rule (``datamodels.regression.validation_rows``);
2. masks centred and scaled to unit variance over the training rows;
3. per target, 40 λs from λ_max = max|X̃ᵀ(y − ȳ)|/n down to 1e-3·λ_max, geometrically
   (sklearn's ``alpha`` is this λ: both minimise (1/2n)‖y − ȳ − X̃w‖² + λ‖w‖₁);
4. the λ with the lowest validation MSE, then a refit on all fitting rows at that λ,
   warm-started from the training solution.

Ours (``ours``) is ``datamodels.regression.fit`` with its defaults (tol 1e-4 on the relative change
of the weights, float32, all targets at once).  The baseline runs ``lasso_path`` once per
target with the precomputed Gram (``precompute=Gram, Xy=``), sklearn's default tolerance,
targets spread over all cores with joblib (threads: the coordinate-descent loop releases the
GIL, so threads share the Gram instead of copying it), and the validation MSEs of all λs of a
batch of targets as one matrix product.  Two variants:

- ``sklearn``: ``check_input=False``, skipping sklearn's per-call validation and copy of X
  (safe here, as the inputs are prepared once, Fortran-ordered float64): the fastest way to
  call it, and the headline baseline;
- ``sklearn-checked``: the plain call (``check_input=True``), which copies and validates X on
  every call; this is what the obvious code does.

``celer`` (``celer_path``) and ``skglm`` (``AndersonCD.path``) run the same protocol; they
take a design matrix, not a Gram, so they get the smallest one with the same Gram and
correlations (N rows from the Gram's eigendecomposition instead of n model rows: fewer rows,
the same solutions; ``_compressed_design``), tol 1e-4, targets spread over joblib processes.
Ours runs three ways: ``ours`` chooses its XᵀX kernel by measuring (the probe's cost is in its
time: the choice cache is off), ``ours-int8`` and ``ours-float32`` force one.  The JSON's
``ratios`` give ours against the fastest competitor and the automatic choice against the best
fixed kernel.  ``--emulate avx2`` runs every method with torch, oneDNN and OpenBLAS limited to
AVX2 (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell``), as on a
CPU without AVX512, VNNI or bf16; results then go to ``regression_<size>_avx2.json``.

Every method runs in its own fresh process with its libraries already imported, timed from
opening the store to the finished weights (reading, Gram, path, refit; not the LDS), with
peak memory: the process's own peak (the kernel's VmHWM, exact), or where it has child processes
(joblib's) the largest RSS summed over the process and its children, sampled every 250 ms.  A
sampler polling every 20 ms slowed our fit by 5-10 % (it competes for the GIL and a core with the
solver's many small torch calls), and measuring must not change what it measures.

The ``outofcore`` size is a store whose masks alone are larger than ``--mem-cap-gb``
(default 1 GiB there): ours streams it in chunks and must stay under the cap; the baseline,
which needs every row in memory as float64, is skipped.

    python benchmarks/perf/regression.py --size quick          # synthetic, under a minute
    python benchmarks/perf/regression.py --size large          # synthetic at the digits scale
    python benchmarks/perf/regression.py --size digits [--store runs/digits/store]
    python benchmarks/perf/regression.py --size outofcore      # 1.4 GB of masks, 1 GiB memory cap
    python benchmarks/perf/regression.py --size digits --emulate avx2
    python benchmarks/perf/regression.py --size scale          # time and memory as N grows (regression_scale.py)

Results go to ``benchmarks/results/regression_<size>[_avx2|_avx2_native].json`` (AVX512 CPU; emulated
AVX2; an AVX2-only CPU), with the machine's CPU capability.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import machine_info, save_result  # noqa: E402

# Synthetic stores: N training examples, T targets, M fitting + E evaluation models, each
# target a few large planted weights plus small dense ones, plus noise.
SIZES = {
    "quick": dict(num_train=500, num_targets=100, num_fit=3000, num_eval=300, planted=10),
    "large": dict(num_train=1297, num_targets=500, num_fit=10000, num_eval=500, planted=30),
    "outofcore": dict(num_train=1000, num_targets=100, num_fit=1_400_000, num_eval=2000, planted=10),
}
DEFAULT_CAP_GB = {"outofcore": 1.0}
PATH_SETTINGS = dict(val_fraction=0.1, num_lambdas=40, lambda_min_ratio=1e-3, seed=0)


# ---- stores ---------------------------------------------------------------------------------
def synthetic_store(path: Path, num_train, num_targets, num_fit, num_eval, planted, seed=0, return_truth=False):
    from datamodels.store import Store

    store = Store.create(path, num_train=num_train, num_targets=num_targets, alpha=0.5, seed=seed)
    store.grow(num_fit, num_eval)
    rng = np.random.default_rng(seed + 1)
    weight = rng.normal(0, 0.02, (num_train, num_targets))
    for t in range(num_targets):
        idx = rng.choice(num_train, planted, replace=False)
        weight[idx, t] += rng.normal(0, 1, planted)
    bias = rng.normal(0, 2, num_targets)
    for start in range(0, store.num_models, 4096):
        rows = np.arange(start, min(store.num_models, start + 4096))
        x = np.asarray(store.masks[rows], dtype=np.float64)
        y = x @ weight + bias + rng.normal(0, 1.0, (len(rows), num_targets))
        store.write(rows, y.astype(np.float32))
    return (store, weight, bias) if return_truth else store


# ---- the methods, each run in a child process --------------------------------------------------
def run_ours(store_path: str, out: str) -> None:
    from datamodels.regression import fit

    fit(store_path, out, progress=False, **PATH_SETTINGS)  # DATAMODELS_GRAM_KERNEL (set by measure) forces a kernel


def run_baseline(store_path: str, out: str, solver: str) -> None:
    """A CPU lasso library under the same protocol as ours: standardised masks, the same λ grid
    and validation rows, λ per target by validation MSE, refit on all rows warm-started."""
    from joblib import Parallel, delayed, effective_n_jobs

    from datamodels.artifacts import save
    from datamodels.regression import validation_rows as _validation_rows
    from datamodels.store import Store

    store = Store(store_path)
    rows = store.rows("fit")
    is_val = _validation_rows(rows, store.num_models, PATH_SETTINGS["val_fraction"], PATH_SETTINGS["seed"])
    X = np.asarray(store.masks[rows], dtype=np.float64)
    Y = np.asarray(store.margins[rows], dtype=np.float64)
    T = Y.shape[1]

    def standardise(Xp, Yp):
        mx, my = Xp.mean(0), Yp.mean(0)
        sd = Xp.std(0)
        scale = np.where(sd > 0, 1 / np.where(sd > 0, sd, 1), 0.0)
        Xs = np.asfortranarray((Xp - mx) * scale)
        Yc = np.asfortranarray(Yp - my)
        gram = Xs.T @ Xs
        XyT = np.ascontiguousarray((Xs.T @ Yc).T)
        if not solver.startswith("sklearn"):
            Xs, Yc = _compressed_design(gram, XyT, len(Xs))
        return Xs, Yc, gram, XyT, mx, my, scale

    def path(Xs, y, alphas, gram, xy, coef_init=None):
        """Coefficients [N, len(alphas)] along the path (all solvers minimise (1/2n)‖y − Xw‖² + λ‖w‖₁)."""
        if solver.startswith("sklearn"):
            from sklearn.linear_model import lasso_path

            checked = solver == "sklearn-checked"
            kw = {} if coef_init is None else {"coef_init": coef_init.copy()}
            return lasso_path(Xs, y, alphas=alphas, precompute=gram, Xy=xy, check_input=checked, copy_X=checked,
                              **kw)[1]
        if solver == "celer":
            from celer import celer_path

            return celer_path(Xs, y, "lasso", alphas=alphas, tol=1e-4, coef_init=coef_init)[1]
        from skglm.datafits import Quadratic
        from skglm.penalties import L1
        from skglm.solvers import AndersonCD

        return AndersonCD(tol=1e-4, fit_intercept=False, warm_start=True).path(
            Xs, y, Quadratic(), L1(1.0), alphas=alphas, w_init=coef_init)[1]

    Xs, Yc, gram, XyT, mx, my, scale = standardise(X[~is_val], Y[~is_val])
    Xv = (X[is_val] - mx) * scale
    Yv = Y[is_val] - my
    n = len(Xs)
    ratios = np.geomspace(1.0, PATH_SETTINGS["lambda_min_ratio"], PATH_SETTINGS["num_lambdas"])
    lam_max = np.abs(XyT).max(1) / n
    jobs = effective_n_jobs(-1)
    batches = np.array_split(np.arange(T), max(1, min(T, 8 * jobs)))

    def paths(batch):
        coefs = np.stack([path(Xs, Yc[:, t], lam_max[t] * ratios, gram, XyT[t]) for t in batch], 1)  # [N, b, k]
        predicted = (Xv @ coefs.reshape(len(coefs), -1)).reshape(len(Xv), *coefs.shape[1:])
        mse = ((Yv[:, batch, None] - predicted) ** 2).mean(0)  # [b, k]
        best = mse.argmin(1)
        return coefs[:, np.arange(len(batch)), best], best

    # sklearn's coordinate descent releases the GIL, so threads share the Gram; celer (Cython)
    # and skglm (numba) hold it, so they get processes, with private copies of the inputs
    # (celer rejects joblib's read-only memory maps).
    backend = "threads" if solver.startswith("sklearn") else "processes"
    with Parallel(n_jobs=-1, prefer=backend, max_nbytes=None) as parallel:
        results = parallel(delayed(paths)(b) for b in batches)
        w_train = np.concatenate([r[0] for r in results], 1)
        best = np.concatenate([r[1] for r in results])
        lam = lam_max * ratios[best]

        Xa, Ya, gram_a, XyT_a, mx_a, my_a, scale_a = standardise(X, Y)
        # The training solution in mask units, re-expressed in the new standardisation.
        start = w_train * scale[:, None] * np.where(scale_a > 0, 1 / np.where(scale_a > 0, scale_a, 1), 0)[:, None]

        def refit(batch):
            return np.stack([path(Xa, Ya[:, t], np.array([lam[t]]), gram_a, XyT_a[t],
                                  np.ascontiguousarray(start[:, t]))[:, 0] for t in batch], 1)

        w = np.concatenate(parallel(delayed(refit)(b) for b in batches), 1)
    weight = w * scale_a[:, None]
    save({"weight": weight.astype(np.float32), "bias": (my_a - mx_a @ weight).astype(np.float32),
          "lam": lam, "targets": np.arange(T), "num_models": np.int64(len(rows))}, out)


def _compressed_design(gram: np.ndarray, XyT: np.ndarray, n: int):
    """The smallest design with the same least-squares problem, for solvers that take X, not a
    Gram: with gram = V diag(e) Vᵀ, X' = √(N/n)·diag(√e)·Vᵀ (N × N) and y'ₜ = √(N/n)·diag(1/√e)·Vᵀ·Xᵀyₜ
    give X'ᵀX'/N = XᵀX/n and X'ᵀy'ₜ/N = Xᵀyₜ/n, so (1/2N)‖y' − X'w‖² + λ‖w‖₁ has the same
    minimiser as (1/2n)‖y − Xw‖² + λ‖w‖₁ at the same λ, on N rows instead of n."""
    N = gram.shape[0]
    e, V = np.linalg.eigh(gram)
    keep = e > e.max() * 1e-12  # constant features give zero eigenvalues; Xᵀy has no part there
    root = np.sqrt(np.where(keep, e, 0.0))
    inv_root = np.where(keep, 1 / np.where(keep, root, 1.0), 0.0)
    factor = np.sqrt(N / n)
    X = np.asfortranarray(factor * root[:, None] * V.T)
    Y = np.asfortranarray(factor * inv_root[:, None] * (V.T @ XyT.T))
    return X, Y


def _warm_up(solver: str) -> None:
    """Compile skglm's numba kernels before the clock starts (as imports are excluded)."""
    if solver == "skglm":
        from skglm.datafits import Quadratic
        from skglm.penalties import L1
        from skglm.solvers import AndersonCD

        rng = np.random.default_rng(0)
        X, y = np.asfortranarray(rng.normal(size=(20, 5))), rng.normal(size=20)
        AndersonCD(fit_intercept=False).path(X, y, Quadratic(), L1(1.0), alphas=np.array([0.1, 0.01]))


# ours: datamodels.fit with the XᵀX kernel it chooses (probe included in the time), or one forced.
OURS = {"ours": None, "ours-int8": "int8", "ours-float32": "float32"}
METHODS = {
    **{name: (lambda store, out: run_ours(store, out)) for name in OURS},
    **{name: (lambda store, out, name=name: run_baseline(store, out, name))
       for name in ("sklearn", "sklearn-checked", "celer", "skglm")},
}
COMPETITORS = ("sklearn", "celer", "skglm")
# Where torch, oneDNN and OpenBLAS are told to use AVX2 kernels only, as on an AVX2-only CPU.
EMULATE = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}}


def child(method: str, store: str, out: str, stats_path: str) -> None:
    """Run one method in this (fresh) process and record its wall time and peak memory."""
    import psutil

    me = psutil.Process()
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                children = me.children(recursive=True)
                if children:
                    peak[0] = max(peak[0], sum(p.memory_info().rss for p in [me] + children))
            except psutil.Error:
                pass
            stop.wait(0.25)

    # Libraries are loaded before the clock starts: the benchmark times fitting, not imports.
    import datamodels.store  # noqa: F401
    import torch  # noqa: F401
    from datamodels.regression import fit  # noqa: F401
    if not method.startswith("ours"):
        import joblib
        import sklearn.linear_model  # noqa: F401
        _warm_up(method)
        if method in ("celer", "skglm"):  # start joblib's worker processes, and compile in them, untimed
            jobs = joblib.effective_n_jobs(-1)
            joblib.Parallel(n_jobs=-1, prefer="processes")(joblib.delayed(_warm_up)(method) for _ in range(4 * jobs))

    sampler = threading.Thread(target=sample, daemon=True)
    baseline_rss = me.memory_info().rss
    sampler.start()
    t = time.perf_counter()
    METHODS[method](store, out)
    wall = time.perf_counter() - t
    stop.set()
    sampler.join()
    own_peak = next(int(line.split()[1]) << 10 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    peak[0] = max(peak[0], own_peak)
    Path(stats_path).write_text(json.dumps({"wall_s": wall, "peak_rss_mb": peak[0] / 2 ** 20,
                                            "rss_before_mb": baseline_rss / 2 ** 20}))


def measure(method: str, store: Path, work: Path, emulate: str = None) -> dict:
    out, stats = work / f"{method}.npz", work / f"{method}.json"
    env = {**os.environ, **EMULATE.get(emulate, {})}
    env.pop("DATAMODELS_GRAM_KERNEL", None)
    if OURS.get(method):
        env["DATAMODELS_GRAM_KERNEL"] = OURS[method]
    elif method == "ours":
        env["DATAMODELS_NO_CHOICE_CACHE"] = "1"  # measure the kernels in every run: the probe's cost counts
    proc = subprocess.run([sys.executable, __file__, "--child", method, str(store), str(out), str(stats)],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    from datamodels.evaluate import lds
    from datamodels.artifacts import load

    dm = load(out)
    result = json.loads(stats.read_text())
    result.update(lds=lds(store, dm)["lds"], mean_nnz=float((dm["weight"] != 0).sum(0).mean()))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["quick", "large", "digits", "outofcore", "scale"], default="quick")
    p.add_argument("--n", help="scale: training examples, comma-separated (default 2000,5000,10000,20000)")
    p.add_argument("--models", type=int, help="scale: fitting models per store (default min(2N, 6000))")
    p.add_argument("--targets", type=int, default=100, help="scale: targets per store")
    p.add_argument("--eval", type=int, default=500, help="scale: held-out models per store")
    p.add_argument("--store", help="store to use (digits: default runs/digits/store; synthetic sizes: "
                                   "reused if it exists, else created there)")
    p.add_argument("--mem-cap-gb", type=float, default=None,
                   help="skip a method whose in-memory working set is estimated above this many GiB")
    p.add_argument("--methods", default="ours,ours-int8,ours-float32,sklearn,celer,skglm",
                   help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--emulate", choices=sorted(EMULATE),
                   help="run every method with torch, oneDNN and OpenBLAS limited to this instruction set")
    p.add_argument("--repeats", type=int, default=3, help="runs per method; the median is reported")
    p.add_argument("--slow-repeats", type=int, default=1,
                   help="runs of celer and skglm, which take minutes here and are never the fastest rival")
    p.add_argument("--out", help="JSON path (default benchmarks/results/regression_<size>.json)")
    args = p.parse_args(argv)
    if args.size == "scale":  # its own protocol: one fit per N, under /usr/bin/time
        from benchmarks.perf.regression_scale import run

        return run(args, synthetic_store, machine_info)
    if args.mem_cap_gb is None:
        args.mem_cap_gb = DEFAULT_CAP_GB.get(args.size)

    from datamodels.store import Store

    tmp = tempfile.TemporaryDirectory(prefix="regression_bench_")
    work = Path(tmp.name)
    if args.size == "digits":
        store_path = Path(args.store or ROOT / "runs" / "digits" / "store")
        if not (store_path / "spec.json").exists():
            print(f"no store at {store_path}: run the digits pipeline first (`datamodels run configs/digits.yaml`) "
                  f"or pass --store DIR", file=sys.stderr)
            return 1
    else:
        store_path = Path(args.store) if args.store else work / "store"
        if not (store_path / "spec.json").exists():
            print(f"building the {args.size} synthetic store in {store_path} ...", flush=True)
            synthetic_store(store_path, **SIZES[args.size])
    store = Store(store_path)
    summary = store.summary()
    N, T, M = store.num_train, store.num_targets, summary["fit"]["completed"]
    print(f"store: {N} training examples, {T} targets, {M} fitting and {summary['eval']['completed']} "
          f"evaluation models", flush=True)

    # In-memory working sets: ours holds Grams and N×T statistics, the baseline also all rows.
    estimate_gb = {"ours": (4 * N * N * 4 + 8 * N * T * 8 + 8192 * N * 4) / 2 ** 30}
    for name in OURS:
        estimate_gb[name] = estimate_gb["ours"]
    for name in ("sklearn", "sklearn-checked", "celer", "skglm"):
        estimate_gb[name] = (3 * M * N * 8 + 2 * M * T * 8 + 2 * N * N * 8) / 2 ** 30
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        p.error(f"unknown --methods {', '.join(unknown)}; choose from {', '.join(METHODS)}")

    machine = machine_info("scipy", "sklearn", *[m for m in ("celer", "skglm") if m in args.methods.split(",")])
    if args.emulate:  # what the children ran with, not this process
        capability = subprocess.run([sys.executable, "-c",
                                     "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                                    env={**os.environ, **EMULATE[args.emulate]}, capture_output=True, text=True,
                                    check=True).stdout.strip()
        machine.update(emulated=args.emulate, isa_env=EMULATE[args.emulate], cpu_capability=capability,
                       host_cpu_capability=machine["cpu_capability"])
    results = {}
    methods = []
    for method in args.methods.split(","):
        if args.mem_cap_gb is not None and estimate_gb[method] > args.mem_cap_gb:
            print(f"{method}: skipped, needs ~{estimate_gb[method]:.1f} GiB > --mem-cap-gb {args.mem_cap_gb}")
            results[method] = {"skipped": f"estimated {estimate_gb[method]:.1f} GiB above the cap"}
        else:
            methods.append(method)
    # Repeats interleaved (ours, sklearn, ours, sklearn, ...), so that a burst of other load on
    # the machine hits every method alike; each method's median run is reported.
    runs = {method: [] for method in methods}
    for repeat in range(args.repeats):
        for method in methods:
            if method in ("celer", "skglm") and repeat >= args.slow_repeats:
                continue
            runs[method].append(measure(method, store_path, work, args.emulate))
            r = runs[method][-1]
            print(f"{method} (run {repeat + 1}): {r['wall_s']:.2f} s, LDS {r['lds']:.4f}, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MiB", flush=True)
    for method in methods:
        median = sorted(runs[method], key=lambda r: r["wall_s"])[len(runs[method]) // 2]  # upper, if even
        results[method] = {**median, "all_wall_s": [r["wall_s"] for r in runs[method]]}

    ours = results.get("ours", {})
    for name, r in results.items():
        if name != "ours" and "wall_s" in r and "wall_s" in ours:
            r["ours_speedup"] = r["wall_s"] / ours["wall_s"]
            r["ours_lds_minus_this"] = ours["lds"] - r["lds"]
    summary_ratios = {}
    timed = {name: r for name, r in results.items() if "wall_s" in r}
    if "ours" in timed:
        fixed = {name: timed[name]["wall_s"] for name in OURS if name != "ours" and name in timed}
        if fixed:
            best_fixed = min(fixed, key=fixed.get)
            summary_ratios["auto_vs_best_fixed_kernel"] = {"best_fixed": best_fixed,
                                                           "ratio": timed["ours"]["wall_s"] / fixed[best_fixed]}
        rivals = {name: timed[name] for name in COMPETITORS if name in timed}
        if rivals:
            fastest = min(rivals, key=lambda n: rivals[n]["wall_s"])
            summary_ratios["vs_fastest_competitor"] = {
                "fastest": fastest, "speedup": rivals[fastest]["wall_s"] / timed["ours"]["wall_s"],
                "lds_ours_minus_it": timed["ours"]["lds"] - rivals[fastest]["lds"]}
        if "sklearn" in timed:
            sk = timed["sklearn"]
            summary_ratios["vs_sklearn"] = {"speedup": sk["wall_s"] / timed["ours"]["wall_s"],
                                            "lds_ours_minus_it": timed["ours"]["lds"] - sk["lds"],
                                            "target_10x_at_equal_lds_met": bool(
                                                sk["wall_s"] / timed["ours"]["wall_s"] >= 10
                                                and abs(timed["ours"]["lds"] - sk["lds"]) <= 0.005)}

    rows = [(name, r) for name, r in results.items() if "wall_s" in r]
    print(f"\nCPU capability: {machine['cpu_capability']}" + (f", emulating {args.emulate}" if args.emulate else ""))
    print(f"{'method':<16} {'wall s':>8} {'LDS':>8} {'peak RSS MiB':>13} {'mean nnz':>9} {'ours faster':>12}")
    for name, r in rows:
        speed = f"{r['ours_speedup']:.1f}x" if "ours_speedup" in r else "-"
        print(f"{name:<16} {r['wall_s']:>8.2f} {r['lds']:>8.4f} {r['peak_rss_mb']:>13.0f} {r['mean_nnz']:>9.1f} "
              f"{speed:>12}")

    store_gb = sum(f.stat().st_size for f in Path(store_path).iterdir() if f.is_file()) / 2 ** 30
    for r in results.values():
        if "peak_rss_mb" in r and args.mem_cap_gb is not None:
            r["within_mem_cap"] = bool(r["peak_rss_mb"] / 1024 <= args.mem_cap_gb)
    report = {
        "size": args.size,
        "store_gb": round(store_gb, 3),
        "mem_cap_gb": args.mem_cap_gb,
        "store": {"path": str(store_path) if args.size == "digits" or args.store else "(temporary synthetic)",
                  "num_train": N, "num_targets": T, "num_fit_models": M,
                  "num_eval_models": summary["eval"]["completed"],
                  **({"synthetic": SIZES[args.size]} if args.size in SIZES else {})},
        "settings": {**PATH_SETTINGS, "ours": "datamodels.fit defaults (tol 1e-4, max_iter 300, float32, cpu); "
                                              "ours-int8 / ours-float32 force the XᵀX kernel",
                     "sklearn": "lasso_path, precompute=Gram, Xy, tol 1e-4 (its default), joblib threads",
                     "celer": "celer_path, tol 1e-4, joblib processes",
                     "skglm": "AndersonCD.path, tol 1e-4, joblib processes, numba compiled before timing"},
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "results": results,
        "ratios": summary_ratios,
    }
    for name, value in summary_ratios.items():
        print(f"{name}: {json.dumps(value)}")
    # _avx2: emulated on an AVX512 CPU; _avx2_native: a CPU whose torch kernels top out at AVX2.
    capability = str(machine.get("cpu_capability", ""))
    suffix = f"_{args.emulate}" if args.emulate else \
        ("" if capability.startswith("AVX512") or not capability else f"_{capability.lower()}_native")
    out = Path(args.out) if args.out else HERE.parent / "results" / f"regression_{args.size}{suffix}.json"
    save_result(out, report)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        sys.exit(main())
