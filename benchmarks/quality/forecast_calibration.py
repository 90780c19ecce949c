"""How often the live-LDS forecast's 10-90 % band holds the true crossing.

For each data set a long sweep's store (the digits default and the ``synthetic`` source,
10,000 fitting models each; ``--store NAME=PATH`` reuses a finished one) is replayed into
checkpoints every ``--every`` fitting models (``datamodels.live.replay``: what a sweep with that
interval logs).  From each start point (``--starts``), the forecast made from the checkpoints up to
it is compared, for each level the full curve first reaches after the start, with the true
crossing: the models at which the full run's checkpoints reach the level (interpolated in log n
between the two around it).  A case counts as covered when the crossing lies inside the band.
The band is measured twice: as forecast now (targets resampled and the extrapolation drift of
backtests) and targets alone (the earlier band), for comparison.

    python benchmarks/quality/forecast_calibration.py    # -> benchmarks/results/forecast_calibration.json
    python benchmarks/quality/forecast_calibration.py --store digits=/path/to/run/store --datasets digits
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import machine_info, save_result  # noqa: E402


def crossing(records: list, level: float):
    """The models at which the checkpoints first reach ``level``, interpolated in log n; None if never."""
    for before, after in zip([None] + records[:-1], records):
        if after["lds"] >= level:
            if before is None:
                return after["num_fit_models"]
            a, b = math.log(before["num_fit_models"]), math.log(after["num_fit_models"])
            t = (level - before["lds"]) / (after["lds"] - before["lds"])
            return math.exp(a + t * (b - a))
    return None


def levels_after(records: list, start: int, count: int) -> list:
    """``count`` levels, evenly spaced between the LDS at ``start`` and the last checkpoint's, each
    first reached after ``start`` (rounded to 3 decimals)."""
    at_start = max(r["lds"] for r in records if r["num_fit_models"] <= start)
    top = max(r["lds"] for r in records)
    span = top - at_start
    return [round(at_start + span * (k + 1) / (count + 1), 3) for k in range(count)]


def calibrate(records: list, starts: list, levels_per_start: int) -> dict:
    import importlib

    forecast_lib = importlib.import_module("datamodels.live.forecast")  # the module (the package exports its function)

    cases = []
    for start in starts:
        upto = [r for r in records if r["num_fit_models"] <= start]
        for level in levels_after(records, start, levels_per_start):
            truth = crossing(records, level)
            if truth is None or truth <= start:
                continue
            row = {"start": start, "level": level, "true_crossing": round(truth)}
            for label, drift, backtests in (("band", forecast_lib.DEFAULT_DRIFT, forecast_lib.MIN_BACKTESTS),
                                            ("targets_only", 0.0, 10 ** 9)):
                saved = forecast_lib.DEFAULT_DRIFT, forecast_lib.MIN_BACKTESTS
                forecast_lib.DEFAULT_DRIFT, forecast_lib.MIN_BACKTESTS = drift, backtests
                try:
                    fc = forecast_lib.forecast(upto, levels=[level])
                finally:
                    forecast_lib.DEFAULT_DRIFT, forecast_lib.MIN_BACKTESTS = saved
                s = fc["models_for"][f"{level:g}"]
                lo, hi = s["band"]
                row[label] = {"estimate": s["estimate"], "lo": lo, "hi": hi, "covered": bool(lo <= truth <= hi)}
            cases.append(row)
            print(f"  start {start} level {level}: true {truth:,.0f}; band [{row['band']['lo']:,.0f}, "
                  f"{row['band']['hi']:,.0f}] {'in' if row['band']['covered'] else 'OUT'}; targets only "
                  f"[{row['targets_only']['lo']:,.0f}, {row['targets_only']['hi']:,.0f}]", flush=True)
    covered = sum(c["band"]["covered"] for c in cases)
    return {"cases": cases, "covered": covered, "num_cases": len(cases),
            "targets_only_covered": sum(c["targets_only"]["covered"] for c in cases)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="digits,synthetic")
    p.add_argument("--store", action="append", default=[], help="NAME=PATH: a finished long sweep's store to reuse")
    p.add_argument("--records", action="append", default=[],
                   help="NAME=PATH: its replayed checkpoints, a JSON list (as this script's replay makes them)")
    p.add_argument("--num-models", type=int, default=10000, help="fitting models of the long sweeps")
    p.add_argument("--every", type=int, default=250, help="checkpoint interval of the replay")
    p.add_argument("--starts", default="1000,1500,2000,2500,3000")
    p.add_argument("--levels", type=int, default=2, help="levels per start point")
    p.add_argument("--save-records", help="a folder to keep each data set's replayed checkpoints in (for --records)")
    p.add_argument("--out", default=str(HERE.parent / "results" / "forecast_calibration.json"))
    args = p.parse_args(argv)

    from datamodels import config as config_lib
    from datamodels.live import replay
    from datamodels.sweep import sweep

    stores = dict(s.split("=", 1) for s in args.store)
    replayed = {name: json.loads(Path(path).read_text()) for name, path in (s.split("=", 1) for s in args.records)}
    starts = [int(s) for s in args.starts.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="forecast-calibration-"))
    results = {}
    try:
        for name in args.datasets.split(","):
            overrides = [f"out={tmp / name}", f"sweep.num_models={args.num_models}", "sweep.checkpoint_every=0"]
            if name == "synthetic":
                overrides.append("data.source=synthetic")
            cfg = config_lib.load(ROOT / "configs" / "digits.yaml", overrides)
            started = time.perf_counter()
            if name not in stores and name not in replayed:
                sweep(cfg, progress=False)
                stores[name] = str(tmp / name / "store")
            sweep_s = time.perf_counter() - started
            started = time.perf_counter()
            records = replayed.get(name) or replay(stores[name], cfg, every=args.every)
            replay_s = time.perf_counter() - started
            if args.save_records:
                Path(args.save_records).mkdir(parents=True, exist_ok=True)
                (Path(args.save_records) / f"{name}.json").write_text(json.dumps(records))
            print(f"{name}: {len(records)} checkpoints, LDS {records[0]['lds']:.3f} -> {records[-1]['lds']:.3f}",
                  flush=True)
            results[name] = {"sweep_s": round(sweep_s, 1), "replay_s": round(replay_s, 1),
                             "curve": [[r["num_fit_models"], round(r["lds"], 5)] for r in records],
                             **calibrate(records, starts, args.levels)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    covered = sum(r["covered"] for r in results.values())
    total = sum(r["num_cases"] for r in results.values())
    old = sum(r["targets_only_covered"] for r in results.values())
    print(f"covered {covered} of {total} cases (targets-only band: {old})")
    save_result(args.out, {"machine": machine_info("scipy"), "every": args.every, "starts": starts,
                           "covered": covered, "num_cases": total, "targets_only_covered": old, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
