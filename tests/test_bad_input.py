"""Bad input, row by row: each is answered by one line on stderr, exit status 2, and an untouched store.

Every row of ``CASES`` copies one small finished run (prepared digits, a store of 24
completed models, fitted datamodels), damages the copy, runs the real command line
(``python -m datamodels.cli``) in a subprocess and checks

* the exit status is 2 (what ``datamodels.cli.main`` returns for a ``DatamodelsError``);
* stderr is exactly one line, ``datamodels: error: ...``, containing the row's substring
  (so no traceback, no warning, no progress bar);
* every file of the store is byte-for-byte what it was before the command ran.

The rows run concurrently (a few subprocesses at a time: each spends most of its two
seconds importing torch), once per module; each row's test checks its own outcome.

``docs/bad-input.md`` is generated from this table and the messages the commands print:

    scripts/loopback.sh python tests/test_bad_input.py      # rewrites docs/bad-input.md
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-input.md"
PARALLEL = 3
TIMEOUT_S = 120

CONFIG = {
    "seed": 0,
    "data": {"source": "digits", "num_test": 100},
    "sweep": {"num_models": 20, "num_eval_models": 4, "models_per_task": 8, "max_retries": 0},
    "worker": {"name": "workers.mlp", "hidden": 16, "epochs": 2, "batch_size": 64},
    "fit": {"num_lambdas": 4},
}


# ---- the finished run every row starts from ---------------------------------------------------

def make_base(root: Path, prepared: Optional[Path] = None) -> Path:
    """``root/run``: prepared data, a store whose 24 models are all complete (so a sweep with
    the same config has nothing to train and never starts Ray), and datamodels for 20 targets."""
    from datamodels import config as config_lib
    from datamodels.regression import fit
    from datamodels.prepare import prepare, read_meta
    from datamodels.store import model_seeds
    from datamodels.sweep import open_store, run_task

    run = root / "run"
    if prepared is not None:
        shutil.copytree(prepared, run / "data")
    cfg = config_lib.from_dict(dict(CONFIG, out=str(run)))
    data_dir = prepare(cfg, progress=False)
    store, worker, _ = open_store(cfg, read_meta(data_dir))
    with store.lock():
        store.grow(cfg.sweep.num_models, cfg.sweep.num_eval_models)
        rows = np.arange(store.num_models)
        margins = run_task(cfg.worker.name, np.asarray(store.masks), model_seeds(store.seed, rows),
                           worker, {"dir": str(data_dir), "targets": "test"},
                           store.num_targets)
        store.write(rows, margins)
    with warnings.catch_warnings():  # a short path on a tiny store does not converge, which is fine here
        warnings.simplefilter("ignore", RuntimeWarning)
        fit(store.path, run / "datamodels.npz", num_lambdas=2, max_iter=20, targets=slice(0, 20), progress=False)
    return run


# ---- one row ----------------------------------------------------------------------------------

class Ctx:
    """A row's own directory: ``dir/run`` (a copy of the finished run) and ``dir/config.yaml``."""

    def __init__(self, path: Path):
        self.dir = path
        self.run = path / "run"
        self.store = self.run / "store"
        self.config = path / "config.yaml"
        self.values: Dict[str, str] = {}
        self.cleanup: List[Callable[[], None]] = []
        self.store_after: Optional[Path] = None  # where the store is to be compared, if not in place

    def placeholders(self) -> Dict[str, str]:
        return {"run": str(self.run), "store": str(self.store), "config": str(self.config), "dir": str(self.dir),
                **self.values}


@dataclass
class Case:
    id: str
    bad: str  # the bad input, for the docs
    args: List[str]  # after `datamodels`; {run} {store} {config} {dir} and Ctx.values are filled in
    expect: str  # the error line contains this
    make: Optional[Callable[[Ctx], None]] = None
    config: Optional[str] = None  # YAML text of {config}; default: the good tiny config
    read_only: bool = False  # run without the capabilities that let root ignore file permissions
    fsize: Optional[int] = None  # RLIMIT_FSIZE of the command, bytes
    tmpfs: Optional[str] = None  # size of a tmpfs mounted over the store for the command (a full disk)
    max_s: float = TIMEOUT_S
    gap: Optional[str] = None  # a known shortfall outside this table's reach: the row is an expected failure


def _yaml(values: dict) -> str:
    import yaml

    return yaml.safe_dump(values, sort_keys=False)


def good_config(ctx: Ctx) -> str:
    return _yaml(dict(out=str(ctx.run), **CONFIG))


# Damage helpers: each returns a ``make`` function.

def remove(rel: str):
    return lambda c: (c.run / rel).unlink()


def garbage(rel: str):
    def make(c: Ctx):
        p = c.run / rel
        p.write_bytes(np.random.default_rng(0).integers(0, 256, p.stat().st_size, dtype=np.uint8).tobytes())
    return make


def truncate(rel: str, keep: float = 0.5):
    def make(c: Ctx):
        p = c.run / rel
        os.truncate(p, int(p.stat().st_size * keep))
    return make


def write(rel: str, content):
    def make(c: Ctx):
        p = c.run / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    return make


def edit_spec(change: Callable[[dict], None]):
    def make(c: Ctx):
        spec = json.loads((c.store / "spec.json").read_text())
        change(spec)
        (c.store / "spec.json").write_text(json.dumps(spec, indent=2))
    return make


def save_npy(rel: str, array_of: Callable[[Ctx], np.ndarray]):
    def make(c: Ctx):
        with open(c.run / rel, "wb") as f:  # np.save would append .npy to a name without it
            np.save(f, array_of(c))
    return make


