"""Hostile and damaged run files: the report escapes every value it shows, draws names as plain
text, skips a kept file that fails its check with a visible note, and states how it treats
non-finite margins; malformed datamodels and a TRAK prior on a store without seeds are one-line
errors."""
import hashlib
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from datamodels import analyses, config
from datamodels.analyses._run import save_result
from datamodels.analyses.runfiles import check_checkpoints
from datamodels.cli import main
from datamodels.errors import DatamodelsError
from datamodels.evaluate import lds
from datamodels.report import report
from datamodels.store import Store
from small_digits import small_digits  # tests/helpers

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, _ray_shutdown_at_exit):
    """A finished run: 300 training digits, 160 + 40 models (too few for the learning curve's refits)."""
    import ray

    from datamodels.cluster import start_local
    from datamodels.pipeline import run

    if not ray.is_initialized():
        start_local()  # on 127.0.0.1 alone, as a sweep's own
    root = tmp_path_factory.mktemp("safety")
    cfg = config.coerce({
        "out": str(root / "run"),
        "data": {"source": "npz", "path": str(small_digits(root / "small.npz"))},
        "sweep": {"num_models": 160, "num_eval_models": 40, "models_per_task": 40, "max_retries": 0},
        "worker": {"name": "workers.mlp", "hidden": 16, "epochs": 5},
        "fit": {"num_lambdas": 8},
    })
    run(cfg, progress=False, report=False)
    return root / "run"


def copy_run(run_dir, dest):
    shutil.copytree(run_dir, dest)
    return dest


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.elements = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))


def assert_nothing_injected(page: str) -> None:
    parser = _Elements()
    parser.feed(page)
    tags = {tag for tag, _ in parser.elements}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "p", "code", "section",
                    "div", "b", "span", "img", "table", "tr", "th", "td", "sub"}, tags
    assert not [a for _, a in parser.elements if any(k.startswith("on") for k in a)]
    assert all(a["src"].startswith("data:image/png;base64,") for tag, a in parser.elements if tag == "img")


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_record(n, **fields):
    return {"num_fit_models": n, "lds": 0.3 + n / 1000, "num_targets": 3, "settings_key": "k", "time": 1000.0 + n,
            "per_target": [0.1, None, 0.2], **fields}


