"""Verified summaries with their uncertainty: one item with a huge standard error cannot decide them."""
import numpy as np
import pytest

from datamodels.analyses.uncertainty import bootstrap_ci, models_for_se, verdict, verified_summary, weighted_pearson


def _planted_noisy_item():
    """29 counterfactuals predicted well (actual = predicted + noise of SE ~1) and one whose actual
    change is far off, with an SE of ~29, like a target whose margin is very noisy under retraining."""
    rng = np.random.default_rng(3)
    predicted = rng.uniform(-20, 5, 30)
    se = np.full(30, 1.0) + rng.uniform(0, 0.3, 30)
    actual = predicted + rng.normal(0, 1, 30)
    predicted[7], actual[7], se[7] = -18.0, 95.0, 28.8
    return predicted, actual, se


def test_one_noisy_item_does_not_decide_the_summary():
    predicted, actual, se = _planted_noisy_item()
    s = verified_summary(predicted, actual, se, repeats=5, seed=0)
    assert s["pearson"] < 0.5  # the plain correlation is decided by the one noisy item
    assert s["weighted_pearson"] > 0.95 and s["pearson_judged"] > 0.95
    assert s["noisy"] == [7] and s["judged"] == 29
    # Settling item 7: its SE must fall to the limit; SE ~ 1/sqrt(R), from 5 pairs.
    assert s["models_to_settle"][7] == int(np.ceil(5 * (28.8 / s["noisy_limit"]) ** 2))
    assert s["noisy_limit"] == pytest.approx(0.5 * predicted.std(ddof=1))
    lo, hi = s["weighted_pearson_ci"]
    assert lo <= s["weighted_pearson"] <= hi and lo > 0.9
    lo, hi = s["pearson_ci"]
    assert lo < s["pearson"] < hi and hi - lo > 0.3  # the plain one's interval shows how shaky it is
    again = verified_summary(predicted, actual, se, repeats=5, seed=0)
    assert again["pearson_ci"] == s["pearson_ci"]  # seeded
    # Without the noisy item every summary agrees.
    keep = np.arange(30) != 7
    clean = verified_summary(predicted[keep], actual[keep], se[keep], seed=0)
    assert clean["pearson"] == pytest.approx(s["pearson_judged"]) and clean["noisy"] == []


def test_weighted_pearson_is_pearson_with_equal_weights_and_ignores_zero_weights():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    assert weighted_pearson(x, y, np.ones(20)) == pytest.approx(np.corrcoef(x, y)[0, 1])
    w = np.ones(22)
    w[20:] = 0
    assert weighted_pearson(np.r_[x, 100, -100], np.r_[y, -100, 100], w) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert np.isnan(weighted_pearson(np.ones(5), y[:5], np.ones(5)))


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_items():
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    a = bootstrap_ci(lambda i: small[i].mean(), 20)
    b = bootstrap_ci(lambda i: large[i].mean(), 2000)
    assert a[0] < small.mean() < a[1] and b[0] < large.mean() < b[1]
    assert (b[1] - b[0]) < (a[1] - a[0]) / 5
    assert np.isnan(bootstrap_ci(lambda i: 0.0, 2)).all()


def test_verdicts_and_models_to_settle():
    assert verdict(-3.0, 1.0, 10)["verdict"] == "flipped"
    assert verdict(3.0, 1.0, 10)["verdict"] == "holds"
    v = verdict(-1.0, 1.0, 10)
    # |mean| = 1.96 SE needs SE = 1/1.96: 10 * 1.96^2 = 38.4 -> 39 models.
    assert v == {"verdict": "undecided", "models_to_settle": 39}
    assert verdict(-1.0, float("nan"), 1)["verdict"] == "undecided"
    assert models_for_se(4, 2.0, 1.0) == 16
