"""The leakage list on a tiny planted run: a copy that changes the models ranks first, and the
figures that explain each pair (pixel similarity, effect measured on the store) are right."""
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

from datamodels import analyses, config
from datamodels.errors import DatamodelsError
from bounds import U64, sum_bound  # tests/helpers
from small_digits import small_digits  # tests/helpers

leakage_module = importlib.import_module("datamodels.analyses.leakage")  # the module, not the function

NUM_TRAIN, NUM_TEST, PLANTED = 300, 100, 4
WORKER = {"name": "workers.mlp", "hidden": 32, "epochs": 20, "weight_decay": 0.0005, "precision": "float32"}


def hardest(data_path, n):
    """The ``n`` test examples with the lowest mean margin over 40 models on half the training set."""
    from workers.mlp import Config, train_arrays

    z = np.load(data_path)
    rng = np.random.default_rng(0)
    masks = np.zeros((40, NUM_TRAIN), dtype=bool)
    for m in masks:
        m[rng.choice(NUM_TRAIN, NUM_TRAIN // 2, replace=False)] = True
    cfg = Config(**{k: v for k, v in WORKER.items() if k != "name"})
    margins = train_arrays(z["x_train"], z["y_train"], z["x_test"], z["y_test"], masks, np.arange(40) + 10**6, cfg)
    return np.argsort(margins.mean(0), kind="stable")[:n]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, _ray_shutdown_at_exit):
    """300 training digits plus ink-noise copies of the 4 hardest test examples and one exact
    copy of test example ``exact``; 1,000 models of a memorising MLP."""
    import ray

    from datamodels.cluster import start_local
    from datamodels.prepare import prepare
    from datamodels.regression import fit
    from datamodels.sweep import sweep

    if not ray.is_initialized():
        start_local()  # on 127.0.0.1 alone, as a sweep's own
    root = tmp_path_factory.mktemp("leakage")
    base = small_digits(root / "small.npz")
    hard = hardest(base, PLANTED)
    cfg = config.coerce({"out": str(root / "base"), "data": {"source": "npz", "path": str(base)},
                         "worker": WORKER})
    info = analyses.plant_duplicates(prepare(cfg, progress=False), hard, root / "planted.npz", noise=0.05,
                                     noise_on="ink", seed=0)
    z = dict(np.load(info["path"]))
    exact = int(np.setdiff1d(np.arange(NUM_TEST), hard)[0])
    z["x_train"] = np.concatenate([z["x_train"], z["x_test"][exact:exact + 1]])
    z["y_train"] = np.concatenate([z["y_train"], z["y_test"][exact:exact + 1]])
    np.savez(root / "planted.npz", **z)
    cfg = config.coerce({
        "out": str(root / "run"), "seed": 0, "data": {"source": "npz", "path": str(root / "planted.npz")},
        "sweep": {"num_models": 1000, "num_eval_models": 50, "models_per_task": 50, "max_retries": 0},
        "worker": WORKER, "fit": {"num_lambdas": 20, "lambda_min_ratio": 0.01}})
    sweep(cfg, progress=False)
    config.save(cfg, f"{cfg.out}/config.yaml")
    fit(f"{cfg.out}/store", f"{cfg.out}/datamodels.npz", num_lambdas=20, lambda_min_ratio=0.01, progress=False)
    return analyses.Run(cfg.out), [tuple(p) for p in info["pairs"]], (exact, NUM_TRAIN + PLANTED)


def test_an_effective_planted_duplicate_ranks_first(planted):
    run, pairs, exact = planted
    check = analyses.planted_check(run, pairs)
    effective = [(e["target"], e["train"]) for e in check["pairs"] if e["visible"]]
    assert len(effective) >= PLANTED // 2, check["pairs"]
    res = analyses.leakage(run, k=2 * PLANTED)
    first = res["pairs"][0]
    assert (first["target"], first["train"]) in effective + [exact], res["pairs"]
    assert first["effect_sd"] > 1 and first["similarity"] > 0.9, first
    assert check["passed"], check["pairs"]  # every effective copy is in the top 2n


def test_pair_figures_are_measured_on_the_store_and_the_images(planted):
    run, pairs, exact = planted
    res = analyses.leakage(run, k=10, known=pairs + [exact])
    rows = run.store.rows("fit")
    masks = np.asarray(run.store.masks[rows], dtype=bool)
    margins = np.asarray(run.store.margins[rows], dtype=np.float64)
    x_train, _ = run.images("train")
    x_test, _ = run.images("test")
    mean = x_train.reshape(len(x_train), -1).astype(np.float64).mean(0)
    flat = lambda x: x.reshape(-1).astype(np.float64) - mean
    for p in res["pairs"] + res["known"]["pairs"]:
        t, j = p["target"], p["train"]
        y, has = margins[:, run.columns[t]], masks[:, j]
        direct = y[has].mean() - y[~has].mean()
        # float64 sums of the same float32 margins in another order (tests/helpers/bounds.py)
        assert p["effect"] == pytest.approx(direct, abs=4 * sum_bound(y, U64) / min(has.sum(), (~has).sum()))
        assert p["effect_sd"] == pytest.approx(direct / y.std(), rel=1e-6)
        se = np.sqrt(y[has].var(ddof=1) / has.sum() + y[~has].var(ddof=1) / (~has).sum())
        assert p["effect_se"] == pytest.approx(se, rel=1e-4) and p["effect_z"] == pytest.approx(p["effect"] / se, rel=1e-4)
        a, b = flat(x_test[t]), flat(x_train[j])
        cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        assert p["similarity"] == pytest.approx(cos, abs=1e-12)
        sims = [flat(x) @ a / np.linalg.norm(flat(x)) / np.linalg.norm(a) for x in x_train]
        assert p["pixel_rank"] == 1 + sum(s > cos + 1e-12 for s in sims)
    by_pair = {(p["target"], p["train"]): p for p in res["known"]["pairs"]}
    assert by_pair[exact]["similarity"] == pytest.approx(1.0, abs=1e-12) and by_pair[exact]["pixel_rank"] == 1
    # the planted figures are the same numbers
    for e in analyses.planted_effects(run, pairs):
        assert e["effect"] == by_pair[(e["target"], e["train"])]["effect"]


def test_leakage_on_the_command_line_and_in_the_report(planted):
    from datamodels.report import _render
    from datamodels.report_analyses import leakage as leakage_section

    run, pairs, _ = planted
    cmd = [sys.executable, "-m", "datamodels.cli", "leakage", "--k", "3", "--run", str(run.path)]
    data = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, check=True).stdout)
    assert len(data["pairs"]) == 3
    for p in data["pairs"]:
        assert set(leakage_module.DETAILS) <= set(p)
    table = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    header = next(line for line in table.splitlines() if line.lstrip().startswith("rank"))
    assert header.split() == ["rank", "target", "train", "score", "weight", "aligned", "similarity", "pixel_rank",
                              "effect", "effect_se", "effect_sd", "effect_z"]
    section = _render(run_path=str(run.path), generated="", seconds="0", fingerprint="",
                      sections=[leakage_section(run)])
    assert "pixel similarity" in section and "effect (sd)" in section and "effect (SE)" in section
    top = data["pairs"][0]
    for key in ("similarity", "aligned_similarity", "effect_sd", "effect_se", "effect_z"):
        assert f"{top[key]:.3g}" in section, key
    plain = json.loads(subprocess.run(cmd + ["--json", "--similarity", "pixels"], capture_output=True, text=True,
                                      check=True).stdout)
    assert plain["similarity"] == "pixels" and data["similarity"] == "aligned"


