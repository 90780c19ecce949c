"""LDS protocols: repeated seeds of held-out masks, intervals, the noise ceiling, deterministic training."""
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from datamodels import metrics
from datamodels.errors import DatamodelsError
from datamodels.evaluate import ceiling, held_out_groups, lds
from datamodels.store import Store

N, T, R = 40, 30, 4


def planted(tmp_path, noise_sd: float, seeds: int = R, masks: int = 300):
    """A store whose held-out margins are mask @ w plus Gaussian seed noise of a known sd."""
    store = Store.create(tmp_path / "store", num_train=N, num_targets=T, alpha=0.5, seed=3,
                         extra={"eval_seeds": seeds} if seeds > 1 else None)
    store.grow(50, masks * seeds)
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(N, T))
    noise = noise_sd * rng.normal(size=(store.num_models, T))
    store.write(np.arange(store.num_models), np.asarray(store.masks, dtype=np.float64) @ weight + noise)
    return store, weight


def analytic_ceiling(weight: np.ndarray, noise_sd: float, seeds_in_truth: int) -> float:
    """Spearman of f = mask @ w with f plus the mean of k seeds' noise, for Gaussian f: the
    variance of a sum of m = N/2 of N weights drawn without replacement is m (N - m) / (N - 1) var(w)."""
    m = N // 2
    var_f = m * (N - m) / (N - 1) * weight.var(0)
    pearson = np.sqrt(var_f / (var_f + noise_sd ** 2 / seeds_in_truth))
    return float(np.mean(6 / np.pi * np.arcsin(pearson / 2)))


def test_repeats_share_their_mask_and_get_their_own_rows(tmp_path):
    store, _ = planted(tmp_path, 1.0, masks=5)
    groups = held_out_groups(store)
    assert groups.shape == (5, R) and len(np.unique(groups)) == 5 * R
    masks = np.asarray(store.masks)
    for g in groups:
        assert (masks[g] == masks[g[0]]).all()
    assert not (masks[groups[0, 0]] == masks[groups[1, 0]]).all()


@pytest.mark.parametrize("noise_sd", [2.0, 5.0])
def test_noise_ceiling_matches_the_planted_noise(tmp_path, noise_sd):
    store, weight = planted(tmp_path, noise_sd)
    for protocol, k in (("single", 1), ("mean", R)):
        got = ceiling(store, protocol)
        want = analytic_ceiling(weight, noise_sd, k)
        assert got["available"] and got["seeds_in_truth"] == k
        # within its stated error: three bootstrap standard errors, or the 95% interval
        assert abs(got["ceiling"] - want) <= max(3 * got["error"], got["high"] - got["low"]), (protocol, got, want)
    # more noise, lower ceiling; the seed mean's ceiling above a single seed's
    assert ceiling(store, "mean")["ceiling"] > ceiling(store, "single")["ceiling"]


def test_ceiling_is_unavailable_with_one_seed(tmp_path):
    store, weight = planted(tmp_path, 2.0, seeds=1)
    got = ceiling(store)
    assert got["available"] is False and "eval_seeds" in got["reason"]
    scores = lds(store, {"weight": weight.astype(np.float32), "bias": np.zeros(T, np.float32)})
    assert scores["ceiling"]["available"] is False and "ceiling" not in scores["ceiling"]
    assert "noise ceiling unavailable" in metrics.lds_line({**scores, "num_targets": T})


def test_protocols_choose_masks_and_average_seeds(tmp_path):
    store, weight = planted(tmp_path, 3.0)
    dm = {"weight": weight.astype(np.float32), "bias": np.zeros(T, np.float32)}
    groups = held_out_groups(store)
    predicted = np.asarray(store.masks[groups[:, 0]], dtype=np.float32) @ dm["weight"]
    margins = np.asarray(store.margins)[groups]  # [masks, seeds, T]
    for protocol, masks, seeds in (("single", 300, 1), ("mean", 300, R), ("dattri", 100, 1), ("kronfluence", 100, R)):
        scores = lds(store, dm, protocol=protocol)
        truth = margins[:masks, :seeds].mean(1)
        want = np.mean([spearmanr(predicted[:masks, j], truth[:, j]).statistic for j in range(T)])
        assert scores["lds"] == pytest.approx(want, abs=1e-9)
        assert scores["protocol"] == {"name": protocol, "masks": masks, "seeds_per_mask": seeds}
        assert scores["ci"]["low"] < scores["lds"] < scores["ci"]["high"]
        # the true weights are the best predictor: their LDS sits at the ceiling, within its error
        c = scores["ceiling"]
        assert abs(scores["lds"] - c["ceiling"]) < 3 * c["error"] + 0.02
    assert lds(store, dm, protocol="mean")["lds"] > lds(store, dm, protocol="single")["lds"] + 0.05
    with pytest.raises(DatamodelsError, match="unknown LDS protocol"):
        lds(store, dm, protocol="trak")


