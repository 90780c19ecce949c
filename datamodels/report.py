"""``datamodels report DIR``: one self-contained HTML page about a run.

Every figure is a matplotlib PNG inlined as base64 and the styling is inline CSS, so
``DIR/report.html`` opens anywhere, offline, and can be mailed as one file.  What is
cheap is computed on the spot (LDS, predicted-vs-actual margins, top examples, predicted
brittleness, leakage, PCA).  What needs retraining (verified counterfactuals and
brittleness) is shown when it has been computed for these datamodels, by ``--verify R``
here or by ``datamodels counterfactual``/``brittleness`` with ``--verify``, which keep
their results in ``DIR/analyses/``; the refits of the learning curve are kept there too.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np
from markupsafe import Markup

from . import report_analyses, report_plots
from .analyses._run import Run, load_result, open_run, rng_for, save_result
from .errors import DatamodelsError
from .report_blocks import figure as _figure, image_rows as _image_rows, img as _img, note as _note
from .report_blocks import plain as _plain, section as _section, table as _table

LEARNING_CURVE_MIN_RATIO = 2
PLOTTED_EVAL_MODELS = 1000  # a scatter of more shows nothing new
TEMPLATE = "report.html.j2"  # datamodels/templates/


def report(run="runs/digits", out=None, *, verify: int = 0, datamodels=None, config=None, address=None,
           learning_curve: Optional[bool] = None, num_examples: int = 6, seed: int = 0,
           progress: bool = True, store=None, scores: Optional[dict] = None, transpose: bool = False) -> Path:
    """Write the run's HTML report (default ``RUN/report.html``) and return its path.

    ``verify`` > 0 retrains that many models per counterfactual mask and per brittle target
    (through the sweep machinery) and keeps the results for later reports.
    ``learning_curve``: True refits datamodels on growing numbers of models, False leaves the
    curve out, None (default) refits only when the store holds at least
    ``LEARNING_CURVE_MIN_RATIO`` times as many fitting models as training examples, since
    refits with fewer models than that are slow (an underdetermined regression) and the
    answer is plain anyway: more models will pay off.

    ``store``: the store (a ``Store``, e.g. opened with a spec or eval rows), default RUN/store.
    ``scores``: {method name: score matrix (.npy path or array), N_train x N_targets, or T x N
    with ``transpose``}: each method's LDS on the same held-out models and targets, side by side
    with the datamodels'.

    Every value shown is escaped.  A kept result or checkpoint log that fails its check is not
    used: its section names the file and the problem, and the file stays as it is.  Targets whose
    held-out margins or predictions are non-finite or constant are left out, counted by reason."""
    from .files import atomic_write_text

    run = open_run(run, datamodels=datamodels, config=config, address=address,
                   **({"store": store} if store is not None else {}))
    out = Path(out) if out is not None else run.path / "report.html"
    started = time.time()
    with _plain_text_figures():
        lds_scores = _lds(run)
        methods = _method_scores(run, scores, transpose) if scores else None
        sections = [_summary(run, lds_scores), _accuracy(run, lds_scores)]
        if methods:
            sections.append(_methods(run, lds_scores, methods))
        sections.append(_live_lds(run))
        if learning_curve is not False:
            sections.append(_learning_curve(run, progress, force=bool(learning_curve)))
        sections.append(_top_examples(run, num_examples, seed))
        if verify:
            report_analyses.run_verifications(run, int(verify), seed, progress)
        sections += [report_analyses.counterfactuals(run), report_analyses.brittleness(run),
                     report_analyses.leakage(run), _embeddings(run, seed)]
    page = _render(run_path=str(run.path), generated=time.strftime("%Y-%m-%d %H:%M"),
                   seconds=f"{time.time() - started:.0f}", fingerprint=run.fingerprint(),
                   sections=[s for s in sections if s])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out


# ---- building blocks ---------------------------------------------------------------------------

def _render(**context) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    # autoescape=True for every template: only markupsafe.Markup built here (fixed tags around
    # escaped values) reaches the page unescaped.
    env = Environment(loader=PackageLoader("datamodels", "templates"), autoescape=True, undefined=StrictUndefined,
                      keep_trailing_newline=True)
    return env.get_template(TEMPLATE).render(**context)


@contextmanager
def _plain_text_figures():
    """matplotlib's own text engine, whatever the user's matplotlibrc says (no LaTeX on names)."""
    import matplotlib

    with matplotlib.rc_context({"text.usetex": False}):
        yield


# ---- sections ------------------------------------------------------------------------------------

def _lds(run: Run) -> Optional[dict]:
    from .evaluate import lds

    try:  # None without held-out models
        return lds(run.store, run.dm)
    except DatamodelsError:
        return None


def _defined(scores: Optional[dict]) -> bool:
    """Whether some target has an LDS (held-out margins and predictions finite and not constant)."""
    return scores is not None and scores["num_undefined"] < scores["num_targets"]


def _dropped_note(scores: Optional[dict]) -> Optional[dict]:
    from .metrics import dropped_text

    if scores is None or not scores.get("dropped"):
        return None
    kept = scores["num_targets"] - scores["num_undefined"]
    return _note(f"LDS over {kept} of {scores['num_targets']} targets; {dropped_text(scores)}. Targets without a "
                 "rank correlation are left out of the LDS, and non-finite margins out of the plots.", "warning")


def _summary(run: Run, scores: Optional[dict]) -> dict:
    store = run.store
    kpis = [("training examples", f"{run.num_train:,}"), ("targets", f"{run.num_targets:,}"),
            ("models for fitting", f"{len(store.rows('fit')):,}"), ("held-out models", f"{len(store.rows('eval')):,}"),
            ("subset fraction α", f"{run.alpha:g}")]
    if scores is not None:
        kpis.insert(0, ("LDS (held-out, 95% CI)", report_plots.lds_figure(scores) if _defined(scores) else "n/a"))
    nnz = np.count_nonzero(run.weight, axis=0)
    kpis.append(("median nonzero weights", f"{int(np.median(nnz)):,}"))
    worker = store.meta.get("worker")
    return _section("Summary", "One linear datamodel per target: margin ≈ mask · weight + bias, fitted on the sweep's "
                    "models.", {"kind": "kpis", "pairs": [(v, k) for k, v in kpis]},
                    _note(Markup("Training program: <code>{}</code>").format(str(worker))) if worker else None,
                    _dropped_note(scores))


def _accuracy(run: Run, scores: Optional[dict]) -> dict:
    rows = run.store.rows("eval")
    if len(rows) == 0 or scores is None:
        return _section("Accuracy", "The store has no completed held-out models, so accuracy cannot be measured.")
    if not _defined(scores):
        return _section("Accuracy", "No target has a defined LDS on the held-out models, so accuracy cannot be "
                        "measured.", _dropped_note(scores))
    rows = rows[:PLOTTED_EVAL_MODELS]
    masks = np.asarray(run.store.masks[rows], dtype=np.float32)
    actual = np.asarray(run.store.margins[rows], dtype=np.float32)[:, run.columns]
    pred = masks @ run.weight + run.bias
    finite = np.isfinite(pred) & np.isfinite(actual)
    pred, actual = pred[finite], actual[finite]
    r = np.corrcoef(pred, actual)[0, 1]
    fig = _figure(10, 4)
    ax1, ax2 = fig.subplots(1, 2)
    hb = ax1.hexbin(pred, actual, gridsize=60, bins="log", cmap="viridis", mincnt=1)
    lo, hi = np.percentile(np.concatenate([pred, actual]), [0.5, 99.5])
    ax1.plot([lo, hi], [lo, hi], color="#e4572e", lw=1)
    if hi > lo:
        ax1.set_xlim(lo, hi)
        ax1.set_ylim(lo, hi)
    ax1.set_xlabel("predicted margin")
    ax1.set_ylabel("actual margin")
    ax1.set_title(f"{len(rows)} held-out models × {run.num_targets} targets (Pearson r = {r:.3f})", fontsize=10)
    fig.colorbar(hb, ax=ax1, label="count")
    report_plots.lds_histogram(ax2, scores)
    return _section("Predicted against actual margins",
                    "Models trained on held-out random subsets, never used for fitting: how well each subset's "
                    "margins are predicted (left), and per target the rank correlation across subsets, whose mean is "
                    "the LDS (right)." + report_plots.ceiling_sentence(scores), _img(fig, "predicted vs actual margins and LDS histogram"),
                    _dropped_note(scores))


def _method_scores(run: Run, scores: dict, transpose: bool) -> dict:
    """Each method's LDS on the store's held-out models, restricted to the datamodels' targets."""
    from .evaluate import lds
    from .metrics import QUANTILES

    out = {}
    for name, matrix in scores.items():
        full = lds(run.store, scores=matrix, transpose=transpose)
        per_target = np.asarray(full["per_target"], dtype=np.float64)[run.columns]
        defined = per_target[np.isfinite(per_target)]
        if not len(defined):
            raise DatamodelsError(f"scores {name!r}: no target has a defined rank correlation")
        out[name] = {"lds": float(defined.mean()), "per_target": per_target, "num_models": full["num_models"],
                     "quantiles": {k: float(np.quantile(defined, q)) for k, q in QUANTILES.items()}}
    return out


