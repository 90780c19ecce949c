"""The report's sections on the analyses: counterfactuals, brittle predictions, train-test leakage.

What needs retraining (verified counterfactuals and brittleness) is shown when it has been
computed for these datamodels (``datamodels report --verify R``, or ``datamodels
counterfactual``/``brittleness`` with ``--verify``, which keep their results in
``RUN/analyses/``), each verified value with its standard error and each summary with its
bootstrap confidence interval (``datamodels.analyses.uncertainty``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from markupsafe import Markup

from .analyses._run import Run, load_result, save_result
from .errors import DatamodelsError
from .report_blocks import figure, image_rows, img, note, plain, section, table

# Counterfactuals the report verifies: targets x these removal specs.
REPORT_SPECS = ("top:5", "top:10", "top:20", "bottom:10", "random:10")
REPORT_TARGETS = 40
PAIRS_SHOWN = 8


def _kept(run: Run, name: str):
    """(a kept result or None, a warning block when the kept file fails its check)."""
    try:
        return load_result(run, name), None
    except DatamodelsError as exc:
        return None, note(f"{exc}: not used, and left as it is (delete it to compute it afresh).", "warning")


def run_verifications(run: Run, verify: int, seed: int, progress: bool) -> None:
    """Retrain for the report's counterfactuals and brittle targets, and keep the results."""
    from .analyses.brittleness import brittleness
    from .analyses.counterfactual import counterfactual, pick_targets

    targets = pick_targets(run, min(REPORT_TARGETS, run.num_targets), seed)
    with run.ray():
        cf = counterfactual(run, targets, list(REPORT_SPECS), verify=verify, seed=seed, progress=progress)
        save_result(run, "counterfactual", cf)
        br = brittleness(run, verify=verify, seed=seed, progress=progress)
        save_result(run, "brittleness", br)


def _interval(ci) -> str:
    lo, hi = ci
    return f"[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) and np.isfinite(hi) else "[n/a]"