def store_of_other_data(c: Ctx) -> None:
    """A consistent store, made with the same settings on a data set of 1,600 training examples."""
    from datamodels.store import Store

    meta = json.loads((c.store / "spec.json").read_text())["datamodels"]
    shutil.rmtree(c.store)
    extra = {k: v for k, v in meta.items() if k not in ("version", "alpha", "seed", "eval_ranges")}
    store = Store.create(c.store, num_train=1600, num_targets=100, alpha=meta["alpha"], seed=meta["seed"], extra=extra)
    store.grow(20, 4)
    store.write(np.arange(24), np.ones((24, 100), np.float32))


def small_store(c: Ctx) -> None:
    """A store of 30 training examples and 4 targets, which fits in a blink."""
    from datamodels.store import Store

    shutil.rmtree(c.store)
    store = Store.create(c.store, num_train=30, num_targets=4, alpha=0.5, seed=0)
    store.grow(20, 4)
    store.write(np.arange(24), np.random.default_rng(0).normal(size=(24, 4)).astype(np.float32))


def wide_store(c: Ctx) -> None:
    """A store of 200,000 training examples: its two XᵀX alone would take 298 GiB."""
    from datamodels.store import Store

    shutil.rmtree(c.store)
    store = Store.create(c.store, num_train=200_000, num_targets=2, alpha=0.5, seed=0)
    store.grow(40, 0)
    store.write(np.arange(40), np.zeros((40, 2), np.float32))


def lock_held(c: Ctx) -> None:
    """Another live process holds the store's lock while the command runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
                               "l.acquire(); print('held', flush=True); time.sleep(600)", str(c.store / ".lock")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    c.cleanup.append(lambda: (holder.kill(), holder.wait()))


def dead_port(c: Ctx) -> None:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        c.values["port"] = str(s.getsockname()[1])


def read_only(*rels: str):
    """Make the given directories below the row's own (and their files) read-only."""
    def make(c: Ctx):
        for rel in rels:
            top = c.dir / rel
            top.mkdir(parents=True, exist_ok=True)
            for p in sorted(top.rglob("*"), reverse=True) + [top]:
                p.chmod(0o555 if p.is_dir() else 0o444)
            c.cleanup.append(lambda top=top: [p.chmod(0o755 if p.is_dir() else 0o644)
                                              for p in [top, *top.rglob("*")]])
    return make


def npz(arrays: Dict[str, np.ndarray]):
    def make(c: Ctx):
        np.savez(c.dir / "data.npz", **arrays)
    return make


def both(*makes):
    def make(c: Ctx):
        for m in makes:
            m(c)
    return make


NO_COMPLETED = save_npy("store/_completed.npy", lambda c: np.zeros(24, dtype=bool))
TINY_IMAGES = {"x_train": np.zeros((10, 4, 4), np.uint8), "y_train": np.zeros(10, np.int64),
               "x_test": np.zeros((5, 4, 4), np.uint8)}

