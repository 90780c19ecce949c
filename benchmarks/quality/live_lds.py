"""Live LDS during the sweep: what it costs, how well its forecast does, and the stop rule.

On each data set (the digits default, and ``synthetic``: the ``npz`` image set of
``benchmarks.harness.make_synthetic``, not digits) it runs, in one process:

1. **Cost.**  The default sweep with live LDS and the same sweep with ``sweep.checkpoint_every=0``,
   each into a fresh store, ``--repeats`` times interleaved; the overhead is the ratio of the
   medians of their wall times.  Stores are checked bitwise equal: checkpoints change nothing
   trained.
2. **Forecast.**  From the checkpoints up to ``--forecast-from`` fitting models, the forecast of
   the models needed to reach the level (digits: LDS 0.85; synthetic: the level its full run
   reaches at about the same share of its models), against the true count read off the full
   run's checkpoints (the first checkpoint at or above the level, and the crossing interpolated
   between the two checkpoints around it).  Made for the default interval (the sweep's own log)
   and for a finer one (``--fine-every``; computed with ``datamodels.live.replay``, equal
   to what a sweep with that interval logs).
3. **Stop rule.**  A fresh sweep with ``sweep.until_lds`` at the level: where it stopped, against
   the first checkpoint of the full run at or above the level.

    python benchmarks/quality/live_lds.py              # both data sets -> benchmarks/results/live_lds.json
    python benchmarks/quality/live_lds.py --datasets digits --repeats 3
    python benchmarks/quality/live_lds.py --datasets digits --repeats 5 --cost-only \
        --out benchmarks/results/live_lds_cost_digits_avx2_pairs.json
"""
from __future__ import annotations

import argparse
import math
import os
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