def counterfactuals(run: Run) -> dict:
    from .analyses.counterfactual import counterfactual, pick_targets, summarise

    result, broken = _kept(run, "counterfactual")
    lead = Markup("The datamodel predicts that removing a set R of training examples changes a target's margin by "
                  "−Σ<sub>j∈R</sub> w<sub>j</sub>. ")
    if result is None or not any("verified" in c for c in result["counterfactuals"]):
        targets = pick_targets(run, min(REPORT_TARGETS, run.num_targets))
        result = counterfactual(run, targets, ["top:5", "top:10", "top:20", "bottom:10"])
        fig = figure(6, 3.6)
        ax = fig.subplots()
        for spec in ["top:5", "top:10", "top:20", "bottom:10"]:
            vals = [c["predicted_change"] for c in result["counterfactuals"] if c["remove"] == spec]
            ax.hist(vals, bins=20, alpha=0.55, label=plain(f"remove {spec}"))
        ax.set_xlabel("predicted margin change")
        ax.set_ylabel("targets")
        ax.legend()
        text = Markup("Not yet checked by retraining: run <code>datamodels report {} --verify 10</code> or "
                      "<code>datamodels counterfactual --batch 40 --verify 10</code> to train models without each "
                      "set and compare.").format(str(run.path))
        return section("Counterfactuals", lead + f"Predicted changes for {len(targets)} random targets.",
                       img(fig, "predicted counterfactual changes"), note(text), broken)
    items = [c for c in result["counterfactuals"] if "verified" in c]
    # A result kept before summaries were: summarised from its own standard errors.
    summary = result.get("summary") or summarise(items, int(result["verify"]), int(result.get("seed", 0)))
    pred = np.array([c["verified"]["predicted_change"] for c in items])
    act = np.array([c["verified"]["actual_change"] for c in items])
    se = np.array([c["verified"]["actual_change_se"] for c in items], dtype=np.float64)
    noisy = np.zeros(len(items), dtype=bool)
    noisy[summary["noisy"]] = True
    fig = figure(6.4, 5)
    ax = fig.subplots()
    for spec in dict.fromkeys(c["remove"] for c in items):
        sel = np.array([c["remove"] == spec for c in items]) & ~noisy
        ax.errorbar(pred[sel], act[sel], yerr=np.nan_to_num(1.96 * se[sel]), fmt="o", ms=4, alpha=0.8,
                    label=plain(f"remove {spec}"))
    if noisy.any():
        ax.errorbar(pred[noisy], act[noisy], yerr=np.nan_to_num(1.96 * se[noisy]), fmt="o", ms=5, mfc="none",
                    color="#9ca3af", label="too noisy to judge")
    lo, hi = float(min(pred.min(), act.min())), float(max(pred.max(), act.max()))
    ax.plot([lo, hi], [lo, hi], color="#6b7280", lw=1, ls="--")
    ax.set_xlabel("predicted margin change")
    ax.set_ylabel("actual margin change (retrained)")
    ax.set_title(f"Pearson r = {summary['pearson']:.3f}, precision-weighted {summary['weighted_pearson']:.3f}",
                 fontsize=10)
    ax.legend(fontsize=8)
    rows = [{"remove": spec, **{k: v for k, v in c.items() if k in ("pearson", "spearman", "n")}}
            for spec, c in result.get("by_spec", {}).items()]
    setting = ("α-subsets containing R, with and without R" if result["base"] == "subset"
               else "the full training set, with and without R")
    pct = f"{summary.get('level', 0.95):.0%}"
    text = Markup("Over {} counterfactuals on {} targets, predicted and actual changes correlate with "
                  "<b>Pearson r = {:.3f}</b> {} (Spearman {:.3f} {}); weighting each counterfactual by the precision "
                  "of its actual change, <b>r = {:.3f}</b> {}; without the {} too noisy to judge, r = {:.3f} {}. "
                  "Intervals: {} bootstrap over counterfactuals.").format(
        len(items), len({c["target"] for c in items}), summary["pearson"], _interval(summary["pearson_ci"]),
        summary["spearman"], _interval(summary.get("spearman_ci", [np.nan, np.nan])), summary["weighted_pearson"],
        _interval(summary["weighted_pearson_ci"]), len(summary["noisy"]), summary["pearson_judged"],
        _interval(summary["pearson_judged_ci"]), pct)
    settle = summary.get("models_to_settle", {})
    noisy_rows = [{"target": items[i]["target"], "remove": items[i]["remove"], "predicted": pred[i], "actual": act[i],
                   "SE": se[i], "model pairs to judge": settle.get(str(i), settle.get(i, "n/a"))}
                  for i in summary["noisy"]]
    rule = (f"{result['verify']} model pairs per counterfactual, trained on {setting} (same subset and seed within a "
            f"pair); error bars: ±1.96 standard errors. A counterfactual is too noisy to judge when the standard "
            f"error of its actual change exceeds half the standard deviation of the predicted changes "
            f"({summary['noisy_limit']:.3g} here): its interval then spans two standard deviations of the "
            "predictions. The precision weights are 1 / (SE² + s0²), s0 the median SE.")
    return section("Counterfactuals, checked by retraining", lead + text, img(fig, "verified counterfactuals"),
                   table(rows, ["remove", "n", "pearson", "spearman"], ["remove"]),
                   table(noisy_rows, ["target", "remove", "predicted", "actual", "SE", "model pairs to judge"],
                         ["remove"]) if noisy_rows else None, note(rule), broken)