CASES = [
    # -- the config ----------------------------------------------------------------------------
    Case("config-missing", "config file that does not exist", ["sweep", "{dir}/nope.yaml"], "config file not found"),
    Case("config-yaml-syntax", "config file that is not valid YAML", ["sweep", "{config}"], "is not valid YAML",
         config="sweep: [1, 2\n"),
    Case("config-unknown-top-key", "unknown top-level key in the config file", ["sweep", "{config}"], "outdir",
         make=lambda c: c.config.write_text(good_config(c) + "outdir: elsewhere\n")),
    Case("config-unknown-section-key", "unknown key in a section (a typo)", ["sweep", "{config}", "sweep.alpah=0.3"],
         "sweep.alpah"),
    Case("config-unknown-worker-key", "unknown `worker.*` key (not in the worker's Config)",
         ["sweep", "{config}", "worker.hiden=32"], "worker.hiden"),
    Case("config-string-for-int", "a string where an integer belongs", ["sweep", "{config}", "sweep.num_models=many"],
         "sweep.num_models"),
    Case("config-negative-num-models", "negative `sweep.num_models`", ["sweep", "{config}", "sweep.num_models=-5"],
         "sweep.num_models must be positive"),
    Case("config-alpha-above-1", "`sweep.alpha` outside (0, 1)", ["sweep", "{config}", "sweep.alpha=1.5"],
         "sweep.alpha must be in (0, 1)"),
    Case("config-models-per-task-negative", "`sweep.models_per_task` below 0", ["sweep", "{config}",
         "sweep.models_per_task=-1"], "sweep.models_per_task must be >= 1, or 0 for the worker's default"),
    Case("live-until-lds-above-1", "`sweep.until_lds` outside (0, 1)", ["sweep", "{config}", "sweep.until_lds=1.5"],
         "sweep.until_lds must be in (0, 1)"),
    Case("live-checkpoint-every-too-large", "`sweep.checkpoint_every` larger than the sweep",
         ["sweep", "{config}", "sweep.checkpoint_every=500"], "sweep.checkpoint_every=500 is larger than the sweep"),
    Case("live-no-held-out-models", "a stop rule on a sweep without held-out models",
         ["sweep", "{config}", "sweep.num_eval_models=0", "sweep.checkpoint_every=20", "sweep.until_gain=0.01"],
         "sweep.until_gain needs held-out models to score LDS on"),
    Case("status-lds-level", "`status --lds` outside (0, 1)", ["status", "{run}/store", "--lds", "85"],
         "--lds must be in (0, 1)"),
    Case("override-without-equals", "override without `=`", ["sweep", "{config}", "sweep.num_models"],
         "must look like section.key=value"),
    Case("override-unknown-section", "override of a section that does not exist",
         ["sweep", "{config}", "sweep2.alpha=0.3"], "sweep2"),
    # -- prepared data -------------------------------------------------------------------------
    Case("data-beton-garbage", "`train.beton` overwritten with random bytes",
         ["sweep", "{config}", "sweep.num_models=30"], "train.beton is corrupt: not an FFCV file", make=garbage("data/train.beton")),
    Case("data-beton-truncated", "`test.beton` cut in half", ["sweep", "{config}", "sweep.num_models=30"],
         "test.beton is truncated", make=truncate("data/test.beton")),
    Case("data-meta-missing", "`data/meta.json` missing, for a command that reads the prepared data",
         ["report", "{run}"], "meta.json is missing", make=remove("data/meta.json")),
    Case("data-beton-missing", "`train.beton` missing, for a command that reads the prepared data",
         ["report", "{run}"], "train.beton is missing", make=remove("data/train.beton")),
    Case("prepare-npz-missing-keys", "`prepare` from an .npz without `y_test`",
         ["prepare", "{config}", "out={dir}/new", "data.source=npz", "data.path={dir}/data.npz"], "missing y_test",
         make=npz(TINY_IMAGES)),
    # -- a store that disagrees with the config ------------------------------------------------
    Case("store-other-alpha", "store made with another `sweep.alpha`", ["sweep", "{config}", "sweep.alpha=0.3"],
         "made with alpha=0.5"),
    Case("store-other-seed", "store made with another `seed`", ["sweep", "{config}", "seed=1"], "made with seed=0"),
    Case("store-other-num-train", "store made on a data set of another size", ["sweep", "{config}"],
         "made with num_train=1600", make=store_of_other_data),
    Case("store-other-worker", "store made with other worker settings", ["sweep", "{config}", "worker.hidden=32"],
         "made with worker.hidden=16"),
    # -- a damaged store -----------------------------------------------------------------------
    Case("store-spec-garbage", "`spec.json` that is not JSON", ["status", "{store}"], "spec.json is not valid JSON",
         make=garbage("store/spec.json")),
    Case("store-masks-missing", "`masks.npy` missing", ["status", "{store}"], "masks.npy is missing",
         make=remove("store/masks.npy")),
    Case("store-margins-missing", "`margins.npy` missing", ["sweep", "{config}"], "margins.npy is missing",
         make=remove("store/margins.npy")),
    Case("store-completed-missing", "`_completed.npy` missing", ["fit", "--store", "{store}", "--out", "{dir}/dm.npz"],
         "_completed.npy is missing", make=remove("store/_completed.npy")),
    Case("store-masks-garbage", "`masks.npy` overwritten with random bytes", ["sweep", "{config}"],
         "masks.npy is not a .npy file", make=garbage("store/masks.npy")),
    Case("store-margins-garbage", "`margins.npy` overwritten with random bytes", ["evaluate", "--run", "{run}"],
         "margins.npy is not a .npy file", make=garbage("store/margins.npy")),
    Case("store-completed-garbage", "`_completed.npy` overwritten with random bytes", ["status", "{store}"],
         "_completed.npy is not a .npy file", make=garbage("store/_completed.npy")),
    Case("store-masks-truncated", "`masks.npy` cut in half", ["fit", "--store", "{store}", "--out", "{dir}/dm.npz"],
         "masks.npy is truncated", make=truncate("store/masks.npy")),
    Case("store-margins-truncated", "`margins.npy` cut in half", ["sweep", "{config}"], "margins.npy is truncated",
         make=truncate("store/margins.npy")),
    Case("store-completed-truncated", "`_completed.npy` cut short", ["status", "{store}"],
         "_completed.npy is truncated", make=truncate("store/_completed.npy", 0.9)),
    Case("store-masks-wrong-columns", "`masks.npy` with the wrong number of columns", ["sweep", "{config}"],
         "masks.npy has shape [24, 1000], but spec.json says [24, 1697]",
         make=save_npy("store/masks.npy", lambda c: np.ones((24, 1000), bool))),
    Case("store-locked", "store locked by another live sweep", ["sweep", "{config}", "sweep.num_models=30"],
         "is locked: another sweep is writing to it", make=lock_held),
    Case("store-not-a-store", "`status` of a directory that is not a store", ["status", "{run}"],
         "is not a store: spec.json is missing"),
    # -- the environment -------------------------------------------------------------------------
    Case("readonly-store", "store directory and files not writable", ["sweep", "{config}", "sweep.num_models=30"],
         "masks.npy: cannot open it for writing (permission denied)", make=read_only("run/store"), read_only=True),
    Case("readonly-fit-out", "`fit --out` into a directory that cannot be written",
         ["fit", "--store", "{store}", "--out", "{dir}/ro/dm.npz", "--num-lambdas", "2"],
         "ro/dm.npz.tmp: permission denied",
         make=both(small_store, read_only("ro")), read_only=True),
    Case("disk-full-file-size", "no room to grow the store", ["sweep", "{config}", "sweep.num_models=5000"],
         "masks.npy: file too large; the store is unchanged", fsize=1 << 20),
    Case("disk-full-tmpfs", "no room to grow the store",
         ["sweep", "{config}", "sweep.num_models=5000"], "no space left on device", tmpfs="100k"),
    Case("address-unreachable", "`--address` where no Ray cluster listens",
         ["sweep", "{config}", "sweep.num_models=30", "--address", "127.0.0.1:{port}"],
         "cannot reach a Ray cluster at 127.0.0.1:", make=dead_port, max_s=20),
    Case("fit-no-completed-rows", "`fit` on a store with no completed models", ["fit", "--store", "{store}", "--out",
         "{dir}/dm.npz"], "no completed fitting rows", make=NO_COMPLETED),
    Case("fit-targets-malformed", "`fit --targets` that is not a range", ["fit", "--store", "{store}", "--out",
         "{dir}/dm.npz", "--targets", "3-5"], "--targets must be A:B (target columns A to B-1), got '3-5'"),
    Case("fit-out-of-memory", "`fit` of a store whose Grams exceed the machine's memory",
         ["fit", "--store", "{store}", "--out", "{dir}/dm.npz"], "fit needs about 298.", make=wide_store),
    # -- fitted datamodels -----------------------------------------------------------------------
    Case("datamodels-missing", "`evaluate` without a datamodels file", ["evaluate", "--run", "{run}"],
         "datamodels file not found", make=remove("datamodels.npz")),
    Case("datamodels-not-npz", "`evaluate` with a datamodels file that is not an .npz", ["evaluate", "--run", "{run}"],
         "is not a datamodels .npz file", make=write("datamodels.npz", "weight,bias\n1,2\n")),
    Case("datamodels-truncated", "`query` with a datamodels file cut in half", ["query", "top", "--target", "3",
         "--run", "{run}"], "is not a datamodels .npz file", make=truncate("datamodels.npz")),
    Case("query-target-out-of-range", "`query top --target` beyond the fitted targets",
         ["query", "top", "--target", "20", "--run", "{run}"], "--target 20 is out of range"),
    # -- stores in the reference layout, eval rows and other methods' scores ---------------------
    Case("spec-shape-mismatch", "`--spec` whose shapes do not match the `.npy` headers",
         ["status", "{store}", "--spec", "{run}/ref_spec.json"], "masks.npy has shape [24, 1697], but spec",
         make=write("ref_spec.json", json.dumps({"num_models": 24, "schema": {
             "masks": {"shape": [1000], "dtype": "bool_"}, "margins": {"shape": [100], "dtype": "float32"}}}))),
    Case("spec-num-models-mismatch", "`--spec` with more models than the files hold",
         ["fit", "--store", "{store}", "--spec", "{run}/ref_spec.json", "--out", "{dir}/dm.npz"],
         "masks.npy has shape [24, 1697], but spec",
         make=write("ref_spec.json", json.dumps({"num_models": 30, "schema": {
             "masks": {"shape": [1697], "dtype": "bool_"}, "margins": {"shape": [100], "dtype": "float32"}}}))),
    Case("spec-dtype-mismatch", "`--spec` saying float16 margins for a float32 file",
         ["evaluate", "--run", "{run}", "--spec", "{run}/ref_spec.json"], "margins.npy has dtype float32, but spec",
         make=write("ref_spec.json", json.dumps({"num_models": 24, "schema": {
             "masks": {"shape": [1697], "dtype": "bool_"}, "margins": {"shape": [100], "dtype": "float16"}}}))),
    Case("spec-file-missing", "`--spec` naming a file that does not exist", ["status", "{store}", "--spec",
         "{dir}/nope.json"], "nope.json not found"),
    Case("spec-undetectable", "no `spec.json` and `.npy` files that disagree on the number of models",
         ["status", "{store}"], "do not determine one: the files disagree on the number of models",
         make=both(remove("store/spec.json"), save_npy("store/_completed.npy", lambda c: np.ones(20, bool)))),
    Case("reference-store-sweep", "`sweep` into a reference-layout store (no `spec.json`), which it would overwrite",
         ["sweep", "{config}"], "which a new store would overwrite", make=remove("store/spec.json")),
    Case("reference-store-grow", "`sweep` of a store without alpha/seed metadata (another pipeline's)",
         ["sweep", "{config}", "sweep.num_models=30"], "so it cannot be grown or resumed here",
         make=edit_spec(lambda s: s.pop("datamodels"))),
    Case("eval-rows-out-of-range", "`--eval-rows` beyond the store's rows", ["evaluate", "--run", "{run}",
         "--eval-rows", "20:30"], "eval rows 20:30 are out of range: the store has rows 0:24"),
    Case("eval-rows-not-completed", "`--eval-rows` that include unfinished models",
         ["evaluate", "--run", "{run}", "--eval-rows", "16:24"], "2 of 8 are not completed (rows 18, 19)",
         make=save_npy("store/_completed.npy", lambda c: ~np.isin(np.arange(24), [18, 19]))),
    Case("eval-rows-malformed", "`--eval-rows` that is not A:B", ["fit", "--store", "{store}", "--out", "{dir}/dm.npz",
         "--eval-rows", "20-24"], "eval rows must look like A:B"),
    Case("scores-wrong-shape", "`evaluate --scores` with a matrix of the wrong shape",
         ["evaluate", "--run", "{run}", "--scores", "{run}/scores.npy"], "needs N_train x N_targets = [1697, 100]",
         make=save_npy("scores.npy", lambda c: np.zeros((1697, 20), np.float32))),
    Case("scores-transposed", "`evaluate --scores` with a T x N matrix and no `--transpose`",
         ["evaluate", "--run", "{run}", "--scores", "{run}/scores.npy"], "(T x N? pass --transpose)",
         make=save_npy("scores.npy", lambda c: np.zeros((100, 1697), np.float32))),
    Case("scores-nan", "`evaluate --scores` with NaN in the matrix", ["evaluate", "--run", "{run}", "--scores",
         "{run}/scores.npy"], "has 1 non-finite values (NaN or inf), the first at training example 5, target 7",
         make=save_npy("scores.npy", lambda c: np.where(np.arange(1697 * 100).reshape(1697, 100) == 507, np.nan, 0.0))),
    Case("scores-not-npy", "`evaluate --scores` with a file that is not `.npy`", ["evaluate", "--run", "{run}",
         "--scores", "{run}/scores.csv"], "is not a readable .npy file", make=write("scores.csv", "1,2\n3,4\n")),
    Case("report-scores-syntax", "`report --scores` without a name", ["report", "{run}", "--scores", "{run}/s.npy"],
         "--scores must look like NAME=FILE"),
    # -- values the types let through, and outputs that would destroy inputs ----------------------
    Case("config-section-not-mapping", "a section that is not a mapping (a list under `worker:`)",
         ["sweep", "{config}"], "the worker section must be a mapping of settings",
         make=lambda c: c.config.write_text(good_config(c).split("worker:")[0] + "worker: [1, 2]\n")),
    Case("config-seed-negative", "a negative `seed`", ["sweep", "{config}", "seed=-1"],
         "seed must be in 0..4294967295"),
    Case("config-seed-overflow", "a `seed` beyond 32 bits", ["sweep", "{config}", "seed=18446744073709551615"],
         "seed must be in 0..4294967295"),
    Case("config-count-overflow", "a count beyond what a store can hold", ["sweep", "{config}",
         "sweep.num_models=99999999999999999999"], "sweep.num_models is too large"),
    Case("config-not-finite", "NaN or infinity for a number", ["sweep", "{config}", "sweep.cpus_per_task=inf"],
         "sweep.cpus_per_task must be a finite number"),
    Case("config-worker-value", "a worker setting out of range", ["sweep", "{config}", "worker.batch_size=0"],
         "worker.batch_size must be >= 1"),
    Case("config-worker-name-path", "`worker.name` that is not a module name", ["sweep", "{config}", "worker.name=.."],
         "worker.name must name a worker module"),
    Case("config-address-malformed", "`sweep.address` that is not HOST:PORT", ["sweep", "{config}",
         "sweep.address=nothere"], "sweep.address must be auto, local, HOST:PORT"),
    Case("override-unparsable", "an override value YAML cannot read", ["sweep", "{config}", "seed=\t"],
         "bad override"),
    Case("argument-not-a-number", "`status --budget` that is not a whole number", ["status", "{store}", "--budget",
         "1e30"], "argument --budget: must be a whole number"),
    Case("argument-not-finite", "`status --lds nan`", ["status", "{store}", "--lds", "nan"],
         "argument --lds: must be a finite number"),
    Case("argument-unknown", "an option the command does not have", ["status", "{store}", "--bogus"],
         "unrecognized arguments: --bogus"),
    Case("run-config-differs", "`run` of an existing run with other data settings",
         ["run", "{run}/config.yaml", "out={run}", "data.source=npz", "data.path=/missing.npz"],
         "config differs from the run's", make=lambda c: (c.run / "config.yaml").write_text(good_config(c))),
    Case("run-seed-differs", "`run` of an existing run with another `seed`", ["run", "{config}", "seed=1"],
         "seed 0 -> 1", make=lambda c: (c.run / "config.yaml").write_text(good_config(c))),
    Case("fit-out-in-store", "`fit --out` a file inside the store", ["fit", "--store", "{store}", "--out",
         "{store}/masks.npy"], "is inside the store"),
    Case("fit-out-not-ours", "`fit --out` an existing file fit did not write", ["fit", "--store", "{store}", "--out",
         "{run}/notes.txt"], "pass --force to replace it", make=write("notes.txt", "mine")),
    Case("report-out-is-input", "`report --out` one of the report's inputs", ["report", "{run}", "--out",
         "{run}/datamodels.npz"], "is one of this command's inputs"),
]


