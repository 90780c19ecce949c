"""Generated bad input thrown at the real commands: configs, overrides, arguments and damaged files.

Whatever the input, a command either succeeds (exit 0) or prints one line ``datamodels: error: ...``
as its last line of stderr, with no traceback, and exits 2; and every file that was in the run
directory before is byte-for-byte what it was.  The commands run in-process (``datamodels.cli.main``)
on one small finished run made once for the module; a few run as real subprocesses.  None of them
trains a model or starts Ray: the commands that would are given the address of a port nobody
listens on, which every valid config meets (and is refused at) before anything is written.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamodels import config as config_lib
from datamodels.cli import main
from datamodels.errors import DatamodelsError
from test_bad_input import CONFIG, make_base, store_digest

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(deadline=None, max_examples=60, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---- the run every property starts from ---------------------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory, prepared_digits):
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()  # a live Ray would be used instead of the dead address that stops every sweep
    root = tmp_path_factory.mktemp("properties")
    run = make_base(root, prepared_digits)
    config_lib.save(config_lib.from_dict(dict(CONFIG, out=str(run))), run / "config.yaml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    return {"root": root, "run": run, "dead": dead}


def cli(*args):
    """``datamodels ARGS`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own exits (--help, bad arguments)
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def assert_clean(code, err: str, args) -> None:
    """Exit 0, or exit 2 with one error line (the last), and never a traceback."""
    context = f"datamodels {' '.join(map(str, args))}\nexit {code}\nstderr:\n{err}"
    assert "Traceback" not in err, context
    if code == 0:
        return
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("datamodels: error: ")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], context


def digest(*paths: Path) -> dict:
    return {str(p): store_digest(p) if p.is_dir() else p.read_bytes() for p in paths if p.exists()}


# ---- values -----------------------------------------------------------------------------------

KEYS = ["seed", "out", "data", "sweep", "worker", "fit", "nosuch",
        "data.source", "data.path", "data.num_test", "data.split_seed", "data.targets",
        "sweep.num_models", "sweep.num_eval_models", "sweep.alpha", "sweep.models_per_task", "sweep.cpus_per_task",
        "sweep.gpus_per_task", "sweep.max_retries", "sweep.task_timeout_s", "sweep.max_in_flight", "sweep.address",
        "sweep.margins_dtype", "sweep.checkpoint_every", "sweep.checkpoint_targets", "sweep.until_lds",
        "sweep.until_gain", "sweep.nosuch", "fit.device", "fit.val_fraction", "fit.num_lambdas",
        "fit.lambda_min_ratio", "fit.max_iter", "fit.tol", "fit.chunk_rows", "fit.prior", "fit.prior_models",
        "fit.prior_gamma", "worker.name", "worker.hidden", "worker.epochs", "worker.batch_size", "worker.lr",
        "worker.momentum", "worker.weight_decay", "worker.precision", "worker.device", "worker.nosuch"]
WORDS = ["nan", "inf", "-inf", "1e30", "1e-30", "-0.0", "", "null", "~", "true", "no", "[1, 2]", "{a: 1}", "[]", "{}",
         "${oops}", "${seed}", "'quoted'", "[", "{", ":", "a: b", "!!python/object:os.system", "0x10", "1_000",
         "../x", "/nonexistent/data.npz", "workers.mlp", "os", "json", "..", "workers..mlp", ".mlp", "digits", "npz",
         "cifar10", "test+train", "cpu", "cuda:x", "auto", "local", "nothere", "host:99999", "ray://h:1", "float16",
         "127.0.0.1:1", "\t", "a=b", "é"]
NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([-1, 0, 1, 2, 2**31 - 1, 2**31, 2**32, 2**63, 2**64 - 1]),
                    st.floats(allow_nan=True, allow_infinity=True))
VALUES = st.one_of(NUMBERS.map(lambda v: repr(v) if isinstance(v, float) else str(v)), st.sampled_from(WORDS),
                   st.text(max_size=10))
OVERRIDES = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), VALUES),
                               st.sampled_from(["seed", "=3", "sweep..alpha=1", ".=.", "worker.name", "==="])),
                     min_size=1, max_size=3)
YAML_SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.sampled_from(WORDS), st.text(max_size=6))
YAML_VALUES = st.recursive(YAML_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from([k.split(".")[-1] for k in KEYS]), inner, max_size=3)),
    max_leaves=6)


@FAST
@given(overrides=OVERRIDES)
def test_loading_any_override_is_a_config_or_one_line(base, overrides):
    try:
        cfg = config_lib.load(base["run"] / "config.yaml", overrides)
    except DatamodelsError as exc:
        assert "\n" not in str(exc).strip() and str(exc).strip()
    else:
        assert config_lib.is_validated(cfg)
        assert 0 <= cfg.seed < 2**32 and 0 < cfg.sweep.alpha < 1 and cfg.sweep.num_models >= 1
        for section in ("data", "sweep", "fit"):
            for key, value in cfg[section].items():
                assert not (isinstance(value, float) and not math.isfinite(value)), (section, key, value)


@FAST
@given(overrides=OVERRIDES, command=st.sampled_from(["run", "sweep"]))
def test_run_and_sweep_with_any_override_leave_the_run_as_it_was(base, overrides, command):
    run = base["run"]
    before = digest(run)
    args = [command, run / "config.yaml", f"out={run}", *overrides, "--address", base["dead"]]
    code, _, err = cli(*args)
    assert_clean(code, err, args)
    assert code == 2  # nothing valid gets past the dead address
    assert digest(run) == before


@FAST
@given(sections=st.dictionaries(st.sampled_from(["seed", "out", "data", "sweep", "worker", "fit", "extra"]),
                                YAML_VALUES, max_size=4))
def test_any_config_file_leaves_the_run_as_it_was(base, sections, tmp_path_factory):
    import yaml

    run = base["run"]
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(yaml.safe_dump(sections, allow_unicode=True))
    before = digest(run)
    args = ["run", path, f"out={run}", "--address", base["dead"]]
    code, _, err = cli(*args)
    assert_clean(code, err, args)
    assert digest(run) == before


ARGUMENT_VALUES = st.one_of(st.sampled_from(["0", "-1", "1", "3", "2:1", "0:", ":", "a:b", "1e30", "nan", "inf",
                                             "-0", "99999999999999999999", "", "x", "cuda:x", "local", "1.5", "0.5"]),
                            st.text(max_size=6))
FLAGS = {
    "status": ["--lds", "--budget", "--eval-rows", "--spec", "--json"],
    "evaluate": ["--eval-rows", "--scores", "--datamodels", "--transpose", "--json", "--spec"],
    "query": ["--target", "--k", "--datamodels", "--json"],
    "fit": ["--val-fraction", "--num-lambdas", "--lambda-min-ratio", "--max-iter", "--tol", "--chunk-rows", "--seed",
            "--slices", "--prior-gamma", "--eval-rows", "--device", "--spec", "--address"],
}
SWITCHES = {"--json", "--transpose"}


def _arguments(command: str):
    pair = st.tuples(st.sampled_from(FLAGS[command]), ARGUMENT_VALUES)
    return st.lists(pair, max_size=3).map(lambda pairs: [x for flag, value in pairs
                                                         for x in ([flag] if flag in SWITCHES else [flag, value])])


@settings(FAST, max_examples=80)
@given(data=st.data())
def test_read_commands_with_any_arguments_leave_the_run_as_it_was(base, data, tmp_path_factory):
    run = base["run"]
    command = data.draw(st.sampled_from(sorted(FLAGS)))
    extra = data.draw(_arguments(command))
    if command == "status":
        args = ["status", run / "store", *extra]
    elif command == "query":
        args = ["query", data.draw(st.sampled_from(["top", "nearest"])), "--run", run, *extra]
        if "--target" not in extra:
            args += ["--target", "0"]
    elif command == "fit":
        out = tmp_path_factory.mktemp("fit") / "dm.npz"
        # few targets, lambdas and iterations: a valid fit takes a moment
        args = ["fit", "--store", run / "store", "--out", out, "--targets", "0:2", "--num-lambdas", "2",
                "--max-iter", "5", *extra]
    else:
        args = ["evaluate", "--run", run, *extra]
    before = digest(run)
    code, _, err = cli(*args)
    assert_clean(code, err, args)
    assert digest(run) == before


# ---- damaged store files ----------------------------------------------------------------------

def _json_junk():
    return st.one_of(st.sampled_from(["[1, 2]", '"spec"', "null", "1e999", "{}", "{\"num_models\": -1}",
                                      '{"num_models": "24"}', '{"schema": []}', '{"num_models": 1e30, "schema": {}}',
                                      "{", "\u0000", ""]),
                     YAML_VALUES.map(lambda v: json.dumps(v, default=str)))


DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 0.99)),
    st.tuples(st.just("garbage"), st.binary(min_size=0, max_size=64)),
    st.tuples(st.just("json"), _json_junk()),
)
FILES = ["store/spec.json", "store/_completed.npy", "store/masks.npy", "store/margins.npy",
         "store/checkpoints.jsonl", "store/_failures.json", "datamodels.npz"]


def damage(path: Path, how) -> None:
    kind, arg = how
    if kind == "truncate":
        if path.exists():
            data = path.read_bytes()
            path.write_bytes(data[:int(len(data) * arg)])
    elif kind == "garbage":
        path.write_bytes(arg)
    else:
        text = arg
        if path.name == "checkpoints.jsonl":  # one good-looking line, then the damaged one
            good = {"num_fit_models": 20, "lds": 0.5, "settings_key": "k", "per_target": [0.5]}
            text = json.dumps(good) + "\n" + text + "\n"
        path.write_text(text)


@settings(FAST, max_examples=80)
@given(file=st.sampled_from(FILES), how=DAMAGE,
       command=st.sampled_from(["status", "status-json", "fit", "evaluate", "query"]))
def test_commands_on_a_damaged_run_leave_it_as_it_was(base, tmp_path_factory, file, how, command):
    work = tmp_path_factory.mktemp("damaged")
    run = work / "run"
    shutil.copytree(base["run"], run, ignore=shutil.ignore_patterns("data"))
    (run / "data").symlink_to(base["run"] / "data")
    damage(run / file, how)
    before = digest(run / "store", run / "datamodels.npz", run / "config.yaml")
    args = {"status": ["status", run / "store"], "status-json": ["status", run / "store", "--json"],
            "fit": ["fit", "--store", run / "store", "--out", work / "dm.npz", "--targets", "0:2", "--num-lambdas",
                    "2", "--max-iter", "5"],
            "evaluate": ["evaluate", "--run", run],
            "query": ["query", "top", "--target", "1", "--run", run]}[command]
    code, _, err = cli(*args)
    assert_clean(code, err, args)
    assert digest(run / "store", run / "datamodels.npz", run / "config.yaml") == before


# ---- outputs that would destroy an input --------------------------------------------------------

@pytest.mark.parametrize("target", ["store/masks.npy", "store/spec.json", "store/new.npz", "config.yaml",
                                    "datamodels-link.npz", "other.npz", "store"])
def test_fit_never_writes_over_what_it_did_not_write(base, tmp_path, target):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run, ignore=shutil.ignore_patterns("data"))
    (run / "other.npz").write_bytes(b"not the fit's")
    (run / "datamodels-link.npz").symlink_to(run / "store" / "margins.npy")
    before = digest(run)
    args = ["fit", "--store", run / "store", "--out", run / target, "--targets", "0:2", "--num-lambdas", "2"]
    code, _, err = cli(*args)
    assert code == 2 and err.count("\n") == 1, err
    assert digest(run) == before


def test_fit_replaces_its_own_output_and_others_only_with_force(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run, ignore=shutil.ignore_patterns("data"))
    (run / "mine.txt").write_text("keep me")
    args = ["fit", "--store", run / "store", "--out", run / "mine.txt", "--targets", "0:2", "--num-lambdas", "2",
            "--max-iter", "5"]
    code, _, err = cli(*args)
    assert code == 2 and "pass --force to replace it" in err and (run / "mine.txt").read_text() == "keep me"
    code, _, err = cli(*args, "--force")
    assert code == 0, err
    assert set(np.load(run / "mine.txt").files) >= {"weight", "bias", "targets"}
    before = (run / "mine.txt").read_bytes()
    code, _, err = cli(*args[:-6], "--targets", "0:3", "--num-lambdas", "2", "--max-iter", "5")  # its own: replaced
    assert code == 0, err
    assert (run / "mine.txt").read_bytes() != before and np.load(run / "mine.txt")["weight"].shape[1] == 3


@pytest.mark.parametrize("target", ["store/spec.json", "datamodels.npz", "config.yaml", "scores.npy", "notes.html"])
def test_report_never_writes_over_its_inputs(base, tmp_path, target):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run, ignore=shutil.ignore_patterns("data"))
    np.save(run / "scores.npy", np.zeros((1697, 100), np.float32))
    (run / "notes.html").write_text("<p>mine</p>")
    before = digest(run)
    args = ["report", run, "--out", run / target, "--scores", f"other={run / 'scores.npy'}"]
    code, _, err = cli(*args)
    assert code == 2 and err.count("\n") == 1, err
    assert digest(run) == before


# ---- the run's config ---------------------------------------------------------------------------

def test_run_refuses_another_config_for_an_existing_run_and_keeps_its_file(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run, symlinks=True)
    (run / "config.yaml").write_text("# the run's own notes\n" + (run / "config.yaml").read_text())
    before = digest(run)
    code, _, err = cli("run", run / "config.yaml", f"out={run}", "data.source=npz", "data.path=/missing.npz")
    assert code == 2 and "config differs from the run's" in err and "data.source digits -> npz" in err, err
    code, _, err = cli("run", "configs/digits.yaml", f"out={run}", "seed=1", "--address", base["dead"])
    assert code == 2 and "seed 0 -> 1" in err, err
    assert digest(run) == before
    # the same config reaches the (dead) cluster and leaves the file, comments and all, as it was
    code, _, err = cli("run", run / "config.yaml", f"out={run}", "--address", base["dead"])
    assert code == 2 and "cannot reach a Ray cluster" in err, err
    assert digest(run) == before


@pytest.mark.parametrize("args, message", [
    (["run", "{run}/config.yaml", "out={run}", "data.source=npz", "data.path=/missing.npz"], "config differs"),
    (["fit", "--store", "{run}/store", "--out", "{run}/store/masks.npy"], "is inside the store"),
    (["status", "{run}/store", "--lds", "nan"], "--lds"),
    (["run", "{run}/config.yaml", "out={run}", "seed=-1"], "seed must be in 0..4294967295"),
    (["sweep", "{run}/config.yaml", "worker=[1, 2]"], "the worker section must be a mapping"),
])
def test_subprocess_errors_are_one_line(base, tmp_path, args, message):
    run = tmp_path / "run"
    shutil.copytree(base["run"], run, symlinks=True)
    before = digest(run)
    proc = subprocess.run([sys.executable, "-m", "datamodels.cli", *[a.format(run=run) for a in args]], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert digest(run) == before