def test_plant_duplicates_ink_noise_and_shifts(planted, tmp_path):
    run, _, _ = planted
    x_test, _ = run.images("test")
    info = analyses.plant_duplicates(run.data_dir, [0, 1, 2], tmp_path / "ink.npz", noise=0.1, noise_on="ink")
    copies = np.load(info["path"])["x_train"][-3:]
    orig = x_test[[0, 1, 2]]
    assert (copies[orig == 0] == 0).all() and (copies != orig).any()  # blank pixels stay blank
    info = analyses.plant_duplicates(run.data_dir, [0, 1, 2], tmp_path / "shift.npz", noise=0.0, shift=0.5)
    offsets = np.array(info["offsets"])
    assert offsets.shape == (3, 2) and (np.abs(offsets) <= 0.5).all() and (offsets != 0).all()
    moved = np.load(info["path"])["x_train"][-3:].astype(int)
    assert (moved != orig).any() and np.abs(moved.sum((1, 2, 3)) - orig.astype(int).sum((1, 2, 3))).max() < 0.3 * orig.sum()


@pytest.mark.parametrize("kwargs, message", [
    ({"noise_on": "edges"}, "noise_on must be 'all' or 'ink'"),
    ({"shift": 4.0}, "shift must be >= 0 and below half the image size"),
    ({"shift": -1.0}, "shift must be >= 0"),
    ({"noise": -0.1}, "noise must be >= 0"),
])
def test_plant_duplicates_bad_input(planted, tmp_path, kwargs, message):
    run, _, _ = planted
    with pytest.raises(DatamodelsError, match=message):
        analyses.plant_duplicates(run.data_dir, [0], tmp_path / "p.npz", **kwargs)


