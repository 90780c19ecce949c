"""Stores in the published reference pipeline's layout, and score matrices of other methods.

The store here is written the way that pipeline's ``initialize_store`` and workers write one
(from the format's description): the JSON spec lives outside the store directory, one ``.npy``
memmap per schema key (``masks`` bool, ``margins`` float16) plus ``_completed.npy``, each
worker writing its own row and then its completion flag, and no held-out split.  Its margins
are planted: exactly linear in the masks with a sparse known support, plus a little noise, so
a fit must recover the support.  Every command runs on it through the real command line
(``datamodels.cli.main``, in process).
"""
import hashlib
import json

import numpy as np
import pytest

from datamodels.cli import main
from datamodels.errors import DatamodelsError
from datamodels.evaluate import lds
from datamodels.store import Store

N, T, M = 40, 6, 700
FIT, EVAL = (0, 600), (600, 680)  # rows 680..699 are never completed
SUPPORT = 3


def write_reference_store(root):
    """``root/spec.json`` and ``root/store/``, as the reference pipeline leaves them."""
    spec = {"num_models": M, "schema": {"masks": {"shape": [N], "dtype": "bool_"},
                                        "margins": {"shape": [T], "dtype": "float16"}}}
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    store = root / "store"
    store.mkdir()
    # initialize_store: one zero-filled memmap per schema key, [num_models, *shape], and the flags.
    for key, field in spec["schema"].items():
        mm = np.lib.format.open_memmap(store / f"{key}.npy", mode="w+", dtype=getattr(np, field["dtype"]),
                                       shape=(spec["num_models"], *field["shape"]))
        mm.flush()
        del mm
    done = np.lib.format.open_memmap(store / "_completed.npy", mode="w+", dtype=bool, shape=(M,))
    done.flush()
    del done

    rng = np.random.default_rng(0)
    weight = np.zeros((N, T))
    support = np.stack([rng.choice(N, SUPPORT, replace=False) for _ in range(T)], axis=1)  # [SUPPORT, T]
    for t in range(T):
        weight[support[:, t], t] = rng.choice([-1, 1], SUPPORT) * rng.uniform(1.0, 2.0, SUPPORT)
    bias = rng.normal(size=T)
    # The workers: each writes its row's mask and margins, then flags it complete.
    written = np.zeros((M, T), dtype=np.float16)
    for i in range(EVAL[1]):
        mask = np.zeros(N, dtype=bool)
        mask[rng.choice(N, N // 2, replace=False)] = True
        margins = (mask @ weight + bias + 0.05 * rng.normal(size=T)).astype(np.float16)
        rows = {k: np.lib.format.open_memmap(store / f"{k}.npy", mode="r+") for k in ("masks", "margins", "_completed")}
        rows["masks"][i] = mask
        rows["margins"][i] = margins
        rows["masks"].flush(), rows["margins"].flush()
        rows["_completed"][i] = True
        rows["_completed"].flush()
        del rows
        written[i] = margins
    return spec_path, store, {"weight": weight, "bias": bias, "support": support, "margins": written}


def digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    spec, store, truth = write_reference_store(root)
    return root, spec, store, truth


def run_cli(capsys, *args, code=0):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    assert rc == code, out.err
    return out


def test_reference_store_opens_with_its_spec_or_detected(ref):
    root, spec, store, truth = ref
    for s in (Store(store, spec=spec), Store(store)):
        assert s.num_models == M and s.num_train == N and s.num_targets == T
        assert s.margins.dtype == np.float16
        assert np.array_equal(np.asarray(s.margins), truth["margins"])  # float16 margins read back equal
        assert list(s.rows("fit")) == list(range(EVAL[1])) and len(s.rows("eval")) == 0
        assert s.reference_layout
    s = Store(store, eval_rows="600:680")
    assert list(s.rows("eval")) == list(range(*EVAL)) and list(s.rows("fit")) == list(range(*FIT))
    assert not (store / "spec.json").exists()  # nothing was copied in


def test_every_command_on_a_reference_store(ref, tmp_path, capsys):
    root, spec, store, truth = ref
    before = digest(store)
    held = f"{EVAL[0]}:{EVAL[1]}"

    status = json.loads(run_cli(capsys, "status", store, "--spec", spec, "--json").out)
    assert status["completed"] == EVAL[1] and status["eval"]["total"] == 0 and not status["can_grow"]
    text = run_cli(capsys, "status", store).out  # detected from the headers
    assert "cannot be grown or resumed" in text and "--eval-rows" in text
    status = json.loads(run_cli(capsys, "status", store, "--eval-rows", held, "--json").out)
    assert status["eval"] == {"total": 80, "completed": 80} and status["fit"]["completed"] == 600

    dm_path = tmp_path / "dm.npz"
    run_cli(capsys, "fit", "--store", store, "--spec", spec, "--eval-rows", held, "--out", dm_path, "--num-lambdas", 20)
    dm = np.load(dm_path)
    assert int(dm["num_models"]) == 600
    for t in range(T):  # the planted support, recovered
        assert set(np.argsort(-np.abs(dm["weight"][:, t]))[:SUPPORT]) == set(truth["support"][:, t])
    np.testing.assert_allclose(dm["weight"][truth["support"], np.arange(T)],
                               truth["weight"][truth["support"], np.arange(T)], atol=0.1)

    common = ["--store", store, "--spec", spec, "--eval-rows", held, "--run", tmp_path]
    scores = json.loads(run_cli(capsys, "evaluate", *common, "--datamodels", dm_path, "--json").out)
    assert scores["num_models"] == 80 and scores["lds"] > 0.9

    # Another method's scores: the datamodels' own weights score the same LDS, in both orientations.
    np.save(tmp_path / "w.npy", dm["weight"])
    np.save(tmp_path / "wT.npy", np.ascontiguousarray(dm["weight"].T))
    by_scores = json.loads(run_cli(capsys, "evaluate", *common, "--scores", tmp_path / "w.npy", "--json").out)
    assert by_scores["lds"] == pytest.approx(scores["lds"], abs=1e-6)
    assert by_scores["quantiles"] == pytest.approx(scores["quantiles"], abs=1e-6)
    t_scores = json.loads(run_cli(capsys, "evaluate", *common, "--scores", tmp_path / "wT.npy", "--transpose",
                                  "--json").out)
    assert t_scores["lds"] == pytest.approx(scores["lds"], abs=1e-6)
    assert "LDS" in run_cli(capsys, "evaluate", *common, "--scores", tmp_path / "w.npy").out
    assert lds(store, scores=dm["weight"], eval_rows=held)["lds"] == pytest.approx(scores["lds"], abs=1e-6)
    # datamodels fitted on every row, scored on some of them: evaluate says so
    run_cli(capsys, "fit", "--store", store, "--out", tmp_path / "all.npz", "--num-lambdas", 5)
    err = run_cli(capsys, "evaluate", *common, "--datamodels", tmp_path / "all.npz").err
    assert "fitted on 680 models, more than the 600 completed rows" in err and "same --eval-rows" in err

    top = json.loads(run_cli(capsys, "query", "top", "--target", 2, "--k", 3, "--datamodels", dm_path, "--json").out)
    assert [r["train_index"] for r in top["positive"]] == list(np.argsort(-dm["weight"][:, 2], kind="stable")[:3])

    with_dm = [*common, "--datamodels", dm_path, "--json"]
    cf = json.loads(run_cli(capsys, "counterfactual", "--target", 1, "--remove", "top:2", *with_dm).out)
    (item,) = cf["counterfactuals"]
    w1 = dm["weight"][:, 1].astype(np.float64)
    assert set(item["removed"]) == set(np.argsort(-w1)[:2]) and cf["alpha"] == pytest.approx(0.5)
    assert item["predicted_change"] == pytest.approx(-np.sort(w1)[-2:].sum(), rel=1e-6)
    brittle = json.loads(run_cli(capsys, "brittleness", *with_dm).out)
    assert brittle["num_targets"] == T
    # No images beside the store: leakage ranks by behaviour alone, the effects still measured.
    leak = json.loads(run_cli(capsys, "leakage", "--k", 3, *with_dm).out)
    assert not leak["pixels"] and len(leak["pairs"]) == 3
    assert all(np.isnan(p["similarity"]) and np.isfinite(p["effect"]) for p in leak["pairs"])
    curve = json.loads(run_cli(capsys, "learning-curve", "--sizes", "300,600", "--num-targets", 0, *with_dm).out)
    assert [p["num_models"] for p in curve["points"]] == [300, 600] and curve["num_eval_models"] == 80
    assert curve["points"][1]["lds"] == pytest.approx(scores["lds"], abs=0.02)

    assert digest(store) == before  # nothing read wrote to the store


def test_what_a_reference_store_cannot_do_is_refused_with_a_way_out(ref, tmp_path, capsys):
    root, spec, store, truth = ref
    before = digest(store)
    with pytest.raises(DatamodelsError, match="cannot be grown or resumed here.*--eval-rows"):
        Store(store, mode="r+", spec=spec)
    with pytest.raises(DatamodelsError, match="which a new store would overwrite"):
        Store.create(store, num_train=N, num_targets=T, alpha=0.5, seed=0)
    err = run_cli(capsys, "evaluate", "--store", store, "--scores", tmp_path / "none.npy", "--run", tmp_path,
                  code=2).err
    assert "not found" in err
    np.save(tmp_path / "w.npy", np.zeros((N, T)))
    err = run_cli(capsys, "evaluate", "--store", store, "--scores", tmp_path / "w.npy", "--run", tmp_path, code=2).err
    assert "no completed evaluation rows" in err and "--eval-rows" in err
    err = run_cli(capsys, "evaluate", "--store", store, "--eval-rows", "600:700", "--scores", tmp_path / "w.npy",
                  "--run", tmp_path, code=2).err
    assert "20 of 100 are not completed" in err and len(err.strip().splitlines()) == 1
    assert digest(store) == before


def test_scores_orientation_and_sign(ref):
    """The planted weights score as well as anything can, their negation scores the opposite, and a
    T x N matrix is refused without --transpose (with a hint) and accepted with it."""
    root, spec, store, truth = ref
    good = lds(store, scores=truth["weight"], eval_rows="600:680")
    assert good["lds"] > 0.9
    assert lds(store, scores=-truth["weight"], eval_rows="600:680")["lds"] == pytest.approx(-good["lds"], abs=1e-9)
    with pytest.raises(DatamodelsError, match=r"shape \[6, 40\].*pass --transpose"):
        lds(store, scores=truth["weight"].T, eval_rows="600:680")
    assert lds(store, scores=truth["weight"].T, transpose=True, eval_rows="600:680")["lds"] == good["lds"]
    bad = truth["weight"].copy()
    bad[3, 4] = np.nan
    with pytest.raises(DatamodelsError, match="1 non-finite values.*training example 3, target 4"):
        lds(store, scores=bad, eval_rows="600:680")


@pytest.mark.parametrize("key", ["../victim", "../../victim", "/tmp/victim", "sub/victim", "..", "_completed"])
def test_an_external_spec_naming_files_outside_the_store_is_refused_before_opening_any(ref, tmp_path, key,
                                                                                        monkeypatch):
    root, spec, store, truth = ref
    victim = store.parent / "victim.npy"
    np.save(victim, np.zeros((M, 2), np.float32))
    before = digest(store.parent), digest(store)
    bad = json.loads(spec.read_text())
    bad["schema"][key] = {"shape": [2], "dtype": "float32"}
    bad_path = tmp_path / "bad_spec.json"
    bad_path.write_text(json.dumps(bad))
    opened = []
    monkeypatch.setattr("datamodels.store.read_npy_header", lambda p, where: opened.append(p))
    for mode in ("r", "r+"):
        with pytest.raises(DatamodelsError, match="is not a plain name") as info:
            Store(store, mode=mode, spec=bad_path)
        assert str(bad_path) in str(info.value) and "\n" not in str(info.value)
    assert opened == [] and (digest(store.parent), digest(store)) == before
    victim.unlink()