# ---- running rows -----------------------------------------------------------------------------

def store_digest(path: Path) -> Dict[str, str]:
    """sha256 of every file below ``path`` (names relative to it)."""
    if not path.is_dir():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _drop_file_capabilities() -> None:
    """Root reads and writes any file regardless of its mode; without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH in the bounding set, the command (still uid 0, so it can run an
    interpreter installed in root's private home) obeys permissions like any other user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _probe(cmd: List[str], **kw) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30, **kw).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def environment_skips(root: Path) -> Dict[str, Optional[str]]:
    """Why rows that need the operating system's help cannot run here (None: they can)."""
    skips: Dict[str, Optional[str]] = {"read_only": None, "tmpfs": None}
    ro = root / "probe-ro"
    ro.mkdir()
    ro.chmod(0o555)
    writes = [sys.executable, "-c", f"open({str(ro / 'x')!r}, 'w')"]
    try:
        pre = _drop_file_capabilities if os.geteuid() == 0 else None
        if _probe(writes, preexec_fn=pre):
            skips["read_only"] = "file permissions are not enforced here (CAP_DAC_OVERRIDE could not be dropped)"
    except OSError as exc:
        skips["read_only"] = f"cannot drop root's file capabilities: {exc}"
    finally:
        ro.chmod(0o755)
    mnt = root / "probe-mnt"
    mnt.mkdir()
    if not _probe(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(mnt))}"]):
        skips["tmpfs"] = "cannot mount a tmpfs in a private mount namespace here (needs root or user namespaces)"
    return skips


