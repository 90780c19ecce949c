import os

import numpy as np
import pytest

from datamodels.errors import DatamodelsError
from datamodels.evaluate import lds
from datamodels.artifacts import load, predict
from datamodels.regression import PATH_TOL_FACTOR, fit
from datamodels.store import Store

from bounds import U64, mse_bound, solver_bound

N, T, K = 60, 6, 3  # training examples, targets, planted nonzero weights per target


def planted(seed=0):
    """A sparse truth: K weights per target of magnitude 1 to 2 (random signs), and biases."""
    rng = np.random.default_rng(seed)
    weight = np.zeros((N, T))
    for t in range(T):
        weight[rng.choice(N, K, replace=False), t] = rng.uniform(1, 2, K) * rng.choice([-1, 1], K)
    return weight, rng.normal(0, 3, T)


def margins(store, rows, weight, bias, noise=0.2, seed=1):
    rng = np.random.default_rng([seed, len(rows)])
    x = np.asarray(store.masks[rows], dtype=np.float64)
    return (x @ weight + bias + rng.normal(0, noise, (len(rows), weight.shape[1]))).astype(np.float32)


def make_store(path, num_fit=400, num_eval=100, seed=0):
    weight, bias = planted()
    store = Store.create(path, num_train=N, num_targets=T, alpha=0.5, seed=seed)
    store.grow(num_fit, num_eval)
    rows = np.arange(store.num_models)
    store.write(rows, margins(store, rows, weight, bias))
    return store, weight, bias


def linear_store(path, truth, num_fit, num_eval, noise, rng, seed=0):
    """A store whose margins are masks @ ``truth`` plus Gaussian noise drawn from ``rng``."""
    store = Store.create(path, num_train=N, num_targets=T, alpha=0.5, seed=seed)
    store.grow(num_fit, num_eval)
    rows = np.arange(store.num_models)
    x = np.asarray(store.masks[rows], dtype=np.float64)
    store.write(rows, (x @ truth + rng.normal(0, noise, (len(rows), T))).astype(np.float32))
    return store


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    store, weight, bias = make_store(tmp_path_factory.mktemp("fit") / "store")
    return store, weight, bias, fit(store, progress=False)


def test_recovers_the_planted_sparse_datamodels(synthetic):
    store, weight, bias, dm = synthetic
    assert dm["weight"].shape == (N, T) and dm["weight"].dtype == np.float32
    assert dm["bias"].shape == (T,) and dm["converged"].all()
    for t in range(T):
        top = np.argsort(-np.abs(dm["weight"][:, t]))[:K]
        assert set(top) == set(np.flatnonzero(weight[:, t]))
    # Statistical, not rounding, bounds: a weight's standard error is noise / sqrt(n·α(1−α))
    # = 0.2 / sqrt(360 / 4) ≈ 0.021; 0.15 allows that seven times over plus the lasso's shrinkage.
    assert np.abs(dm["weight"] - weight).max() < 0.15
    assert np.abs(dm["bias"] - bias).max() < 0.3
    assert lds(store, dm)["lds"] > 0.9
    assert dm["num_models"] == 400 and list(dm["targets"]) == list(range(T))
    assert dm["lambda_path"].shape == dm["val_mse_path"].shape == (40, T)
    chosen = np.nanargmin(dm["val_mse_path"], 0)
    assert np.allclose(dm["val_mse"], dm["val_mse_path"][chosen, range(T)])
    assert np.allclose(dm["lam"], dm["lambda_path"][chosen, range(T)])
    assert (dm["nnz"] == (dm["weight"] != 0).sum(0)).all()


