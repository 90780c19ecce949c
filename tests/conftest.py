import inspect
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).parent
# Test-only worker modules live in tests/helpers; Ray worker processes inherit this path.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE / "helpers"), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(HERE / "helpers"))
# Hardware choices (precision, K) measured by the tests stay with the test session, and every
# process of it (CLI subprocesses included) shares them, as the processes of one machine do.
os.environ.setdefault("DATAMODELS_CACHE_DIR", tempfile.mkdtemp(prefix="datamodels-test-choices-"))
# The Ray workers' copies of the prepared data stay with the test session too, not in ~/.cache.
os.environ.setdefault("DATAMODELS_CACHE", tempfile.mkdtemp(prefix="datamodels-test-data-"))


def tiny_config(tmp_path, **sections):
    """A config small enough for tests: digits, a few dozen 3-epoch models."""
    cfg = {
        "out": str(tmp_path / "run"),
        "seed": 0,
        "data": {"source": "digits", "num_test": 100},
        "sweep": {"num_models": 40, "num_eval_models": 10, "models_per_task": 10, "max_retries": 0},
        "worker": {"name": "workers.mlp", "hidden": 16, "epochs": 3, "batch_size": 64},
        "fit": {"num_lambdas": 10},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(name, {}).update(values)
        else:
            cfg[name] = values
    return cfg


@pytest.fixture(scope="session")
def _ray_shutdown_at_exit():
    yield
    from datamodels.cluster import stop_local_ray

    stop_local_ray()


@pytest.fixture
def ray_local(_ray_shutdown_at_exit):
    """A local Ray instance shared by the tests (starting one costs seconds); tests that need
    another cluster shut it down and the next test that asks for it starts it again."""
    import ray

    from datamodels.cluster import start_local

    if not ray.is_initialized():
        start_local()  # on 127.0.0.1 alone, as a sweep's own


@pytest.fixture(scope="session")
def prepared_digits(tmp_path_factory):
    """Digits prepared once; tests copy the data directory into their own run directory."""
    from datamodels import config
    from datamodels.prepare import prepare

    root = tmp_path_factory.mktemp("digits")
    return prepare(config.coerce(tiny_config(root)), progress=False)


@pytest.fixture
def run_config(tmp_path, prepared_digits):
    import shutil

    shutil.copytree(prepared_digits, tmp_path / "run" / "data")
    return tiny_config(tmp_path)


# ---- unit and integration tests ----------------------------------------------------------------
# An integration test starts Ray or reads/writes FFCV files; every other test is a unit test.
# `make test` runs both; `make test-fast` (-m "not integration") runs the unit tests alone.  A test
# is integration when it is marked so (or its module sets `pytestmark`), when it uses a fixture
# below, or when its code, its fixtures' code or the test-suite helpers they call do one of
# INTEGRATION_CALLS: the marks follow the tests as they are written, without a list to keep.
INTEGRATION_FIXTURES = {"ray_local", "prepared_digits", "run_config", "_ray_shutdown_at_exit"}
INTEGRATION_CALLS = re.compile("|".join([
    r"\bray\.init\(", r"\bray_session\(", r"\bcluster_utils\b",  # Ray
    r"(?<!\w)sweep\(", r"\btrain_masks\(", r"\bdatamodels\.run\(", r"\bpipeline import run\b",  # training
    r"\bverify=[1-9]",  # analyses that retrain
    r"(?<!\w)prepare\(", r"\bffcv\b", r"\bload_split\(",  # FFCV files
    r"(cli|main)\(\[?[\"'](run|sweep|prepare)[\"']", r"datamodels\.cli[\"'], [\"'](run|sweep|prepare)[\"']",  # the CLI
]))


def _code_of(item):
    """The source of the test, of its fixtures, and of the functions of the test suite they call."""
    defs = item._fixtureinfo.name2fixturedefs
    todo = [item.function] + [defs[name][-1].func for name in item.fixturenames if name in defs]
    seen, sources = set(), []
    while todo:
        func = todo.pop()
        if not inspect.isfunction(func) or inspect.unwrap(func) in seen:
            continue
        func = inspect.unwrap(func)
        seen.add(func)
        try:
            if HERE not in Path(inspect.getsourcefile(func)).resolve().parents:
                continue  # pytest's own fixtures (tmp_path, monkeypatch, ...)
            sources.append(inspect.getsource(func))
        except (OSError, TypeError):
            continue
        codes = [func.__code__]
        while codes:  # names used in the function and in its nested functions and lambdas
            code = codes.pop()
            todo.extend(func.__globals__.get(name) for name in code.co_names)
            codes.extend(c for c in code.co_consts if inspect.iscode(c))
    return "\n".join(sources)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("integration") is None and (
                INTEGRATION_FIXTURES & set(item.fixturenames) or INTEGRATION_CALLS.search(_code_of(item))):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.unit)
