"""Preparing data: digits, .npz and CIFAR-10 written as FFCV files and read back exactly;
bad input rejected with a one-line message and nothing written; reruns reuse the data."""
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
from sklearn.datasets import load_digits

from datamodels.errors import DatamodelsError
from datamodels.prepare import load_arrays, prepare, read_arrays, read_meta


def config(out, **data):
    return {"out": str(out), "data": data or {"source": "digits"}}


def read_both(data_dir, split):
    """A split read back through FFCV's loader, checked against the workers' numpy reader."""
    x, y = load_arrays(data_dir, split)
    fast_x, fast_y = read_arrays(data_dir, split)
    assert fast_x.dtype == x.dtype and fast_y.dtype == y.dtype
    np.testing.assert_array_equal(fast_x, x)
    np.testing.assert_array_equal(fast_y, y)
    return x, y


def written_files(root):
    return sorted(p.name for p in root.rglob("*") if p.name == "meta.json" or ".beton" in p.name)


# ---- digits ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return prepare(config(tmp_path_factory.mktemp("digits") / "run"), progress=False)


def expected_digits(num_test=500, seed=0):
    """The documented split: a seeded draw of num_test test examples, original order kept."""
    digits = load_digits()
    is_test = np.zeros(len(digits.target), dtype=bool)
    is_test[np.random.default_rng(seed).permutation(len(digits.target))[:num_test]] = True
    images = digits.images[..., None]
    return (images[~is_test], digits.target[~is_test]), (images[is_test], digits.target[is_test])


def test_digits_meta(digits_dir):
    meta = read_meta(digits_dir)
    assert meta == {"source": "digits", "path": None, "split_seed": 0, "num_test_requested": 500,
                    "num_train": 1297, "num_test": 500, "num_classes": 10, "image_shape": [8, 8, 1],
                    "image_dtype": "uint8", "image_field": "ndarray", "version": 1}
    assert sorted(p.name for p in digits_dir.iterdir() if not p.name.startswith(".")) == \
        ["meta.json", "test.beton", "train.beton"]


def test_digits_round_trip(digits_dir):
    for split, (images, labels) in zip(("train", "test"), expected_digits()):
        x, y = read_both(digits_dir, split)
        assert x.shape == images.shape and x.dtype == np.uint8
        assert y.dtype == np.int64 and set(np.unique(y)) <= set(range(10))
        np.testing.assert_array_equal(x, images)
        np.testing.assert_array_equal(y, labels)


def test_digits_deterministic_and_seeded(digits_dir, tmp_path):
    again = prepare(config(tmp_path / "a"), progress=False)
    for split in ("train", "test"):
        for a, b in zip(load_arrays(digits_dir, split), load_arrays(again, split)):
            np.testing.assert_array_equal(a, b)
    other = prepare(config(tmp_path / "b", source="digits", num_test=300, split_seed=7), progress=False)
    (_, _), (images, labels) = expected_digits(300, 7)
    x, y = load_arrays(other, "test")
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)
    assert read_meta(other)["num_train"] == 1797 - 300


# ---- npz ---------------------------------------------------------------------------------------

def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_grayscale_uint8_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (13, 6, 5), dtype=np.uint8), "y_train": rng.integers(0, 4, 13),
              "x_test": rng.integers(0, 256, (7, 6, 5), dtype=np.uint8), "y_test": np.array([0, 1, 2, 3, 4, 0, 1])}
    path = save_npz(tmp_path / "gray.npz", **arrays)
    data_dir = prepare(config(tmp_path / "run", source="npz", path=path), progress=False)
    meta = read_meta(data_dir)
    assert meta["path"] == str((tmp_path / "gray.npz").resolve())
    assert (meta["num_train"], meta["num_test"], meta["num_classes"]) == (13, 7, 5)
    assert (meta["image_shape"], meta["image_dtype"], meta["image_field"]) == ([6, 5, 1], "uint8", "ndarray")
    for split in ("train", "test"):
        x, y = read_both(data_dir, split)
        np.testing.assert_array_equal(x, arrays[f"x_{split}"][..., None])
        np.testing.assert_array_equal(y, arrays[f"y_{split}"])