def test_validation_mse_from_statistics_matches_direct_computation(synthetic):
    # At λ_max every weight is 0, so the model predicts the training mean and the
    # validation MSE computed from sufficient statistics must equal the direct one.
    from datamodels.regression import validation_rows

    store, _, _, dm = synthetic
    rows = store.rows("fit")
    is_val = validation_rows(rows, store.num_models, 0.1, 0)
    assert is_val.sum() == 40
    y = np.asarray(store.margins[rows], dtype=np.float64)
    direct = ((y[is_val] - y[~is_val].mean(0)) ** 2).mean(0)
    # Both in float64 from the same float32 margins: the statistics route (Σy², Σy, n) loses
    # about n·u64·(ȳ² + σ²)/σ² to cancellation, ~1e-12 here; 1e-9 is that with room to spare.
    assert np.allclose(dm["val_mse_path"][0], direct, rtol=1e-9, atol=0)
    assert U64 * 360 * 100 < 1e-9
    assert (dm["val_mse"] < 0.2 * direct).all()  # the planted signal explains most of it


def test_streamed_equals_in_memory(synthetic):
    store, _, _, whole = synthetic
    streamed = fit(store, progress=False, chunk_rows=7)
    # XᵀX is exact either way; Xᵀy differs only in float64 summation order: the solves differ
    # by rounding, so they agree to the solver's stopping tolerance (tests/helpers/bounds.py).
    assert np.allclose(streamed["weight"], whole["weight"], rtol=0, atol=solver_bound(whole["weight"]))
    # bias = ȳ − x̄·w: off by |x̄|₁ = N/2 times the weights' bound at most
    assert np.allclose(streamed["bias"], whole["bias"], rtol=0, atol=N / 2 * solver_bound(whole["weight"]))
    # the path is solved at datamodels.regression.PATH_TOL_FACTOR times the tolerance (default 1e-4)
    path = whole["val_mse_path"]
    gap = np.abs(streamed["val_mse_path"] - path)
    assert np.array_equal(np.isnan(gap), np.isnan(path))
    path_tol = PATH_TOL_FACTOR * 1e-4
    bound = mse_bound(path, N, solver_bound(whole["weight"], tol=path_tol))
    assert (gap[~np.isnan(path)] <= bound[~np.isnan(path)]).all()


def test_target_slices_equal_the_whole_fit(synthetic):
    store, _, _, whole = synthetic
    for targets in ([4, 1], slice(2, 5)):
        part = fit(store, progress=False, targets=targets)
        cols = np.arange(T)[targets]
        assert list(part["targets"]) == list(cols)
        # The same statistics; only the GEMMs' widths differ, so rounding may differ (bounds.py).
        bound = solver_bound(whole["weight"])
        assert np.allclose(part["weight"], whole["weight"][:, cols], rtol=0, atol=bound)
        assert np.allclose(part["bias"], whole["bias"][cols], rtol=0, atol=N / 2 * bound)
        assert np.array_equal(part["lam"], whole["lam"][cols])


def test_is_deterministic(synthetic):
    store, _, _, dm = synthetic
    again = fit(store, progress=False)
    assert all(np.array_equal(again[k], dm[k], equal_nan=True) for k in ("weight", "bias", "lam", "val_mse_path"))
    other = fit(store, progress=False, seed=1)  # another validation split
    assert not np.array_equal(other["val_mse_path"], dm["val_mse_path"])


def test_uses_only_completed_fitting_rows(tmp_path):
    weight, bias = planted()
    clean = Store.create(tmp_path / "clean", num_train=N, num_targets=T, alpha=0.5, seed=3)
    clean.grow(300, 0)
    clean.write(np.arange(300), margins(clean, np.arange(300), weight, bias))

    messy = Store.create(tmp_path / "messy", num_train=N, num_targets=T, alpha=0.5, seed=3)
    messy.grow(340, 30)  # rows 0..339 fit (same masks as the clean store's 0..299), 340..369 eval
    messy.write(np.arange(300), margins(messy, np.arange(300), weight, bias))
    rng = np.random.default_rng(5)
    messy.write(np.arange(340, 370), rng.normal(0, 1e3, (30, T)).astype(np.float32))  # garbage eval rows
    messy.margins[300:340] = np.float32(1e6)  # incomplete rows holding garbage (even NaN would do)
    messy.margins[300] = np.nan
    messy.margins.flush()

    a, b = fit(clean, progress=False), fit(messy, progress=False)
    assert a["num_models"] == b["num_models"] == 300
    for key in ("weight", "bias", "val_mse_path"):
        assert np.array_equal(a[key], b[key], equal_nan=True)


