"""Stages at scale: memory estimates against measured peaks, and the learning curve from prefix
statistics against one fit per point."""
import subprocess
import sys

import numpy as np
import pytest

from datamodels import analyses
from datamodels.errors import DatamodelsError
from datamodels.evaluate import lds
from datamodels.regression import fit
from datamodels.store import Store


def sparse_store(path, num_train, num_fit, num_eval, targets, seed=0, noise=0.2):
    """A store whose margins come from a sparse linear truth (5 examples per target) plus noise."""
    store = Store.create(path, num_train=num_train, num_targets=targets, alpha=0.5, seed=seed)
    store.grow(num_fit, num_eval)
    rng = np.random.default_rng(seed)
    weight = np.zeros((num_train, targets))
    weight[rng.choice(num_train, 5 * targets, replace=False), np.repeat(np.arange(targets), 5)] = 1.0
    rows = np.arange(store.num_models)
    x = np.asarray(store.masks[rows], dtype=np.float64)
    store.write(rows, (x @ weight + rng.normal(0, noise, (len(rows), targets))).astype(np.float32))
    return store


def measured_peak(code: str):
    """(peak RSS over the RSS before, the estimate) in KiB, from ``code`` run in a fresh process that
    defines ``work()`` and ``estimate`` (bytes)."""
    script = ("rss = lambda key: int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith(key)))\n"
              + code + "\nbefore = rss('VmRSS')\nwork()\nprint(rss('VmHWM') - before, int(estimate) // 1024)")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return tuple(map(int, out.split()[-2:]))


def within(measured: int, estimate: int) -> bool:
    """The estimate is within 25 % of the measured peak, or above it (never below by more)."""
    return estimate >= 0.75 * measured and (estimate <= 1.25 * measured or estimate >= measured)


# ---- the learning curve from prefix statistics -----------------------------------------------------

def test_learning_curve_from_prefix_statistics_equals_one_fit_per_point(tmp_path):
    store = sparse_store(tmp_path / "s", num_train=60, num_fit=400, num_eval=80, targets=6)
    dm = fit(store, progress=False, num_lambdas=12)
    run = analyses.Run(tmp_path, datamodels=dm, store=store)
    sizes = [50, 120, 250, 400]
    options = {"num_lambdas": 12, "seed": 0}
    curve = analyses.learning_curve(run, sizes=sizes, num_targets=None, fit_options=options, progress=False)
    rows = store.rows("fit")
    for point, n in zip(curve["points"], sizes):
        refit = dm if n == 400 else fit(store, rows=rows[:n], progress=False, **options)
        assert point["num_models"] == n
        assert point["lds"] == pytest.approx(lds(store, refit)["lds"], abs=1e-6), n
    # the points differ: the curve is not one fit repeated
    assert len({round(p["lds"], 4) for p in curve["points"]}) == len(sizes)
    # each point's datamodels equal that fit's, not just its LDS: up to the solver's tolerance
    # (fit.tol), which the float32 solve reaches from sums taken in another order
    from datamodels.analyses.learning_curve import prefix_fits

    for n, got in zip([120, 250], prefix_fits(store, rows, [120, 250], np.arange(6), options)):
        want = fit(store, rows=rows[:n], progress=False, **options)
        np.testing.assert_allclose(got["weight"], want["weight"], atol=2e-4)
        np.testing.assert_allclose(got["bias"], want["bias"], atol=2e-4)


# ---- the TRAK prior in feature space ---------------------------------------------------------------

@pytest.fixture
def digits_store(tmp_path, prepared_digits):
    """Prepared digits (N = 1,697, 100 test targets) and a store of 4 completed fitting models:
    TRAK retrains them from their masks and seeds, no margins needed."""
    import shutil

    from conftest import tiny_config
    from datamodels import config

    shutil.copytree(prepared_digits, tmp_path / "run" / "data")
    cfg = config.coerce(tiny_config(tmp_path, worker={"precision": "float32"}))
    store = Store.create(tmp_path / "run" / "store", num_train=1697, num_targets=100, alpha=0.5, seed=0)
    store.grow(4, 2)
    rows = store.rows("fit", completed_only=False)
    store.write(rows, np.zeros((len(rows), store.num_targets), dtype=np.float32))
    return cfg, store


def test_trak_in_feature_space_equals_the_kernel_form(digits_store):
    # The digits MLP (16 hidden units, 64 pixels + 1, 10 classes) has P = 1,210 gradient
    # features < N = 1,697, so "auto" solves 1,210 x 1,210 systems instead of 1,697 x 1,697 ones.
    from datamodels.priors import trak

    cfg, _ = digits_store
    kernel = trak(cfg, num_models=3, ridges=(1.0, 10.0), progress=False, form="kernel")
    for form in ("features", "auto"):
        got = trak(cfg, num_models=3, ridges=(1.0, 10.0), progress=False, form=form)
        for r in (1.0, 10.0):
            assert got[r].shape == (1697, 100)
            scale = np.abs(kernel[r]).max()
            np.testing.assert_allclose(got[r], kernel[r], atol=1e-5 * scale, rtol=0)
    with pytest.raises(DatamodelsError, match="form must be one of auto, kernel, features"):
        trak(cfg, num_models=1, progress=False, form="random")


