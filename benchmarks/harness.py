"""What every benchmark shares: the machine and commit a figure was measured on, result writing,
the two data sets (digits and the synthetic one), stores of given rows and the run arguments.

Run the scripts from the repository root, e.g. ``python benchmarks/perf/training.py --help``;
each puts the root on ``sys.path`` and imports this module as ``benchmarks.harness``.
"""
from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> dict:
    """The commit the working tree is at and whether it has uncommitted changes (a figure measured on
    a dirty tree is not reproducible from the commit alone); None outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def machine_info(*packages: str) -> dict:
    """CPU (model, torch's kernel capability, the flags that decide which low-precision kernels
    are fast), OS, Python, torch (threads, GPU), the commit, and the versions of ``packages``, plus
    the load average at the call (other work on the machine skews wall-clock figures).  A speed
    figure holds for the CPU capability it was measured on: AVX512-VNNI/BF16 and AVX2-only machines
    differ by 8-25x on low-precision kernels."""
    import torch

    from datamodels.hardware import machine

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **git_commit(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()),
    }
    hw = machine()
    info.update(cpu_capability=hw["cpu_capability"], cpu_flags=hw["cpu_flags"], isa_env=hw["isa_env"])
    for name in ("numpy", *packages):
        info[name] = importlib.import_module(name).__version__
    return info


def provenance() -> dict:
    """The commit, CPU and date every result file records at its top level, whatever else it holds."""
    from datamodels.hardware import machine

    return {**git_commit(), "cpu_model": cpu_model(), "cpu_capability": machine()["cpu_capability"],
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def save_result(path, report: dict) -> Path:
    """Write a benchmark's JSON atomically (creating its folder), with the commit, CPU and date at its
    top level, and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {**provenance(), **report}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {path}")
    return path
