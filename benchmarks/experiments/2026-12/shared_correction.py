"""A way to fewer models, measured and not kept: a correction to the TRAK prior shared across targets.

Around TRAK's prior (``datamodels.priors``; one scale per target, fitted by least squares) the
residual margins R [n, T] of the n fitting models are fitted by ridge regression on the masks,
for all targets at once, and the correction is then cut to rank k: C V_k V_kᵀ, V_k the top k
right singular vectors of the fitted residuals X C.  Targets that respond alike (same class,
similar images) then share their few well-determined directions instead of each fitting its
own noise (reduced-rank regression).  The prior's ridge, the correction's ridge and k are chosen
on the last 10 % of the n models by LDS, then refitted on all n; beside it the same with full
rank (k = T), TRAK scaled alone, and the best k in hindsight on the held-out models (headroom).
All scored by LDS on the store's held-out models.

    python benchmarks/experiments/2026-12/shared_correction.py --config configs/digits.yaml
        # an existing run's store (runs/digits)
    python benchmarks/experiments/2026-12/shared_correction.py --synthetic   # sweeps the second data set first
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import add_run_arguments, machine_info, run_config, save_result, spearman_mean  # noqa: E402


def fit_predict(x, y, prior, lam, rank):
    """Predictor of margins from masks: intercept + scaled prior + a ridge correction of strength
    ``lam`` (relative to the Gram matrix's mean diagonal; None: no correction) cut to ``rank``
    (None: full)."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    z = xc @ prior  # [n, T]: each target's prior feature
    scale = (z * yc).sum(0) / np.maximum((z * z).sum(0), 1e-12)
    weights = prior * scale
    if lam is not None:
        gram = xc @ xc.T  # the dual form: n x n, n well below N here
        dual = np.linalg.solve(gram + lam * np.trace(gram) / len(x) * np.eye(len(x)), yc - z * scale)
        correction = xc.T @ dual  # [N, T]
        if rank is not None:
            _, _, vt = np.linalg.svd(xc @ correction, full_matrices=False)
            correction = correction @ vt[:rank].T @ vt[:rank]
        weights = weights + correction
    return lambda x_new: my + (x_new - mx) @ weights


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p)
    p.add_argument("--trak-models", type=int, default=30)
    p.add_argument("--sizes", default="100,300,1000")
    p.add_argument("--lambdas", default="0.3,1,3,10,30,100")
    p.add_argument("--ranks", default="2,5,10,20,50")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from datamodels.priors import trak
    from datamodels.store import Store

    torch.set_num_threads(1)
    cfg, name, tmp = run_config(args, "shared-correction-")
    store = Store(Path(cfg.out) / "store")
    started = time.perf_counter()
    priors = {r: p.astype(np.float64) for r, p in trak(cfg, args.trak_models, progress=False).items()}
    prior_s = time.perf_counter() - started
    lambdas = [float(v) for v in args.lambdas.split(",")]
    ranks = [int(v) for v in args.ranks.split(",")]
    eval_rows, fit_rows = store.rows("eval"), store.rows("fit")
    x_eval = np.asarray(store.masks[eval_rows], dtype=np.float64)
    y_eval = np.asarray(store.margins[eval_rows], dtype=np.float64)
    points = []
    for n in (int(v) for v in args.sizes.split(",")):
        x = np.asarray(store.masks[fit_rows[:n]], dtype=np.float64)
        y = np.asarray(store.margins[fit_rows[:n]], dtype=np.float64)
        cut = n - max(2, round(0.1 * n))
        started = time.perf_counter()
        val = {(r, lam, k): spearman_mean(fit_predict(x[:cut], y[:cut], prior, lam, k)(x[cut:]), y[cut:])
               for (r, prior), lam, k in itertools.chain(
                   itertools.product(priors.items(), [None], [None]),
                   itertools.product(priors.items(), lambdas, [None, *ranks]))}
        choices = {"trak_scaled": max((c for c in val if c[1] is None), key=val.get),
                   "ridge_full_rank": max((c for c in val if c[1] is not None and c[2] is None), key=val.get),
                   "reduced_rank": max(val, key=val.get)}
        point = {"n": n}
        for label, (r, lam, k) in choices.items():
            point[label] = round(spearman_mean(fit_predict(x, y, priors[r], lam, k)(x_eval), y_eval), 4)
            point[f"{label}_choice"] = {"prior_ridge": r, "lambda": lam, "rank": k}
        r, lam, _ = choices["reduced_rank"]
        if lam is not None:  # every rank at the chosen ridges, scored on the held-out models
            hindsight = {k: spearman_mean(fit_predict(x, y, priors[r], lam, k)(x_eval), y_eval) for k in [*ranks, None]}
            best = max(hindsight, key=hindsight.get)
            point["best_rank_in_hindsight"] = {"rank": best, "lds": round(hindsight[best], 4)}
        point["seconds"] = round(time.perf_counter() - started, 1)
        print(json.dumps(point), flush=True)
        points.append(point)
    info = machine_info()
    report = {"benchmark": "a reduced-rank ridge correction to the TRAK prior, shared across targets (LDS)",
              "cpu_capability": info["cpu_capability"], "machine": info,
              "settings": {"data": name, "store": str(store.path), "trak_models": args.trak_models,
                           "prior_ridges": sorted(priors), "lambdas": lambdas, "ranks": ranks, "seed": cfg.seed},
              "prior_s": round(prior_s, 1), "points": points}
    save_result(Path(args.out or HERE / "results" / f"shared_correction_{name}.json"), report)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
