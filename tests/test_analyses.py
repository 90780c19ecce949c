"""The analyses on a tiny run (300 training digits, 1,000 models), every claim checked by retraining.

Bounds are looser than the acceptance figures on the digits default, which
``benchmarks/analyses.py`` measures: a tiny sweep gives noisier datamodels."""
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

from datamodels import analyses, config
from datamodels.cli import main
from datamodels.errors import DatamodelsError
from bounds import U64, sum_bound  # tests/helpers
from small_digits import small_digits  # tests/helpers

NUM_TRAIN, NUM_TEST = 300, 100


def tiny_analysis_config(out, data_path, **sweep):
    return {
        "out": str(out), "seed": 0,
        "data": {"source": "npz", "path": str(data_path)},
        "sweep": {"num_models": 1000, "num_eval_models": 50, "models_per_task": 50, "max_retries": 0, **sweep},
        # Weight decay off and 20 epochs: models that lean on individual examples, as duplicates need.
        "worker": {"name": "workers.mlp", "hidden": 32, "epochs": 20, "weight_decay": 0.0},
        "fit": {"num_lambdas": 20, "lambda_min_ratio": 0.01},
    }


def sweep_and_fit(cfg_dict):
    from datamodels.regression import fit
    from datamodels.sweep import sweep

    cfg = config.coerce(cfg_dict)
    sweep(cfg, progress=False)
    config.save(cfg, f"{cfg.out}/config.yaml")
    f = cfg.fit
    fit(f"{cfg.out}/store", f"{cfg.out}/datamodels.npz", num_lambdas=f.num_lambdas,
        lambda_min_ratio=f.lambda_min_ratio, progress=False)
    return analyses.Run(cfg.out)


def ensure_ray():
    """Ray for module-scoped fixtures, started as conftest's ``ray_local`` starts it."""
    import ray

    from datamodels.cluster import start_local

    if not ray.is_initialized():
        start_local()  # on 127.0.0.1 alone, as a sweep's own


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, _ray_shutdown_at_exit):
    ensure_ray()
    root = tmp_path_factory.mktemp("analyses")
    return sweep_and_fit(tiny_analysis_config(root / "run", small_digits(root / "small.npz")))


# ---- counterfactuals ----------------------------------------------------------------------------

def test_counterfactual_predictions_follow_the_weights(tiny, tmp_path):
    w, b = tiny.weight[:, 3].astype(np.float64), float(tiny.bias[3])
    res = analyses.counterfactual(tiny, 3, ["top:5", "bottom:5", "random:7"])
    top, bottom, rand = res["counterfactuals"]
    assert top["removed"] == sorted(np.argsort(-w, kind="stable")[:5].tolist())
    assert bottom["removed"] == sorted(np.argsort(w, kind="stable")[:5].tolist())
    # float32 weights summed in float32 or float64: rounding bounds from tests/helpers/bounds.py
    assert top["predicted_change"] == pytest.approx(-w[top["removed"]].sum(), abs=sum_bound(w[top["removed"]]))
    assert top["full"]["before"] == pytest.approx(b + w.sum(), abs=sum_bound(np.append(w, b)))
    assert top["full"]["after"] - top["full"]["before"] == pytest.approx(top["predicted_change"],
                                                                         abs=3 * sum_bound(np.append(w, b)))
    assert top["predicted_change"] < 0 < bottom["predicted_change"]
    assert rand["num_removed"] == 7
    again = analyses.counterfactual(tiny, 3, "random:7")["counterfactuals"][0]
    assert again["removed"] == rand["removed"]  # seeded
    # a file of indices (text or .npy) names the same set
    (tmp_path / "r.txt").write_text("# removed\n" + ", ".join(map(str, top["removed"])) + "\n")
    np.save(tmp_path / "r.npy", np.isin(np.arange(tiny.num_train), top["removed"]))
    for f in ("r.txt", "r.npy"):
        from_file = analyses.counterfactual(tiny, 3, str(tmp_path / f))["counterfactuals"][0]
        assert from_file["removed"] == top["removed"]


@pytest.mark.parametrize("target, spec, message", [
    (100, "top:5", "out of range"),
    (0, "top:0", "K must be between"),
    (0, "top:x", "whole number"),
    (0, "middle:3", "expected top:K"),
])
def test_counterfactual_bad_input(tiny, target, spec, message):
    with pytest.raises(DatamodelsError, match=message):
        analyses.counterfactual(tiny, target, spec)


