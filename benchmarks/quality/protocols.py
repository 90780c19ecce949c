"""LDS under each held-out protocol, with its 95% interval and the noise ceiling: plain datamodels
and the lasso around the TRAK prior (``fit.prior: trak``) at several budgets.

Two sweeps of the digits default per data set: one whose held-out masks are each trained with
``--eval-seeds`` seeds (scored single-seed and seed-mean, TRAK's protocol), and one under
deterministic training (``sweep.deterministic``: every model with one fixed seed, MAGIC's setting).

    python benchmarks/quality/protocols.py                      # -> benchmarks/results/protocols.json
    python benchmarks/quality/protocols.py --sizes 100,1000 --datasets digits
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

from harness import save_result  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits,synthetic")
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--eval-masks", type=int, default=100, help="held-out masks")
    p.add_argument("--eval-seeds", type=int, default=5, help="seeds per held-out mask")
    p.add_argument("--out", default=str(HERE.parent / "results" / "protocols.json"))
    args = p.parse_args(argv)

    from datamodels import config as config_lib
    from datamodels.evaluate import lds
    from datamodels.priors import trak
    from datamodels.regression import fit
    from datamodels.store import Store
    from datamodels.sweep import sweep

    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="protocols-bench-"))
    results = {}
    try:
        for name in args.datasets.split(","):
            results[name] = {}
            for training in ("seeds", "deterministic"):
                out = tmp / name / training
                overrides = [f"out={out}", f"sweep.num_models={max(sizes)}", f"sweep.num_eval_models={args.eval_masks}",
                             "sweep.checkpoint_every=0"]
                overrides += ([f"sweep.eval_seeds={args.eval_seeds}"] if training == "seeds"
                              else ["sweep.deterministic=true"])
                if name == "synthetic":
                    overrides.append("data.source=synthetic")
                cfg = config_lib.load(ROOT / "configs" / "digits.yaml", overrides)
                started = time.perf_counter()
                sweep(cfg, progress=False)
                sweep_s = round(time.perf_counter() - started, 1)
                store = Store(out / "store")
                rows = store.rows("fit")
                prior = trak(cfg, rows=rows[:30], progress=False)
                points = []
                for n in sizes:
                    sub = rows[:n]
                    fitted = {"plain": fit(store, rows=sub, progress=False, seed=0),
                              "prior": fit(store, rows=sub, progress=False, seed=0, prior=prior)}
                    for estimator, dm in fitted.items():
                        for protocol in (("single", "mean") if training == "seeds" else ("single",)):
                            s = lds(store, dm, protocol=protocol)
                            point = {"n": n, "estimator": estimator, "protocol": s["protocol"], "lds": s["lds"],
                                     "ci": [s["ci"]["low"], s["ci"]["high"]], "ceiling": s["ceiling"]}
                            points.append(point)
                            c = s["ceiling"]
                            print(f"{name} {training} n={n} {estimator} {protocol}: LDS {s['lds']:.4f} "
                                  f"[{s['ci']['low']:.4f}, {s['ci']['high']:.4f}] ceiling "
                                  f"{c.get('ceiling', float('nan')):.4f}", flush=True)
                results[name][training] = {"sweep_s": sweep_s, "points": points}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save_result(args.out, {"sizes": sizes, "eval_masks": args.eval_masks, "eval_seeds": args.eval_seeds,
                           "results": results})


if __name__ == "__main__":
    main()