def test_npz_color_float_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    # float64 input holding float32 values, so storing as float32 must be exact
    arrays = {"x_train": rng.normal(size=(9, 4, 4, 3)).astype(np.float32).astype(np.float64),
              "y_train": np.arange(9, dtype=np.int32) % 3,
              "x_test": rng.normal(size=(5, 4, 4, 3)).astype(np.float32).astype(np.float64),
              "y_test": np.array([2, 1, 0, 1, 2], dtype=np.uint8)}
    path = save_npz(tmp_path / "color.npz", **arrays)
    data_dir = prepare(config(tmp_path / "run", source="npz", path=path), progress=False)
    meta = read_meta(data_dir)
    assert (meta["image_shape"], meta["image_dtype"], meta["num_classes"]) == ([4, 4, 3], "float32", 3)
    for split in ("train", "test"):
        x, y = read_both(data_dir, split)
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(x, arrays[f"x_{split}"].astype(np.float32))
        np.testing.assert_array_equal(y, arrays[f"y_{split}"])


# ---- CIFAR-10 ----------------------------------------------------------------------------------

def make_cifar(root, per_batch=4, num_test=3, seed=0, batches=None, drop=()):
    """A tiny data set in the real CIFAR-10 python format; returns (archive, folder, hwc arrays).

    ``batches`` overrides member contents with raw bytes; ``drop`` leaves members out."""
    rng = np.random.default_rng(seed)
    folder = root / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    blobs, images, labels = {}, {"train": [], "test": []}, {"train": [], "test": []}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = num_test if name == "test_batch" else per_batch
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        split = "test" if name == "test_batch" else "train"
        images[split].append(hwc)
        labels[split].extend(y)
        batch = {b"batch_label": name.encode(), b"labels": y,
                 b"data": hwc.transpose(0, 3, 1, 2).reshape(n, 3072),  # planes: R, then G, then B
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        blobs[name] = pickle.dumps(batch, protocol=2)
    blobs["batches.meta"] = pickle.dumps({b"label_names": [f"class{i}".encode() for i in range(10)],
                                          b"num_cases_per_batch": per_batch, b"num_vis": 3072}, protocol=2)
    blobs.update(batches or {})
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, blob in blobs.items():
            if name in drop:
                continue
            (folder / name).write_bytes(blob)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    arrays = {split: (np.concatenate(images[split]), np.array(labels[split])) for split in ("train", "test")}
    return archive, folder, arrays


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return make_cifar(tmp_path_factory.mktemp("cifar"))


@pytest.mark.parametrize("form", ["archive", "folder", "parent"])
def test_cifar10_round_trip(cifar, form, tmp_path):
    archive, folder, arrays = cifar
    path = {"archive": archive, "folder": folder, "parent": folder.parent}[form]
    data_dir = prepare(config(tmp_path / "run", source="cifar10", path=str(path)), progress=False)
    meta = read_meta(data_dir)
    assert (meta["num_train"], meta["num_test"], meta["num_classes"]) == (20, 3, 10)
    assert (meta["image_shape"], meta["image_dtype"], meta["image_field"]) == ([32, 32, 3], "uint8", "rgb")
    assert meta["path"] == str(path.resolve())
    for split in ("train", "test"):
        x, y = read_both(data_dir, split)
        np.testing.assert_array_equal(x, arrays[split][0])
        np.testing.assert_array_equal(y, arrays[split][1])


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar10_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"
    blob = pickle.dumps({b"data": _RunsCode(marker), b"labels": [0]}, protocol=2)
    archive, _, _ = make_cifar(tmp_path, batches={"data_batch_1": blob})
    with pytest.raises(DatamodelsError, match="data_batch_1 is corrupt"):
        prepare(config(tmp_path / "run", source="cifar10", path=str(archive)), progress=False)
    assert not marker.exists()


# ---- bad input ---------------------------------------------------------------------------------

def good_npz(**changes):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (10, 4, 4), dtype=np.uint8), "y_train": np.arange(10) % 3,
              "x_test": rng.integers(0, 256, (4, 4, 4), dtype=np.uint8), "y_test": np.arange(4) % 3}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def npz_case(**changes):
    def build(tmp_path):
        return "npz", save_npz(tmp_path / "data.npz", **good_npz(**changes))
    return build


def cifar_case(**kwargs):
    def build(tmp_path):
        archive, _, _ = make_cifar(tmp_path, **kwargs)
        return "cifar10", str(archive)
    return build


def raw_file(name, content):
    def build(tmp_path):
        (tmp_path / name).write_bytes(content)
        return ("npz" if name.endswith(".npz") else "cifar10"), str(tmp_path / name)
    return build


def empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    return "cifar10", str(tmp_path / "empty")


BAD = {
    "npz missing file": (lambda p: ("npz", str(p / "nope.npz")), ["nope.npz", "not found"]),
    "npz not a zip": (raw_file("data.npz", b"this is not a zip file"), ["not a valid .npz"]),
    "npz single array": (lambda p: (np.save(p / "one.npy", np.zeros(3)), ("npz", str(p / "one.npy")))[1],
                         ["not a valid .npz"]),
    "npz missing keys": (npz_case(y_test=None, x_train=None), ["missing", "x_train", "y_test"]),
    "npz length mismatch": (npz_case(y_train=np.arange(9) % 3), ["train", "x_train has 10", "y_train has 9"]),
    "npz float labels": (npz_case(y_test=np.array([0.0, 1.5, 2.0, 1.0])), ["y_test", "integer"]),
    "npz negative labels": (npz_case(y_train=np.arange(10) - 1), ["y_train", "negative"]),
    "npz empty split": (npz_case(x_test=np.zeros((0, 4, 4), np.uint8), y_test=np.zeros(0, np.int64)),
                        ["test split is empty"]),
    "npz 1-D images": (npz_case(x_train=np.zeros(10, np.uint8)), ["x_train", "per-image shape []"]),
    "npz 4-D images": (npz_case(x_train=np.zeros((10, 4, 4, 3, 1), np.uint8)), ["x_train", "[4, 4, 3, 1]"]),
    "npz two channels": (npz_case(x_test=np.zeros((4, 4, 4, 2), np.uint8)), ["x_test", "C 1 or 3", "[4, 4, 2]"]),
    "npz shapes differ": (npz_case(x_test=np.zeros((4, 5, 5), np.uint8)), ["train images are 4×4×1",
                                                                         "test images are 5×5×1"]),
    "npz NaN": (npz_case(x_train=np.full((10, 4, 4), np.nan)), ["x_train", "NaN"]),
    "npz inf": (npz_case(x_test=np.full((4, 4, 4), np.inf)), ["x_test", "infinite"]),
    "npz pixels out of byte range": (npz_case(x_train=np.full((10, 4, 4), 300)), ["x_train", "0..255"]),
    "cifar missing file": (lambda p: ("cifar10", str(p / "cifar.tar.gz")), ["cifar.tar.gz", "not found"]),
    "cifar not an archive": (raw_file("cifar.tar.gz", b"\x1f\x8b garbage"), ["not a valid CIFAR-10 archive"]),
    "cifar missing batch": (cifar_case(drop=("data_batch_3",)), ["cifar-10-batches-py/data_batch_3 missing"]),
    "cifar truncated batch": (cifar_case(batches={"data_batch_2": pickle.dumps({b"data": 1}, protocol=2)[:-5]}),
                              ["data_batch_2 is corrupt"]),
    "cifar wrong data shape": (cifar_case(batches={"test_batch": pickle.dumps(
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2)}), ["test_batch is corrupt", "3072"]),
    "cifar label count": (cifar_case(batches={"data_batch_5": pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, protocol=2)}), ["data_batch_5 is corrupt"]),
    "cifar label range": (cifar_case(batches={"data_batch_4": pickle.dumps(
        {b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}, protocol=2)}), ["data_batch_4 is corrupt"]),
    "cifar not a cifar folder": (empty_folder, ["no data_batch_1"]),
    # -- every class of value problem: labels that would wrap, non-numbers, objects, odd dtypes --
    "npz uint64 label overflow": (npz_case(y_train=np.array([0, 1, 2, 2**64 - 1] + [0] * 6, np.uint64)),
                                  ["y_train", "label 18446744073709551615", "beyond"]),
    "npz huge int64 label": (npz_case(y_test=np.array([0, 1, 2, 2**40])), ["y_test", "label 1099511627776"]),
    "npz bool labels": (npz_case(y_train=np.arange(10) % 2 == 0), ["y_train", "integer", "bool"]),
    "npz string labels": (npz_case(y_test=np.array(["a", "b", "c", "a"])), ["y_test", "integer", "<U1"]),
    "npz 2-column labels": (npz_case(y_train=np.zeros((10, 2), np.int64)), ["y_train", "1-D", "[10, 2]"]),
    "npz object images": (npz_case(x_train=np.array([object()] * 10)), ["cannot read x_train", "allow_pickle"]),
    "npz object labels": (npz_case(y_test=np.array([0, 1, 2, None], dtype=object)), ["cannot read y_test"]),
    "npz member not .npy": (lambda p: ("npz", _zip_with(p / "d.npz", x_train=b"raw bytes")),
                            ["x_train is not a numpy array"]),
    "npz complex pixels": (npz_case(x_test=np.zeros((4, 4, 4), np.complex64)), ["x_test", "uint8 or floating"]),
    "npz string pixels": (npz_case(x_test=np.full((4, 4, 4), "a")), ["x_test", "uint8 or floating"]),
    "npz float64 beyond float32": (npz_case(x_train=np.full((10, 4, 4), 1e300)), ["x_train", "infinite"]),
    "npz negative int pixels": (npz_case(x_test=np.full((4, 4, 4), -1, np.int16)), ["x_test", "0..255"]),
    "npz flat images": (npz_case(x_train=np.zeros((10, 16), np.uint8)), ["x_train", "[16]"]),
    "npz scalar images": (npz_case(x_train=np.array(3, np.uint8)), ["x_train", "shapes []"]),
    "npz empty image": (npz_case(x_train=np.zeros((10, 0, 4), np.uint8)), ["x_train", "[0, 4, 1]"]),
    "npz structured labels": (npz_case(y_test=np.zeros(4, [("a", "<i4")])), ["y_test", "integer"]),
    "cifar uint64 label": (cifar_case(batches={"data_batch_1": pickle.dumps(
        {b"data": np.zeros((1, 3072), np.uint8), b"labels": np.array([2**64 - 1], np.uint64)}, protocol=2)}),
        ["data_batch_1 is corrupt", "18446744073709551615"]),
    "cifar label beyond int64": (cifar_case(batches={"data_batch_2": pickle.dumps(
        {b"data": np.zeros((1, 3072), np.uint8), b"labels": [2**70]}, protocol=2)}), ["data_batch_2 is corrupt"]),
    "cifar float labels": (cifar_case(batches={"data_batch_3": pickle.dumps(
        {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0.5]}, protocol=2)}), ["data_batch_3 is corrupt"]),
    "cifar float data": (cifar_case(batches={"data_batch_3": pickle.dumps(
        {b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, protocol=2)}), ["data_batch_3 is corrupt", "uint8"]),
    "cifar batch not a dict": (cifar_case(batches={"test_batch": pickle.dumps([1, 2], protocol=2)}),
                               ["test_batch is corrupt", "not a dict"]),
    "cifar empty batch": (cifar_case(batches={"test_batch": pickle.dumps(
        {b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=2)}), ["test_batch is corrupt"]),
    "cifar meta without names": (cifar_case(batches={"batches.meta": pickle.dumps({b"x": 1}, protocol=2)}),
                                 ["batches.meta is corrupt"]),
    "cifar truncated archive": (lambda p: ("cifar10", _truncated_archive(p)), ["not a valid CIFAR-10 archive"]),
}


def _zip_with(path, **members):
    """An .npz-like zip whose members are raw bytes, not .npy files."""
    import zipfile

    good = good_npz()
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in good.items():
            if key not in members:
                buffer = io.BytesIO()
                np.save(buffer, value)
                archive.writestr(f"{key}.npy", buffer.getvalue())
        for key, blob in members.items():
            archive.writestr(key, blob)
    return str(path)


def _truncated_archive(root):
    archive, _, _ = make_cifar(root)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return str(archive)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_rejected_and_writes_nothing(case, tmp_path):
    build, expected = BAD[case]
    source, path = build(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(DatamodelsError) as info:
        prepare(config(out, source=source, path=path), progress=False)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message
    assert not out.exists()


def test_digits_num_test_too_large(tmp_path):
    with pytest.raises(DatamodelsError, match="no training examples"):
        prepare(config(tmp_path / "run", source="digits", num_test=1797), progress=False)
    assert not (tmp_path / "run").exists()


# ---- reruns ------------------------------------------------------------------------------------

def mtimes(data_dir):
    return {name: (data_dir / name).stat().st_mtime_ns for name in ("meta.json", "train.beton", "test.beton")}


def test_rerun_with_same_config_does_not_rewrite(tmp_path):
    cfg = config(tmp_path / "run", source="npz", path=save_npz(tmp_path / "d.npz", **good_npz()))
    data_dir = prepare(cfg, progress=False)
    before = mtimes(data_dir)
    assert prepare(cfg, progress=False) == data_dir
    assert mtimes(data_dir) == before


def test_other_source_in_same_dir_raises(tmp_path):
    out = tmp_path / "run"
    data_dir = prepare(config(out), progress=False)
    before = mtimes(data_dir)
    npz = save_npz(tmp_path / "d.npz", **good_npz())
    with pytest.raises(DatamodelsError) as info:
        prepare(config(out, source="npz", path=npz), progress=False)
    message = str(info.value)
    assert "digits" in message and str((tmp_path / "d.npz").resolve()) in message and "\n" not in message
    with pytest.raises(DatamodelsError, match="split_seed=3"):
        prepare(config(out, source="digits", split_seed=3), progress=False)
    assert mtimes(data_dir) == before


def test_missing_beton_is_rewritten_and_interrupted_run_starts_over(tmp_path):
    cfg = config(tmp_path / "run", source="npz", path=save_npz(tmp_path / "d.npz", **good_npz()))
    data_dir = prepare(cfg, progress=False)
    (data_dir / "train.beton").unlink()
    prepare(cfg, progress=False)
    assert len(load_arrays(data_dir, "train")[1]) == 10
    # An interrupted run leaves betons (or temporary files) but no meta.json.
    (data_dir / "meta.json").unlink()
    (data_dir / "test.beton.tmp").write_bytes(b"partial")
    prepare(cfg, progress=False)
    assert read_meta(data_dir)["num_test"] == 4
    assert len(load_arrays(data_dir, "test")[1]) == 4
    assert not (data_dir / "test.beton.tmp").exists()


def test_read_meta_without_data(tmp_path):
    with pytest.raises(DatamodelsError, match="meta.json is missing"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(DatamodelsError, match="incompatible version"):
        read_meta(tmp_path)


# ---- damaged prepared data ---------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(num_train="10"), "num_train must be a positive integer"),
    (lambda m: m.update(num_test=-1), "num_test must be a positive integer"),
    (lambda m: m.update(num_classes=True), "num_classes must be a positive integer"),
    (lambda m: m.update(image_shape=[8, 8]), "image_shape must be [height, width, channels]"),
    (lambda m: m.update(image_dtype="object"), "image_dtype must be one of uint8, float32"),
    (lambda m: m.pop("image_field"), "image_field must be one of ndarray, rgb"),
])
def test_damaged_meta_is_a_one_line_error(digits_dir, tmp_path, change, message):
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(digits_dir, data_dir)
    meta = json.loads((data_dir / "meta.json").read_text())
    change(meta)
    (data_dir / "meta.json").write_text(json.dumps(meta))
    for read in (read_meta, lambda d: read_arrays(d, "train")):
        with pytest.raises(DatamodelsError) as info:
            read(data_dir)
        assert f"meta.json is damaged: {message}" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", ["[1, 2]", "\"text\"", "{\"version\": 1", "\xff\xfe"])
def test_meta_that_is_not_a_json_object_is_a_one_line_error(tmp_path, content):
    (tmp_path / "meta.json").write_bytes(content.encode("latin-1"))
    with pytest.raises(DatamodelsError, match="not valid JSON|incompatible version") as info:
        read_meta(tmp_path)
    assert "\n" not in str(info.value)


def test_beton_whose_example_table_points_past_the_file_is_a_one_line_error(digits_dir, tmp_path):
    """The allocation table is intact (check_beton passes) but the per-example pointers are garbage."""
    import shutil

    import importlib

    prepare_lib = importlib.import_module("datamodels.prepare")

    data_dir = tmp_path / "data"
    shutil.copytree(digits_dir, data_dir)
    path = data_dir / "train.beton"
    raw = bytearray(path.read_bytes())
    table_at = prepare_lib._FFCV_HEADER.itemsize + 2 * prepare_lib._FFCV_FIELD.itemsize
    raw[table_at:table_at + 8] = (2**63).to_bytes(8, "little")  # example 0's image pointer
    path.write_bytes(bytes(raw))
    with pytest.raises(DatamodelsError, match="train.beton is corrupt .*points past the end") as info:
        read_arrays(data_dir, "train")
    assert "\n" not in str(info.value)
