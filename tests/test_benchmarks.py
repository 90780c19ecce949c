"""benchmarks/: every script still starts (--help), the harness records where a figure comes from, and the
GPU scripts' --smoke modes (they cannot run here otherwise) keep them from rotting."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
# The scripts with a command line, at the least; timed_worker, plain_mlp and regression_scale are loaded by
# training.py and regression.py.
SCRIPTS = [*(f"perf/{n}.py" for n in ("training", "training_gpu", "regression", "regression_gpu", "soak")),
           *(f"quality/{n}.py" for n in ("estimators", "attribution", "leakage", "analyses", "live_lds")),
           *(f"experiments/2026-12/{n}.py" for n in ("adaptive_prior", "balanced_masks", "counterfactual_prior",
                                                     "orthogonal_masks", "seed_averaging", "shared_correction",
                                                     "stacked_prior"))]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.mark.integration  # fresh Python processes, seconds each
def test_every_script_starts_from_anywhere():
    """Run by path from another folder (the scripts find the harness themselves), each prints its usage."""
    scripts = sorted(str(p.relative_to(BENCH)) for p in BENCH.rglob("*.py")
                     if 'if __name__ == "__main__":' in p.read_text())
    assert set(SCRIPTS) <= set(scripts)
    procs = {s: subprocess.Popen([sys.executable, str(BENCH / s), "--help"], cwd="/", text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in scripts}
    for script, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{script}: {err[-2000:]}"
        assert out.startswith(f"usage: {Path(script).name}"), f"{script}: {out[:200]}"


def test_every_result_names_its_commit_and_cpu():
    """A figure means little without the code and the CPU it was measured on (AVX2 and AVX512 differ
    several-fold): each result file says both at its top level."""
    results = sorted(BENCH.rglob("results/*.json"))
    assert len(results) >= 37
    for path in results:
        report = json.loads(path.read_text())
        assert len(report.get("commit") or "") == 40, f"{path}: no commit"
        assert report.get("cpu_capability"), f"{path}: no CPU capability"


def test_save_result_records_commit_cpu_and_date(tmp_path):
    from benchmarks import harness
    from datamodels.hardware import machine

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    path = harness.save_result(tmp_path / "sub" / "r.json", {"figure": np.float32(0.5), "rows": np.arange(3)})
    report = json.loads(path.read_text())
    assert report["commit"] == head and len(head) == 40 and isinstance(report["dirty"], bool)
    assert report["cpu_capability"] == machine()["cpu_capability"] and report["cpu_model"]
    assert report["date"].startswith("20") and report["figure"] == 0.5 and report["rows"] == [0, 1, 2]
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left behind
    info = harness.machine_info()
    assert info["commit"] == head and info["cpu_capability"] == report["cpu_capability"]


def test_second_data_set_is_fixed_by_its_seed(tmp_path):
    from benchmarks.harness import make_synthetic

    a = np.load(make_synthetic(tmp_path / "a.npz", num_train=60, num_test=20))
    b = np.load(make_synthetic(tmp_path / "b.npz", num_train=60, num_test=20))
    c = np.load(make_synthetic(tmp_path / "c.npz", num_train=60, num_test=20, seed=1))
    assert a["x_train"].shape == (60, 12, 12, 1) and a["x_test"].shape == (20, 12, 12, 1)
    assert a["x_train"].dtype == np.uint8 and set(np.unique(a["y_train"])) <= set(range(10))
    assert all(np.array_equal(a[k], b[k]) for k in a.files) and not np.array_equal(a["x_train"], c["x_train"])


def test_a_store_of_given_rows_reads_back_and_scores(tmp_path):
    """write_store's rows are what the store reads, and spearman_mean is the mean per-column rank correlation."""
    from scipy.stats import spearmanr

    from benchmarks.harness import spearman_mean, write_store
    from datamodels.store import Store

    rng = np.random.default_rng(0)
    masks, margins = rng.random((30, 8)) < 0.5, rng.normal(size=(30, 4)).astype(np.float32)
    write_store(tmp_path / "store", masks, margins)
    store = Store(tmp_path / "store")
    assert np.array_equal(np.asarray(store.masks[:]), masks) and np.array_equal(np.asarray(store.margins[:]), margins)
    pred = margins + rng.normal(scale=0.8, size=margins.shape)
    expected = np.mean([spearmanr(pred[:, t], margins[:, t])[0] for t in range(4)])
    assert spearman_mean(pred, margins) == pytest.approx(expected, abs=1e-12)
    assert spearman_mean(margins, margins) == pytest.approx(1.0)


def test_regression_gpu_smoke_recovers_the_planted_weights():
    proc = subprocess.run([sys.executable, str(BENCH / "perf" / "regression_gpu.py"), "--smoke"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert report["problem"]["num_train"] == 300 and report["converged"] == 1.0
    assert report["support"]["top_k_recall"] > 0.9 and report["support"]["recall"] > 0.9


def test_attribution_trak_on_the_worker_checkpoints():
    """benchmarks/quality/attribution.py's TRAK path on a slice of digits: the nn.Module reproduces the
    worker's margins (checked inside), and the scores, with the sign convention of `evaluate --scores`,
    favour training images of the target's own label."""
    pytest.importorskip("trak")
    import tempfile

    from sklearn.datasets import load_digits

    from benchmarks.quality import attribution

    d = load_digits()
    x, y = d.images.astype(np.float32)[:500], d.target[:500]
    worker = {"hidden": 16, "epochs": 5, "batch_size": 64, "lr": 0.1, "weight_decay": 0.03, "precision": "float32"}
    states, xs, xts, model = attribution.train_checkpoints(x[:400], y[:400], x[400:], y[400:], worker, 2, 0)
    r = attribution.trak_scores(model, states, xs, y[:400], xts, y[400:], 64, 1.0, [1, 2], Path(tempfile.mkdtemp()))
    scores = r["by_checkpoints"][2]["scores"]
    assert scores.shape == (400, 100) and np.isfinite(scores).all() and r["proj_dim"] == 64
    same = y[:400, None] == y[None, 400:]
    assert scores[same].mean() > 0 > scores[~same].mean()
