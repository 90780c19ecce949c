"""Counterfactual accuracy of the fits around a TRAK prior, with and without adaptive penalty
weights (``fit.prior_gamma`` 0.5 against 0), beside the default fit of the whole store.

For each budget n (the run's first n fitting models) both prior fits are made, and for the same
random targets each removes its target's top-K examples and is verified by retraining
(``datamodels counterfactual --batch ... --remove top:K --verify R``: R model pairs per
counterfactual, with and without the set, same seed and subset).  Reported: Pearson r of the
predicted and the actual changes, and the mean actual change (how much the removed examples
really mattered), per fit.

    python benchmarks/experiments/2026-12/counterfactual_prior.py --config configs/digits.yaml   # the runs/digits store
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import machine_info, save_result  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    p.add_argument("--sizes", default="300,1000")
    p.add_argument("--batch", type=int, default=50, help="random targets")
    p.add_argument("--remove", default="top:10")
    p.add_argument("--verify", type=int, default=10, help="model pairs per counterfactual")
    p.add_argument("--prior-models", type=int, default=30)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import datamodels
    from datamodels import config as config_lib
    from datamodels.analyses._run import Run
    from datamodels.analyses.counterfactual import counterfactual, pick_targets
    from datamodels.priors import trak
    from datamodels.store import Store

    cfg = config_lib.load(args.config)
    run_dir = Path(cfg.out)
    store = Store(run_dir / "store")
    prior = trak(cfg, args.prior_models, progress=False)
    fits = {"default, all models": datamodels.fit(store, progress=False)}
    for n in (int(v) for v in args.sizes.split(",")):
        for gamma in (0.0, 0.5):
            fits[f"prior, gamma {gamma}, {n} models"] = datamodels.fit(store, rows=store.rows("fit")[:n], prior=prior,
                                                                       prior_gamma=gamma, progress=False)
    targets = None
    rows = []
    for label, dm in fits.items():
        run = Run(run_dir, datamodels=dm, store=store, config=cfg)
        if targets is None:
            targets = pick_targets(run, args.batch, 0)
        started = time.perf_counter()
        result = counterfactual(run, targets, [args.remove], verify=args.verify, progress=False)
        actual = [c["verified"]["actual_change"] for c in result["counterfactuals"]]
        row = {"fit": label, "num_models": int(dm["num_models"]),
               "lds": round(float(datamodels.lds(store, dm)["lds"]), 4),
               "pearson": round(float(result["correlation"]["pearson"]), 4),
               "mean_actual_change": round(float(np.mean(actual)), 4),
               "verify_s": round(time.perf_counter() - started, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    info = machine_info("ray")
    report = {"benchmark": "counterfactual accuracy of fits around a TRAK prior, prior_gamma 0 against 0.5",
              "cpu_capability": info["cpu_capability"], "machine": info,
              "settings": {"store": str(store.path), "targets": [int(t) for t in targets], "remove": args.remove,
                           "verify": args.verify, "prior_models": args.prior_models, "seed": cfg.seed},
              "fits": rows}
    save_result(Path(args.out or HERE / "results" / "counterfactual_prior_digits.json"), report)
    return report


if __name__ == "__main__":
    main()
