"""A way to fewer models, measured and not kept: class-balanced masks.

Each mask takes exactly round(α · N_c) of the training examples of every class c (a
stratified α-subset), instead of a uniformly random α-subset whose class counts vary.  The
masks' largest source of variation in the margins, how many examples of the target's class a
model saw, is then held fixed, so the lasso sees only the examples' own effects.  The models are
trained by the sweep's machinery (``datamodels.sweep.train_masks``: Ray tasks of the run's
worker), fitted with the default lasso, and scored by LDS on the store's held-out models, which
stay i.i.d. α-subsets; beside them the plain fit of the store's first n models.

    python benchmarks/experiments/2026-12/balanced_masks.py --config configs/digits.yaml
        # an existing run's store (runs/digits)
    python benchmarks/experiments/2026-12/balanced_masks.py --synthetic   # sweeps the second data set first
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


def balanced_masks(labels: np.ndarray, alpha: float, count: int, seed: int) -> np.ndarray:
    """``count`` masks, each with round(alpha * N_c) random examples of every class c."""
    rng = np.random.default_rng([seed, 104729])
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    masks = np.zeros((count, len(labels)), dtype=bool)
    for mask in masks:
        for members in classes:
            mask[rng.choice(members, int(round(alpha * len(members))), replace=False)] = True
    return masks


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p)
    p.add_argument("--sizes", default="100,300,1000,3000", help="models fitted")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from datamodels.prepare import prepare
    from datamodels.store import Store, model_seed
    from datamodels.sweep import train_masks
    from workers.common import load_split

    cfg, name, tmp_run = run_config(args, "balanced-masks-")
    store = Store(Path(cfg.out) / "store")
    sizes = [int(v) for v in args.sizes.split(",")]
    _, labels = load_split(str(prepare(cfg, progress=False)), "train")
    masks = balanced_masks(labels, store.alpha, max(sizes), cfg.seed)
    seeds = np.array([model_seed(cfg.seed + 104729, i) for i in range(len(masks))])
    started = time.perf_counter()
    margins = train_masks(cfg, masks, seeds, progress=False)
    trained_s = time.perf_counter() - started
    tmp = Path(tempfile.mkdtemp(prefix="balanced-masks-"))
    points = []
    try:
        for n in sizes:
            write_store(tmp / f"n{n}", masks[:n], margins[:n])
            point = {"n": n}
            for label, rows, first in (("plain", store, n), ("balanced", Store(tmp / f"n{n}"), None)):
                point[label], point[f"{label}_fit_s"] = fitted_lds(rows, store, first)
            print(json.dumps(point), flush=True)
            points.append(point)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sizes_seen = sorted({int(s) for s in masks.sum(1)})
    info = machine_info("ray")
    report = {"benchmark": "class-balanced masks against i.i.d. alpha-subsets at equal models (LDS on i.i.d. held-out)",
              "cpu_capability": info["cpu_capability"], "machine": info,
              "settings": {"data": name, "store": str(store.path), "sizes": sizes, "alpha": store.alpha,
                           "balanced_subset_sizes": sizes_seen, "seed": cfg.seed},
              "balanced_models_trained_s": round(trained_s, 1), "points": points}
    save_result(Path(args.out or HERE / "results" / f"balanced_masks_{name}.json"), report)
    if tmp_run is not None:
        shutil.rmtree(tmp_run, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
