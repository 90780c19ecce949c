import json

import numpy as np
import pytest

from datamodels.errors import DatamodelsError
from datamodels.store import Store, subset_mask, model_seed


def make(tmp_path, **kw):
    args = dict(num_train=30, num_targets=4, alpha=0.5, seed=7)
    args.update(kw)
    return Store.create(tmp_path / "store", **args)


def test_masks_are_exact_alpha_subsets_regenerable_from_seed_and_index(tmp_path):
    store = make(tmp_path, alpha=0.3)
    store.grow(20, 5)
    assert store.masks.shape == (25, 30)
    assert (store.masks.sum(1) == 9).all()
    for i in (0, 13, 24):
        assert np.array_equal(store.masks[i], subset_mask(7, i, 30, 0.3))
    assert len({m.tobytes() for m in np.asarray(store.masks)}) == 25  # distinct subsets
    assert model_seed(7, 3) == model_seed(7, 3) != model_seed(7, 4)


def test_splits_and_growth_keep_existing_rows(tmp_path):
    store = make(tmp_path)
    assert store.grow(6, 2) == (6, 2)
    store.write([0, 6], np.arange(8, dtype=np.float32).reshape(2, 4))
    assert list(store.rows("fit")) == [0] and list(store.rows("eval")) == [6]
    assert store.grow(10, 3) == (4, 1)
    assert store.num_models == 13
    assert list(store.rows("eval", completed_only=False)) == [6, 7, 12]
    assert list(store.rows("fit", completed_only=False)) == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11]
    reopened = Store(store.path)
    assert np.array_equal(reopened.margins[0], [0, 1, 2, 3]) and np.array_equal(reopened.margins[6], [4, 5, 6, 7])
    assert reopened.completed.sum() == 2
    assert store.grow(10, 3) == (0, 0)



def test_grow_says_when_its_files_have_room_before_writing_masks(tmp_path):
    """on_allocated comes once the files are long enough for the new rows but before the masks
    and the spec are written (the sweep starts Ray then), and also when nothing is added."""
    store = make(tmp_path)
    store.grow(6, 2)
    seen = []

    def on_allocated():
        masks = np.load(store.path / "masks.npy", mmap_mode="r")
        seen.append((masks.shape[0], int(masks[8:].sum()), Store(store.path).num_models))

    assert store.grow(10, 3, on_allocated=on_allocated) == (4, 1)
    assert seen == [(13, 0, 8)]  # room for 13 rows, the new ones still empty, the spec still at 8
    assert (np.asarray(store.masks[8:]).sum(1) == 15).all()
    store.grow(10, 3, on_allocated=on_allocated)  # nothing to add
    assert seen[1:] == [(13, 5 * 15, 13)]


def test_reference_layout(tmp_path):
    store = make(tmp_path)
    store.grow(3, 0)
    spec = json.loads((store.path / "spec.json").read_text())
    assert spec["num_models"] == 3
    assert spec["schema"]["masks"] == {"shape": [30], "dtype": "bool_"}
    assert spec["schema"]["margins"]["shape"] == [4]
    for name, shape in [("masks.npy", (3, 30)), ("margins.npy", (3, 4)), ("_completed.npy", (3,))]:
        assert np.load(store.path / name).shape == shape


def test_opens_a_reference_store_written_with_plain_numpy(tmp_path):
    path = tmp_path / "ref"
    path.mkdir()
    spec = {"num_models": 5, "schema": {"masks": {"shape": [8], "dtype": "bool_"},
                                        "margins": {"shape": [3], "dtype": "float16"}}}
    (path / "spec.json").write_text(json.dumps(spec))
    for name, shape, dtype in [("masks", (5, 8), bool), ("margins", (5, 3), np.float16), ("_completed", (5,), bool)]:
        arr = np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", shape=shape, dtype=dtype)
        arr[:] = 1
        del arr
    store = Store(path)
    assert store.num_models == 5 and store.margins.dtype == np.float16
    assert list(store.rows("fit")) == [0, 1, 2, 3, 4] and len(store.rows("eval")) == 0


def test_write_checks_shape_and_flags_complete_only_written_rows(tmp_path):
    store = make(tmp_path)
    store.grow(4, 0)
    with pytest.raises(DatamodelsError, match="shape"):
        store.write([0, 1], np.zeros((2, 5)))
    assert store.completed.sum() == 0
    store.write([2], np.ones((1, 4)))
    assert list(np.flatnonzero(store.completed)) == [2]


