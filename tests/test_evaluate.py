import numpy as np
import pytest
from scipy.stats import spearmanr

from datamodels.errors import DatamodelsError
from datamodels.artifacts import save
from datamodels.evaluate import lds
from datamodels.metrics import spearman
from datamodels.store import Store

N, T = 20, 5


@pytest.fixture
def store(tmp_path):
    """Margins exactly linear in the masks, so the true weights predict them perfectly."""
    s = Store.create(tmp_path / "store", num_train=N, num_targets=T, alpha=0.5, seed=0)
    s.grow(30, 40)
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(N, T)).astype(np.float32)
    bias = rng.normal(size=T).astype(np.float32)
    rows = np.arange(s.num_models)
    s.write(rows, np.asarray(s.masks, dtype=np.float32) @ weight + bias)
    s.truth = {"weight": weight, "bias": bias, "targets": np.arange(T)}
    return s


def test_perfect_predictions_score_one(store):
    scores = lds(store, store.truth)
    assert scores["lds"] == pytest.approx(1.0)
    assert np.allclose(scores["per_target"], 1.0)
    assert scores["num_models"] == 40 and scores["num_targets"] == T and scores["num_undefined"] == 0
    assert scores["quantiles"]["min"] == pytest.approx(1.0)


def test_negated_predictions_score_minus_one(store):
    dm = {**store.truth, "weight": -store.truth["weight"]}
    assert lds(store, dm)["lds"] == pytest.approx(-1.0)


def test_unrelated_predictions_score_near_zero(store):
    rng = np.random.default_rng(1)
    dm = {**store.truth, "weight": rng.normal(size=(N, T)).astype(np.float32)}
    # Statistical: a Spearman r of 40 independent pairs has sd 1/sqrt(39) ≈ 0.16 per target, and
    # the mean over targets less; 0.35 is over two single-target sds.
    assert abs(lds(store, dm)["lds"]) < 0.35


def test_spearman_agrees_with_scipy():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(50, 7))
    b = a + rng.normal(size=(50, 7))
    a[:10, 0] = 1.0  # ties
    b[::3, 1] = b[0, 1]
    ours = spearman(a, b)
    for j in range(7):
        assert ours[j] == pytest.approx(spearmanr(a[:, j], b[:, j]).statistic, abs=1e-12)


def test_constant_targets_are_undefined_but_counted(store):
    dm = {**store.truth, "weight": store.truth["weight"].copy()}
    dm["weight"][:, 2] = 0  # constant prediction for target 2
    scores = lds(store, dm)
    assert np.isnan(scores["per_target"][2]) and scores["num_undefined"] == 1
    assert scores["lds"] == pytest.approx(1.0)  # the mean of the defined targets


def test_subset_of_targets_and_npz_path(store, tmp_path):
    cols = np.array([3, 1])
    dm = {"weight": store.truth["weight"][:, cols], "bias": store.truth["bias"][cols], "targets": cols}
    save(dm, tmp_path / "dm.npz")
    scores = lds(store, tmp_path / "dm.npz")
    assert scores["lds"] == pytest.approx(1.0) and len(scores["per_target"]) == 2
    shuffled = {**dm, "targets": cols[::-1]}  # predictions compared with the wrong targets
    assert lds(store, shuffled)["lds"] < 0.9


def test_only_completed_evaluation_rows_count(store):
    store.margins[35] = np.float32(1e6)  # overwrite a completed eval row's margins with garbage...
    store.completed[35] = False  # ...and mark it incomplete: it must be skipped
    store.margins[0] = np.float32(-1e6)  # a fitting row never counts
    scores = lds(store, store.truth)
    assert scores["num_models"] == 39 and scores["lds"] == pytest.approx(1.0)
    assert lds(store, store.truth, rows=[30, 31, 32])["num_models"] == 3


def test_errors_name_the_problem(store, tmp_path):
    with pytest.raises(DatamodelsError, match="weights of shape \\[10, 5\\].* 20 training examples"):
        lds(store, {**store.truth, "weight": store.truth["weight"][:10]})
    with pytest.raises(DatamodelsError, match="target columns up to 9"):
        lds(store, {**store.truth, "targets": np.arange(5, 10)})
    with pytest.raises(DatamodelsError, match="not completed"):
        store.completed[31] = False
        lds(store, store.truth, rows=[30, 31])
    no_eval = Store.create(tmp_path / "no_eval", num_train=N, num_targets=T, alpha=0.5, seed=0)
    no_eval.grow(10, 3)
    with pytest.raises(DatamodelsError, match="no completed evaluation rows"):
        lds(no_eval, store.truth)
    with pytest.raises(DatamodelsError, match="datamodels file not found"):
        lds(store, tmp_path / "missing.npz")
