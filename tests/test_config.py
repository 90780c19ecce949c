import pytest

from datamodels import config
from conftest import tiny_config
from datamodels.errors import DatamodelsError


def test_defaults_file_and_overrides():
    cfg = config.load("configs/digits.yaml", ["sweep.alpha=0.25", "worker.hidden=16", "seed=3"])
    assert cfg.sweep.alpha == 0.25 and cfg.worker.hidden == 16 and cfg.seed == 3
    assert cfg.sweep.num_models == 10000 and cfg.worker.epochs == 30  # untouched keys keep the file's values
    assert cfg.fit.tol == config.FitOptions().tol  # keys absent from the file take the defaults


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
    ("fit.prior=ridge", "fit.prior"),
    ("fit.prior_models=0", "fit.prior_models"),
    ("fit.prior_gamma=-0.5", "fit.prior_gamma"),
    ("worker.hiden=3", "worker.hiden"),
    ("worker.epochs=many", "worker.epochs"),
    ("worker.name=no_such_module", "worker.name"),
    ("worker.name=json", "worker.name"),  # importable, but no train()
    ("worker.precision=float8", "worker.precision"),  # the worker's own check
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


def test_models_per_task_zero_asks_the_worker(tmp_path, monkeypatch):
    """K = 0 is the worker's measured choice on this machine (cached); an explicit K wins."""
    import json
    import subprocess
    import sys

    from datamodels import hardware
    from datamodels.sweep import resolve_worker
    from workers import mlp

    monkeypatch.setenv("DATAMODELS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DATAMODELS_NO_CHOICE_CACHE", raising=False)
    meta = {"image_shape": [8, 8, 1], "num_classes": 10}

    def resolved(**sweep_and_worker):
        sweep = {k: v for k, v in sweep_and_worker.items() if k == "models_per_task"}
        worker = {k: v for k, v in sweep_and_worker.items() if k != "models_per_task"}
        return resolve_worker(config.from_dict(tiny_config(tmp_path, sweep=sweep, worker=worker)), meta)

    worker, k = resolved(models_per_task=7, precision="float32")
    assert k == 7 and hardware.choices()["sweep.models_per_task"]["how"] == "set in the config"

    worker, k = resolved(models_per_task=0, precision="float32")
    measured = hardware.choices()["workers.mlp.models_per_task.float32"]
    assert k in mlp._KS["cpu"] and k == int(measured["value"]) == hardware.choices()["sweep.models_per_task"]["value"]
    assert set(measured["seconds"]) == {str(c) for c in mlp._KS["cpu"]}  # every candidate was timed

    # Measured once per machine: another process takes the cached answer, even a planted one.
    cache = tmp_path / "cache" / "choices.json"
    entries = json.loads(cache.read_text())
    (key,) = [name for name in entries if name.startswith("workers.mlp.models_per_task.float32|")]
    planted = next(c for c in mlp._KS["cpu"] if c != k)
    entries[key]["value"] = str(planted)
    cache.write_text(json.dumps(entries))
    values = tiny_config(tmp_path, sweep={"models_per_task": 0}, worker={"precision": "float32"})
    script = ("from datamodels import config; from datamodels.sweep import resolve_worker; "
              f"print(resolve_worker(config.from_dict({values!r}), {meta!r})[1])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[-1]) == planted

    assert k_of_worker_without_default(tmp_path, monkeypatch) == 1  # trains one model at a time
    with pytest.raises(DatamodelsError, match="sweep.models_per_task must be >= 1, or 0 for the worker's default"):
        config.from_dict(tiny_config(tmp_path, sweep={"models_per_task": -1}))


def k_of_worker_without_default(tmp_path, monkeypatch) -> int:
    (tmp_path / "bare_worker.py").write_text("def train(masks, seeds, config):\n    raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config.from_dict(tiny_config(tmp_path, sweep={"models_per_task": 0}, worker={"name": "bare_worker"}))
    return config.models_per_task(cfg)


def test_precision_auto_is_resolved_once_and_explicit_values_win(tmp_path, monkeypatch):
    """``worker.precision: auto`` (the default) becomes a concrete precision on the driver, and the
    choice is recorded; an explicit one is kept."""
    from datamodels import hardware
    from datamodels.sweep import resolve_worker

    monkeypatch.setenv("DATAMODELS_CACHE_DIR", str(tmp_path / "cache"))
    meta = {"image_shape": [8, 8, 1], "num_classes": 10}
    cfg = config.from_dict(tiny_config(tmp_path))
    assert cfg.worker.precision == "auto"
    worker, _ = resolve_worker(cfg, meta)
    assert worker["precision"] in ("float32", "bfloat16")
    assert hardware.choices()["workers.mlp.precision"]["value"] == worker["precision"]
    for explicit in ("float32", "bfloat16"):
        worker, _ = resolve_worker(config.from_dict(tiny_config(tmp_path, worker={"precision": explicit})), meta)
        assert worker["precision"] == explicit


def test_one_run_validates_its_config_once(run_config, ray_local, monkeypatch):
    """``datamodels run`` checks the config once; every stage after it is handed the checked one."""
    from datamodels.cli import main

    calls = []
    real = config.validate

    def counted(cfg):
        calls.append(1)
        return real(cfg)

    monkeypatch.setattr(config, "validate", counted)
    overrides = [f"{section}.{key}={value}" for section in ("data", "sweep", "worker", "fit")
                 for key, value in run_config[section].items()]
    assert main(["run", "configs/digits.yaml", f"out={run_config['out']}", *overrides]) == 0
    assert len(calls) == 1