def crossing(records: list, level: float) -> dict:
    """Where the checkpoints first reach ``level``: that checkpoint's n, and n interpolated
    (linearly in log n) between it and the one before."""
    for before, after in zip([None] + records[:-1], records):
        if after["lds"] >= level:
            if before is None:
                return {"first_checkpoint": after["num_fit_models"], "interpolated": after["num_fit_models"]}
            a, b = math.log(before["num_fit_models"]), math.log(after["num_fit_models"])
            t = (level - before["lds"]) / (after["lds"] - before["lds"])
            return {"first_checkpoint": after["num_fit_models"], "interpolated": round(math.exp(a + t * (b - a)))}
    return {"first_checkpoint": None, "interpolated": None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="digits,synthetic")
    p.add_argument("--repeats", type=int, default=3, help="interleaved sweeps with and without live LDS (digits)")
    p.add_argument("--forecast-from", type=int, default=2000, help="forecast from the checkpoints up to this n")
    p.add_argument("--fine-every", type=int, default=250, help="the finer checkpoint interval of the forecast check")
    p.add_argument("--level", type=float, default=0.85, help="the LDS level on digits")
    p.add_argument("--cost-only", action="store_true", help="only the cost: sweeps with and without live LDS")
    p.add_argument("--out", default=str(HERE.parent / "results" / "live_lds.json"))
    args = p.parse_args(argv)

    from datamodels import live
    from datamodels import config as config_lib
    from datamodels.prepare import prepare
    from datamodels.store import Store
    from datamodels.sweep import sweep

    info = machine_info("ray", "scipy")
    tmp = Path(tempfile.mkdtemp(prefix="live-lds-bench-"))
    results = {}
    try:
        for name in args.datasets.split(","):
            overrides = []
            if name == "synthetic":
                data = make_synthetic(tmp / "synthetic.npz")
                overrides = ["data.source=npz", f"data.path={data}"]
            base = config_lib.load(ROOT / "configs" / "digits.yaml", [f"out={tmp / name / 'prepared'}", *overrides])
            data_dir = prepare(base, progress=False)

            def run(label: str, extra=(), until_lds=None, repeat=0):
                out = tmp / name / f"{label}-{repeat}"
                shutil.copytree(data_dir, out / "data")
                cfg = config_lib.load(ROOT / "configs" / "digits.yaml", [f"out={out}", *overrides, *extra])
                started = time.perf_counter()
                summary = sweep(cfg, progress=False, until_lds=until_lds)
                wall = time.perf_counter() - started
                print(f"{name} {label} #{repeat}: {wall:.1f} s, {summary['trained']} models, "
                      f"{summary.get('checkpoints', 0)} checkpoints ({summary.get('checkpoint_solve_s', 0):.1f} s "
                      f"solving), stopped: {summary['stopped']}", flush=True)
                return {"wall_s": round(wall, 2), "summary": {k: v for k, v in summary.items() if k != "failed"},
                        "store": out / "store", "config": cfg}

            repeats = args.repeats if name == "digits" else 1
            with_live, without = [], []
            for repeat in range(repeats):  # interleaved: a slow spell of the machine hits both alike
                with_live.append(run("live", repeat=repeat))
                without.append(run("none", ["sweep.checkpoint_every=0"], repeat=repeat))
            same = all(np.array_equal(np.asarray(Store(a["store"]).margins), np.asarray(Store(b["store"]).margins))
                       for a, b in zip(with_live, without))
            full = live.read_log(with_live[0]["store"])
            final = full[-1]["lds"]
            level = args.level if name == "digits" else round(math.floor((final - 0.015) * 200) / 200, 3)
            truth = crossing(full, level)

            def forecast_check(records: list, every: int) -> dict:
                early = [r for r in records if r["num_fit_models"] <= args.forecast_from]
                fc = live.forecast(early, levels=[level])
                f = fc["models_for"][f"{level:g}"] if fc else None
                true = crossing(records, level)
                est = f["estimate"] if f else None
                return {"every": every, "checkpoints_used": [r["num_fit_models"] for r in early],
                        "curve": fc.get("curve"), "forecast_models": est, "band": f["band"] if f else None,
                        "true": true,
                        "error_vs_interpolated": None if est is None or not true["interpolated"]
                        else round(est / true["interpolated"] - 1, 4),
                        "error_vs_first_checkpoint": None if est is None or not true["first_checkpoint"]
                        else round(est / true["first_checkpoint"] - 1, 4),
                        "lds": [[r["num_fit_models"], round(r["lds"], 4)] for r in records]}

            if args.cost_only:
                walls = {"with_live_lds": [r["wall_s"] for r in with_live], "without": [r["wall_s"] for r in without]}
                median = {k: float(np.median(v)) for k, v in walls.items()}
                pairs = [a / b - 1 for a, b in zip(walls["with_live_lds"], walls["without"])]
                results[name] = {"cost": {"wall_s": walls, "median_s": median,
                                          "overhead": round(median["with_live_lds"] / median["without"] - 1, 4),
                                          "pair_overheads": [round(x, 4) for x in pairs],
                                          "median_pair_overhead": round(float(np.median(pairs)), 4),
                                          "checkpoint_solve_s": [r["summary"].get("checkpoint_solve_s")
                                                                 for r in with_live],
                                          # the checkpoint thread's CPU time as a share of what the cores
                                          # could do during the sweep: what it can take from the tasks
                                          "solve_share_of_cores": [
                                              round(r["summary"].get("checkpoint_solve_s", 0)
                                                    / (r["wall_s"] * (os.cpu_count() or 1)), 4) for r in with_live],
                                          "checkpoints": with_live[0]["summary"].get("checkpoints"),
                                          "stores_bitwise_equal": bool(same)}}
                print(f"{name}: overhead {results[name]['cost']['overhead']:+.1%} (medians {median}), pairs "
                      f"{[f'{x:+.1%}' for x in pairs]}", flush=True)
                continue
            started = time.perf_counter()
            fine = live.replay(with_live[0]["store"], with_live[0]["config"], every=args.fine_every)
            replay_s = time.perf_counter() - started
            forecasts = {"default": forecast_check(full, config_lib.interval(with_live[0]["config"].sweep)),
                         "fine": forecast_check(fine, args.fine_every)}
            stopped = run("until", until_lds=level)
            stop_log = live.read_log(stopped["store"])
            walls = {"with_live_lds": [r["wall_s"] for r in with_live], "without": [r["wall_s"] for r in without]}
            median = {k: float(np.median(v)) for k, v in walls.items()}
            results[name] = {
                "level": level,
                "final_checkpoint_lds": final,
                "cost": {"wall_s": walls, "median_s": median,
                         "overhead": round(median["with_live_lds"] / median["without"] - 1, 4),
                         "checkpoint_solve_s": [r["summary"].get("checkpoint_solve_s") for r in with_live],
                         "checkpoints": with_live[0]["summary"].get("checkpoints"),
                         "stores_bitwise_equal": bool(same)},
                "forecast": forecasts,
                "replay_fine_s": round(replay_s, 2),
                "until_lds": {"stopped": stopped["summary"]["stopped"],
                              "stopped_at_checkpoint": stop_log[-1]["num_fit_models"] if stop_log else None,
                              "stopped_at_lds": stop_log[-1]["lds"] if stop_log else None,
                              "first_full_run_checkpoint_at_level": truth["first_checkpoint"],
                              "fitting_models_completed": int(len(Store(stopped["store"]).rows("fit"))),
                              "wall_s": stopped["wall_s"]},
            }
            r = results[name]
            print(f"{name}: overhead {r['cost']['overhead']:+.1%} (medians {median}); level {level}: truth "
                  f"{truth}; forecast from <= {args.forecast_from}: default "
                  f"{forecasts['default']['forecast_models']} ({forecasts['default']['error_vs_interpolated']}), "
                  f"fine {forecasts['fine']['forecast_models']} ({forecasts['fine']['error_vs_interpolated']}); "
                  f"until_lds stopped at {r['until_lds']['stopped_at_checkpoint']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["load_average_at_end"] = list(os.getloadavg())
    report = {"benchmark": "live LDS during the sweep: cost, forecast, stop rule",
              "cpu_capability": info["cpu_capability"],
              "machine": info, "settings": {"forecast_from": args.forecast_from, "fine_every": args.fine_every,
                                            "repeats_digits": args.repeats},
              "results": results}
    save_result(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