def test_counterfactual_file_out_of_range(tiny, tmp_path):
    (tmp_path / "bad.txt").write_text(f"1 2 {NUM_TRAIN}\n")
    with pytest.raises(DatamodelsError, match="must lie in"):
        analyses.counterfactual(tiny, 0, str(tmp_path / "bad.txt"))


def test_counterfactuals_verified_by_retraining(tiny, ray_local):
    targets = analyses.pick_targets(tiny, 12)
    res = analyses.counterfactual(tiny, targets, ["top:5", "top:20", "bottom:10"], verify=4, progress=False)
    items = res["counterfactuals"]
    assert len(items) == 36 and all(c["verified"]["models"] == 4 for c in items)
    for c in items:  # the prediction on the masks trained is exactly -sum(w[R]) in this paired design,
        # up to float32 rounding of two predictions (masks @ weight + bias) per model
        t = c["target"]
        rounding = 2 * sum_bound(np.append(tiny.weight[:, t], tiny.bias[t]))
        assert c["verified"]["predicted_change"] == pytest.approx(c["predicted_change"], abs=rounding)
    assert res["correlation"]["pearson"] > 0.5, res["correlation"]
    summary = res["summary"]
    assert summary["n"] == 36 and summary["pearson"] == pytest.approx(res["correlation"]["pearson"])
    for key in ("pearson", "weighted_pearson", "pearson_judged"):
        lo, hi = summary[f"{key}_ci"]
        assert lo <= summary[key] <= hi and hi - lo > 0, (key, summary)
    se = np.array([c["verified"]["actual_change_se"] for c in items])
    assert np.isfinite(se).all() and (se > 0).all()
    # the rule is the stated one: too noisy when the SE exceeds half the spread of the predictions
    limit = 0.5 * np.std([c["verified"]["predicted_change"] for c in items], ddof=1)
    assert summary["noisy_limit"] == pytest.approx(limit)
    assert [not c["verified"]["judged"] for c in items] == list(se > limit)
    assert summary["judged"] == int((se <= limit).sum())
    # removing the most supportive examples really lowers the margin, on average
    assert np.mean([c["verified"]["actual_change"] for c in items if c["remove"] == "top:20"]) < 0


def test_counterfactual_on_the_full_training_set(tiny, ray_local):
    res = analyses.counterfactual(tiny, [5, 6], "top:20", verify=2, base="full", progress=False)
    for c in res["counterfactuals"]:
        v = c["verified"]
        t = c["target"]  # both float32 predictions on the full training set (bounds.py)
        assert v["predicted_before"] == pytest.approx(c["full"]["before"],
                                                      abs=2 * sum_bound(np.append(tiny.weight[:, t], tiny.bias[t])))
        assert np.isfinite([v["actual_before"], v["actual_after"], v["actual_change"]]).all()


# ---- brittleness -----------------------------------------------------------------------------------

def test_support_sizes_are_the_smallest_flipping_sets(tiny):
    targets, size, baseline, after = analyses.support_sizes(tiny)
    N, s = tiny.num_train, tiny.subset_size
    assert (size == 0).sum() == (baseline <= 0).sum()
    assert (size > 0).any()
    for i in np.flatnonzero(size > 0)[:20]:
        w = tiny.weight[:, targets[i]].astype(np.float64)
        order = np.argsort(-w, kind="stable")
        pred = lambda k: tiny.bias[targets[i]] + s / (N - k) * (w.sum() - w[order[:k]].sum())
        # float64 sums of float32 weights in another order: γ_N(u64)·Σ|w| scaled as the prediction
        rounding = s / (N - size[i]) * 2 * sum_bound(np.append(w, tiny.bias[targets[i]]), U64)
        assert pred(size[i]) < rounding and -rounding <= pred(size[i] - 1)
        assert after[i] == pytest.approx(pred(size[i]), abs=rounding)


def test_brittleness_verified_by_retraining(tiny, ray_local):
    res = analyses.brittleness(tiny, verify=4, max_support=20, progress=False)
    assert res["num_targets"] == NUM_TEST
    c = res["counts"]
    assert c["already_wrong"] + c["flippable"] + c["never_flips"] == NUM_TEST
    v = res["verified"]
    assert v["checked"] == c["at_most_20"] >= 5
    assert v["share"] >= 0.5, v
    assert v["share_ci"][0] <= v["share"] <= v["share_ci"][1]
    assert v["surely_flipped"] + v["surely_holds"] + v["undecided"] == v["checked"]
    for r in res["targets"]:
        if "verified" in r:
            m, se = r["verified"]["actual_after"], r["verified"]["actual_after_se"]
            assert se > 0
            expected = "flipped" if m + 1.96 * se < 0 else "holds" if m - 1.96 * se > 0 else "undecided"
            assert r["verified"]["verdict"] == expected
    assert sum(r["support_size"] is not None and r["support_size"] > 0 for r in res["targets"]) == c["flippable"]


