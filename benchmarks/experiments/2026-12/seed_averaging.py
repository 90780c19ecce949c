"""A way to fewer models, measured and not kept: several seeds per mask, their margins averaged.

At a budget of n trained models, the plain estimator fits n masks, one model each.  Here n / r
masks are each trained r times with different seeds (initialisation and batch order) and the
lasso fits their mean margins, whose training noise is r times smaller, from r times fewer
masks.  The extra models are trained by the sweep's own machinery (``datamodels.sweep.
train_masks``: Ray tasks of the run's worker) on the store's first fitting masks, with seeds
disjoint from the store's; the store's own model is the first seed of each mask.  Both fits use
the default lasso (``datamodels.fit``) and are scored by LDS on the store's held-out models.

    python benchmarks/experiments/2026-12/seed_averaging.py --config configs/digits.yaml
        # an existing run's store (runs/digits)
    python benchmarks/experiments/2026-12/seed_averaging.py --synthetic   # sweeps the second data set first
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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(p)
    p.add_argument("--sizes", default="100,300,1000,3000", help="budgets n: models trained in all")
    p.add_argument("--repeats", default="2,5", help="seeds per mask r")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from datamodels.store import Store, model_seed
    from datamodels.cluster import ray_session
    from datamodels.sweep import train_masks

    cfg, name, tmp_run = run_config(args, "seed-averaging-")
    store = Store(Path(cfg.out) / "store")
    sizes = [int(v) for v in args.sizes.split(",")]
    repeats = [int(v) for v in args.repeats.split(",")]
    fit_rows = store.rows("fit")
    if not np.array_equal(fit_rows[:max(sizes)], np.arange(max(sizes))):
        sys.exit(f"{store.path}: the first {max(sizes)} rows must be completed fitting rows")
    tmp = Path(tempfile.mkdtemp(prefix="seed-averaging-"))
    points, trained_s = [], 0.0
    try:
        with ray_session(cfg.sweep.address):
            for r in repeats:
                num_masks = max(sizes) // r
                masks = np.asarray(store.masks[:num_masks])
                started = time.perf_counter()
                # Copy 0 is the store's own model; copies 1..r-1 get seeds no store row has.
                margins = [np.asarray(store.margins[:num_masks], dtype=np.float64)]
                for copy in range(1, r):
                    seeds = np.array([model_seed(cfg.seed + 7919 * copy, i) for i in range(num_masks)])
                    margins.append(train_masks(cfg, masks, seeds, progress=False).astype(np.float64))
                trained_s += time.perf_counter() - started
                mean = np.mean(margins, 0)
                for n in sizes:
                    m = n // r
                    if m < 20:
                        continue
                    write_store(tmp / f"r{r}-n{n}", masks[:m], mean[:m])
                    lds, fit_s = fitted_lds(Store(tmp / f"r{r}-n{n}"), store)
                    point = {"n": n, "seeds_per_mask": r, "masks": m, "lds": lds, "fit_s": fit_s}
                    print(json.dumps(point), flush=True)
                    points.append(point)
        for n in sizes:  # the plain estimator: n masks, one model each
            lds, fit_s = fitted_lds(store, store, n)
            point = {"n": n, "seeds_per_mask": 1, "masks": n, "lds": lds, "fit_s": fit_s}
            print(json.dumps(point), flush=True)
            points.append(point)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = machine_info("ray")
    report = {"benchmark": "several seeds per mask, margins averaged, against one model per mask at equal models (LDS)",
              "cpu_capability": info["cpu_capability"], "machine": info,
              "settings": {"data": name, "store": str(store.path), "sizes": sizes, "seeds_per_mask": repeats,
                           "seed": cfg.seed},
              "extra_models_trained_s": round(trained_s, 1),
              "points": sorted(points, key=lambda p: (p["n"], p["seeds_per_mask"]))}
    save_result(Path(args.out or HERE / "results" / f"seed_averaging_{name}.json"), report)
    if tmp_run is not None:
        shutil.rmtree(tmp_run, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