def prepare_case(case: Case, base: Path, root: Path) -> Ctx:
    ctx = Ctx(root / case.id)
    ctx.dir.mkdir(parents=True)
    shutil.copytree(base, ctx.run)
    ctx.config.write_text(case.config if case.config is not None else good_config(ctx))
    if case.make:
        case.make(ctx)
    return ctx


def start_case(case: Case, ctx: Ctx) -> dict:
    """Start the row's command; its stdout and stderr go to files in the row's directory."""
    args = [a.format(**ctx.placeholders()) for a in case.args]
    cmd = [sys.executable, "-m", "datamodels.cli", *args]
    preexec = None
    if case.read_only and os.geteuid() == 0:
        preexec = _drop_file_capabilities
    elif case.fsize:
        preexec = _limit_file_size(case.fsize)
    if case.tmpfs:
        # The store moves onto a small tmpfs mounted over its own path, in a mount namespace of
        # the command's own; what the command left there is copied out for the comparison.
        orig, after = ctx.dir / "store.orig", ctx.dir / "store.after"
        shutil.copytree(ctx.store, orig)
        script = ('mount -t tmpfs -o size="$1" tmpfs "$2" && cp -a "$3/." "$2/" || exit 99; '
                  's="$2"; a="$4"; shift 4; "$@"; rc=$?; mkdir -p "$a" && cp -a "$s/." "$a/"; exit $rc')
        cmd = ["unshare", "-m", "sh", "-c", script, "sh", case.tmpfs, str(ctx.store), str(orig), str(after), *cmd]
        ctx.store_after = after
    out, err = open(ctx.dir / "stdout", "w"), open(ctx.dir / "stderr", "w")
    env = dict(os.environ, OMP_NUM_THREADS="1")  # a few commands at once on a small machine
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                            preexec_fn=preexec, start_new_session=True)
    out.close()
    err.close()
    return {"proc": proc, "started": time.monotonic(), "args": args}