def test_save_load_predict(tmp_path, synthetic):
    store, _, _, _ = synthetic
    dm = fit(store, tmp_path / "dm.npz", progress=False, num_lambdas=8)
    loaded = load(tmp_path / "dm.npz")
    assert set(dm) <= set(loaded) and loaded["num_models"] == 400
    assert all(np.array_equal(loaded[k], dm[k], equal_nan=True) for k in dm)
    masks = np.asarray(store.masks[:5])
    expected = masks.astype(np.float32) @ dm["weight"] + dm["bias"]
    assert np.allclose(predict(tmp_path / "dm.npz", masks), expected)
    assert np.allclose(predict(dm, masks[0]), expected[0])
    with pytest.raises(DatamodelsError, match="do not match"):
        predict(dm, masks[:, :10])


def test_constant_target_and_constant_feature(tmp_path):
    store = Store.create(tmp_path / "s", num_train=N, num_targets=2, alpha=0.5, seed=0)
    store.grow(200, 0)
    x = np.asarray(store.masks, dtype=np.float64)
    y = np.stack([np.full(200, 4.0), 2 * x[:, 3] + 0.1 * np.random.default_rng(0).normal(size=200)], 1)
    store.write(np.arange(200), y.astype(np.float32))
    dm = fit(store, progress=False)
    assert (dm["weight"][:, 0] == 0).all() and dm["bias"][0] == pytest.approx(4.0)
    assert np.argmax(np.abs(dm["weight"][:, 1])) == 3 and dm["converged"].all()


def test_unconverged_targets_warn(synthetic):
    store, _, _, _ = synthetic
    with pytest.warns(RuntimeWarning, match=r"did not converge within fit.max_iter=1 \(targets "):
        dm = fit(store, progress=False, max_iter=1, num_lambdas=5)
    assert not dm["converged"].all()


def test_errors_name_the_problem(tmp_path, synthetic):
    store, _, _, _ = synthetic
    empty = Store.create(tmp_path / "empty", num_train=N, num_targets=T, alpha=0.5, seed=0)
    empty.grow(10, 5)
    with pytest.raises(DatamodelsError, match="no completed fitting rows"):
        fit(empty, progress=False)
    empty.write(np.arange(10), np.zeros((10, T), np.float32))
    with pytest.raises(DatamodelsError, match="1 validation .* at least 2"):
        fit(empty, progress=False)
    with pytest.raises(DatamodelsError, match=r"fit.val_fraction must be in \(0, 1\)"):
        fit(store, val_fraction=1.5, progress=False)
    with pytest.raises(DatamodelsError, match="fit.num_lambdas"):
        fit(store, num_lambdas=0, progress=False)
    with pytest.raises(DatamodelsError, match="fit.lambda_min_ratio"):
        fit(store, lambda_min_ratio=2, progress=False)
    with pytest.raises(DatamodelsError, match="fit.tol must be positive"):
        fit(store, tol=0, progress=False)
    with pytest.raises(DatamodelsError, match="targets must lie in 0..5"):
        fit(store, targets=[7], progress=False)
    with pytest.raises(DatamodelsError, match="store not found"):
        fit(tmp_path / "nowhere", progress=False)
    with pytest.raises(DatamodelsError, match="fit.device must be cpu or cuda"):
        fit(store, device="tpu", progress=False)
    with pytest.raises(DatamodelsError, match="datamodels file not found"):
        load(tmp_path / "missing.npz")


def test_cuda_unavailable_is_a_clear_error(synthetic, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DatamodelsError, match=r"^fit.device=cuda but torch.cuda.is_available\(\) is False$"):
        fit(synthetic[0], device="cuda", progress=False)