def test_lock_excludes_a_second_writer(tmp_path):
    store = make(tmp_path)
    with store.lock():
        with pytest.raises(DatamodelsError, match="locked"):
            with Store(store.path, mode="r+").lock():
                pass
    with Store(store.path, mode="r+").lock():  # released
        pass


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "spec.json").write_text("{not json"), "not valid JSON"),
    (lambda p: (p / "spec.json").write_text('{"num_models": 2}'), "schema"),
    (lambda p: (p / "margins.npy").unlink(), "margins.npy is missing"),
    (lambda p: (p / "masks.npy").write_bytes((p / "masks.npy").read_bytes()[:100]), "masks.npy"),
    (lambda p: np.save(p / "margins.npy", np.zeros((4, 9), np.float32)), "margins.npy has shape"),
])
def test_damaged_store_gives_one_line_error(tmp_path, damage, message):
    store = make(tmp_path)
    store.grow(4, 0)
    del store
    damage(tmp_path / "store")
    with pytest.raises(DatamodelsError, match=message) as info:
        Store(tmp_path / "store")
    assert "\n" not in str(info.value)


# ---- every kind of damage is one line naming the file and the problem --------------------------

def _npy(array):
    def damage(p, name):
        with open(p / name, "wb") as f:
            np.save(f, array)
    return damage


def _bytes(make):
    def damage(p, name):
        (p / name).write_bytes(make((p / name).read_bytes()))
    return damage


def _into_dir(p, name):
    (p / name).unlink()
    (p / name).mkdir()


NPY_DAMAGE = {
    "truncated": (_bytes(lambda b: b[: len(b) - 3]), "is truncated"),
    "cut in the header": (_bytes(lambda b: b[:20]), "not a .npy file"),
    "garbage": (_bytes(lambda b: bytes(range(256)) * 2), "not a .npy file (no .npy header)"),
    "empty": (_bytes(lambda b: b""), "not a .npy file"),
    "garbage header": (_bytes(lambda b: b[:10] + b"{'descr': ???" + b[23:]), "damaged header"),
    "wrong dtype": (None, "has dtype"),
    "wrong shape": (None, "has shape"),
    "one dimension too many": (None, "has shape"),
    "object dtype": (_npy(np.array([None] * 4, dtype=object)), "holds Python objects"),
    "scalar": (_npy(np.array(1.5)), "has"),
    "a directory": (_into_dir, "is a directory"),
}
WRONG = {"masks.npy": {"wrong dtype": np.zeros((4, 30), np.uint8), "wrong shape": np.zeros((4, 31), bool),
                       "one dimension too many": np.zeros((4, 30, 1), bool)},
         "margins.npy": {"wrong dtype": np.zeros((4, 4), np.float64), "wrong shape": np.zeros((3, 4), np.float32),
                         "one dimension too many": np.zeros((4, 4, 2), np.float32)},
         "_completed.npy": {"wrong dtype": np.zeros(4, np.int8), "wrong shape": np.zeros(2, bool),
                            "one dimension too many": np.zeros((4, 1), bool)}}


@pytest.mark.parametrize("name", ["masks.npy", "margins.npy", "_completed.npy"])
@pytest.mark.parametrize("kind", list(NPY_DAMAGE))
def test_each_damaged_npy_file_is_a_one_line_error_naming_it(tmp_path, name, kind):
    store = make(tmp_path)
    store.grow(4, 0)
    del store
    damage, message = NPY_DAMAGE[kind]
    if damage is None:
        damage = _npy(WRONG[name][kind])
    path = tmp_path / "store"
    damage(path, name)
    for mode in ("r", "r+"):
        with pytest.raises(DatamodelsError) as info:
            Store(path, mode=mode)
        text = str(info.value)
        assert f"store {path}: {name}" in text and message in text and "\n" not in text, text


def test_completion_flags_other_than_0_and_1_are_refused(tmp_path):
    store = make(tmp_path)
    store.grow(4, 0)
    raw = bytearray((store.path / "_completed.npy").read_bytes())
    raw[-2] = 2  # a bool byte of 2 reads as both done and, negated, not done
    (store.path / "_completed.npy").write_bytes(bytes(raw))
    with pytest.raises(DatamodelsError, match="_completed.npy is corrupt: it holds bytes other than 0 and 1"):
        Store(store.path)


def _spec(change):
    def damage(p):
        spec = json.loads((p / "spec.json").read_text())
        out = change(spec)
        (p / "spec.json").write_text(json.dumps(spec if out is None else out))
    return damage


