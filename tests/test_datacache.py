"""The node data cache is keyed and checked by content: planted or damaged files are replaced,
never trained on, and a cache root that is not private to the user is refused."""
import hashlib
import os
import shutil
import stat

import numpy as np
import pytest

from conftest import tiny_config
from datamodels import config as config_lib
from datamodels import datacache
from datamodels.errors import DatamodelsError
from datamodels.prepare import prepare
from datamodels.store import Store
from datamodels.sweep import sweep


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DATAMODELS_CACHE", str(root))
    datacache._VERIFIED.clear()
    return root


@pytest.fixture(scope="module")
def other_digits(tmp_path_factory):
    """Digits split with another seed: valid files of the same sizes and counts, other examples."""
    root = tmp_path_factory.mktemp("other")
    return prepare(config_lib.coerce(tiny_config(root, data={"split_seed": 1})), progress=False)


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Fetch:
    def __init__(self, data_dir):
        self.digest, self.files = datacache.payload(data_dir)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.files


def plant(target, source):
    target.mkdir(parents=True, exist_ok=True)
    for name in datacache.DATA_FILES:
        shutil.copyfile(source / name, target / name)


def test_copy_is_unpacked_once_and_reused_while_intact(cache, prepared_digits):
    fetch = Fetch(prepared_digits)
    where = datacache.local_data_dir(fetch.digest, fetch)
    assert where == str(cache / fetch.digest) and fetch.calls == 1
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    for name in datacache.DATA_FILES:
        assert sha(cache / fetch.digest / name) == sha(prepared_digits / name)
    assert datacache.local_data_dir(fetch.digest, fetch) == where and fetch.calls == 1
    datacache._VERIFIED.clear()  # a new process hashes the files again, and trusts them
    assert datacache.local_data_dir(fetch.digest, fetch) == where and fetch.calls == 1


@pytest.mark.parametrize("damage", ["other data", "garbage", "truncated", "missing", "symlink", "dir is a link"])
def test_planted_or_damaged_files_are_replaced(cache, prepared_digits, other_digits, tmp_path, damage):
    fetch = Fetch(prepared_digits)
    target = cache / fetch.digest
    cache.mkdir(mode=0o700)
    if damage == "dir is a link":
        plant(tmp_path / "elsewhere", other_digits)
        target.symlink_to(tmp_path / "elsewhere")
    else:
        plant(target, prepared_digits if damage != "other data" else other_digits)
    train = target / "train.beton"
    if damage == "garbage":
        train.write_bytes(os.urandom(train.stat().st_size))
    elif damage == "truncated":
        train.write_bytes(train.read_bytes()[:1000])
    elif damage == "missing":
        (target / "meta.json").unlink()
    elif damage == "symlink":
        train.unlink()
        train.symlink_to(other_digits / "train.beton")
    where = datacache.local_data_dir(fetch.digest, fetch)
    assert fetch.calls == 1 and where == str(target)
    assert target.is_dir() and not target.is_symlink()
    for name in datacache.DATA_FILES:
        assert not (target / name).is_symlink() and sha(target / name) == sha(prepared_digits / name)
    assert sorted(p.name for p in cache.iterdir()) == sorted([fetch.digest, f"{fetch.digest}.lock"])
    if damage == "dir is a link":  # the link's target is left alone
        assert sha(tmp_path / "elsewhere" / "train.beton") == sha(other_digits / "train.beton")


def test_a_file_changed_after_its_check_is_checked_again(cache, prepared_digits, other_digits):
    fetch = Fetch(prepared_digits)
    target = datacache.local_data_dir(fetch.digest, fetch)
    shutil.copyfile(other_digits / "train.beton", os.path.join(target, "train.beton"))
    datacache.local_data_dir(fetch.digest, fetch)
    assert fetch.calls == 2 and sha(cache / fetch.digest / "train.beton") == sha(prepared_digits / "train.beton")


def test_data_that_does_not_match_its_digest_is_not_written(cache, prepared_digits, other_digits):
    fetch = Fetch(prepared_digits)
    with pytest.raises(DatamodelsError, match="does not match its digest"):
        datacache.local_data_dir(fetch.digest, lambda: Fetch(other_digits).files)
    assert not (cache / fetch.digest).exists()
    with pytest.raises(ValueError, match="not a data digest"):
        datacache.local_data_dir("../" + fetch.digest[3:], fetch)


@pytest.mark.parametrize("problem", ["world-writable", "group-writable", "other owner", "symlink", "file"])
def test_a_cache_root_that_is_not_private_is_refused(cache, prepared_digits, tmp_path, problem):
    if problem == "symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        cache.symlink_to(tmp_path / "real")
    elif problem == "file":
        cache.write_text("")
    else:
        cache.mkdir(mode=0o700)
        if problem == "world-writable":
            cache.chmod(0o777)
        elif problem == "group-writable":
            cache.chmod(0o770)
        elif os.getuid() == 0:
            os.chown(cache, 12345, 12345)
        else:
            pytest.skip("changing a directory's owner needs root")
    expected = {"world-writable": "writable by others", "group-writable": "writable by others",
                "other owner": "belongs to another user", "symlink": "not a directory",
                "file": "not a directory|cannot create"}[problem]
    fetch = Fetch(prepared_digits)
    with pytest.raises(DatamodelsError, match=expected) as info:
        datacache.local_data_dir(fetch.digest, fetch)
    assert "\n" not in str(info.value) and fetch.calls == 0


def test_default_root_is_per_user_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv("DATAMODELS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datacache.private_root() == tmp_path / "xdg" / "datamodels" / "data"
    assert stat.S_IMODE(os.stat(tmp_path / "xdg" / "datamodels" / "data").st_mode) == 0o700
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert datacache.cache_root() == datacache.Path.home() / ".cache" / "datamodels" / "data"


def test_sweep_replaces_planted_files_and_trains_on_the_right_data(tmp_path, prepared_digits, other_digits,
                                                                   ray_local):
    """Valid .beton files of other data, planted under the digest of the sweep's data in the cache
    the Ray workers use, are replaced: the sweep's margins equal those of a sweep on a clean cache."""
    import ray

    def run(name):
        shutil.copytree(prepared_digits, tmp_path / name / "data")
        cfg = tiny_config(tmp_path, out=str(tmp_path / name), sweep={"num_models": 4, "num_eval_models": 0,
                                                                     "models_per_task": 2})
        return np.asarray(Store(sweep(cfg, progress=False)["store"]).margins)

    clean = run("clean")
    digest, _ = datacache.payload(prepared_digits)
    target = ray.get(ray.remote(datacache.cache_root).remote()) / digest  # where the workers look
    plant(target, other_digits)
    assert sha(target / "train.beton") != sha(prepared_digits / "train.beton")
    planted = run("planted")
    np.testing.assert_array_equal(planted, clean)
    for name in datacache.DATA_FILES:
        assert sha(target / name) == sha(prepared_digits / name)