# ---- leakage -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tiny, tmp_path_factory):
    """The tiny data set with noisy copies of its 8 hardest test examples in the training set."""
    ensure_ray()
    root = tmp_path_factory.mktemp("planted")
    hard = analyses.hardest_targets(tiny, 8)
    info = analyses.plant_duplicates(tiny.data_dir, hard, root / "planted.npz", noise=0.05, seed=0)
    run = sweep_and_fit(tiny_analysis_config(root / "run", info["path"]))
    return run, info["pairs"]


def test_planted_duplicates_are_found(planted):
    run, pairs = planted
    assert run.num_train == NUM_TRAIN + 8 and [j for _, j in pairs] == list(range(NUM_TRAIN, NUM_TRAIN + 8))
    check = analyses.planted_check(run, pairs)
    # The criterion: every copy that truly moves its target by more than one standard deviation
    # of its margin ranks in the top 2n of all (target, train) pairs.
    assert check["num_visible"] >= 1, check["pairs"]
    assert check["passed"], check["pairs"]
    effects = {(e["target"], e["train"]): e for e in check["pairs"]}
    for e in effects.values():  # a copy of a hard example helps it
        assert e["effect"] > 0
    res = analyses.leakage(run, k=2 * len(pairs), known=pairs)
    assert res["known"]["recall_at_k"] >= check["num_visible"] / len(pairs)
    assert [p["rank"] for p in res["pairs"]] == list(range(1, 2 * len(pairs) + 1))
    scores = [p["score"] for p in res["pairs"]]
    assert scores == sorted(scores, reverse=True)


def test_plant_duplicates_writes_noisy_copies(tiny, tmp_path):
    info = analyses.plant_duplicates(tiny.data_dir, [0, 5], tmp_path / "p.npz", noise=0.05)
    z = np.load(tmp_path / "p.npz")
    x_test = z["x_test"].astype(int)
    copies = z["x_train"][-2:].astype(int)
    assert z["x_train"].shape[0] == NUM_TRAIN + 2 and z["x_train"].dtype == np.uint8
    assert list(z["y_train"][-2:]) == list(z["y_test"][[0, 5]])
    assert 0 < np.abs(copies - x_test[[0, 5]]).mean() < 2  # near, not exact
    assert info["pairs"] == [(0, NUM_TRAIN), (5, NUM_TRAIN + 1)]


# ---- embeddings, nearest, learning curve --------------------------------------------------------------

def test_embeddings(tiny):
    res = analyses.embeddings(tiny, num_components=4, k=5)
    assert res["coords"].shape == (NUM_TEST, 4)
    ratios = res["explained_variance_ratio"]
    assert ratios == sorted(ratios, reverse=True) and 0 < sum(ratios) < 1
    for c in res["components"]:
        col = res["coords"][:, c["component"]]
        assert col[c["positive"][0]] == col.max() and col[c["negative"][0]] == col.min()
    # targets of one class rely on the same training data: a target's nearest neighbour in
    # datamodel space, and in the top components, shares its label far more often than
    # chance (about 1 in 10)
    _, labels = tiny.target_images(np.arange(NUM_TEST))
    nearest = [analyses.nearest(tiny, t, 1)["nearest"][0]["target"] for t in range(NUM_TEST)]
    assert (labels[nearest] == labels).mean() > 0.6
    xy = res["coords"]
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1) + np.eye(NUM_TEST) * 1e9
    assert (labels[d.argmin(1)] == labels).mean() > 0.4
    near = analyses.nearest(tiny, 0, 5)["nearest"]
    assert len(near) == 5 and 0 not in [n["target"] for n in near]


def test_learning_curve_rises(tiny):
    res = analyses.learning_curve(tiny, sizes=[100, 300, 1000], progress=False)
    lds = [p["lds"] for p in res["points"]]
    assert [p["num_models"] for p in res["points"]] == [100, 300, 1000]
    assert lds[-1] > lds[0] and lds[-1] > 0.3, lds
    with pytest.raises(DatamodelsError, match="must lie in"):
        analyses.learning_curve(tiny, sizes=[5000], progress=False)


# ---- the command line -------------------------------------------------------------------------------

