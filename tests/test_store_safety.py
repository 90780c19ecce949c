"""One store, one writer, from the first byte: concurrent creators and writers in real processes,
and creations killed part-way, never leave a broken store."""
import multiprocessing
import os
import random
import signal
import time

import numpy as np
import pytest

import datamodels.store as store_lib
from datamodels.errors import DatamodelsError
from datamodels.store import Store, subset_mask

FORK = multiprocessing.get_context("fork")
SETTINGS = [dict(num_train=30, num_targets=4, alpha=0.5, seed=7), dict(num_train=30, num_targets=4, alpha=0.5, seed=8)]


def _create_and_write(path, settings, barrier, results, who):
    """A sweep's life in miniature: create (or open) the store, then grow it and write rows under
    its lock.  Reports 'ok' or the one-line error."""
    try:
        barrier.wait()
        store = Store.create(path, **settings)
        with store.lock():
            store.grow(6, 2)
            rows = np.flatnonzero(~np.asarray(store.completed, dtype=bool))
            store.write(rows, np.full((len(rows), 4), store.seed, np.float32))
        results[who] = "ok"
    except DatamodelsError as exc:
        results[who] = "error: " + str(exc)
    except BaseException as exc:  # anything else is a bug the test reports
        results[who] = f"crash: {type(exc).__name__}: {exc}"


def assert_valid(path):
    """A whole store: every file agrees with the spec, masks are the seed's, rows written are whole."""
    store = Store(path)
    assert store.num_models == 8 and store.masks.shape == (8, 30) and store.margins.shape == (8, 4)
    for i in range(8):
        assert np.array_equal(store.masks[i], subset_mask(store.seed, i, 30, 0.5))
    done = np.asarray(store.completed, dtype=bool)
    assert done.all()
    assert (np.asarray(store.margins) == store.seed).all()  # written by a creator of the winning settings
    return store


@pytest.mark.parametrize("round_", range(6))
def test_concurrent_creators_and_writers_leave_a_valid_store_or_one_line_errors(tmp_path, round_):
    path = tmp_path / "run" / "store"
    n = 8
    barrier = FORK.Barrier(n)
    with FORK.Manager() as manager:
        results = manager.dict()
        procs = [FORK.Process(target=_create_and_write, args=(path, SETTINGS[i % 2], barrier, results, i))
                 for i in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        outcomes = dict(results)
    assert len(outcomes) == n, outcomes
    crashes = [o for o in outcomes.values() if o.startswith("crash")]
    assert not crashes, crashes
    for outcome in outcomes.values():
        assert "\n" not in outcome
        assert outcome == "ok" or "is locked" in outcome or "made with other settings" in outcome, outcome
    store = assert_valid(path)
    winners = [i for i, o in outcomes.items() if o == "ok"]
    assert winners and all(SETTINGS[i % 2]["seed"] == store.seed for i in winners)
    # every creator of the other settings was refused; no creation directory is left behind
    assert all(outcomes[i] != "ok" for i in range(n) if SETTINGS[i % 2]["seed"] != store.seed)
    assert sorted(os.listdir(path.parent)) == ["store"]


def _slow_create(path, ready):
    """Create with a pause before each file, so that a kill lands part-way."""
    original = store_lib.create_npy

    def slow(*args):
        time.sleep(0.01)
        original(*args)

    store_lib.create_npy = slow
    ready.set()
    Store.create(path, **SETTINGS[0])


def test_a_creation_killed_at_any_point_leaves_no_store_or_a_valid_one(tmp_path, monkeypatch):
    rng = random.Random(0)
    outcomes = set()
    for trial in range(14):
        path = tmp_path / f"t{trial}" / "store"
        ready = FORK.Event()
        proc = FORK.Process(target=_slow_create, args=(path, ready))
        proc.start()
        assert ready.wait(30)
        time.sleep(rng.uniform(0, 0.12) if trial > 1 else (0.0, 0.5)[trial])  # creation takes ~60 ms
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        if path.exists():
            store = Store(path)  # whole: opens, zero rows
            assert store.num_models == 0 and store.num_train == 30
            outcomes.add("store")
        else:
            outcomes.add("none")
            # what the killed creator left is hidden, and the next creator cleans it up
            monkeypatch.setattr(store_lib, "STALE_CREATION_S", 0)
            Store.create(path, **SETTINGS[0]).grow(3, 0)
            assert Store(path).num_models == 3
        assert [p.name for p in path.parent.iterdir()] == ["store"]
    assert outcomes == {"store", "none"}  # the kills landed both before and after the rename


@pytest.mark.parametrize("step", ["create_npy", "atomic_write_text", "fsync_dir"])
def test_a_creation_failing_at_a_step_leaves_nothing(tmp_path, monkeypatch, step):
    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_lib, step, fail)
    path = tmp_path / "run" / "store"
    with pytest.raises(DatamodelsError, match="cannot create store .*no space left on device"):
        Store.create(path, **SETTINGS[0])
    assert calls and not path.exists() and os.listdir(path.parent) == []