def test_interval_is_seeded_and_covers_the_resampling_spread():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(80, 20))
    b = a + 2 * rng.normal(size=(80, 20))
    first, second = metrics.lds_interval(a, b), metrics.lds_interval(a, b)
    assert first == second
    # the spread of the LDS over fresh held-out sets of the same size sits inside the interval
    fresh = []
    for _ in range(40):
        x = rng.normal(size=(80, 20))
        fresh.append(np.nanmean(metrics.spearman(x, x + 2 * rng.normal(size=(80, 20)))))
    width = first["high"] - first["low"]
    assert 0.5 * width < 4 * np.std(fresh) < 2 * width


def test_deterministic_sweeps_are_bit_identical(run_config, tmp_path, ray_local):
    from datamodels.sweep import sweep, training_seeds

    cfg = {**run_config, "sweep": {**run_config["sweep"], "num_models": 20, "deterministic": True,
                                   "checkpoint_every": 0}}
    first = Store(sweep(cfg, progress=False)["store"])
    assert len(set(training_seeds(first, np.arange(first.num_models)))) == 1
    other = {**cfg, "out": str(tmp_path / "again")}
    second = Store(sweep(other, progress=False)["store"])
    for name in ("masks.npy", "margins.npy", "_completed.npy"):
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes()
    assert first.meta["deterministic"] is True
    with pytest.raises(DatamodelsError, match="deterministic"):
        sweep({**cfg, "sweep": {**cfg["sweep"], "deterministic": False}}, progress=False)


def test_run_with_eval_seeds_reports_interval_and_ceiling(run_config, ray_local, capsys):
    from datamodels.cli import main
    from datamodels.pipeline import run

    cfg = {**run_config, "sweep": {**run_config["sweep"], "eval_seeds": 4, "checkpoint_every": 0}}
    metrics_out = run(cfg, progress=False)
    saved = json.loads((tmp := __import__("pathlib").Path(cfg["out"]) / "metrics.json").read_text())
    assert saved["num_eval_models"] == 10 and saved["protocol"]["name"] == "single"
    assert saved["ci"]["low"] <= saved["lds"] <= saved["ci"]["high"]
    assert saved["ceiling"]["available"] and saved["ceiling"]["seeds_per_mask"] == 4
    assert metrics_out["lds"] == saved["lds"]
    assert main(["evaluate", "--run", cfg["out"], "--json", "--protocol", "mean"]) == 0
    mean = json.loads(capsys.readouterr().out)
    assert mean["protocol"] == {"name": "mean", "masks": 10, "seeds_per_mask": 4}
    assert mean["ceiling"]["seeds_in_truth"] == 4 and mean["ceiling"]["ceiling"] > saved["ceiling"]["ceiling"]
    assert mean["lds"] != saved["lds"]
    html = (tmp.parent / "report.html").read_text()
    assert "noise ceiling" in html and "CI" in html


def curve_records(lds_of, n, scatter=0.05, targets=200, seed=0):
    offsets = np.random.default_rng(seed).normal(0, scatter, targets)
    return [{"num_fit_models": int(m), "lds": float(np.mean(lds_of(m) + offsets)),
             "per_target": list(lds_of(m) + offsets), "settings_key": "k", "time": float(i), "sweep_started": 0.0}
            for i, m in enumerate(n)]


def test_forecast_band_covers_the_extrapolation_error(monkeypatch):
    """A learning curve that keeps rising faster than a - b n^-c fitted early predicts: the band from
    targets alone misses the true crossing; the band with the backtested drift holds it."""
    import importlib

    from datamodels import live

    forecast_lib = importlib.import_module("datamodels.live.forecast")  # the module, not its function

    def true_lds(m):  # a slow late rise the power law's early fit underrates
        return 0.8 - 1.2 * m ** -0.35 + 0.03 * np.log(m / 250)

    records = curve_records(true_lds, np.arange(250, 2001, 250))
    level = 0.85
    grid = np.arange(2000, 200000, 10)
    truth = grid[np.argmax(true_lds(grid) >= level)]
    fc = live.forecast(records, levels=[level])
    lo, hi = fc["models_for"]["0.85"]["band"]
    assert "backtests" in fc["band_method"] and lo <= truth <= hi, (lo, truth, hi)
    monkeypatch.setattr(forecast_lib, "MIN_BACKTESTS", 10 ** 9)
    monkeypatch.setattr(forecast_lib, "DEFAULT_DRIFT", 0.0)
    lo_old, hi_old = live.forecast(records, levels=[level])["models_for"]["0.85"]["band"]
    assert not lo_old <= truth <= hi_old and lo < lo_old