def test_non_finite_margins_in_completed_rows(tmp_path):
    store, _, _ = make_store(tmp_path / "s", num_fit=50, num_eval=0)
    store.margins[17, 2] = np.inf
    with pytest.raises(DatamodelsError, match="completed row 17 has non-finite margins"):
        fit(store, progress=False)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu(synthetic):
    store, _, _, dm = synthetic
    gpu = fit(store, device="cuda", progress=False)
    # Both solve in float32 to the same tolerance, with other summation orders (bounds.py).
    assert np.allclose(gpu["weight"], dm["weight"], rtol=0, atol=solver_bound(dm["weight"]))


def test_ray_target_slices_equal_the_whole_fit(synthetic, ray_local):
    store, _, _, whole = synthetic
    sliced = fit(store, progress=False, slices=4)  # four Ray tasks on the running instance
    assert list(sliced["targets"]) == list(range(T)) and sliced["num_models"] == whole["num_models"]
    bound = solver_bound(whole["weight"])  # as for in-process slices
    assert np.allclose(sliced["weight"], whole["weight"], rtol=0, atol=bound)
    assert np.allclose(sliced["bias"], whole["bias"], rtol=0, atol=N / 2 * bound)
    assert (np.abs(sliced["val_mse"] - whole["val_mse"]) <= mse_bound(whole["val_mse"], N, 10 * bound)).all()
    for key in ("lam", "nnz", "converged", "lambda_path"):
        assert np.array_equal(sliced[key], whole[key]), key


def _peak_rss_of_fit(store_path, chunk_rows):
    """Peak resident memory (KiB) of a fresh process that imports torch and fits the store.

    VmHWM, not ru_maxrss: the latter survives exec, so a child would report the peak of the
    (large) test process that forked it."""
    import subprocess
    import sys

    code = ("from datamodels.regression import fit; "
            f"fit({str(store_path)!r}, progress=False, num_lambdas=2, chunk_rows={chunk_rows}); "
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    # One XᵀX kernel for every store: oneDNN's int8 GEMM holds ~90 MB more than float32's, and
    # the probe picks a kernel only for stores large enough to repay it, so the two fits compared
    # would otherwise differ by their kernels' footprints, not by the pages they read.
    env = {**os.environ, "DATAMODELS_GRAM_KERNEL": "float32"}
    return int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                              env=env).stdout)


@pytest.mark.integration  # fresh Python processes, seconds each
def test_streamed_fit_memory_does_not_grow_with_models(tmp_path):
    # 64,000 models x 1,500 examples: 96 MB of masks, read 500 rows at a time.  Without
    # unmapping the pages read, the large fit's peak would be ~90 MB above the small one's; the
    # same fit's peak varies by a few MB from run to run (``return_freed_memory``).
    sizes = {}
    for name, models in (("small", 4000), ("large", 64000)):
        store = Store.create(tmp_path / name, num_train=1500, num_targets=4, alpha=0.5, seed=0)
        store.grow(models, 0)
        rows = np.arange(models)
        store.write(rows, np.random.default_rng(0).normal(size=(models, 4)).astype(np.float32))
        sizes[name] = _peak_rss_of_fit(tmp_path / name, chunk_rows=500)
    extra_mask_kib = (64000 - 4000) * 1500 / 1024
    assert sizes["large"] - sizes["small"] < 0.3 * extra_mask_kib, sizes


def test_standardising_in_place_is_undone_exactly():
    # The standardised Gram overwrites the counts XᵀX; the refit needs them back bit for bit.
    # Rows 3 and 40 are constant (never and always in), so their entries are kept aside.
    import torch
    from datamodels.regression.standardise import Validation, standardise
    from datamodels.regression.stats import Stats

    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((3000, 300)) < 0.5)
    masks[:, 3], masks[:, 40] = False, True
    train, val = Stats.zeros(300, 2, torch.float32, "cpu"), Stats.zeros(300, 2, torch.float32, "cpu")
    y = torch.from_numpy(rng.normal(size=(3000, 2)))
    train.add(masks[:2700], y[:2700])
    val.add(masks[2700:], y[2700:])
    xx_train, xx_val = train.xx.clone(), val.xx.clone()
    counts = train.xx
    prob = standardise(train, torch.float32)
    valid = Validation(prob, val, torch.float32)
    assert prob.G.data_ptr() == counts.data_ptr()  # written over the counts: no second N×N copy
    assert torch.equal(prob.centring.undo(prob.G), xx_train)
    assert torch.equal(valid.centring.undo(valid.G), xx_val)


