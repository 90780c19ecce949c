import os
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
    import ray

    ray.shutdown()


@pytest.fixture
def ray_local(_ray_shutdown_at_exit):
    """A local Ray instance shared by the tests (starting one costs seconds); tests that need
    another cluster shut it down and the next test that asks for it starts it again."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")


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
# `make test` runs both; `make test-fast` (-m "not integration") runs the unit tests alone.
# Fixtures that start Ray or write FFCV files: a test that uses one, directly or through another
# fixture, is integration.
INTEGRATION_FIXTURES = {
    "ray_local", "prepared_digits", "run_config",
    "_ray_shutdown_at_exit",  # asked for by module fixtures that start Ray for their tests
    "tiny_run",  # test_cli, test_report: `datamodels run` end to end
    "digits_dir", "cifar", "cifar_dir",  # test_prepare, test_workers: prepared .beton files
}
# Modules whose tests write .beton files or start Ray clusters through their own helpers.
INTEGRATION_MODULES = {"test_prepare.py", "test_faults.py"}
# Single tests that start Ray themselves.
INTEGRATION_TESTS = {"test_sweep.py::test_a_local_ray_it_started_stops_monitor_first_and_leaves_nothing"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.path.name
        name = f"{module}::{getattr(item, 'originalname', item.name)}"
        if (item.get_closest_marker("integration") is None
                and (INTEGRATION_FIXTURES & set(item.fixturenames) or module in INTEGRATION_MODULES
                     or name in INTEGRATION_TESTS)):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.unit)
