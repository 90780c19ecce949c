"""Estimators against the number of models trained: plain datamodels, TRAK, and the lasso around a
TRAK prior (``fit.prior: trak``) with and without adaptive penalty weights (``fit.prior_gamma``),
scored by LDS on the same held-out models.

For each data set (the digits default, and ``synthetic``: the ``npz`` image set of
``benchmarks.harness.make_synthetic``, not digits) and each sweep seed, it runs the default sweep
(10,000 fitting and 500 held-out models, ``workers.mlp``) into a fresh store, then for each
budget n (the first n fitting models):

* **plain**: ``datamodels.fit`` on the n models (the default estimator);
* **trak**: TRAK scores (``datamodels.priors.trak``: the exact-gradient kernel form, no
  projection) from min(n, ``--trak-max``) of those models, the ridge chosen on the fit's
  validation rows;
* **prior**: ``datamodels.fit(..., prior=..., prior_gamma=0)`` on the n models, around the TRAK
  prior from min(n, ``--prior-models``) of them, every weight's correction penalised alike;
* **adaptive**: the same with ``prior_gamma=--gamma`` (the adaptive lasso: the correction's
  penalty weighted by the prior's size).

Every figure is the median over the sweep seeds; times are per fit (the prior's retraining and
kernels counted apart).  The JSON also records, per data set, the models each estimator needs
to reach the plain estimator's LDS at the largest budget (interpolated in log n).

    python benchmarks/quality/estimators.py                          # -> benchmarks/results/estimators.json
    python benchmarks/quality/estimators.py --datasets digits --seeds 0 --sizes 100,1000
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import machine_info, make_synthetic, save_result  # noqa: E402

SIZES = (10, 30, 100, 300, 1000, 3000, 10000)


def models_to_reach(curve: list, level: float):
    """The smallest n at which a curve [(n, lds)] reaches ``level``, interpolated in log n."""
    for (n0, a), (n1, b) in zip([(None, None)] + curve[:-1], curve):
        if b is not None and b >= level:
            if n0 is None or a is None or b == a:
                return n1
            t = (level - a) / (b - a)
            return round(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="digits,synthetic")
    p.add_argument("--seeds", default="0,1,2", help="sweep seeds (each a full sweep)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--trak-max", type=int, default=30, help="TRAK uses at most this many models")
    p.add_argument("--prior-models", type=int, default=None, help="models of the prior (default: fit.prior_models)")
    p.add_argument("--gamma", type=float, default=0.5, help="prior_gamma of the adaptive estimator")
    p.add_argument("--out", default=str(HERE.parent / "results" / "estimators.json"))
    args = p.parse_args(argv)

    import importlib

    from datamodels import config as config_lib
    from datamodels.evaluate import lds
    from datamodels.priors import trak
    from datamodels.store import Store
    from datamodels.sweep import sweep

    fit = importlib.import_module("datamodels.regression").fit
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    prior_models = args.prior_models or config_lib.FitOptions().prior_models
    info = machine_info("ray")
    tmp = Path(tempfile.mkdtemp(prefix="estimators-bench-"))
    results = {}
    try:
        for name in args.datasets.split(","):
            overrides = [f"sweep.num_models={max(sizes)}"]
            if name == "synthetic":
                overrides += ["data.source=npz", f"data.path={make_synthetic(tmp / 'synthetic.npz')}"]
            runs = []
            for seed in seeds:
                out = tmp / name / f"seed{seed}"
                cfg = config_lib.load(ROOT / "configs" / "digits.yaml", [f"out={out}", f"seed={seed}", *overrides])
                started = time.perf_counter()
                sweep(cfg, progress=False)
                sweep_s = time.perf_counter() - started
                store = Store(out / "store")
                rows = store.rows("fit")
                trak_cache, points = {}, []
                for n in sizes:
                    sub = rows[:n]  # the first n fitting models
                    # at least 2 validation models (2 of 10 at n = 10); the default 10 % from n = 25 on
                    val_fraction = max(0.1, 2.5 / n)
                    point = {"n": n, "val_fraction": val_fraction}
                    started = time.perf_counter()
                    plain = fit(store, rows=sub, progress=False, seed=seed, val_fraction=val_fraction)
                    point["plain_fit_s"] = round(time.perf_counter() - started, 2)
                    point["plain"] = lds(store, plain)["lds"]
                    estimators = (("trak", min(n, args.trak_max), {"num_lambdas": 1}),
                                  ("prior", min(n, prior_models), {"prior_gamma": 0.0}),
                                  ("adaptive", min(n, prior_models), {"prior_gamma": args.gamma}))
                    for label, m, options in estimators:
                        if m not in trak_cache:
                            started = time.perf_counter()
                            trak_cache[m] = (trak(cfg, rows=rows[:m], progress=False), time.perf_counter() - started)
                        scores, scores_s = trak_cache[m]
                        started = time.perf_counter()
                        dm = fit(store, rows=sub, progress=False, seed=seed, prior=scores, val_fraction=val_fraction,
                                 **options)
                        point[f"{label}_fit_s"] = round(time.perf_counter() - started, 2)
                        point[f"{label}_models"] = m
                        point[f"{label}_scores_s"] = round(scores_s, 2)
                        point[f"{label}_ridge"] = float(dm["prior_choice"])
                        point[label] = (lds(store, scores=scores[float(dm["prior_choice"])])["lds"] if label == "trak"
                                        else lds(store, dm)["lds"])
                    print(f"{name} seed {seed} n={n}: plain {point['plain']:.4f}, trak {point['trak']:.4f} "
                          f"({point['trak_models']} models), prior {point['prior']:.4f}, "
                          f"adaptive {point['adaptive']:.4f}", flush=True)
                    points.append(point)
                runs.append({"seed": seed, "sweep_s": round(sweep_s, 1), "points": points})
                shutil.rmtree(out, ignore_errors=True)
            table = []
            for i, n in enumerate(sizes):
                row = {"n": n}
                for key in ("plain", "trak", "prior", "adaptive", "plain_fit_s", "prior_fit_s", "adaptive_fit_s",
                            "prior_scores_s", "trak_scores_s"):
                    row[key] = round(float(np.median([r["points"][i][key] for r in runs])), 4)
                for key in ("prior", "adaptive"):
                    row[f"{key}_minus_best_other"] = round(row[key] - max(row["plain"], row["trak"]), 4)
                table.append(row)
            level = table[-1]["plain"]
            results[name] = {
                "median_over_seeds": table,
                "plain_lds_at_largest_budget": level,
                "models_to_reach_it": {k: models_to_reach([(r["n"], r[k]) for r in table], level)
                                       for k in ("plain", "prior", "adaptive")},
                "runs": runs,
            }
            print(json.dumps(results[name]["median_over_seeds"], indent=1), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = {"benchmark": "estimators: LDS against models trained", "cpu_capability": info["cpu_capability"],
              "machine": info, "settings": {"sizes": sizes, "seeds": seeds, "trak_max": args.trak_max,
                                            "prior_models": prior_models, "gamma": args.gamma,
                                            "config": "configs/digits.yaml"},
              "results": results}
    save_result(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
