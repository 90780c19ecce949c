"""TRAK priors (datamodels.priors): scores from retraining the store's own models, in the
convention of ``evaluate --scores``, and errors that name the problem."""
import numpy as np
import pytest

from conftest import tiny_config
from datamodels import config
from datamodels.errors import DatamodelsError
from datamodels.priors import trak
from datamodels.store import Store


@pytest.fixture
def run_with_store(tmp_path, prepared_digits):
    """A run directory with prepared digits (targets: test, then train) and a store of 6 completed
    fitting models; no margins are needed: TRAK retrains the models from their masks and seeds."""
    import shutil

    shutil.copytree(prepared_digits, tmp_path / "run" / "data")
    cfg = config.coerce(tiny_config(tmp_path, data={"source": "digits", "num_test": 100, "targets": "test+train"},
                                    worker={"precision": "float32"}))
    store = Store.create(tmp_path / "run" / "store", num_train=1697, num_targets=100 + 1697, alpha=0.5, seed=0)
    store.grow(6, 2)
    rows = store.rows("fit", completed_only=False)
    store.write(rows, np.zeros((len(rows), store.num_targets), dtype=np.float32))
    return cfg, store


def test_trak_scores_rank_each_training_example_first_for_itself(run_with_store):
    # With the training examples among the targets, a training example's score on itself (its
    # own gradient's direction) stands out: positive, and above its scores on the other examples.
    cfg, store = run_with_store
    scores = trak(cfg, num_models=2, ridges=(1.0, 10.0), progress=False)
    assert sorted(scores) == [1.0, 10.0]
    for s in scores.values():
        assert s.shape == (1697, 100 + 1697) and s.dtype == np.float32 and np.isfinite(s).all()
        self_scores = np.diagonal(s[:, 100:])
        assert (self_scores > 0).mean() > 0.95
        off = (s[:, 100:].sum(0) - self_scores) / (1697 - 1)
        assert (self_scores > off).mean() > 0.95
    # Deterministic: the same models, retrained, give the same scores.
    again = trak(cfg, num_models=2, ridges=(1.0,), progress=False)
    np.testing.assert_array_equal(again[1.0], scores[1.0])


def test_trak_errors_name_the_setting(run_with_store):
    cfg, _ = run_with_store
    with pytest.raises(DatamodelsError, match="fit.prior_models must be an integer >= 1"):
        trak(cfg, num_models=0, progress=False)
    with pytest.raises(DatamodelsError, match="ridges must be positive"):
        trak(cfg, ridges=(0.0,), progress=False)
    resnet = config.coerce({**config.to_dict(cfg), "worker": {"name": "workers.cifar_resnet9"}})
    with pytest.raises(DatamodelsError, match="has no gradient_kernels"):
        trak(resnet, progress=False)