def finish_case(case: Case, ctx: Ctx, run: dict, timed_out: bool) -> dict:
    return {"rc": None if timed_out else run["proc"].returncode, "seconds": time.monotonic() - run["started"],
            "stdout": (ctx.dir / "stdout").read_text(), "stderr": (ctx.dir / "stderr").read_text(),
            "args": run["args"]}


def run_cases(cases: List[Case], base: Path, root: Path) -> Dict[str, dict]:
    """Prepare every row, run the commands a few at a time, then compare every store.

    Subprocesses are started from this thread only: forking from other threads after FFCV
    (numba, TBB) is loaded draws warnings."""
    ctxs, before = {}, {}
    for case in cases:
        ctxs[case.id] = prepare_case(case, base, root)
        before[case.id] = store_digest(ctxs[case.id].store)
    pending, running, results = list(cases), {}, {}
    while pending or running:
        while pending and len(running) < PARALLEL:
            case = pending.pop(0)
            running[case.id] = (case, start_case(case, ctxs[case.id]))
        time.sleep(0.05)
        for cid, (case, run) in list(running.items()):
            late = time.monotonic() - run["started"] > case.max_s + 30
            if run["proc"].poll() is None and not late:
                continue
            if late and run["proc"].poll() is None:
                os.killpg(run["proc"].pid, signal.SIGKILL)
                run["proc"].wait()
            results[cid] = finish_case(case, ctxs[cid], run, late)
            del running[cid]
    for case in cases:
        ctx = ctxs[case.id]
        for undo in ctx.cleanup:
            undo()
        r = results[case.id]
        r["store_unchanged"] = store_digest(ctx.store_after or ctx.store) == before[case.id]
        r["placeholders"] = ctx.placeholders()
    return results


DOC_NAMES = {"run": "RUN", "store": "RUN/store", "config": "CONFIG", "dir": "DIR", "port": "PORT"}


def shown(text: str, placeholders: Dict[str, str]) -> str:
    """``text`` with the row's paths (and port) as the names the docs use."""
    for key in sorted(placeholders, key=lambda k: -len(placeholders[k])):
        text = text.replace(placeholders[key], DOC_NAMES.get(key, key.upper()))
    return text


# ---- the tests --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir():
    # Removed at the end rather than left to pytest: the rows' copies of the run add up to
    # hundreds of megabytes.
    root = Path(tempfile.mkdtemp(prefix="datamodels-bad-input-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def outcomes(request, workdir, prepared_digits):
    base = make_base(workdir / "base", prepared_digits)
    skips = environment_skips(workdir)
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input" and hasattr(item, "callspec")}
    cases = [c for c in CASES if c.id in selected and not _skip_reason(c, skips)]
    results = run_cases(cases, base, workdir / "cases")
    return results, skips


def _skip_reason(case: Case, skips: Dict[str, Optional[str]]) -> Optional[str]:
    if case.read_only and skips["read_only"]:
        return skips["read_only"]
    if case.tmpfs and skips["tmpfs"]:
        return skips["tmpfs"]
    return None


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=c.gap)) if c.gap else c
                                  for c in CASES], ids=[c.id for c in CASES])
def test_bad_input(case, outcomes):
    results, skips = outcomes
    reason = _skip_reason(case, skips)
    if reason:
        pytest.skip(reason)
    r = results[case.id]
    err = r["stderr"].strip()
    lines = err.splitlines()
    command = shlex.join(["datamodels", *r["args"]])
    context = f"{command}\nexit {r['rc']} after {r['seconds']:.1f} s\nstderr:\n{r['stderr']}"
    assert r["rc"] == 2, context
    assert "Traceback" not in err, context
    assert len(lines) == 1 and lines[0].startswith("datamodels: error: "), context
    assert case.expect in lines[0], context
    assert r["store_unchanged"], f"the store changed\n{context}"
    assert r["seconds"] < case.max_s, context


def test_table_has_enough_distinct_rows():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 32


def test_every_row_is_documented():
    documented = re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), flags=re.M)
    ids = [c.id for c in CASES]
    regenerate = "regenerate it with `scripts/loopback.sh python tests/test_bad_input.py`"
    missing, stale = sorted(set(ids) - set(documented)), sorted(set(documented) - set(ids))
    assert not missing, f"rows missing from {DOC}: {missing}; {regenerate}"
    assert not stale, f"rows in {DOC} but not in the test: {stale}; {regenerate}"


