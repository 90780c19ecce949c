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