@pytest.mark.integration  # fresh Python processes, seconds each
def test_memory_estimate_matches_the_measured_peak(tmp_path):
    # Peak resident memory of a fresh process over its memory before the fit, against
    # ``memory_estimate``.  At N = 4,000 the two Grams (2 × 61 MiB) and a chunk of masks
    # dominate; margins from a sparse truth keep the solve short (N > rows would not).
    import subprocess
    import sys

    num_train, models, targets = 4000, 5000, 20
    store = Store.create(tmp_path / "s", num_train=num_train, num_targets=targets, alpha=0.5, seed=0)
    store.grow(models, 0)
    rng = np.random.default_rng(0)
    weight = np.zeros((num_train, targets))
    weight[rng.choice(num_train, 5 * targets, replace=False), np.repeat(np.arange(targets), 5)] = 1.0
    rows = np.arange(models)
    store.write(rows, margins(store, rows, weight, np.zeros(targets)))
    code = ("from datamodels.regression import fit, memory_estimate; "
            "rss = lambda key: int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith(key))); "
            "before = rss('VmRSS'); "
            f"fit({str(tmp_path / 's')!r}, progress=False, num_lambdas=8); "
            f"print(rss('VmHWM') - before, memory_estimate({num_train}, {targets}, {models})['host'] // 1024)")
    measured, estimate = map(int, subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                                 text=True).stdout.split())
    assert abs(estimate - measured) <= 0.25 * measured, (measured, estimate)


def test_a_fit_too_large_for_memory_stops_before_reading(tmp_path):
    store = Store.create(tmp_path / "s", num_train=200_000, num_targets=2, alpha=0.5, seed=0)
    store.grow(40, 0)
    store.write(np.arange(40), np.zeros((40, 2), np.float32))
    with pytest.raises(DatamodelsError, match=r"^fit needs about 298\.\d GiB .* but [\d.]+ GiB is available: "
                                              r"fit on a device with more memory \(--device cuda\)"):
        fit(store, progress=False)


def test_working_sets_are_capped_and_the_solution_is_the_lasso_optimum():
    # Fewer rows than features (M < N): at this λ the strong rule keeps over twice as many
    # features as the working-set cutoff (max(16, N/20) = 20) while the solution has fewer, so
    # the capped solver works on the support plus the highest-|Rⱼ| candidates instead of all N.  Its
    # answer is checked against scikit-learn's coordinate descent on the same standardised data.
    import torch
    from sklearn.linear_model import Lasso

    from datamodels.regression import solver as regression_solver

    rng = np.random.default_rng(0)
    n, N = 150, 400
    X = (rng.random((n, N)) < 0.5).astype(np.float64)
    w_true = np.zeros(N)
    w_true[:5] = [2.0, -1.5, 1.0, 1.0, -2.0]
    y = X @ w_true + rng.normal(0, 0.5, n)
    Xs = (X - X.mean(0)) / X.std(0)
    yc = y - y.mean()
    G, C = torch.tensor(Xs.T @ Xs / n, dtype=torch.float32), torch.tensor(Xs.T @ yc / n, dtype=torch.float32)[:, None]
    lam = torch.tensor([0.2 * float(C.abs().max())])
    strong = int((C.abs() >= lam).sum())
    solver = regression_solver.Lasso(G, tol=1e-7, max_iter=20000)
    solver.capped = True  # as for a Gram too large for cache (this one is 640 KB)
    assert strong > 2 * solver.cutoff
    W, R, converged = solver.solve(C, lam, torch.zeros(N, 1), C.clone(), lam)
    ref = Lasso(alpha=float(lam), fit_intercept=False, tol=1e-12, max_iter=100000).fit(Xs, yc).coef_
    assert bool(converged[0]) and 0 < int((ref != 0).sum()) < solver.cutoff
    # Both solve the problem to a relative change of ~1e-7; float32 data leaves them ~1e-5 apart
    # relative to the largest weight (u32 · the Gram's condition on the support, here < 100).
    assert np.abs(W[:, 0].numpy() - ref).max() < 1e-4 * np.abs(ref).max()
    # KKT: no feature outside the support correlates with the residual by more than λ.
    off = W[:, 0] == 0
    assert float(R[off, 0].abs().max()) <= float(lam) * (1 + 1e-3)

    # The cap itself: the support always stays, then the largest scores, never more than the limit.
    candidates = torch.ones(6, 1, dtype=torch.bool)
    support = torch.tensor([[False], [False], [False], [False], [False], [True]])
    score = torch.tensor([[0.1], [0.9], [0.5], [0.7], [0.2], [0.0]])
    prioritised = regression_solver.prioritised
    assert prioritised(candidates, support, score, 3)[:, 0].tolist() == [False, True, False, True, False, True]
    assert torch.equal(prioritised(candidates, support, score, 6), candidates)