def _methods(run: Run, dm_scores: Optional[dict], methods: dict) -> dict:
    own = [("datamodels (this run)", dm_scores)] if _defined(dm_scores) else []
    entries = own + list(methods.items())
    rows = [{"method": name, "LDS": sc["lds"], "p10": sc["quantiles"]["p10"], "median": sc["quantiles"]["median"],
             "p90": sc["quantiles"]["p90"], "held-out models": f"{sc['num_models']:,}"} for name, sc in entries]
    fig = _figure(min(10, 2.5 + 1.4 * len(entries)), 3.6)
    ax = fig.subplots()
    data = [np.asarray(sc["per_target"], dtype=np.float64) for _, sc in entries]
    ax.boxplot([d[np.isfinite(d)] for d in data], showmeans=True)
    ax.set_xticks(range(1, len(entries) + 1), [_plain(name) for name, _ in entries], fontsize=8)
    ax.set_ylabel("Spearman correlation per target")
    ax.set_title(f"LDS per target, {run.num_targets} targets (triangle: mean)", fontsize=10)
    return _section("Attribution methods side by side",
                    "Every method's scores predict a held-out model's margin as the sum of the scores of the training "
                    "examples it saw; the LDS is the mean over targets of the rank correlation with the actual "
                    "margins, on the same held-out models and targets.",
                    _table(rows, ["method", "LDS", "p10", "median", "p90", "held-out models"], left=["method"]),
                    _img(fig, "LDS per target of each attribution method"))


