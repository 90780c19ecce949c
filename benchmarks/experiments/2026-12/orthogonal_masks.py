"""A way to fewer models, measured and not kept: orthogonal-array masks (randomised Hadamard
designs).

Random α-subsets give a Gram matrix XᵀX whose off-diagonal entries vary by about √n around
their mean; with n models close to N training examples that inflates the variance of the
fitted weights (for least squares by about 1 / (1 − N/n)).  Here α = 1/2 masks come from a
Sylvester Hadamard matrix H of order P = 2^⌈log₂(N + 1)⌉ without its constant row and column:
N of its P − 1 columns are drawn at random, one per training example, and its rows, in random
order, are the masks (+1: the example is in).  Over a whole block of P − 1 masks every example
is in exactly half of them and every pair of examples in a quarter, up to one: a strength-2
orthogonal array.  Budgets beyond a block take a second, independently drawn block.  Each mask is
then made an exact α-subset, like the sweep's, by moving a few random examples in or out.

The masks are trained by the sweep's machinery (``datamodels.sweep.train_masks``: Ray tasks of
the run's worker) and fitted by the default lasso, with and without the TRAK prior
(``fit.prior: trak``, 30 models); all are scored by LDS on the store's i.i.d. held-out models,
beside the same fits of the store's first n models.

    python benchmarks/experiments/2026-12/orthogonal_masks.py --config configs/digits.yaml
        # an existing run's store (runs/digits)
    python benchmarks/experiments/2026-12/orthogonal_masks.py --synthetic   # sweeps the second data set first
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import (add_run_arguments, fitted_lds, machine_info, run_config,  # noqa: E402
                                save_result, write_store)


def sylvester(order: int) -> np.ndarray:
    """The Sylvester Hadamard matrix of ``order`` (a power of two), ±1 int8."""
    h = np.ones((1, 1), dtype=np.int8)
    while len(h) < order:
        h = np.block([[h, h], [h, -h]])
    return h


def orthogonal_masks(num_train: int, subset: int, count: int, seed: int) -> np.ndarray:
    """``count`` masks of exactly ``subset`` examples each, from randomised Hadamard blocks."""
    rng = np.random.default_rng([seed, 7919])
    order = 1 << int(np.ceil(np.log2(num_train + 1)))
    core = sylvester(order)[1:, 1:] > 0  # rows: masks; every column is in half of them
    blocks = []
    while sum(len(b) for b in blocks) < count:
        columns = rng.choice(order - 1, num_train, replace=False)
        blocks.append(core[rng.permutation(order - 1)][:, columns])
    masks = np.concatenate(blocks)[:count].copy()
    for mask in masks:  # an exact α-subset: move the fewest examples
        gap = subset - int(mask.sum())
        pool = np.flatnonzero(~mask if gap > 0 else mask)
        mask[rng.choice(pool, abs(gap), replace=False)] = gap > 0
    return masks


def off_diagonal_spread(masks: np.ndarray) -> float:
    """Standard deviation of the off-diagonal entries of the centred masks' Gram matrix,
    divided by √n (1 for i.i.d. masks): how far the design is from orthogonal."""
    x = masks.astype(np.float64) - masks.mean(0)
    gram = x.T @ x
    off = gram[~np.eye(len(gram), dtype=bool)]
    return float(off.std() / (np.sqrt(len(masks)) * x.std(0).mean() ** 2))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p)
    p.add_argument("--sizes", default="100,300,1000,2047,3000", help="models fitted")
    p.add_argument("--prior-models", type=int, default=30, help="models for the TRAK prior (0: no prior fits)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import datamodels
    from datamodels.priors import trak
    from datamodels.store import Store, model_seed, subset_size
    from datamodels.sweep import train_masks

    cfg, name, tmp_run = run_config(args, "orthogonal-masks-")
    store = Store(Path(cfg.out) / "store")
    if store.alpha != 0.5:
        raise SystemExit(f"orthogonal masks are built for alpha = 0.5; the store has {store.alpha}")
    sizes = [int(v) for v in args.sizes.split(",")]
    masks = orthogonal_masks(store.num_train, subset_size(store.num_train, store.alpha), max(sizes), cfg.seed)
    seeds = np.array([model_seed(cfg.seed + 7919, i) for i in range(len(masks))])
    started = time.perf_counter()
    margins = train_masks(cfg, masks, seeds, progress=False)
    trained_s = time.perf_counter() - started
    prior = trak(cfg, args.prior_models, progress=False) if args.prior_models else None
    tmp = Path(tempfile.mkdtemp(prefix="orthogonal-masks-"))
    points = []
    try:
        for n in sizes:
            write_store(tmp / f"n{n}", masks[:n], margins[:n])
            iid = np.asarray(store.masks[store.rows("fit")[:n]])
            point = {"n": n, "spread_iid": round(off_diagonal_spread(iid), 3),
                     "spread_orthogonal": round(off_diagonal_spread(masks[:n]), 3)}
            for label, rows, first in (("plain", store, n), ("orthogonal", Store(tmp / f"n{n}"), None)):
                point[label], point[f"{label}_fit_s"] = fitted_lds(rows, store, first)
                if prior is not None:
                    started = time.perf_counter()
                    dm = datamodels.fit(rows, prior=prior, progress=False,
                                        rows=None if first is None else store.rows("fit")[:first])
                    point[f"{label}_prior_fit_s"] = round(time.perf_counter() - started, 1)
                    point[f"{label}_prior"] = round(float(datamodels.lds(store, dm)["lds"]), 4)
            print(json.dumps(point), flush=True)
            points.append(point)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = machine_info("ray")
    report = {"benchmark": "orthogonal-array (randomised Hadamard) masks against i.i.d. alpha-subsets at equal "
                           "models (LDS on i.i.d. held-out)",
              "cpu_capability": info["cpu_capability"], "machine": info,
              "settings": {"data": name, "store": str(store.path), "sizes": sizes, "alpha": store.alpha,
                           "prior_models": args.prior_models, "seed": cfg.seed},
              "orthogonal_models_trained_s": round(trained_s, 1), "points": points}
    save_result(Path(args.out or HERE / "results" / f"orthogonal_masks_{name}.json"), report)
    if tmp_run is not None:
        shutil.rmtree(tmp_run, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