def test_solver_temporaries_are_reused_not_mapped_afresh():
    # A freed block above the mmap threshold is unmapped, and the next one of its size faults in
    # every page again; inside the solver's policy the heap hands the same pages back.  100
    # rounds of a 4 MiB temporary: 100 x 1,024 page faults when mapped afresh, a few pages of
    # bookkeeping when reused.  In a fresh process: glibc reuses free heap chunks whatever the
    # threshold, so a heap that earlier work left large would hide the difference.
    import subprocess
    import sys

    code = """
import resource, torch
from datamodels.regression.memory import _libc, return_freed_memory, temporaries_on_the_heap
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        torch.empty(1 << 20, dtype=torch.float32).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
if _libc() is None:
    print("skip")
else:
    return_freed_memory()
    outside = faults()
    with temporaries_on_the_heap(4 << 20):
        faults()  # the heap grows once
        inside = faults()
    print(outside, inside)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    if out == ["skip"]:
        pytest.skip("not glibc: the allocator's thresholds cannot be set")
    outside, inside = map(int, out)
    pages = (4 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert inside < pages, (outside, inside)
    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    if not (os.path.exists(thp) and "[always]" in open(thp).read()):  # with 2 MiB pages a fresh mapping faults twice
        assert outside > 50 * pages, (outside, inside)


def test_a_prior_mean_is_scaled_and_corrected_by_the_lasso(tmp_path):
    # A dense truth (every weight nonzero) from 40 fitting models: too few rows for the lasso
    # alone, enough to scale a prior and correct it.  The prior is the truth times 3 plus noise
    # on 10 of its entries; the fit should find the scale (1/3), keep the prior's shape, and do
    # far better on held-out models than the plain fit.
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 1, (N, T))
    store = Store.create(tmp_path / "store", num_train=N, num_targets=T, alpha=0.5, seed=0)
    store.grow(40, 200)
    rows = np.arange(store.num_models)
    store.write(rows, margins(store, rows, weight, np.zeros(T), noise=0.2))
    prior = 3 * weight
    prior[:10] += rng.normal(0, 1, (10, T))
    with_prior = fit(store, prior=prior, progress=False)
    plain = fit(store, progress=False)
    assert str(with_prior["prior_choice"]) == "prior"
    err = lambda dm: float(np.abs(dm["weight"] - weight).mean())
    assert err(with_prior) < 0.25 * err(plain), (err(with_prior), err(plain))
    assert lds(store, with_prior)["lds"] > 0.95 > lds(store, plain)["lds"]
    # Among candidates, the one predicting the validation models best is kept.
    chosen = fit(store, prior={"noise": rng.normal(0, 1, (N, T)), "truth": prior}, progress=False)
    assert str(chosen["prior_choice"]) == "truth"
    np.testing.assert_array_equal(chosen["weight"], with_prior["weight"])
    with pytest.raises(DatamodelsError, match=r"prior prior: expected shape \[60, 6\]"):
        fit(store, prior=np.zeros((N, T + 1)), progress=False)
    with pytest.raises(DatamodelsError, match="NaN"):
        fit(store, prior=np.full((N, T), np.nan), progress=False)


def test_a_penalty_per_weight_is_the_weighted_lasso_optimum():
    # min ½wᵀGw − cᵀw + λ Σᵢ pᵢ|wᵢ| is the plain lasso on features Xᵢ / pᵢ (w = coef / p), which
    # scikit-learn solves independently.  Two targets with different penalties, solved together,
    # on working sets (capped and not) and on all features (the dense fallback).
    import torch
    from sklearn.linear_model import Lasso

    from datamodels.regression import solver as regression_solver

    rng = np.random.default_rng(3)
    n, N = 120, 200
    X = (rng.random((n, N)) < 0.5).astype(np.float64)
    w_true = np.zeros((N, 2))
    w_true[:6, 0], w_true[10:16, 1] = [2.0, -1.5, 1.0, 1.0, -2.0, 0.5], [1.0, 1.0, -1.0, 2.0, 0.5, -0.5]
    y = X @ w_true + rng.normal(0, 0.5, (n, 2))
    Xs, yc = (X - X.mean(0)) / X.std(0), y - y.mean(0)
    G, C = torch.tensor(Xs.T @ Xs / n, dtype=torch.float32), torch.tensor(Xs.T @ yc / n, dtype=torch.float32)
    penalty = torch.tensor(rng.uniform(0.2, 3.0, (N, 2)), dtype=torch.float32)
    lam = torch.tensor([0.3, 0.2]) * (C.abs() / penalty).amax(0)
    refs = [Lasso(alpha=float(lam[t]), fit_intercept=False, tol=1e-12, max_iter=100000)
            .fit(Xs / penalty[:, t].numpy(), yc[:, t]).coef_ / penalty[:, t].numpy() for t in range(2)]
    ref = np.stack(refs, 1)
    assert 3 <= int((ref != 0).sum(0).min())
    scale = np.abs(ref).max()
    for capped in (False, True):
        solver = regression_solver.Lasso(G, tol=1e-7, max_iter=20000)
        solver.capped = capped
        W, R, converged = solver.solve(C, lam, torch.zeros(N, 2), C.clone(), lam, penalty)
        assert bool(converged.all())
        assert np.abs(W.numpy() - ref).max() < 1e-4 * scale, capped
        off = W == 0  # KKT: outside the support no feature correlates with the residual by more than λpᵢ
        assert bool((R.abs()[off] <= (lam[None, :] * penalty)[off] * (1 + 1e-3)).all())
    dense, _, _ = regression_solver.fista(lambda z, act: G @ z, C, lam[None, :] * penalty, torch.zeros(N, 2),
                                          solver.L, 1e-7, 20000)
    assert np.abs(dense.numpy() - ref).max() < 1e-4 * scale
    # A penalty of ones is the plain lasso.
    exact = regression_solver.Lasso(G, tol=1e-7, max_iter=20000)
    plain, _, _ = exact.solve(C, lam, torch.zeros(N, 2), C.clone(), lam)
    ones, _, _ = exact.solve(C, lam, torch.zeros(N, 2), C.clone(), lam, torch.ones(N, 2))
    torch.testing.assert_close(ones, plain, rtol=0, atol=1e-6 * scale)


def test_adaptive_weights_from_the_prior_correct_where_it_is_large(tmp_path):
    # The prior has the right support (12 large weights per target) and shape, but four of its
    # large weights are off by ±1, as TRAK's scores are right about which examples matter more
    # often than about how much.  With 60 fitting models, weighting the correction's penalty by
    # the prior (γ = 1) lets the lasso move those weights and keep the small ones near the prior:
    # half the error of penalising all weights alike (0.015 against 0.030 with this seed; the
    # same ratio with three other seeds and 40 or 100 models).
    rng = np.random.default_rng(0)
    prior = rng.normal(0, 0.05, (N, T))
    truth = prior.copy()
    for t in range(T):
        big = rng.choice(N, 12, replace=False)
        prior[big, t] = rng.uniform(1, 2, 12) * rng.choice([-1, 1], 12)
        truth[big, t] = prior[big, t]
        truth[big[:4], t] += rng.choice([-1.0, 1.0], 4)
    store = linear_store(tmp_path / "store", truth, 60, 200, 0.3, rng)
    err = lambda gamma: float(np.abs(fit(store, prior=prior, prior_gamma=gamma, progress=False)["weight"]
                                     - truth).mean())
    assert err(1.0) < 0.7 * err(0.0), (err(1.0), err(0.0))
    with pytest.raises(DatamodelsError, match=r"fit.prior_gamma must be a number >= 0, got -1"):
        fit(store, prior=prior, prior_gamma=-1, progress=False)


def test_a_prior_the_validation_models_keep_uncorrected_stays_so_in_the_refit(tmp_path):
    # Ten models, two of them for validation: margins that are the prior's prediction plus noise
    # leave the lasso nothing to correct, so validation picks the path's first step, λ_max of the
    # eight training models.  On all ten, λ_max is larger, and refitting at the same λ would fit
    # the noise of the two validation models; every target must stay its scaled prior.  (With
    # this seed validation picks the first step; with others, a step a little below it.)
    rng = np.random.default_rng(2)
    prior = rng.normal(0, 1, (N, T))
    store = linear_store(tmp_path / "store", 0.5 * prior, 10, 50, 0.5, rng, seed=2)
    for gamma in (0.0, 0.5):
        dm = fit(store, prior=prior, prior_gamma=gamma, val_fraction=0.2, progress=False)
        assert (dm["path_index"] == 0).all()
        w = dm["weight"].astype(np.float64)
        cos = (w * prior).sum(0) / (np.linalg.norm(w, axis=0) * np.linalg.norm(prior, axis=0))
        assert (cos > 1 - 1e-6).all(), cos


def test_statistics_of_the_residual_of_a_prior_equal_those_computed_directly():
    # (X, y − Xβ) from the statistics of (X, y).  The identities are exact; what differs is
    # rounding: Xᵀy is a float32 product in both (γ32(n) of Xᵀ|y|), and X'Xβ a float32 product of
    # integer counts and β rounded to float32 (γ32(N + 1) of |XᵀX||β|), which enter ΣyΣ' through β.
    import torch
    from datamodels.regression.stats import Stats

    from bounds import gamma

    rng = np.random.default_rng(0)
    n = 300
    masks = torch.from_numpy(rng.random((n, N)) < 0.5)
    x = masks.double()
    y = torch.from_numpy(rng.normal(0, 1, (n, T)))
    beta = torch.from_numpy(rng.normal(0, 1, (N, T)))
    residual = y - x @ beta
    s = Stats.zeros(N, T, torch.float32, "cpu")
    s.add(masks, y)
    direct = Stats.zeros(N, T, torch.float32, "cpu")
    direct.add(masks, residual)
    got = s.minus(beta)
    xy_err = gamma(n) * (x.T @ y.abs() + x.T @ residual.abs()) + gamma(N + 1) * ((x.T @ x) @ beta.abs())
    assert bool(((got.xy - direct.xy).abs() <= xy_err).all())
    assert bool(((got.sy - direct.sy).abs() <= gamma(N + n, 2 ** -53) * (x.abs().sum(0) @ beta.abs() + y.abs().sum(0)
                                                                          + residual.abs().sum(0))).all())
    yy_err = 2 * (beta.abs() * xy_err).sum(0) + gamma(N + n, 2 ** -53) * (y * y + residual * residual).sum(0)
    assert bool(((got.yy - direct.yy).abs() <= yy_err).all())
    assert got.xx is s.xx and got.n == n
