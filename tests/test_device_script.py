"""benchmarks/device.sh --smoke: the GPU run's script, end to end on CPU, in a Python that cannot import
FFCV, Ray or OmegaConf, as on the bare GPU machine it is written for.

The missing packages are simulated by an import hook (a ``sitecustomize`` on PYTHONPATH whose
meta-path finder refuses ``ffcv``, ``ray`` and ``omegaconf`` and everything under them) rather than a
fresh virtual environment: a venv with only torch would cost a 200 MB download per run, and the hook
tests the same thing, that nothing on these paths imports them, even lazily."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The whole device script in a fresh process: minutes of training and fitting on CPU.
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = '''
import sys


class RefuseImports:
    """Makes ffcv, ray and omegaconf look not installed."""

    REFUSED = ("ffcv", "ray", "omegaconf")

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.REFUSED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, RefuseImports())
'''


def test_device_script_smoke_runs_without_ffcv_ray_omegaconf(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "DATAMODELS_COMMIT": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "device.sh"), "--smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    environment = json.loads((out / "environment.json").read_text())
    assert environment["importable"] == {"ffcv": False, "ray": False, "omegaconf": False, "filelock": True,
                                         "scipy": True}  # the hook took effect, and only on those
    import torch

    training = json.loads((out / "training_gpu.json").read_text())
    regression = json.loads((out / "regression_gpu.json").read_text())
    for report in (training, regression):
        assert report["torch"] == torch.__version__ and "card" in report and report["commit"]
    rows = training["results"]
    assert [(r["data_path"], r["models_per_task"]) for r in rows] == [("device", 1), ("device", 2)]
    assert all(r["models_per_hour"] > 0 and 0 <= r["test_accuracy"] <= 1 for r in rows)
    assert training["skipped"] == [{"data_path": "ffcv", "why": "FFCV is not installed here"}]
    assert regression["support"]["top_k_recall"] > 0.9 and regression["seconds"]["fit"] > 0
    assert "device.sh" in done.stdout and "done (status 0)" in done.stdout
