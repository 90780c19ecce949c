"""A lever for few models, measured and not kept: stacked attribution features per target.

TRAK's prior (``datamodels.priors``) gives each target one direction in training-example space;
the fit only scales it.  Here each target gets several: TRAK split by parameter group (first
layer, second layer's weights, its bias: ``workers.mlp.kernel_parts``) at several ridges, each
an N-vector φ_f, and a target's margins are regressed on the features X φ_f of the n fitting
models (a ridge regression of a few coefficients per target, its λ chosen on the last 10 % of
the n models by validation error).  Beside it: the best single TRAK ridge, and the same stack
with the ten per-class counts of the mask as extra features.  All scored by LDS on the store's
held-out models.

    python benchmarks/stacked_prior.py --config configs/digits.yaml   # an existing run's store (runs/digits)
    python benchmarks/stacked_prior.py --synthetic                    # sweeps the second data set first
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from machine import machine_info, save_result  # noqa: E402


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


def spearman_mean(pred: np.ndarray, actual: np.ndarray) -> float:
    """Mean over columns of the rank correlation (the LDS, with no ties in float margins)."""
    a = np.argsort(np.argsort(pred, 0), 0).astype(np.float64)
    b = np.argsort(np.argsort(actual, 0), 0).astype(np.float64)
    a -= a.mean(0)
    b -= b.mean(0)
    return float(np.mean((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))))


def stack_predict(z_train, y_train, z_test, lam) -> np.ndarray:
    """Per target j, ridge regression (relative strength ``lam``) of y[:, j] on z[:, j, :]."""
    mu, sd = z_train.mean(0), z_train.std(0) + 1e-12
    a, b = (z_train - mu) / sd, (z_test - mu) / sd
    y_mean = y_train.mean(0)
    eye = np.eye(a.shape[2])
    gram = np.einsum("mtf,mtg->tfg", a, a) + lam * len(a) * eye
    coef = np.linalg.solve(gram, np.einsum("mtf,mt->tf", a, y_train - y_mean)[..., None])[..., 0]
    return np.einsum("mtf,tf->mt", b, coef) + y_mean


def write_store(path: Path, masks: np.ndarray, margins: np.ndarray) -> None:
    """A store in the reference layout (spec.json and .npy files) holding exactly these rows."""
    path.mkdir(parents=True)
    spec = {"num_models": len(masks), "schema": {"masks": {"shape": [masks.shape[1]], "dtype": "bool_"},
                                                 "margins": {"shape": [margins.shape[1]], "dtype": "float32"}}}
    (path / "spec.json").write_text(json.dumps(spec))
    np.save(path / "masks.npy", masks)
    np.save(path / "margins.npy", margins.astype(np.float32))
    np.save(path / "_completed.npy", np.ones(len(masks), dtype=bool))


def fitted_lds(rows_store, eval_store) -> tuple:
    """(LDS on ``eval_store``'s held-out models, fit seconds) of the default lasso fitted on
    ``rows_store``'s fitting rows."""
    import datamodels

    started = time.perf_counter()
    dm = datamodels.fit(rows_store, progress=False)
    seconds = time.perf_counter() - started
    return round(float(datamodels.lds(eval_store, dm)["lds"]), 4), round(seconds, 1)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--synthetic``, read by :func:`run_config`."""
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    parser.add_argument("--synthetic", action="store_true", help="sweep benchmarks/live_lds.py's npz image set "
                                                                 "(10,000 + 500 models) into a temporary run first")
    parser.add_argument("--synthetic-run", default=None, help="with --synthetic: the run's folder, kept and reused "
                                                              "by later benchmarks (a complete sweep is not redone)")


def run_config(args, prefix: str):
    """(config, data set name, temporary directory or None): ``--config``'s existing run, or with
    ``--synthetic`` a sweep of benchmarks/live_lds.py's npz image set (10,000 + 500 models), in a
    temporary folder or in ``--synthetic-run``."""
    from datamodels import config as config_lib

    if not args.synthetic:
        cfg = config_lib.load(args.config)
        return cfg, cfg.data.source, None
    from live_lds import make_synthetic

    from datamodels.sweep import sweep

    kept = args.synthetic_run is not None
    folder = Path(args.synthetic_run) if kept else Path(tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "synthetic.npz"
    if not data.exists():
        make_synthetic(data)
    cfg = config_lib.load(ROOT / "configs" / "digits.yaml", [f"out={folder / 'run'}", "data.source=npz",
                                                             f"data.path={data}"])
    sweep(cfg, progress=False)
    return cfg, "synthetic", None if kept else folder


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