SPEC_DAMAGE = {
    "a list": (_spec(lambda s: [s]), "must hold a JSON object, got list"),
    "a string": (_spec(lambda s: "spec"), "must hold a JSON object, got str"),
    "null": (_spec(lambda s: 0) , "must hold a JSON object, got int"),
    "num_models a string": (_spec(lambda s: s.update(num_models="4")), "non-negative integer num_models"),
    "num_models true": (_spec(lambda s: s.update(num_models=True)), "non-negative integer num_models"),
    "num_models negative": (_spec(lambda s: s.update(num_models=-4)), "non-negative integer num_models"),
    "num_models overflows": (_spec(lambda s: s.update(num_models=10**30)), "more than any disk holds"),
    "schema a list": (_spec(lambda s: s.update(schema=[])), "schema with 'masks' and 'margins'"),
    "key with a path": (_spec(lambda s: s["schema"].update({"../../victim": {"shape": [2], "dtype": "bool_"}})),
                        "schema key \"../../victim\" is not a plain name"),
    "key with a slash": (_spec(lambda s: s["schema"].update({"a/b": {"shape": [2], "dtype": "bool_"}})),
                         "is not a plain name"),
    "key of the store's own file": (_spec(lambda s: s["schema"].update({"_completed": {"shape": [], "dtype": "bool_"}})),
                                    "is not a plain name"),
    "field a list": (_spec(lambda s: s["schema"].update(masks=[30])), "schema.masks needs a shape list"),
    "negative shape": (_spec(lambda s: s["schema"]["margins"].update(shape=[-4])), "non-negative integers"),
    "zero shape": (_spec(lambda s: s["schema"]["masks"].update(shape=[0])), "has a zero dimension"),
    "float shape": (_spec(lambda s: s["schema"]["masks"].update(shape=[30.0])), "non-negative integers"),
    "huge shape": (_spec(lambda s: s["schema"]["margins"].update(shape=[2**62])), "more than any disk holds"),
    "object dtype": (_spec(lambda s: s["schema"]["margins"].update(dtype="O")), "not a numeric numpy dtype"),
    "dtype a list": (_spec(lambda s: s["schema"]["margins"].update(dtype=[["a", "<f4"]])), "not a numeric"),
    "dtype nonsense": (_spec(lambda s: s["schema"]["margins"].update(dtype="float33")), "not a numeric"),
    "structured dtype": (_spec(lambda s: s["schema"]["margins"].update(dtype="f4,f4")), "not a numeric"),
    "masks not bool": (_spec(lambda s: s["schema"]["masks"].update(dtype="uint8")), "masks.dtype must be"),
    "margins not float": (_spec(lambda s: s["schema"]["margins"].update(dtype="int32")), "margins.dtype must be"),
    "seed negative": (_spec(lambda s: s["datamodels"].update(seed=-1)), "seed must be an integer"),
    "seed true": (_spec(lambda s: s["datamodels"].update(seed=True)), "seed must be an integer"),
    "alpha true": (_spec(lambda s: s["datamodels"].update(alpha=True)), "alpha must be a number"),
    "meta a list": (_spec(lambda s: s.update(datamodels=[])), "datamodels must be an object"),
    "deeply nested": (lambda p: (p / "spec.json").write_text("[" * 100000 + "]" * 100000), "spec.json"),
}


@pytest.mark.parametrize("kind", list(SPEC_DAMAGE))
def test_each_malformed_spec_is_a_one_line_error_before_any_file_is_opened(tmp_path, kind, monkeypatch):
    store = make(tmp_path)
    store.grow(4, 0)
    del store
    path = tmp_path / "store"
    damage, message = SPEC_DAMAGE[kind]
    damage(path)
    opened = []
    import datamodels.store as store_lib

    monkeypatch.setattr(store_lib, "read_npy_header", lambda p, where: opened.append(p))
    with pytest.raises(DatamodelsError) as info:
        Store(path)
    text = str(info.value)
    assert f"store {path}: spec.json" in text and message in text and "\n" not in text, text
    assert opened == []


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "damaged"), ('{"x": "y"}', "damaged"), ("{", "damaged"), (None, "cannot read"),
])
def test_damaged_failures_file_is_a_one_line_error(tmp_path, content, message):
    store = make(tmp_path)
    store.grow(2, 0)
    target = store.path / "_failures.json"
    if content is None:
        target.mkdir()
    else:
        target.write_text(content)
    for call in (lambda: Store(store.path).failures(), lambda: store.record_failures({0: "x"})):
        with pytest.raises(DatamodelsError, match=f"_failures.json.*{message}|{message}.*_failures.json") as info:
            call()
        assert "\n" not in str(info.value)
