"""The GPU benchmark scripts cannot run here; their --smoke modes keep them from rotting."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_regression_gpu_smoke_recovers_the_planted_weights():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf" / "regression_gpu.py"), "--smoke"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert report["problem"]["num_train"] == 300 and report["converged"] == 1.0
    assert report["support"]["top_k_recall"] > 0.9 and report["support"]["recall"] > 0.9


def test_attribution_trak_on_the_worker_checkpoints():
    """benchmarks/attribution.py's TRAK path on a slice of digits: the nn.Module reproduces the worker's
    margins (checked inside), and the scores, with the sign convention of `evaluate --scores`, favour
    training images of the target's own label."""
    import numpy as np
    import pytest

    pytest.importorskip("trak")
    import tempfile

    from sklearn.datasets import load_digits

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import attribution

    d = load_digits()
    x, y = d.images.astype(np.float32)[:500], d.target[:500]
    worker = {"hidden": 16, "epochs": 5, "batch_size": 64, "lr": 0.1, "weight_decay": 0.03, "precision": "float32"}
    states, xs, xts, model = attribution.train_checkpoints(x[:400], y[:400], x[400:], y[400:], worker, 2, 0)
    r = attribution.trak_scores(model, states, xs, y[:400], xts, y[400:], 64, 1.0, [1, 2], Path(tempfile.mkdtemp()))
    scores = r["by_checkpoints"][2]["scores"]
    assert scores.shape == (400, 100) and np.isfinite(scores).all() and r["proj_dim"] == 64
    same = y[:400, None] == y[None, 400:]
    assert scores[same].mean() > 0 > scores[~same].mean()