def brittleness(run: Run) -> dict:
    from .analyses.brittleness import brittleness as compute

    result, broken = _kept(run, "brittleness")
    result = result or compute(run)
    sizes = np.array([r["support_size"] for r in result["targets"] if r["support_size"]])
    counts = result["counts"]
    fig = figure(6.4, 3.6)
    ax = fig.subplots()
    if len(sizes):
        bins = np.unique(np.round(np.geomspace(1, max(2, sizes.max() + 1), 25)).astype(int))
        ax.hist(sizes, bins=bins, color="#4c72b0")
        ax.set_xscale("log")
        ax.axvline(result["max_support"] + 0.5, color="#e4572e", lw=1, ls="--")
    ax.set_xlabel("support size (training examples whose removal flips the prediction)")
    ax.set_ylabel("targets")
    at_most = counts[f"at_most_{result['max_support']}"]
    text = Markup("Of {} targets, {} are predicted wrong already, {} can be flipped by removing their most supportive "
                  "training examples ({} with at most {}), and {} cannot be flipped that way.").format(
        result["num_targets"], counts["already_wrong"], counts["flippable"], at_most, result["max_support"],
        counts["never_flips"])
    verified = result.get("verified")
    checks = None
    if verified and verified.get("checked"):
        text += Markup(" Checked by retraining ({} models each, mean margin below 0): <b>{} of {} ({:.0%})</b> targets "
                       "with support size ≤ {} truly flip").format(
            verified["models"], verified["flipped"], verified["checked"], verified["share"], result["max_support"])
        if "share_ci" in verified:
            lo, hi = verified["share_ci"]
            text += Markup(", 95% bootstrap interval over targets [{:.0%}, {:.0%}]; {} surely flip and {} surely hold "
                           "(mean more than 1.96 standard errors from 0), {} are undecided").format(
                lo, hi, verified.get("surely_flipped", 0), verified.get("surely_holds", 0), verified.get("undecided", 0))
            if verified.get("models_to_settle"):
                text += Markup(" (up to {} models each would settle them)").format(verified["models_to_settle"])
        text += "."
        done = sorted((r for r in result["targets"] if "verified" in r), key=lambda r: r["verified"]["actual_after"])
        checks = figure(6.4, 3.2)
        ax = checks.subplots()
        mean = np.array([r["verified"]["actual_after"] for r in done])
        err = np.array([r["verified"].get("actual_after_se", np.nan) for r in done], dtype=np.float64)
        ax.errorbar(np.arange(len(done)), mean, yerr=np.nan_to_num(1.96 * err), fmt="o", ms=4, color="#4c72b0")
        ax.axhline(0, color="#e4572e", lw=1, ls="--")
        ax.set_xlabel("verified targets, by retrained margin")
        ax.set_ylabel("margin without support (±1.96 SE)")
    else:
        text += Markup(" <span class=\"note\">Not yet checked by retraining (<code>datamodels brittleness --verify "
                       "10</code>).</span>")
    brittle = sorted((r for r in result["targets"] if r["support_size"]), key=lambda r: r["support_size"])[:10]
    rows = [{"target": r["target"], "support size": r["support_size"], "margin before": r["predicted_before"],
             "predicted after": r["predicted_after"],
             "actual after": r.get("verified", {}).get("actual_after", float("nan")),
             "SE": r.get("verified", {}).get("actual_after_se", float("nan")),
             "verdict": r.get("verified", {}).get("verdict", "")} for r in brittle]
    return section("Brittle predictions", text, img(fig, "support size distribution"),
                   img(checks, "retrained margins with error bars") if checks is not None else None,
                   table(rows, ["target", "support size", "margin before", "predicted after", "actual after", "SE",
                                "verdict"]), broken)


def leakage(run: Run) -> Optional[dict]:
    from .analyses.leakage import leakage as compute

    if not run.is_test_target().any():
        return None
    result = compute(run, k=PAIRS_SHOWN)
    pairs = result["pairs"]
    x_train, y_train = run.images("train")
    x_t, y_t = run.target_images([p["target"] for p in pairs])
    cells = []
    for i, p in enumerate(pairs):
        cells.append([(x_t[i], f"#{p['rank']} target {p['target']} ({y_t[i]})", "#1d2330"),
                      (x_train[p["train"]], f"train #{p['train']} ({y_train[p['train']]})\n"
                                            f"sim {p['aligned_similarity']:.2f}, {p['effect_sd']:+.1f} sd",
                       "#e4572e")])
    cols = 4
    grid = []
    for start in range(0, len(cells), cols):
        row = []
        for pair in cells[start:start + cols]:
            row += pair
        grid.append(row)
    fig = image_rows(grid, [""] * len(grid), cell=1.1)
    rows = [{"rank": p["rank"], "target": p["target"], "train": p["train"], "score": p["score"], "weight": p["weight"],
             "aligned similarity": p["aligned_similarity"], "pixel similarity": p["similarity"],
             "pixel rank": p["pixel_rank"], "measured effect": p["effect"], "effect SE": p["effect_se"],
             "effect (sd)": p["effect_sd"], "effect (SE)": p["effect_z"]} for p in pairs]
    return section("Possible train-test leakage",
                   "(target, training example) pairs in which one training example carries an outsized share of the "
                   "target's datamodel while mattering little to other targets, as a near-duplicate would; highest "
                   "scores first, each pair side by side. Under each training image: the aligned similarity of the "
                   "two images (blurred, brightness and contrast removed, best over shifts of up to 2 pixels; 1 for "
                   "identical images) and the pair's effect measured on the store (the target's mean margin over "
                   "models trained with the example minus without, in standard deviations of its margin). The table "
                   "gives that effect also in standard errors of its own estimate: an effect many standard errors "
                   "from 0 is real even when it is small against the target's margin spread, as with a model class "
                   "that memorises. A near-duplicate has both similarity and effect high; a large weight whose "
                   "measured effect is small is the regression's, not the models'; a similar image with no effect "
                   "does not change the models. Pixel rank 1: no training image is more similar to the target (plain "
                   "pixel cosine). A duplicate of an easy example barely changes the model and stays invisible here.",
                   img(fig, "leakage pairs"),
                   table(rows, ["rank", "target", "train", "score", "weight", "aligned similarity", "pixel similarity",
                                "pixel rank", "measured effect", "effect SE", "effect (sd)", "effect (SE)"]))