def _small(tmp_path):
    from datamodels.store import Store

    store = Store.create(tmp_path / "run" / "store", num_train=12, num_targets=3, alpha=0.5, seed=0)
    store.grow(6, 2)
    store.write([0, 1], np.ones((2, 3), np.float32))
    return store


@pytest.mark.parametrize("damage, message", [
    (edit_spec(lambda s: s["datamodels"].update(eval_ranges="6-8")), "eval_ranges must be a list"),
    (edit_spec(lambda s: s["datamodels"].update(eval_ranges=[[6]])), "eval_ranges must be a list"),
    (edit_spec(lambda s: s["datamodels"].update(alpha="half")), "alpha must be a number in (0, 1)"),
    (edit_spec(lambda s: s["datamodels"].update(seed=1.5)), "seed must be an integer"),
    (edit_spec(lambda s: s["schema"]["masks"].update(shape=["12"])), "non-negative integers"),
    (save_npy("store/masks.npy", lambda c: np.asfortranarray(np.ones((8, 12), bool))), "Fortran order"),
    (save_npy("store/margins.npy", lambda c: np.zeros((8, 3))), "margins.npy has dtype float64"),
    (write("store/_failures.json", '{"3": '), "_failures.json is damaged"),
    (write("store/_failures.json", '[1, 2]'), "_failures.json is damaged"),
], ids=["eval-ranges-string", "eval-ranges-not-pairs", "alpha-string", "seed-float", "shape-strings",
        "masks-fortran-order", "margins-dtype", "failures-garbage", "failures-list"])
