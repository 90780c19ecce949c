"""The acceptance figures of the analyses on the digits default, each checked by retraining.

1. Counterfactuals: for random targets, remove the top-K training examples by datamodel
   weight (K = 5, 10, 20); retrain ``--verify`` model pairs per counterfactual (α-subsets
   with and without the set, same subset and seed within a pair) and correlate predicted
   with actual margin changes.  Criterion: Pearson r >= 0.8.
2. Brittleness: every target's support size (fewest top-weighted training examples whose
   removal is predicted to flip it); retrain ``--verify`` models without each support set of
   size <= 20.  Criterion: >= 70% of those predictions truly flip (mean margin below 0).
3. Leakage: noisy copies of the ``--planted`` hardest test examples (lowest mean margin)
   are appended to the training set and the default pipeline runs on that data set; each
   planted pair's true effect comes from that sweep (mean margin with the copy in the subset
   minus without).  Criterion: every pair whose effect exceeds one standard deviation of its
   target's margin ranks within the top 2n of all (test, train) pairs.

The run directories are made (or resumed) with the default pipeline, so the figures belong
to exactly what ``datamodels run configs/digits.yaml`` produces; the verified results are
kept in RUN/analyses/ and RUN/report.html shows them.

    python benchmarks/quality/analyses.py   # ~15 min on 2 cores; writes benchmarks/results/analyses_digits.json
    python benchmarks/quality/analyses.py --run runs/digits --verify 10 --targets 100 --planted 20
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import machine_info, save_result as save_json  # noqa: E402

SPECS = ("top:5", "top:10", "top:20")


def ensure_run(config_path: str, out: str, overrides=()) -> dict:
    """The default pipeline into ``out`` (resumes; trains nothing when complete), without its report."""
    from datamodels import config
    from datamodels.pipeline import run
    from datamodels.store import Store

    store = Path(out) / "store"
    if (store / "spec.json").exists() and not isinstance(Store(store).meta.get("worker"), dict):
        sys.exit(f"{store} does not record the training settings it was made with, so retraining cannot be "
                 f"checked against it; move it away or pass another --run")
    cfg = config.load(config_path, [f"out={out}", *overrides])
    return run(cfg, report=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    p.add_argument("--run", default="runs/digits", help="run directory of the default config (made or resumed)")
    p.add_argument("--planted-run", help="run directory of the planted data set (default RUN-planted)")
    p.add_argument("--verify", type=int, default=10, help="retrained models per counterfactual mask / brittle target")
    p.add_argument("--targets", type=int, default=100, help="random targets for the counterfactuals")
    p.add_argument("--planted", type=int, default=20, help="hardest test examples copied into the training set")
    p.add_argument("--noise", type=float, default=0.05, help="noise of the copies, as a fraction of the pixel range")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-report", action="store_true", help="skip writing RUN/report.html")
    p.add_argument("--out", default=str(HERE.parent / "results" / "analyses_digits.json"))
    args = p.parse_args(argv)

    from datamodels import analyses
    from datamodels.analyses._run import save_result

    timings = {}
    started = time.time()
    t = time.time()
    metrics = ensure_run(args.config, args.run)
    timings["pipeline_s"] = time.time() - t
    run = analyses.Run(args.run)
    print(f"run {args.run}: LDS {metrics['lds']:.3f} from {metrics['num_fit_models']} models", flush=True)

    with run.ray():
        t = time.time()
        targets = analyses.pick_targets(run, min(args.targets, run.num_targets), args.seed)
        cf = analyses.counterfactual(run, targets, list(SPECS), verify=args.verify, seed=args.seed)
        save_result(run, "counterfactual", cf)
        timings["counterfactual_s"] = time.time() - t
        print(f"counterfactuals: Pearson r {cf['correlation']['pearson']:.3f}", flush=True)

        t = time.time()
        br = analyses.brittleness(run, verify=args.verify, max_support=20, seed=args.seed)
        save_result(run, "brittleness", br)
        timings["brittleness_s"] = time.time() - t
        print(f"brittleness: {br['verified']['flipped']} of {br['verified']['checked']} flip", flush=True)

    t = time.time()
    planted_run = args.planted_run or f"{args.run.rstrip('/')}-planted"
    hard = analyses.hardest_targets(run, args.planted)
    data = Path(planted_run) / "planted.npz"
    if not data.exists():  # the copies must not change under a resumed planted run
        info = analyses.plant_duplicates(run.data_dir, hard, data, noise=args.noise, seed=args.seed)
        (Path(planted_run) / "pairs.json").write_text(json.dumps(info, indent=1))
    info = json.loads((Path(planted_run) / "pairs.json").read_text())
    planted_metrics = ensure_run(args.config, planted_run, ["data.source=npz", f"data.path={data.resolve()}"])
    check = analyses.planted_check(analyses.Run(planted_run), [tuple(x) for x in info["pairs"]])
    timings["leakage_s"] = time.time() - t
    print(f"leakage: {check['visible_within_limit']} of {check['num_visible']} visible pairs in the top "
          f"{check['limit']}", flush=True)

    if not args.no_report:
        from datamodels.report import report

        t = time.time()
        report(run, progress=False)
        timings["report_s"] = time.time() - t
    timings["total_s"] = time.time() - started

    verified = br["verified"]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/quality/analyses.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "run": {"path": args.run, "config": args.config, "lds": metrics["lds"],
                "num_fit_models": metrics["num_fit_models"], "num_eval_models": metrics["num_eval_models"],
                "num_train": metrics["num_train"],
                "num_targets": metrics["num_targets"], "fingerprint": run.fingerprint()},
        "counterfactual": {
            "targets": len(targets), "specs": list(SPECS), "models_per_mask": args.verify, "base": cf["base"],
            "correlation": cf["correlation"], "by_spec": cf["by_spec"],
            "mean_predicted_change": {s: float(np.mean([c["predicted_change"] for c in cf["counterfactuals"]
                                                         if c["remove"] == s])) for s in SPECS},
            "mean_actual_change": {s: float(np.mean([c["verified"]["actual_change"] for c in cf["counterfactuals"]
                                                      if c["remove"] == s])) for s in SPECS},
            "criterion": "Pearson r >= 0.8", "passed": cf["correlation"]["pearson"] >= 0.8},
        "brittleness": {
            "counts": br["counts"], "quantiles": br["quantiles"], "models_per_target": args.verify,
            "checked": verified["checked"], "flipped": verified["flipped"], "share": verified["share"],
            "criterion": ">= 70% of targets with support size <= 20 truly flip", "passed": verified["share"] >= 0.7},
        "leakage": {
            "planted_run": planted_run, "planted": len(info["pairs"]), "noise": info["noise"],
            "planted_lds": planted_metrics["lds"], "visible": check["num_visible"], "limit": check["limit"],
            "visible_within_limit": check["visible_within_limit"], "all_within_limit": check["all_within_limit"],
            "precision_at_2n": check["precision_at_k"], "recall_at_2n": check["recall_at_k"],
            "pairs": check["pairs"],
            "criterion": "every planted pair with effect > 1 sd of its target's margin ranks in the top 2n",
            "passed": check["passed"]},
        "timings": timings,
    }
    print(json.dumps({k: result[k].get("passed") for k in ("counterfactual", "brittleness", "leakage")}))
    save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
