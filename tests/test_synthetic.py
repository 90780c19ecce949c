"""The synthetic source: generated images fixed by their seed, through prepare's FFCV path, and a run."""
import hashlib
import importlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config
from datamodels import config
from datamodels.errors import DatamodelsError
from datamodels.prepare import prepare, read_arrays, read_meta
from datamodels.synthetic import generate

synthetic = importlib.import_module("datamodels.synthetic")


def synthetic_config(out, **data):
    return config.from_dict({"out": str(out), "data": {"source": "synthetic", "num_train": 300, "num_test": 40,
                                                       **data}})


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_of(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_generation_is_fixed_by_its_seed():
    a, b = generate(500, 50, seed=3), generate(500, 50, seed=3)
    for name in ("x_train", "y_train", "x_test", "y_test", "noisy"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    c = generate(500, 50, seed=4)
    assert not np.array_equal(a.x_train, c.x_train) and not np.array_equal(a.y_test, c.y_test)
    assert a.x_train.shape == (500, 12, 12, 1) and a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int64
    # the test split does not move when the training split grows
    d = generate(900, 50, seed=3)
    assert np.array_equal(d.x_test, a.x_test) and np.array_equal(d.y_test, a.y_test)


def test_label_noise_replaces_that_fraction_by_other_classes():
    clean = generate(1000, 10, label_noise=0.0, seed=1)
    noisy = generate(1000, 10, label_noise=0.2, seed=1)
    assert len(clean.noisy) == 0 and len(noisy.noisy) == 200
    assert np.array_equal(clean.x_train, noisy.x_train)
    changed = np.flatnonzero(clean.y_train != noisy.y_train)
    assert np.array_equal(changed, noisy.noisy)  # every replaced label is another class
    assert set(np.unique(noisy.y_train[changed])) == set(range(10))


def test_images_carry_their_class():
    """A nearest-class-mean classifier fitted on the training split is far above chance on the test
    split (0.1 for 10 classes), in grayscale and in colour at another size."""
    for size, channels in ((12, 1), (20, 3)):
        data = generate(2000, 400, image_size=size, channels=channels, label_noise=0.1, seed=0)
        assert data.x_train.shape == (2000, size, size, channels)
        flat = data.x_train.reshape(2000, -1).astype(float)
        means = np.stack([flat[data.y_train == k].mean(0) for k in range(10)])
        test = data.x_test.reshape(400, -1).astype(float)
        guess = ((test[:, None] - means[None]) ** 2).sum(-1).argmin(1)
        assert (guess == data.y_test).mean() > 0.3
        assert 0 < data.x_train.mean() < 255 and data.x_train.std() > 20


def test_generation_is_chunked_with_the_same_result(monkeypatch):
    """Generation holds one chunk of float work at a time; the chunk length is part of what a seed
    means, so it must not depend on anything but the image shape."""
    whole = generate(300, 20, seed=5)
    monkeypatch.setattr(synthetic, "CHUNK_VALUES", 144 * 64)  # 64 images a chunk
    chunked = generate(300, 20, seed=5)
    assert chunked.x_train.shape == whole.x_train.shape
    assert not np.array_equal(chunked.x_train, whole.x_train)  # other chunks, other draws
    assert np.array_equal(chunked.x_train, generate(300, 20, seed=5).x_train)


def test_prepare_writes_identical_bytes_for_the_same_seed(tmp_path):
    # Above 5,000 examples FFCV's writer once ran two processes, whose page order varied.
    dirs = [prepare(synthetic_config(tmp_path / name, num_train=6000, split_seed=7), progress=False)
            for name in ("a", "b")]
    for name in ("train.beton", "test.beton", "meta.json"):
        assert (dirs[0] / name).read_bytes() == (dirs[1] / name).read_bytes(), name
    other = prepare(synthetic_config(tmp_path / "c", num_train=6000, split_seed=8), progress=False)
    assert digest(other / "train.beton") != digest(dirs[0] / "train.beton")
    meta = read_meta(dirs[0])
    assert meta["num_train"] == 6000 and meta["num_test"] == 40 and meta["num_classes"] == 10
    assert meta["image_shape"] == [12, 12, 1] and meta["image_dtype"] == "uint8"
    expected = generate(6000, 40, seed=7)
    for split, x, y in (("train", expected.x_train, expected.y_train), ("test", expected.x_test, expected.y_test)):
        images, labels = read_arrays(dirs[0], split)
        assert np.array_equal(images, x) and np.array_equal(labels, y)


def test_colour_images_round_trip(tmp_path):
    data_dir = prepare(synthetic_config(tmp_path / "run", image_size=16, channels=3, num_classes=4,
                                        label_noise=0.0), progress=False)
    meta = read_meta(data_dir)
    assert meta["image_shape"] == [16, 16, 3] and meta["num_classes"] == 4
    images, labels = read_arrays(data_dir, "train")
    expected = generate(300, 40, image_size=16, channels=3, num_classes=4, label_noise=0.0)
    assert np.array_equal(images, expected.x_train) and set(np.unique(labels)) == {0, 1, 2, 3}


def test_other_settings_in_the_same_directory_are_refused(tmp_path):
    data_dir = prepare(synthetic_config(tmp_path / "run"), progress=False)
    before = files_of(data_dir)
    assert prepare(synthetic_config(tmp_path / "run"), progress=False) == data_dir  # reused
    with pytest.raises(DatamodelsError) as info:
        prepare(synthetic_config(tmp_path / "run", label_noise=0.3), progress=False)
    message = str(info.value)
    assert "label_noise=0.1" in message and "label_noise=0.3" in message and "\n" not in message
    assert files_of(data_dir) == before


@pytest.mark.parametrize("key, value, message", [
    ("num_train", 0, "data.num_train must be positive, got 0"),
    ("image_size", -4, "data.image_size must be positive, got -4"),
    ("channels", 2, "data.channels must be 1 or 3, got 2"),
    ("num_classes", 1, "data.num_classes must be at least 2, got 1"),
    ("label_noise", 1.0, "data.label_noise must be in [0, 1), got 1.0"),
    ("label_noise", -0.1, "data.label_noise must be in [0, 1), got -0.1"),
    ("num_test", 0, "data.num_test must be positive, got 0"),
])
def test_bad_values_are_one_line_errors(tmp_path, key, value, message):
    with pytest.raises(DatamodelsError) as info:
        synthetic_config(tmp_path / "run", **{key: value})
    assert str(info.value) == message
    assert not (tmp_path / "run").exists()


def test_images_that_do_not_fit_in_memory_are_refused_before_writing(tmp_path, monkeypatch, capsys):
    from datamodels.cli import main

    # 300 + 40 images of 64x64x3: 4.0 MiB, more than half of 6 MiB
    monkeypatch.setattr(synthetic, "_available_memory", lambda: 6 << 20)
    out = tmp_path / "run"
    digits = str(Path(__file__).resolve().parent.parent / "configs" / "digits.yaml")
    code = main(["prepare", digits, f"out={out}", "data.source=synthetic", "data.num_train=300", "data.num_test=40",
                 "data.image_size=64", "data.channels=3"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "4 MiB" in err and "6 MiB" in err and "data.num_train" in err
    assert not out.exists()
    # the same sizes fit where there is more memory
    monkeypatch.setattr(synthetic, "_available_memory", lambda: 9 << 20)
    assert main(["prepare", digits, f"out={out}", "data.source=synthetic", "data.num_train=300", "data.num_test=40",
                 "data.image_size=64", "data.channels=3"]) == 0
    assert read_meta(out / "data")["image_shape"] == [64, 64, 3]


def test_a_run_on_synthetic_data_end_to_end(tmp_path, ray_local):
    from datamodels.pipeline import run
    from datamodels.store import Store

    cfg = tiny_config(tmp_path, data={"source": "synthetic", "num_train": 300, "num_test": 50},
                      sweep={"num_models": 60, "num_eval_models": 20, "models_per_task": 20},
                      worker={"hidden": 32, "epochs": 10, "batch_size": 32})
    metrics = run(cfg, progress=False, report=False)
    assert metrics["num_train"] == 300 and metrics["num_targets"] == 50 and metrics["num_models"] == 80
    assert np.isfinite(metrics["lds"]) and -1 <= metrics["lds"] <= 1
    out = tmp_path / "run"
    assert np.load(out / "datamodels.npz")["weight"].shape == (300, 50)
    store = Store(out / "store")
    assert store.masks.shape[1] == 300 and store.masks[:].sum(1).tolist() == [150] * 80
    # the models learned the classes: most test margins are positive (chance: about 1 in 10)
    assert (np.asarray(store.margins[:]) > 0).mean() > 0.4
    assert json.loads((out / "metrics.json").read_text())["num_train"] == 300


def test_the_scale_config_asks_for_50000_generated_images():
    root = Path(__file__).resolve().parent.parent
    cfg = config.load(root / "configs" / "scale50k.yaml")
    d, s = cfg.data, cfg.sweep
    assert (d.source, d.num_train, d.num_test, d.image_size, d.channels) == ("synthetic", 50000, 500, 12, 1)
    assert int(s.alpha * d.num_train) == 25000 and s.num_models >= 3000 and s.num_eval_models == 500
    assert s.checkpoint_every == 0  # live checkpoints would hold two 50,000 x 50,000 Grams in the driver
    assert cfg.worker["name"] == "workers.mlp" and cfg.worker["hidden"] == 32 and cfg.worker["epochs"] == 3