def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "datamodels.cli", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_cli_tables_and_json(tiny):
    run = tiny.path
    table = cli("counterfactual", "--target", 3, "--remove", "top:5", "--remove", "bottom:5", "--run", run)
    assert "pred_change" in table and "top:5" in table and "bottom:5" in table
    data = json.loads(cli("counterfactual", "--batch", 3, "--remove", "top:5", "--json", "--run", run))
    assert len(data["counterfactuals"]) == 3
    table = cli("brittleness", "--run", run)
    assert "support_size" in table and "most brittle" in table
    data = json.loads(cli("brittleness", "--json", "--run", run))
    assert data["num_targets"] == NUM_TEST
    table = cli("leakage", "--k", 5, "--run", run)
    assert "score" in table and len(table.strip().splitlines()) == 8


def test_cli_verify_keeps_results_for_the_report(tiny, ray_local, capsys):
    import re

    from datamodels.report import _render
    from datamodels.report_analyses import counterfactuals

    # in-process, so the module's Ray instance is reused
    assert main(["counterfactual", "--batch", "4", "--remove", "top:10", "--verify", "3", "--run", str(tiny.path)]) == 0
    out = capsys.readouterr()
    assert "actual_change" in out.out and "analyses/counterfactual.json" in out.err
    header = next(line for line in out.out.splitlines() if line.lstrip().startswith("target"))
    assert header.split()[-2:] == ["se", "judged"]
    saved = json.loads((tiny.path / "analyses" / "counterfactual.json").read_text())
    assert saved["fingerprint"] == tiny.fingerprint() and "verified" in saved["counterfactuals"][0]
    s = saved["summary"]
    number = r"(-?\d\.\d{3}|nan)"
    shown = re.search(rf"Pearson r = {number} \[{number}, {number}\]", out.out)
    assert shown and float(shown.group(1)) == pytest.approx(s["pearson"], abs=5e-4), out.out
    assert [float(x) for x in shown.groups()[1:]] == pytest.approx(s["pearson_ci"], abs=5e-4, nan_ok=True)
    assert f"r = {s['weighted_pearson']:.3f}" in out.out
    for c in saved["counterfactuals"]:  # every item's SE is in the table
        assert f"{c['verified']['actual_change_se']:.6g}" in out.out
    page = _render(run_path="", generated="", seconds="0", fingerprint="", sections=[counterfactuals(tiny)])
    assert "bootstrap over counterfactuals" in page and "±1.96 standard errors" in page
    assert f"r = {s['weighted_pearson']:.3f}</b>" in page
    assert main(["brittleness", "--verify", "2", "--max-support", "5", "--run", str(tiny.path)]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tiny.path / "analyses" / "brittleness.json").read_text())["verified"]
    if saved["checked"]:
        assert "95% bootstrap interval over targets" in out and f"{saved['undecided']} undecided" in out
        header = next(line for line in out.splitlines() if line.lstrip().startswith("target"))
        assert header.split()[-4:] == ["actual_after", "se", "flipped", "verdict"]


@pytest.mark.parametrize("args, message", [
    (["counterfactual", "--target", "1000"], "out of range"),
    (["counterfactual", "--target", "1", "--remove", "top:-3"], "K must be between"),
    (["counterfactual", "--target", "1", "--remove", "nofile.txt"], "expected top:K"),
    (["counterfactual"], "--target I"),
    (["brittleness", "--max-support", "0"], "max-support"),
    (["leakage", "--known", "nofile.txt"], "nofile.txt not found"),
    (["learning-curve", "--sizes", "a,b"], "comma-separated"),
])
def test_cli_bad_input_is_one_line(tiny, args, message, capsys):
    try:
        code = main(args + ["--run", str(tiny.path)])
    except SystemExit as exc:  # an argument argparse refuses: its exit, with one line
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_verify_without_config_says_how(tiny, tmp_path):
    import shutil

    shutil.copytree(tiny.path, tmp_path / "run", ignore=shutil.ignore_patterns("config.yaml"))
    with pytest.raises(DatamodelsError, match="--config"):
        analyses.counterfactual(str(tmp_path / "run"), 0, "top:3", verify=1, progress=False)


def test_verify_refuses_a_config_of_other_training_settings(tiny):
    cfg = config.to_dict(tiny.config)
    cfg["worker"]["epochs"] = 3
    run = analyses.Run(tiny.path, config=cfg)
    with pytest.raises(DatamodelsError, match="worker.epochs"):
        analyses.counterfactual(run, 0, "top:3", verify=1, progress=False)


def test_leakage_module_scores_are_bounded(tiny):
    leakage = importlib.import_module("datamodels.analyses.leakage")
    S = leakage.scores(tiny)
    assert S.shape == (NUM_TRAIN, NUM_TEST) and (S >= 0).all() and np.isfinite(S).all()
