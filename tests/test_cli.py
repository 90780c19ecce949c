"""The command line end to end on a tiny config: run, status, evaluate, query, and bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

from datamodels.cli import main


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "datamodels.cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


TINY = ["data.num_test=100", "sweep.num_models=60", "sweep.num_eval_models=20", "sweep.models_per_task=20",
        "worker.hidden=16", "worker.epochs=3", "fit.num_lambdas=8"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = cli("run", "configs/digits.yaml", f"out={out}", *TINY)
    return out, proc


def test_run_writes_every_output(tiny_run):
    out, proc = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_models"] == 80 and metrics["num_train"] == 1697 and metrics["num_targets"] == 100
    assert -1 <= metrics["lds"] <= 1
    for stage in ("prepare_s", "sweep_s", "fit_s", "evaluate_s"):
        assert metrics[stage] >= 0
    dm = np.load(out / "datamodels.npz")
    assert dm["weight"].shape == (1697, 100) and dm["bias"].shape == (100,) and dm["lam"].shape == (100,)
    assert (out / "config.yaml").exists() and (out / "store" / "spec.json").exists()


def test_status_evaluate_query(tiny_run):
    out, _ = tiny_run
    status = json.loads(cli("status", out / "store", "--json").stdout)
    assert status["completed"] == 80 and status["eval"] == {"total": 20, "completed": 20}
    assert "80/80 models complete" in cli("status", out / "store").stdout
    scores = json.loads(cli("evaluate", "--run", out, "--json").stdout)
    assert len(scores["per_target"]) == 100
    top = json.loads(cli("query", "top", "--target", 3, "--k", 4, "--run", out, "--json").stdout)
    weights = np.load(out / "datamodels.npz")["weight"][:, 3]
    assert [r["train_index"] for r in top["positive"]] == list(np.argsort(-weights, kind="stable")[:4])
    assert [r["train_index"] for r in top["negative"]] == list(np.argsort(weights, kind="stable")[:4])
    near = json.loads(cli("query", "nearest", "--target", 3, "--k", 5, "--run", out, "--json").stdout)
    assert 3 not in [r["target"] for r in near["nearest"]]
    cosines = [r["cosine"] for r in near["nearest"]]
    assert cosines == sorted(cosines, reverse=True)
    table = cli("query", "top", "--target", 3, "--run", out).stdout
    assert "train_index" in table and "weight" in table


def test_fit_around_a_trak_prior(tiny_run):
    # TRAK scores of 3 of the run's models (retrained from its config beside the store) as the
    # prior; on 54 training models of 3 epochs it predicts the held-out models better than the
    # plain lasso.
    out, _ = tiny_run
    proc = cli("fit", "--store", out / "store", "--out", out / "prior.npz", "--prior", "trak", "--prior-models", 3)
    assert "fitted 100 datamodels" in proc.stdout
    dm = np.load(out / "prior.npz")
    assert float(dm["prior_choice"]) in (1.0, 2.0, 5.0, 10.0, 20.0, 50.0) and dm["weight"].shape == (1697, 100)
    plain = json.loads(cli("evaluate", "--run", out, "--json").stdout)["lds"]
    prior = json.loads(cli("evaluate", "--run", out, "--datamodels", out / "prior.npz", "--json").stdout)["lds"]
    assert prior > plain + 0.05, (prior, plain)
    cli("fit", "--store", out / "store", "--out", out / "alike.npz", "--prior", "trak", "--prior-models", 3,
        "--prior-gamma", 0)
    alike = np.load(out / "alike.npz")
    assert not np.array_equal(alike["weight"], dm["weight"])  # the default γ = 0.5 weights the penalty
    np.testing.assert_array_equal(alike["prior_choice"], dm["prior_choice"])
    bad = cli("fit", "--store", out / "store", "--out", out / "x.npz", "--prior", "trak", "--prior-gamma", -1,
              check=False)
    assert bad.returncode != 0 and "fit.prior_gamma must be a number >= 0, got -1.0" in bad.stderr
    assert not (out / "x.npz").exists()
    bad = cli("fit", "--store", out / "store", "--out", out / "x.npz", "--prior", "trak", "--config", out / "nope.yaml",
              check=False)
    assert bad.returncode != 0 and "nope.yaml not found" in bad.stderr and not (out / "x.npz").exists()


def test_rerun_resumes_without_training(tiny_run):
    out, _ = tiny_run
    cli("run", "configs/digits.yaml", f"out={out}", *TINY)
    assert json.loads((out / "metrics.json").read_text())["models_trained_now"] == 0


@pytest.mark.parametrize("args, message", [
    (["run", "configs/digits.yaml", "sweep.alpah=0.2"], "sweep.alpah"),
    (["run", "configs/missing.yaml"], "config file not found"),
    (["status", "/nonexistent/store"], "store not found"),
    (["query", "top", "--target", "0", "--run", "/nonexistent"], "not found"),
])
def test_bad_input_is_one_line_and_nonzero(args, message, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1


def test_query_target_out_of_range(tiny_run, capsys):
    out, _ = tiny_run
    assert main(["query", "top", "--target", "100", "--run", str(out)]) == 2
    assert "out of range" in capsys.readouterr().err


def test_the_package_imports_each_stage_on_first_use():
    # `datamodels --help` and a command stopped by a bad config must not pay for torch, Ray and
    # FFCV; and the stage names stay functions even after their modules are imported directly.
    code = ("import sys, datamodels; heavy = {'torch', 'ray', 'ffcv'} & set(sys.modules); "
            "import datamodels.regression; from datamodels.regression import Stats; from datamodels import sweep; "
            "print(sorted(heavy), datamodels.fit.__name__, datamodels.fit.__module__, sweep.__module__, "
            "datamodels.report.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "fit", "datamodels.regression.api", "datamodels.sweep", "datamodels.report"]
    proc = cli("sweep", "/nonexistent/config.yaml", check=False)
    assert proc.returncode != 0 and "config file not found" in proc.stderr
