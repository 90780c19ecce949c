"""A way to fewer models, measured and not kept: stacked attribution features per target.

TRAK's prior (``datamodels.priors``) gives each target one direction in training-example space;
the fit only scales it.  Here each target gets several: TRAK split by parameter group (first
layer, second layer's weights, its bias: ``workers.mlp.kernel_parts``) at several ridges, each
an N-vector φ_f, and a target's margins are regressed on the features X φ_f of the n fitting
models (a ridge regression of a few coefficients per target, its λ chosen on the last 10 % of
the n models by validation error).  Beside it: the best single TRAK ridge, and the same stack
with the ten per-class counts of the mask as extra features.  All scored by LDS on the store's
held-out models.

    python benchmarks/experiments/2026-12/stacked_prior.py --config configs/digits.yaml
        # an existing run's store (runs/digits)
    python benchmarks/experiments/2026-12/stacked_prior.py --synthetic   # sweeps the second data set first
"""
from __future__ import annotations

import argparse
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


def features(cfg, store, num_models: int, ridges):
    """({(ridge, group): float64 [T, N]}, the training labels): TRAK's Kₜ,g (K + λI)⁻¹ per
    parameter group g, averaged over the store's first ``num_models`` fitting models, times mean
    Q (as ``datamodels.priors``)."""
    from datamodels.prepare import prepare, read_meta
    from datamodels.store import model_seeds
    from datamodels.sweep import resolve_worker, stored_worker_settings
    from workers import mlp
    from workers.common import load_split, targets

    data_dir = prepare(cfg, progress=False)
    worker, _ = resolve_worker(cfg, read_meta(data_dir), stored_worker_settings(cfg.out))  # the store's models
    worker = mlp._config(worker)
    x_train, y_train = load_split(str(data_dir), "train")
    x_target, y_target = targets(str(data_dir), cfg.data.targets)
    rows = store.rows("fit")[:num_models]
    n = len(y_train)
    sums, q_sum = {}, torch.zeros(n, dtype=torch.float64)
    masks, seeds = np.asarray(store.masks[rows]), model_seeds(store.seed, rows)
    for got, net, (x, xt, onehot, yt) in mlp._trained(x_train, y_train, x_target, y_target, masks, seeds, worker):
        w1, w2, b2 = (w.double() for w in net.master)
        labels = onehot.argmax(1)
        for i in range(len(got)):
            train, target = (mlp._gradient_parts(w1[i], w2[i], b2[i], inputs.double(), lab)
                             for inputs, lab in ((x, labels), (xt, yt)))
            parts = mlp.kernel_parts(train, target)
            k = sum(p[0] for p in parts)
            scale = float(torch.diagonal(k).mean())
            for r in ridges:
                factor = torch.linalg.cholesky(k + r * scale * torch.eye(n, dtype=torch.float64))
                for group, (_, k_target) in enumerate(parts):
                    key = (r, group)
                    sums[key] = sums.get(key, 0) + torch.cholesky_solve(k_target.T, factor).T
            q_sum += train[4]
    q_mean = q_sum / len(rows)
    return {key: (value / len(rows) * q_mean[None, :]).numpy() for key, value in sums.items()}, y_train


def stack_predict(z_train, y_train, z_test, lam) -> np.ndarray:
    """Per target j, ridge regression (relative strength ``lam``) of y[:, j] on z[:, j, :]."""
    mu, sd = z_train.mean(0), z_train.std(0) + 1e-12
    a, b = (z_train - mu) / sd, (z_test - mu) / sd
    y_mean = y_train.mean(0)
    eye = np.eye(a.shape[2])
    gram = np.einsum("mtf,mtg->tfg", a, a) + lam * len(a) * eye
    coef = np.linalg.solve(gram, np.einsum("mtf,mt->tf", a, y_train - y_mean)[..., None])[..., 0]
    return np.einsum("mtf,tf->mt", b, coef) + y_mean


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p)
    p.add_argument("--trak-models", type=int, default=30)
    p.add_argument("--ridges", default="2,5,10")
    p.add_argument("--sizes", default="100,300,1000")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from datamodels.store import Store

    torch.set_num_threads(1)
    cfg, name, tmp = run_config(args, "stacked-prior-")
    store = Store(Path(cfg.out) / "store")
    ridges = [float(r) for r in args.ridges.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    phi, y_train_labels = features(cfg, store, args.trak_models, ridges)
    features_s = time.perf_counter() - started
    keys = sorted(phi)
    stacked = np.stack([phi[k] for k in keys], 2)  # [T, N, F]
    class_counts = np.stack([(y_train_labels == c) for c in np.unique(y_train_labels)], 1).astype(np.float32)
    eval_rows, fit_rows = store.rows("eval"), store.rows("fit")
    x_eval = np.asarray(store.masks[eval_rows], dtype=np.float32)
    y_eval = np.asarray(store.margins[eval_rows], dtype=np.float64)
    x_all = np.asarray(store.masks[fit_rows[:max(sizes)]], dtype=np.float32)
    y_all = np.asarray(store.margins[fit_rows[:max(sizes)]], dtype=np.float64)

    def z(x, with_classes):
        out = np.einsum("mn,tnf->mtf", x, stacked)
        if with_classes:
            counts = x @ class_counts
            out = np.concatenate([out, np.repeat(counts[:, None, :], out.shape[1], 1)], 2)
        return out

    trak = {r: sum(phi[(r, g)] for g in range(3)) for r in ridges}
    points = []
    for n in sizes:
        x, y = x_all[:n], y_all[:n]
        cut = n - max(2, round(0.1 * n))
        # TRAK alone: the ridge chosen on the validation models, as datamodels.fit chooses it
        best_r = max(ridges, key=lambda r: spearman_mean(x[cut:] @ trak[r].T, y[cut:]))
        point = {"n": n, "trak": spearman_mean(x_eval @ trak[best_r].T, y_eval), "trak_ridge": best_r}
        for label, with_classes in (("stacked", False), ("stacked_with_class_counts", True)):
            z_fit, z_eval = z(x, with_classes), z(x_eval, with_classes)
            lam = min((1e-3, 1e-2, 1e-1, 1.0), key=lambda lam: float(np.mean(
                (stack_predict(z_fit[:cut], y[:cut], z_fit[cut:], lam) - y[cut:]) ** 2)))
            point[label] = spearman_mean(stack_predict(z_fit, y, z_eval, lam), y_eval)
            point[f"{label}_lambda"] = lam
        point = {k: round(v, 4) if isinstance(v, float) else v for k, v in point.items()}
        print(json.dumps(point), flush=True)
        points.append(point)
    info = machine_info()
    report = {"benchmark": "stacked attribution features per target against TRAK alone (LDS)",
              "cpu_capability": info["cpu_capability"], "machine": info,
              "settings": {"data": name, "store": str(store.path), "trak_models": args.trak_models, "ridges": ridges,
                           "features": len(keys), "seed": cfg.seed},
              "features_s": round(features_s, 1), "points": points}
    save_result(Path(args.out or HERE / "results" / f"stacked_prior_{name}.json"), report)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
