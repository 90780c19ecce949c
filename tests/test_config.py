import pytest

from datamodels import config
from conftest import tiny_config
from datamodels.errors import DatamodelsError


def test_defaults_file_and_overrides():
    cfg = config.load("configs/digits.yaml", ["sweep.alpha=0.25", "worker.hidden=16", "seed=3"])
    assert cfg.sweep.alpha == 0.25 and cfg.worker.hidden == 16 and cfg.seed == 3
    assert cfg.sweep.num_models == 10000 and cfg.worker.epochs == 30  # untouched keys keep the file's values
    assert cfg.fit.tol == config.FitConfig().tol  # keys absent from the file take the defaults


@pytest.mark.parametrize("override, names", [
    ("sweep.alpah=0.3", "sweep.alpah"),
    ("sweep.alpha=abc", "sweep.alpha"),
    ("sweep.alpha=1.5", "sweep.alpha"),
    ("sweep.num_models=0", "sweep.num_models"),
    ("sweep.models_per_task=-2", "sweep.models_per_task"),
    ("data.source=mnist", "data.source"),
    ("data.targets=train", "data.targets"),
    ("fit.device=tpu", "fit.device"),
    ("fit.val_fraction=0", "fit.val_fraction"),
    ("worker.hiden=3", "worker.hiden"),
    ("worker.epochs=many", "worker.epochs"),
    ("worker.name=no_such_module", "worker.name"),
    ("worker.name=json", "worker.name"),  # importable, but no train()
    ("nosection", "nosection"),
])
def test_bad_values_name_the_key(override, names):
    with pytest.raises(DatamodelsError) as info:
        config.load("configs/digits.yaml", [override])
    assert names in str(info.value) and "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(DatamodelsError, match="not found"):
        config.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("sweep: [1, 2\n")
    with pytest.raises(DatamodelsError, match="not valid YAML"):
        config.load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(DatamodelsError, match="mapping"):
        config.load(tmp_path / "list.yaml")
    (tmp_path / "npz.yaml").write_text("data:\n  source: npz\n")
    with pytest.raises(DatamodelsError, match="data.path"):
        config.load(tmp_path / "npz.yaml")


def test_dict_api_validates_too():
    assert config.coerce({"sweep": {"num_models": 5}}).sweep.num_models == 5
    with pytest.raises(DatamodelsError, match="sweep.bogus"):
        config.coerce({"sweep": {"bogus": 1}})


def test_models_per_task_zero_asks_the_worker(tmp_path):
    from datamodels.config import models_per_task

    def k(**sweep_and_worker):
        sweep = {k: v for k, v in sweep_and_worker.items() if k == "models_per_task"}
        worker = {k: v for k, v in sweep_and_worker.items() if k != "models_per_task"}
        return models_per_task(config.from_dict(tiny_config(tmp_path, sweep=sweep, worker=worker)))

    assert k(models_per_task=7) == 7  # an explicit K is kept
    assert k(models_per_task=0) == 25  # workers.mlp, float32 on CPU
    assert k(models_per_task=0, precision="bfloat16") == 100
    assert k(models_per_task=0, name="flaky_worker") == 1  # a worker without a default trains one at a time
    with pytest.raises(DatamodelsError, match="sweep.models_per_task must be >= 1, or 0 for the worker's default"):
        k(models_per_task=-1)
