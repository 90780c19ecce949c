"""The scale config (configs/scale50k.yaml) stage by stage at growing N: wall time and peak memory
of each stage run as its own ``datamodels`` command under ``/usr/bin/time -v``, beside the
estimate the stage checks before it starts, and the LDS of the plain fit and of the fit around
the TRAK prior.  Results: benchmarks/results/scale.json (with the commit and CPU); docs/scale.md
reads them.

    python benchmarks/perf/scale.py --n 5000 20000 --models 1000 --eval-models 200

Fewer models than the config's 5,000 keep a run short; ``--targets`` fits that many targets (the
first ones), as a slice of the fit's would be.  Run it where Ray may bind to 127.0.0.1
(scripts/loopback.sh in a shared container).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import machine_info, save_result  # noqa: E402


def timed(args, cwd) -> dict:
    """Run a ``datamodels`` command under /usr/bin/time -v: wall seconds, peak RSS (MiB), stdout."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "datamodels.cli", *map(str, args)]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(peak_kib(done.stderr) / 1024, 1), "stdout": done.stdout}


def peak_kib(time_output: str) -> int:
    """Max RSS (KiB) from /usr/bin/time -v's report."""
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_output)[1])


def estimates(N: int, T: int, M: int, fit_targets: int, curve_targets: int, ridges: int) -> dict:
    """Each stage's own estimate (MiB) of what it adds to its process."""
    from datamodels.analyses.learning_curve import learning_curve_memory
    from datamodels.config import FitOptions
    from datamodels.live import live_memory
    from datamodels.priors import trak_memory
    from datamodels.regression import memory_estimate

    mib = lambda b: round(b / 2 ** 20, 1)
    fit = memory_estimate(N, fit_targets, M)["host"]
    return {"fit": mib(fit), "fit_trak": mib(max(fit, trak_memory(N, T, ridges, 8192))),
            "learning_curve": mib(learning_curve_memory(N, curve_targets, M, FitOptions.chunk_rows)),
            "live_lds_if_on": mib(live_memory(N, 100, M, FitOptions.chunk_rows))}


def one_size(N: int, args, work: Path) -> dict:
    import yaml

    from datamodels.priors import RIDGES

    cfg = yaml.safe_load((ROOT / "configs/scale50k.yaml").read_text())
    out = work / f"n{N}"
    cfg["out"] = str(out)
    cfg["data"]["num_train"] = N
    cfg["sweep"].update(num_models=args.models, num_eval_models=args.eval_models, checkpoint_every=0)
    cfg["fit"]["prior_models"] = args.prior_models
    config = work / f"n{N}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    store, targets = out / "store", f"0:{args.targets}"
    stages = {
        "prepare": ["prepare", config],
        "sweep": ["sweep", config],
        "fit": ["fit", "--store", store, "--out", out / "datamodels.npz", "--targets", targets, "--num-lambdas", 40,
                "--force"],
        "fit_trak": ["fit", "--store", store, "--out", out / "trak.npz", "--targets", targets, "--num-lambdas", 40,
                     "--prior", "trak", "--prior-models", args.prior_models, "--config", config, "--force"],
        "evaluate": ["evaluate", "--run", out, "--json"],
        "evaluate_trak": ["evaluate", "--run", out, "--datamodels", out / "trak.npz", "--json"],
        "learning_curve": ["learning-curve", "--run", out, "--config", config, "--num-targets", args.targets,
                           "--json"],
    }
    est = estimates(N, cfg["data"]["num_test"], args.models, args.targets, args.targets, len(RIDGES))
    result = {"num_train": N, "num_fit_models": args.models, "num_eval_models": args.eval_models,
              "num_targets_fitted": args.targets, "prior_models": args.prior_models, "stages": {}}
    for name, command in stages.items():
        if name in args.skip:
            continue
        run = timed(command, ROOT)
        stage = {"wall_s": run["wall_s"], "peak_rss_mib": run["peak_rss_mib"], "estimate_mib": est.get(name)}
        if name.startswith("evaluate"):
            stage["lds"] = json.loads(run["stdout"])["lds"]
        if name == "learning_curve":
            stage["points"] = [(p["num_models"], round(p["lds"], 4)) for p in json.loads(run["stdout"])["points"]]
        result["stages"][name] = stage
        print(N, name, stage, flush=True)
    result["estimates_mib"] = est
    # What a stage's process holds before its own work (Python, torch, the package): the
    # estimates count what the work adds on top of it.
    bare = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", "import datamodels.regression, datamodels.cli"],
                          cwd=ROOT, capture_output=True, text=True).stderr
    result["baseline_rss_mib"] = round(peak_kib(bare) / 1024, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000], help="training set sizes")
    parser.add_argument("--models", type=int, default=1000, help="fitting models (the config: 5,000)")
    parser.add_argument("--eval-models", type=int, default=200, help="held-out models (the config: 500)")
    parser.add_argument("--targets", type=int, default=100, help="targets fitted (the first ones)")
    parser.add_argument("--prior-models", type=int, default=10, help="models retrained for the TRAK prior")
    parser.add_argument("--skip", nargs="*", default=[], help="stages to leave out")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/scale.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="datamodels-scale-") as work:
        for N in args.n:  # saved after each size: the larger ones take hours on a small machine
            results.append(one_size(N, args, Path(work)))
            save_result(args.out, {"machine": machine_info(), "settings": vars(args), "results": results})


if __name__ == "__main__":
    main()