# ---- memory: each stage's check, and its estimate against the measured peak ------------------------

def test_a_sweep_whose_live_lds_would_not_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    import yaml

    from datamodels import resources
    from datamodels.cli import main

    cfg = yaml.safe_load(open("configs/scale50k.yaml"))
    cfg["out"] = str(tmp_path / "run")
    cfg["sweep"]["checkpoint_every"] = 1000
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(resources, "available_memory", lambda: 20 << 30)
    assert main(["sweep", str(tmp_path / "c.yaml")]) == 2
    assert "the live LDS (sweep.checkpoint_every) needs about" in capsys.readouterr().err
    from datamodels.live import check_live_memory

    refusal = (r"^the live LDS \(sweep.checkpoint_every\) needs about 3[78]\.\d GiB \(50,000 training examples: "
               r"four XᵀX .*\) but 20\.0 GiB is available: set sweep.checkpoint_every: 0")
    with pytest.raises(DatamodelsError, match=refusal):
        check_live_memory(cfg)
    assert not (tmp_path / "run").exists()
    cfg["sweep"]["checkpoint_every"] = 0
    check_live_memory(cfg)  # no checkpoints: nothing held


RUN_OF_WEIGHTS = """
import numpy as np, tempfile
from datamodels import analyses
from datamodels.store import Store
N, T = {N}, {T}
d = tempfile.mkdtemp()
store = Store.create(d + "/s", num_train=N, num_targets=T, alpha=0.5, seed=0)
store.grow(50, 0)
store.write(np.arange(50), np.random.default_rng(0).normal(size=(50, T)).astype(np.float32))
rng = np.random.default_rng(1)
W = (rng.normal(size=(N, T)) * (rng.random((N, T)) < 0.05)).astype(np.float32)
run = analyses.Run(d, datamodels={{"weight": W, "bias": np.zeros(T, np.float32), "targets": np.arange(T)}}, store=store)
run.margin_moments()
import importlib
from sklearn.utils.extmath import randomized_svd  # its import is not the PCA's memory
emb, leak = (importlib.import_module(f"datamodels.analyses.{{name}}") for name in ("embeddings", "leakage"))
emb.embeddings(analyses.Run(d, datamodels={{"weight": W[:, :20].copy(), "bias": np.zeros(20, np.float32),
                                            "targets": np.arange(20)}}, store=store))  # LAPACK loaded first
"""


@pytest.mark.parametrize("stage,N,T", [("embeddings", 12000, 400), ("embeddings", 3000, 2500),
                                       ("leakage", 12000, 400)])
def test_analysis_memory_estimates_match_the_measured_peak(stage, N, T):
    call = {"embeddings": "emb.embeddings(run)\nestimate = emb.embeddings_memory(N, T)",
            "leakage": "leak.scores(run, pixels=False)\nestimate = leak.leakage_memory(N, T, similarity=False)"}[stage]
    body, estimate = call.split("\n")
    measured, estimate = measured_peak(RUN_OF_WEIGHTS.format(N=N, T=T) + f"def work():\n    {body}\n{estimate}")
    assert abs(estimate - measured) <= 0.25 * measured, (measured, estimate)


SPARSE_STORE = """
import numpy as np
from datamodels.store import Store
store = Store({path!r})
"""


def test_learning_curve_and_live_lds_memory_estimates_match_the_measured_peak(tmp_path):
    # N = 3,000: the Grams (3 and 4 of 34 MiB) dominate, as they do at scale.
    N, M, T = 3000, 2400, 10
    sparse_store(tmp_path / "s", num_train=N, num_fit=M, num_eval=100, targets=T)
    head = SPARSE_STORE.format(path=str(tmp_path / "s"))
    curve = head + (
        "from datamodels.analyses.learning_curve import prefix_fits, learning_curve_memory\n"
        "def work():\n"
        f"    for _ in prefix_fits(store, store.rows('fit'), [1200, {M}], np.arange({T}), {{'num_lambdas': 6}}): pass\n"
        f"estimate = learning_curve_memory({N}, {T}, {M}, 8192)\n")
    measured, estimate = measured_peak(curve)
    # within 25 % or above it (which Gram kernel this machine chose moves the peak), never far above
    assert measured <= 1.25 * estimate and estimate <= 1.5 * measured, ("learning curve", measured, estimate)
    live = head + (
        "from datamodels import config\n"
        "from datamodels.live import LiveLDS, live_memory\n"
        "cfg = config.coerce({'out': 'unused', 'sweep': {'num_models': %d, 'num_eval_models': 100, "
        "'checkpoint_every': 1200, 'checkpoint_targets': %d}, 'fit': {'num_lambdas': 6}})\n"
        "def work():\n"
        "    live = LiveLDS(store, cfg, 1200, log=False)\n"
        "    live.checkpoint(1200); live.checkpoint(%d)\n"
        "estimate = live_memory(%d, %d, %d, 8192)\n") % (M, T, M, N, T, M + 100)
    measured, estimate = measured_peak(live)
    # within 25 % or above it (which Gram kernel this machine chose moves the peak), never far above
    assert measured <= 1.25 * estimate and estimate <= 1.5 * measured, ("live LDS", measured, estimate)