def _live_lds(run: Run) -> Optional[dict]:
    """The sweep's checkpoints and the learning curve forecast through them, with its band."""
    from .analyses.runfiles import check_checkpoints
    from .evaluate import ceiling, held_out_groups
    from .live import LOG, comparable, live_lds, read_log

    title = "Live LDS and forecast"
    try:
        records = comparable(check_checkpoints(read_log(run.store.path), run.store.path / LOG))
    except DatamodelsError as exc:
        return _section(title, "The sweep's checkpoint log is not usable, so its live LDS is not shown.",
                        _note(f"{exc} (the log is left as it is).", "warning"))
    if len(records) < 2:
        return None
    result = live_lds(run.store, curve_to=4 * records[-1]["num_fit_models"])
    fc = result["forecast"]
    if not fc:
        return _section(title, f"{len(records)} checkpoints were logged, but no learning curve fits through them.")
    n = np.array([r["num_fit_models"] for r in records], dtype=np.float64)
    y = np.array([r["lds"] for r in records])
    fig = _figure(6, 3.6)
    ax = fig.subplots()
    band = fc["curve_band"]
    grid = np.asarray(band["n"])
    if band["lo"]:
        ax.fill_between(grid, band["lo"], band["hi"], color="#dd8452", alpha=0.25,
                        label="forecast, 10-90% over targets")
    c = fc["curve"]
    ax.plot(grid, c["a"] - c["b"] * grid ** -c["c"], "--", color="#dd8452",
            label=f"LDS = {c['a']:.3f} - b·n^-{c['c']:.2f}")
    ax.plot(n, y, "o", color="#4c72b0", label="checkpoints (measured during the sweep)")
    report_plots.ceiling_line(ax, ceiling(run.store) if len(held_out_groups(run.store)) else None)
    ax.set_xscale("log")
    ax.set_xlabel("fitting models")
    ax.set_ylabel(f"LDS ({records[-1]['num_targets']} targets)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    def needs(estimate: float) -> str:
        return "more models than ever" if not np.isfinite(estimate) else f"{estimate:,.0f} models"

    levels = "; ".join(f"LDS {level} needs {needs(s['estimate'])}" for level, s in fc["models_for"].items())
    return _section(title,
                    f"LDS measured every {int(n[1] - n[0]):,} fitting models while the sweep ran (a sample of "
                    f"{records[-1]['num_targets']} targets, the store's held-out models), and the learning curve "
                    f"fitted through it. Forecast limit {fc['limit']['estimate']:.3f}; doubling to "
                    f"{2 * fc['num_fit_models']:,} models would gain {fc['gain_from_doubling']['estimate']:+.4f}. "
                    f"{levels}.", _img(fig, "live LDS and forecast"))


def _kept(run: Run, name: str):
    """(a kept result or None, a warning block when the kept file fails its check)."""
    try:
        return load_result(run, name), None
    except DatamodelsError as exc:
        return None, _note(f"{exc}: not used, and left as it is (delete it to compute it afresh).", "warning")


def _learning_curve(run: Run, progress: bool, force: bool) -> dict:
    from .analyses.learning_curve import default_sizes, learning_curve

    total = len(run.store.rows("fit"))
    result, broken = _kept(run, "learning_curve")
    if result is None or result["points"][-1]["num_models"] != total:
        if not force and total < LEARNING_CURVE_MIN_RATIO * run.num_train:
            return _section("Learning curve", Markup(
                "The datamodels were fitted on {:,} models, fewer than {}× the {:,} training examples: more models "
                "will very likely pay off. <code>datamodels learning-curve --run {}</code> measures the curve (refits "
                "are slow in this regime).").format(total, LEARNING_CURVE_MIN_RATIO, run.num_train, str(run.path)),
                broken)
        try:
            result = learning_curve(run, sizes=default_sizes(total, points=4, smallest=1 / 8), progress=progress)
        except DatamodelsError as exc:
            return _section("Learning curve", str(exc), broken)
        if broken is None:  # a file that failed its check stays as the user left it
            save_result(run, "learning_curve", result)
    pts = result["points"]
    x = [p["num_models"] for p in pts]
    y = [p["lds"] for p in pts]
    fig = _figure(6, 3.6)
    ax = fig.subplots()
    ax.plot(x, y, "o-", color="#4c72b0")
    q = [p.get("quantiles", {}) for p in pts]
    if all("p25" in d and "p75" in d for d in q):
        ax.fill_between(x, [d["p25"] for d in q], [d["p75"] for d in q], alpha=0.2, color="#4c72b0",
                        label="targets' 25-75% range")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("models used for fitting")
    ax.set_ylabel("LDS on held-out models")
    ax.grid(alpha=0.3)
    gain = y[-1] - y[-2] if len(y) > 1 else float("nan")
    verdict = (f"The last step ({x[-2]:,} → {x[-1]:,} models) gained {gain:+.3f} LDS"
               + ("; more models would likely still pay off." if gain > 0.01 else "; the curve is flattening.")
               if len(y) > 1 else "")
    return _section("Learning curve", "Datamodels refitted on the first n models of the sweep, scored on the same "
                    f"held-out models ({result['num_targets']} targets). {verdict}", _img(fig, "learning curve"),
                    broken)


def _top_examples(run: Run, count: int, seed: int) -> dict:
    rng = rng_for(seed, "report")
    targets = np.sort(rng.choice(run.num_targets, min(count, run.num_targets), replace=False))
    x_train, y_train = run.images("train")
    x_t, y_t = run.target_images(targets)
    k = 5
    rows, labels = [], []
    for i, t in enumerate(targets):
        w = run.weight[:, t]
        pos = np.argsort(-w, kind="stable")[:k]
        neg = np.argsort(w, kind="stable")[:k]
        row = [(x_t[i], f"target {t}\nlabel {y_t[i]}", "#1d2330")]
        row += [(x_train[j], f"#{j} ({y_train[j]})\n{w[j]:+.2f}", "#2a9d8f") for j in pos]
        row += [(x_train[j], f"#{j} ({y_train[j]})\n{w[j]:+.2f}", "#e4572e") for j in neg]
        rows.append(row)
        labels.append("")
    fig = _image_rows(rows, labels)
    return _section("Most influential training examples",
                    "For a sample of targets (left): the five training examples whose presence raises the target's "
                    "margin most (green frames) and lowers it most (red frames), with training index, label and "
                    "weight.", _img(fig, "top positive and negative training examples"))


def _embeddings(run: Run, seed: int) -> Optional[dict]:
    from .analyses.embeddings import embeddings

    if run.num_targets < 3:
        return None
    result = embeddings(run, num_components=3, k=6, seed=seed)
    coords = result["coords"]
    _, labels = run.target_images(np.arange(run.num_targets))
    fig = _figure(6.4, 5)
    ax = fig.subplots()
    sc = ax.scatter(coords[:, 0], coords[:, 1] if coords.shape[1] > 1 else np.zeros(len(coords)), c=labels, s=10,
                    cmap="tab10", alpha=0.85)
    ratios = result["explained_variance_ratio"]
    ax.set_xlabel(f"PC 1 ({ratios[0]:.1%} of variance)")
    if len(ratios) > 1:
        ax.set_ylabel(f"PC 2 ({ratios[1]:.1%} of variance)")
    fig.colorbar(sc, ax=ax, label="target label")
    x_t, y_t = run.target_images(np.arange(run.num_targets))
    rows, row_labels = [], []
    for c in result["components"]:
        row = [(x_t[t], f"{t} ({y_t[t]})", "#e4572e") for t in c["negative"]]
        row += [(x_t[t], f"{t} ({y_t[t]})", "#2a9d8f") for t in c["positive"][::-1]]
        rows.append(row)
        row_labels.append(f"PC {c['component'] + 1}")
    strips = _image_rows(rows, row_labels)
    from .analyses.embeddings import nearest

    near_rows, near_labels = [], []
    for t in rng_for(seed, "report", 2).choice(run.num_targets, min(3, run.num_targets), replace=False):
        nn = nearest(run, int(t), 6)["nearest"]
        near_rows.append([(x_t[t], f"target {t}", "#1d2330")]
                         + [(x_t[n["target"]], f"{n['target']}\ncos {n['cosine']:.2f}", None) for n in nn])
        near_labels.append("")
    near = _image_rows(near_rows, near_labels)
    return _section("Datamodel embeddings",
                    "Each target's datamodel, scaled to unit length, is a vector over the training set; targets with "
                    "similar vectors depend on the same training data. A 2-D PCA map coloured by label; then, for "
                    "the top principal components, the targets at their two ends (red: lowest, green: highest); then "
                    "a few targets with their nearest neighbours by cosine similarity.",
                    _img(fig, "PCA map"), _img(strips, "principal component ends"), _img(near, "nearest targets"))
