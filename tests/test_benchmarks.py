"""The GPU benchmark scripts cannot run here; their --smoke modes keep them from rotting."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_regression_gpu_smoke_recovers_the_planted_weights():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "regression_gpu.py"), "--smoke"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])
    assert report["problem"]["num_train"] == 300 and report["converged"] == 1.0
    assert report["support"]["top_k_recall"] > 0.9 and report["support"]["recall"] > 0.9