def test_damaged_store_metadata_in_process(tmp_path, damage, message):
    """Cheaper relatives of the table's store rows: the one-line errors of ``Store`` itself."""
    from datamodels.errors import DatamodelsError
    from datamodels.store import Store

    store = _small(tmp_path)
    ctx = Ctx(tmp_path)
    damage(ctx)
    with pytest.raises(DatamodelsError) as info:
        Store(store.path).summary()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_failed_grow_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    """A disk that fills up while the store grows (here: on the second file) is undone."""
    import datamodels.store as store_lib
    from datamodels.errors import DatamodelsError

    store = _small(tmp_path)
    before = store_digest(store.path)
    calls = []

    def reserve(fd, offset, length):
        calls.append(length)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_lib, "_reserve", reserve)
    with pytest.raises(DatamodelsError, match="margins.npy: no space left on device; the store is unchanged"):
        store.grow(100, 2)
    assert store_digest(store.path) == before
    assert store.num_models == 8 and list(np.flatnonzero(store.completed)) == [0, 1]
    monkeypatch.undo()
    assert store.grow(10, 2) == (4, 0) and store.num_models == 12


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    """The store's lock is an OS lock: when its holder dies (SIGKILL, no clean-up) the next
    writer gets it at once."""
    from datamodels.store import Store

    store = Store.create(tmp_path / "store", num_train=10, num_targets=2, alpha=0.5, seed=0)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); "
                               "l.acquire(); print('held', flush=True); time.sleep(600)", str(store.path / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from datamodels.errors import DatamodelsError

        with pytest.raises(DatamodelsError, match="locked"):
            with Store(store.path, mode="r+").lock():
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with Store(store.path, mode="r+").lock():
        assert Store(store.path, mode="r+").grow(3, 1) == (3, 1)


# ---- the docs ---------------------------------------------------------------------------------

def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _md_code(text: str) -> str:
    return "`" + _md(text).replace("`", "'") + "`"


def write_doc(results: Dict[str, dict], skips: Dict[str, Optional[str]]) -> None:
    rows = []
    for case in CASES:
        r = results.get(case.id)
        command = shlex.join(["datamodels", *[a.format(**DOC_NAMES) for a in case.args]])
        if r is None:
            seen = f"(not run here: {_skip_reason(case, skips)})"
        else:
            lines = r["stderr"].strip().splitlines()
            seen = _md_code(shown(lines[-1] if lines else "", r["placeholders"]))
            if len(lines) > 1:
                seen += f", after {len(lines) - 1} more lines"
        setting = " (run without permission to write)" if case.read_only else ""
        setting += f" (a file size limit of {case.fsize >> 20} MiB: writes fail with EFBIG)" if case.fsize else ""
        setting += f" (the store on a full {case.tmpfs}B tmpfs: ENOSPC)" if case.tmpfs else ""
        gap = f" **Known gap:** {_md(case.gap)}." if case.gap else ""
        rows.append(f"| `{case.id}` | {_md(case.bad)}{setting} | `{_md(command)}` | {seen}{gap} |")
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(HEADER + "\n".join(rows) + "\n" + FOOTER)


HEADER = """# Bad input

Every row below is a mistake a user can make, the command that meets it, and what that command
prints.  Each is answered by **one line** on stderr (`datamodels: error: ...`, no traceback),
**exit status 2**, and a store left **byte-for-byte as it was**: bad input is found before
anything is written, and a write that fails half-way (a full disk) is undone.  Rows marked
**Known gap**, if any, fall short of that; the test expects them to fail and will say so once
they are fixed.

`tests/test_bad_input.py` holds the same table and checks all of it on a small finished digits
run: it damages a copy of the run, runs the command in a subprocess, and compares the
store's files before and after.  This page is generated from the test table and the messages
the commands printed (`scripts/loopback.sh python tests/test_bad_input.py`), with paths
shortened: `RUN` is the run directory (`out`), `CONFIG` its config file, `DIR` a scratch
directory next to it, `PORT` a port nobody listens on.  The test fails when a row is missing
here.

| row | bad input | command | what the user sees |
| --- | --- | --- | --- |
"""

FOOTER = """
## Stores, data files, caches, the cluster and the report

These classes are checked by their own tests rather than rows of the table above, because they
need two processes, a cluster, or a look inside the written files.

| what happened | what happens | test |
| --- | --- | --- |
| two sweeps create one store at once | the store is built in a hidden sibling under its lock and renamed into place: one creates it, the other opens it (same settings) or gets `store already exists: P, made with other settings (differing in seed)`; a crash at any point leaves no store or a whole one | `tests/test_store_safety.py` |
| a second process writes to a store being swept | `store P is locked: another sweep is writing to it`; the files are unchanged | `tests/test_store_safety.py` |
| a spec whose schema key is `../../victim`, a list, a string, a non-numeric dtype, a negative or overflowing shape | one line naming the spec and the key, before any file is opened | `tests/test_store.py`, `tests/test_reference_store.py` |
| a store file truncated, of another dtype or shape, holding Python objects, or a directory in its place; `_completed.npy` holding bytes other than 0 and 1 | one line naming the file | `tests/test_store.py` |
| a worker returns NaN or infinite margins (or values beyond the store's dtype) | the task fails with `margins of row R ... are NaN, infinite or beyond float32; nothing was stored` and is retried | `tests/test_store.py` |
| files planted or damaged in the node data cache | every file's SHA-256 is checked against the driver's before use; a mismatch is rebuilt, never trained on | `tests/test_datacache.py` |
| a data cache directory writable by others, another user's, or a symlink | `data cache R is writable by others ..., so files in it cannot be trusted; set DATAMODELS_CACHE` | `tests/test_datacache.py` |
| an `.npz` label of 2**64-1, object arrays, members that are not arrays, a damaged `meta.json` or `.beton` | one line naming the array or file; nothing is converted silently | `tests/test_prepare.py` |
| `sweep.gpus_per_task=1` on a machine or cluster without GPUs, more CPUs per task than any node has, an unknown custom resource | `sweep.gpus_per_task=1 but the cluster has no GPUs (nodes: ...)` within seconds, before anything is written | `tests/test_cluster.py` |
| `--address` to a host that is not there, a malformed address or `RAY_ADDRESS` | one line within seconds, before anything is written | `tests/test_cluster.py` |
| the driver of a local sweep is killed (SIGINT, SIGTERM, SIGKILL) | Ray's processes end within seconds; a local Ray listens on 127.0.0.1 alone | `tests/test_cluster.py` |
| `<script>` or other markup in `RUN/analyses/*.json`, `checkpoints.jsonl`, the config, or a `--scores` name | escaped in `report.html` by the template engine; a `$...$` name is drawn as plain text, not math | `tests/test_report_safety.py` |
| a kept analysis result or checkpoint record of the wrong structure | `report` shows that section with a note naming the file and skips what it cannot read; `status` gives one line | `tests/test_report_safety.py`, `tests/test_properties.py` |
| NaN or constant held-out margins, or non-finite predictions | those targets are left out of the LDS, counted by reason (`LDS 0.5871 over 82 of 100 targets ...; 18 dropped: constant predictions (18)`); none left is a one-line error | `tests/test_report_safety.py` |
| `fit --prior trak` on a store that records no seeds (a reference-layout store) | one line before any retraining | `tests/test_report_safety.py` |

## Not errors

Some states look broken but are recovered from, because nothing is lost:

- **A lock left by a dead process.**  The store's `.lock` is an OS file lock: it is released
  when its holder exits or is killed, so the next sweep takes it at once (tested by
  `test_stale_lock_of_a_dead_process_is_taken_over`).
- **An interrupted sweep.**  Rerun the same command: finished models are kept, the rest are
  trained; rows are marked complete only after their margins are flushed.
- **Prepared data with a `.beton` or `meta.json` missing**, where the source is still there:
  `prepare` (and `sweep`, `run`, which prepare first) writes it again from the same settings,
  so the store's models still match.  Commands that only read the prepared data, such as
  `report`, say what is missing (rows `data-meta-missing`, `data-beton-missing`).
- **A store grown further than its `spec.json` says** (a crash while adding rows): the extra
  rows are ignored and overwritten by the next sweep.
- **`run` again with other sweep or fit settings** (more models, another `fit.num_lambdas`): the
  run goes on with them; its `config.yaml` keeps the first call's settings and is never rewritten.
  Settings that define the models (`seed`, `data.*`, `sweep.alpha`, `sweep.margins_dtype`,
  `worker.*`) are refused instead (row `run-config-differs`).
- **`--out` naming a file the command wrote before** (a datamodels `.npz` for `fit`, a report for
  `report`) is replaced; any other existing file needs `--force`, and a file inside a store or one
  of the command's own inputs is never written.

## A config is code

`worker.name` names a Python module, and every command that reads the config imports it (running
its top-level code) and calls its `train`.  Use only configs, and worker modules on `sys.path`, that
you trust as you would a script you run (see `datamodels/worker.py` for the contract).
"""


if __name__ == "__main__":
    root = Path(tempfile.mkdtemp(prefix="datamodels-bad-input-"))
    try:
        base = make_base(root / "base")
        found = environment_skips(root)
        todo = [c for c in CASES if not _skip_reason(c, found)]
        outcome = run_cases(todo, base, root / "cases")
        write_doc(outcome, found)
        bad = [cid for cid, r in outcome.items()
               if r["rc"] != 2 or len(r["stderr"].strip().splitlines()) != 1 or not r["store_unchanged"]]
        for cid, r in sorted(outcome.items(), key=lambda kv: -kv[1]["seconds"])[:8]:
            print(f"{r['seconds']:6.1f} s  {cid}")
        print(f"wrote {DOC} ({len(outcome)} rows run; not as expected: {bad or 'none'})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
