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
import time
from pathlib import Path

import numpy as np

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


def _jsonable(value):
    """Arrays and numpy scalars as lists and numbers; paths and anything else as text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def save_result(path, report: dict, indent: int = 2) -> Path:
    """Write a benchmark's JSON atomically (creating its folder), with the commit, CPU and date at its
    top level, and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {**provenance(), **report}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(report, indent=indent, default=_jsonable) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {path}")
    return path


# ---- data sets ------------------------------------------------------------------------------
def make_synthetic(path: Path, seed: int = 0, num_train: int = 1500, num_test: int = 500) -> Path:
    """The second data set, an ``npz`` image set that is not digits: ``datamodels.synthetic``'s 12x12
    grayscale blobs of 10 classes (each class two Gaussian bumps at its own places, every image shifted
    by up to 2 pixels, with pixel noise), 9% of the training labels replaced by another class, so some
    examples matter more than others.  Until the generator moved into the library, each training label
    was redrawn from all 10 classes with probability 0.1, which changes 9% of them; the class layout of a
    seed is the same as then, the images and the noisy labels are other draws of the same distribution."""
    from datamodels.synthetic import generate

    data = generate(num_train, num_test, image_size=12, channels=1, num_classes=10, label_noise=0.09, seed=seed)
    np.savez(path, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test)
    return path


def add_run_arguments(parser) -> None:
    """``--config`` and ``--synthetic``, read by :func:`run_config`."""
    parser.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    parser.add_argument("--synthetic", action="store_true", help="sweep the second data set (make_synthetic) "
                                                                 "(10,000 + 500 models) into a temporary run first")
    parser.add_argument("--synthetic-run", default=None, help="with --synthetic: the run's folder, kept and reused "
                                                              "by later benchmarks (a complete sweep is not redone)")


def run_config(args, prefix: str):
    """(config, data set name, temporary directory or None): ``--config``'s existing run, or with
    ``--synthetic`` a sweep of the second data set (10,000 + 500 models), in a temporary folder or
    in ``--synthetic-run``."""
    from datamodels import config as config_lib

    if not args.synthetic:
        cfg = config_lib.load(args.config)
        return cfg, cfg.data.source, None
    from datamodels.sweep import sweep

    kept = args.synthetic_run is not None
    folder = Path(args.synthetic_run) if kept else Path(tempfile.mkdtemp(prefix=prefix))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "synthetic.npz"
    if not data.exists():
        make_synthetic(data)
    cfg = config_lib.load(ROOT / "configs" / "digits.yaml", [f"out={folder / 'run'}", "data.source=npz",
                                                             f"data.path={data}"])
    sweep(cfg, progress=False)
    return cfg, "synthetic", None if kept else folder


# ---- stores and scores ----------------------------------------------------------------------
def write_store(path: Path, masks: np.ndarray, margins: np.ndarray) -> None:
    """A store in the reference layout (spec.json and .npy files) holding exactly these rows."""
    path.mkdir(parents=True)
    spec = {"num_models": len(masks), "schema": {"masks": {"shape": [masks.shape[1]], "dtype": "bool_"},
                                                 "margins": {"shape": [margins.shape[1]], "dtype": "float32"}}}
    (path / "spec.json").write_text(json.dumps(spec))
    np.save(path / "masks.npy", masks)
    np.save(path / "margins.npy", margins.astype(np.float32))
    np.save(path / "_completed.npy", np.ones(len(masks), dtype=bool))


def spearman_mean(pred: np.ndarray, actual: np.ndarray) -> float:
    """Mean over columns of the rank correlation (the LDS, with no ties in float margins)."""
    a = np.argsort(np.argsort(pred, 0), 0).astype(np.float64)
    b = np.argsort(np.argsort(actual, 0), 0).astype(np.float64)
    a -= a.mean(0)
    b -= b.mean(0)
    return float(np.mean((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))))


def fitted_lds(rows_store, eval_store, n=None) -> tuple:
    """(LDS on ``eval_store``'s held-out models, fit seconds) of the default lasso fitted on
    ``rows_store``'s fitting rows (its first ``n`` completed ones, when given)."""
    import datamodels

    started = time.perf_counter()
    rows = None if n is None else rows_store.rows("fit")[:n]
    dm = datamodels.fit(rows_store, rows=rows, progress=False)
    seconds = time.perf_counter() - started
    return round(float(datamodels.lds(eval_store, dm)["lds"]), 4), round(seconds, 1)