def test_create_opens_a_store_made_with_the_same_settings_and_refuses_others(tmp_path):
    path = tmp_path / "store"
    first = Store.create(path, **SETTINGS[0], extra={"worker": {"hidden": 16}})
    first.grow(3, 1)
    again = Store.create(path, **SETTINGS[0], extra={"worker": {"hidden": 16}})
    assert again.num_models == 4
    with pytest.raises(DatamodelsError, match=r"made with other settings \(differing in seed\)"):
        Store.create(path, **SETTINGS[1], extra={"worker": {"hidden": 16}})
    with pytest.raises(DatamodelsError, match=r"differing in worker"):
        Store.create(path, **SETTINGS[0], extra={"worker": {"hidden": 32}})


def test_create_into_an_empty_directory_but_not_a_full_one(tmp_path):
    (tmp_path / "empty").mkdir()
    assert Store.create(tmp_path / "empty", **SETTINGS[0]).num_models == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(DatamodelsError, match="not empty .*notes.txt"):
        Store.create(tmp_path / "full", **SETTINGS[0])
    assert os.listdir(tmp_path / "full") == ["notes.txt"]


def _hold_lock(path, ready, release):
    with Store(path, mode="r+").lock():
        ready.set()
        release.wait(30)


def test_a_second_writer_process_is_refused_while_the_first_holds_the_lock(tmp_path):
    store = Store.create(tmp_path / "store", **SETTINGS[0])
    store.grow(2, 0)
    ready, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_lock, args=(store.path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        before = {p.name: p.read_bytes() for p in store.path.iterdir() if p.is_file()}
        for attempt in (lambda: store.grow(5, 0), lambda: store.write([0], np.ones((1, 4))),
                        lambda: store.record_failures({1: "x"})):
            with pytest.raises(DatamodelsError, match="is locked: another sweep is writing to it"):
                attempt()
        assert {p.name: p.read_bytes() for p in store.path.iterdir() if p.is_file()} == before
    finally:
        release.set()
        holder.join(30)
    store.write([0], np.ones((1, 4)))  # free again: writes take it for themselves
    assert Store(store.path).completed[0]


def test_the_store_never_holds_non_finite_margins(tmp_path):
    store = Store.create(tmp_path / "store", num_train=30, num_targets=4, alpha=0.5, seed=7,
                         margins_dtype="float16")
    store.grow(3, 0)
    for bad in (np.nan, np.inf, -np.inf, 1e6):  # 1e6 is beyond float16: it would be stored as inf
        margins = np.ones((2, 4))
        margins[1, 2] = bad
        with pytest.raises(DatamodelsError, match="margins of row 1 .*NaN, infinite or beyond float16"):
            store.write([0, 1], margins)
    assert not np.asarray(store.completed).any() and (np.asarray(store.margins) == 0).all()
    with pytest.raises(DatamodelsError, match="outside"):
        store.write([3], np.ones((1, 4)))
    store.write([0, 1], np.full((2, 4), 60000.0))
    assert np.isfinite(np.asarray(store.margins)).all() and list(np.flatnonzero(store.completed)) == [0, 1]