def test_aligned_similarity_undoes_shifts_brightness_and_contrast(planted):
    run, _, (t, j) = planted
    x_test, _ = run.images("test")
    x_train, _ = run.images("train")
    originals = x_test[:20].astype(np.float32)
    shifted = np.roll(originals, 1, axis=2)  # the digits' edge columns are blank: a roll is a shift
    brighter = originals * 0.8 + 2.0
    mean = x_train.reshape(len(x_train), -1).astype(np.float64).mean(0)
    centred = lambda x: x.reshape(len(x), -1).astype(np.float64) - mean
    for copies in (shifted, brighter):
        aligned = np.diagonal(leakage_module._aligned_cosines(run, copies, originals))
        plain = np.diagonal(leakage_module.cosine_rows(centred(copies), centred(originals)))
        assert aligned.min() > 0.95, aligned  # not 1: the mean image subtracted is not shifted
        assert np.median(aligned - plain) > 0.05, (aligned, plain)
    # an unrelated image is not made alike: the median over other targets stays well below a copy's
    others = leakage_module._aligned_cosines(run, originals, originals)
    assert np.median(others[~np.eye(20, dtype=bool)]) < 0.6
    A = leakage_module.aligned_similarities(run)
    assert A[j, t] == pytest.approx(1.0, abs=1e-5)
    pairs = [(p["target"], p["train"]) for p in analyses.leakage(run, k=5)["pairs"]]
    assert np.allclose(leakage_module.aligned_similarity(run, pairs), [A[jj, tt] for tt, jj in pairs], atol=1e-5)


def test_score_is_the_behavioural_score_times_the_similarity_factor(planted):
    run, _, (t, j) = planted
    B = leakage_module.behaviour_scores(run)
    C = leakage_module.pixel_similarities(run)
    A = leakage_module.aligned_similarities(run)
    assert np.allclose(leakage_module.scores(run), B * ((1 + A) / 2) ** 4, rtol=1e-5, atol=0)
    S = leakage_module.scores(run, similarity="pixels")
    assert np.array_equal(leakage_module.scores(run, pixels=False), B)
    assert np.array_equal(leakage_module.scores(run, similarity="none"), B)
    with pytest.raises(DatamodelsError, match="--similarity must be one of"):
        leakage_module.scores(run, similarity="ssim")
    assert np.allclose(S, B * (1 + C) / 2, rtol=1e-6, atol=0)
    assert C[j, t] == pytest.approx(1.0, abs=1e-5) and S[j, t] == pytest.approx(B[j, t], rel=1e-5)
    # the matrix holds the pairs' similarities (float32 against float64 sums of at most 64 terms)
    for p in analyses.leakage(run, k=5, similarity="pixels")["pairs"]:
        assert C[p["train"], p["target"]] == pytest.approx(p["similarity"], abs=1e-5)
        assert p["behaviour"] == B[p["train"], p["target"]]