def test_planted_markup_is_shown_escaped(run_dir, tmp_path):
    """Markup planted in kept results, the checkpoint log, the store's settings, the run's path and
    score names reaches the page as text; the kept files that fail their checks are named in a
    visible note and left byte-identical."""
    run_path = copy_run(run_dir, tmp_path / IMG / "run")
    run = analyses.Run(run_path)
    cf = analyses.counterfactual(run, [0, 1, 2], ["top:5", "top:10"])
    for i, c in enumerate(cf["counterfactuals"]):
        c["remove"] = (SCRIPT, IMG, "$\\badcmd$")[i % 3]
        c["verified"] = {"models": 2, "predicted_change": c["predicted_change"],
                         "actual_change": 0.5 * c["predicted_change"] + 0.01 * i, "actual_change_se": 0.1}
    cf.update(verify=2, correlation={"pearson": 0.9, "spearman": 0.8, "n": 6},
              by_spec={SCRIPT: {"pearson": 0.9, "spearman": 0.8, "n": 2}, IMG: {"n": 2}})
    save_result(run, "counterfactual", cf)
    br = analyses.brittleness(run)
    br["targets"][0]["support_size"] = IMG
    broken = [save_result(run, "brittleness", br),
              save_result(run, "learning_curve", {"fingerprint": run.fingerprint(), "num_targets": 3,
                                                  "points": [{"num_models": 40, "lds": SCRIPT}]})]
    log = run_path / "store" / "checkpoints.jsonl"
    log.write_text(json.dumps(checkpoint_record(40, settings_key=SCRIPT)) + "\n"
                   + json.dumps(checkpoint_record(80, lds=IMG)) + "\n")
    broken.append(log)
    spec = json.loads((run_path / "store" / "spec.json").read_text())
    spec["datamodels"]["worker"]["name"] = SCRIPT  # the training program shown in the summary
    (run_path / "store" / "spec.json").write_text(json.dumps(spec))
    before = {p: digest(p) for p in broken}
    weight = np.load(run_path / "datamodels.npz")["weight"]
    np.save(tmp_path / "own.npy", weight)

    out = report(run_path, tmp_path / "page.html", progress=False,
                 scores={SCRIPT: tmp_path / "own.npy", "$\\badcmd$": tmp_path / "own.npy"})
    page = out.read_text()
    assert_nothing_injected(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert SCRIPT not in page and IMG not in page
    # escaped where each value appears: the methods table, the by-spec table, the title, the notes
    assert '<td class="l">&lt;script&gt;alert(1)&lt;/script&gt;</td>' in page
    assert '<td class="l">$\\badcmd$</td>' in page
    assert "Counterfactuals, checked by retraining" in page
    assert "<h1>Datamodels report: " + str(run_path).replace('"', "&#34;").replace("<", "&lt;").replace(
        ">", "&gt;") + "</h1>" in page
    warnings = page.split('<p class="warning">')[1:]
    for path in broken:
        assert sum(str(path.name) in w for w in warnings) == 1, path.name
        assert digest(path) == before[path]
    assert "targets[0].support_size should be a whole number or null" in page
    assert "points[0].lds should be a number" in page and "checkpoints.jsonl: line 2 is not a checkpoint record" in page


def test_non_finite_and_constant_held_out_margins(run_dir, tmp_path, capsys):
    """Targets whose held-out margins are non-finite or constant are dropped from the LDS, counted
    by reason, and the others keep their values; evaluate and the report say so."""
    run_path = copy_run(run_dir, tmp_path / "run")
    store = Store(run_path / "store")
    before = lds(store, run_path / "datamodels.npz")
    per_target = np.asarray(before["per_target"])
    # a tiny sweep leaves some datamodels all zero: their predictions are constant
    flat = int(np.isnan(per_target).sum())
    assert before["dropped"] == ({"constant predictions": flat} if flat else {}) and flat < 50
    assert main(["evaluate", "--run", str(run_path)]) == 0
    line = capsys.readouterr().out.strip()
    over = f"{100 - flat} of 100" if flat else "100"
    lo, hi = before["ci"]["low"], before["ci"]["high"]
    assert line.startswith(f"LDS {before['lds']:.4f} [{lo:.4f}, {hi:.4f}] (95% CI) over {over} targets and 40 "
                           f"held-out models (protocol single: 40 masks x 1 seed); "), line

    rows = store.rows("eval")
    a, b, c, d = np.flatnonzero(np.isfinite(per_target))[:4]
    margins = np.load(run_path / "store" / "margins.npy", mmap_mode="r+")
    margins[rows[3], [a, b]] = np.nan
    margins[rows[5], c] = np.inf
    margins[rows, d] = 1.0
    margins.flush()
    del margins
    after = lds(Store(run_path / "store"), run_path / "datamodels.npz")
    assert after["dropped"] == {"non-finite held-out margins": 3, "constant held-out margins": 1,
                                **({"constant predictions": flat} if flat else {})}
    kept = np.isfinite(per_target)
    kept[[a, b, c, d]] = False
    assert np.array_equal(np.asarray(after["per_target"])[kept], per_target[kept])
    assert after["lds"] == pytest.approx(per_target[kept].mean())
    assert main(["evaluate", "--run", str(run_path)]) == 0
    line = capsys.readouterr().out.strip()
    reasons = sorted([("non-finite held-out margins", 3), ("constant held-out margins", 1), ("constant predictions",
                                                                                              flat)],
                     key=lambda kv: -kv[1])
    dropped = f"{flat + 4} dropped: " + ", ".join(f"{why} ({n})" for why, n in reasons if n)
    assert f"over {96 - flat} of 100 targets and 40 held-out models (protocol single: 40 masks x 1 seed); " \
           f"{dropped}; quantiles " in line and line.startswith(f"LDS {after['lds']:.4f} ["), line
    page = report(run_path, tmp_path / "nan.html", progress=False).read_text()
    lo, hi = after["ci"]["low"], after["ci"]["high"]
    assert f"<b>{after['lds']:.3f} [{lo:.3f}, {hi:.3f}]</b><span>LDS (held-out, 95% CI)</span>" in page
    assert f"LDS over {96 - flat} of 100 targets; {dropped}" in page
    assert "predicted vs actual margins and LDS histogram" in page

    # zero weights predict a constant margin
    dm = dict(np.load(run_path / "datamodels.npz"))
    dm["weight"][:, np.nanargmax(per_target)] = 0
    assert lds(Store(run_path / "store"), dm)["dropped"]["constant predictions"] == flat + 1

    margins = np.load(run_path / "store" / "margins.npy", mmap_mode="r+")
    margins[rows[0]] = np.nan
    margins.flush()
    del margins
    assert main(["evaluate", "--run", str(run_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no LDS" in err and "non-finite held-out margins (100)" in err
    page = report(run_path, tmp_path / "all-nan.html", progress=False).read_text()
    assert "<b>n/a</b><span>LDS (held-out, 95% CI)</span>" in page and "No target has a defined LDS" in page


def test_scores_with_non_finite_values_are_refused_with_the_count(run_dir, tmp_path, capsys):
    weight = np.load(run_dir / "datamodels.npz")["weight"].copy()
    weight[[1, 2], 0] = np.nan
    weight[5, 7] = -np.inf
    np.save(tmp_path / "nan.npy", weight)
    page = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(page), "--scores", f"nan={tmp_path / 'nan.npy'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has 3 non-finite values (NaN or inf), the first at training example 1" in err
    assert not page.exists()


@pytest.mark.parametrize("change, message", [
    (lambda dm: dm.pop("bias"), "lacks bias"),
    (lambda dm: dm.update(weight=dm["weight"][:, 0]), "weight has shape [300], expected 2 dimension(s)"),
    (lambda dm: dm.update(bias=dm["bias"][:5]), "100 weight columns, 5 biases and 100 target indices"),
    (lambda dm: dm.update(targets=np.array(["a"] * 100)), "targets has dtype <U1, not whole numbers"),
    (lambda dm: dm["weight"].__setitem__((slice(0, 3), 0), np.nan), "weight has 3 non-finite values"),
    (lambda dm: dm.update(bias=np.full(100, np.inf)), "bias has 100 non-finite values"),
    (lambda dm: dm.update(num_models=np.array([1, 2])), "num_models should be one whole number"),
])
def test_malformed_datamodels_are_one_line_errors(run_dir, tmp_path, capsys, change, message):
    dm = dict(np.load(run_dir / "datamodels.npz"))
    change(dm)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **dm)
    for command in (["report", str(run_dir), "--out", str(tmp_path / "r.html")],
                    ["evaluate", "--run", str(run_dir)], ["query", "top", "--run", str(run_dir), "--target", "0"]):
        assert main(command + ["--datamodels", str(bad)]) == 2, command
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(bad) in err and message in err, err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("name, text, message", [
    ("counterfactual", "{not json", "is not JSON"),
    ("counterfactual", "[1, 2]", "should hold a JSON object, got list"),
    ("counterfactual", {"base": "subset", "verify": 1, "counterfactuals": {}},
     "counterfactuals should be a list, got dict"),
    ("counterfactual", {"base": "sideways", "verify": 1, "counterfactuals": []}, "base should be subset or full"),
    ("counterfactual", {"base": "full", "verify": 1, "counterfactuals": [{"target": 0, "remove": "top:5",
                                                                          "predicted_change": float("nan")}]},
     "counterfactuals[0].predicted_change should be a finite number, got nan"),
    ("brittleness", {"num_targets": 1, "max_support": 20, "counts": {"already_wrong": 0, "flippable": 1,
                                                                      "never_flips": 0}, "targets": []},
     "counts: at_most_20 is missing"),
    ("brittleness", {"num_targets": 1, "max_support": 20, "targets": []}, "counts is missing"),
    ("learning_curve", {"num_targets": 3, "points": []}, "points is empty"),
    ("learning_curve", {"num_targets": 3, "points": [{"num_models": True, "lds": 0.5}]},
     "points[0].num_models should be a whole number, got True"),
])
def test_malformed_kept_results_are_one_line_errors(run_dir, tmp_path, name, text, message):
    run = analyses.Run(tmp_path, datamodels=run_dir / "datamodels.npz", store=run_dir / "store")
    path = tmp_path / "analyses" / f"{name}.json"
    path.parent.mkdir()
    if isinstance(text, dict):
        text = json.dumps({"fingerprint": run.fingerprint(), **text})
    path.write_text(text)
    with pytest.raises(DatamodelsError) as exc:
        analyses._run.load_result(run, name)
    assert str(path) in str(exc.value) and message in str(exc.value) and "\n" not in str(exc.value)
    # a result of other datamodels is not this run's: left out, not an error
    path.write_text(json.dumps({"fingerprint": "other"}))
    assert analyses._run.load_result(run, name) is None


@pytest.mark.parametrize("records, message", [
    ([[1, 2]], "record 1 should be a JSON object, got list"),
    (["text"], "record 1 should be a JSON object, got 'text'"),
    ([checkpoint_record(10, per_target=["x"])], "record 1: per_target[0] should be a number or null, got 'x'"),
    ([checkpoint_record(10, time="noon")], "record 1: time should be a number, got 'noon'"),
    ([checkpoint_record(10, num_fit_models=0)], "record 1: num_fit_models should be at least 1"),
    ([checkpoint_record(10), {k: v for k, v in checkpoint_record(20).items() if k != "num_targets"}],
     "record 2: num_targets is missing"),
    ([checkpoint_record(10), checkpoint_record(20, per_target=[0.1])],
     "record 2: per_target has 1 values, earlier records of the same settings 3"),
])
def test_malformed_checkpoint_records_are_one_line_errors(records, message):
    with pytest.raises(DatamodelsError, match="^" + re.escape(f"store/checkpoints.jsonl: {message}")):
        check_checkpoints(records, "store/checkpoints.jsonl")
    assert check_checkpoints([checkpoint_record(10), checkpoint_record(20)], "x")


def test_trak_prior_on_a_store_without_seeds_is_refused_first(tmp_path, capsys):
    from test_reference_store import write_reference_store

    (tmp_path / "ref").mkdir()
    _, store, _ = write_reference_store(tmp_path / "ref")
    assert main(["fit", "--store", str(store), "--prior", "trak", "--out", str(tmp_path / "dm.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--prior trak" in err and "records none" in err
    assert not (tmp_path / "dm.npz").exists()
