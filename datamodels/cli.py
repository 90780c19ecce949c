"""The ``datamodels`` command: a thin layer over the Python API, one subcommand per stage."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from . import arguments
from .errors import DatamodelsError

def _config(args):
    from . import config as config_lib

    return config_lib.load(args.config, args.overrides)


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def cmd_prepare(args) -> int:
    from .prepare import prepare, read_meta

    data_dir = prepare(_config(args))
    meta = read_meta(data_dir)
    print(f"prepared {meta['num_train']} training and {meta['num_test']} test examples in {data_dir}")
    return 0


def cmd_sweep(args) -> int:
    from .sweep import sweep

    summary = sweep(_config(args), address=args.address)
    print(f"store {summary['store']}: {summary['num_models']} models, {summary['trained']} trained now, "
          f"{summary['already_done']} already done ({summary['wall_s']:.1f} s)")
    live = summary.get("live_lds")
    if live:
        print(f"live LDS {live['lds']:.4f} at {live['num_fit_models']} fitting models "
              f"({summary['checkpoints']} checkpoints now, {summary['checkpoint_solve_s']:.1f} s solving)")
    if summary["stopped"]:
        print(f"stopped early: {summary['stopped']}; the store resumes and grows as usual")
    return 0


def cmd_status(args) -> int:
    from .live import describe, live_lds
    from .store import Store

    for level in args.lds or ():
        if not 0.0 < level < 1.0:
            raise DatamodelsError(f"--lds must be in (0, 1), got {level}")
    store = Store(args.store, spec=args.spec, eval_rows=args.eval_rows)
    s = store.summary()
    live = live_lds(store, levels=args.lds or (), budgets=args.budget or ())
    noise = _status_ceiling(store)
    if args.json:
        _print_json({**s, "live": live, "ceiling": noise})
    else:
        print(f"store {s['path']}: {s['completed']}/{s['num_models']} models complete "
              f"(fit {s['fit']['completed']}/{s['fit']['total']}, eval {s['eval']['completed']}/{s['eval']['total']}); "
              f"{s['num_train']} training examples, {s['num_targets']} targets, alpha={s['alpha']}, seed={s['seed']}")
        if store.reference_layout:
            print(f"spec: {s['spec']}; written by another pipeline (no alpha/seed metadata): fit, evaluate and "
                  f"analyse it as it is; it cannot be grown or resumed here")
            if not s["eval"]["total"]:
                print("no held-out rows: pass --eval-rows A:B to fit and evaluate to hold some out for LDS")
        if s["failures"]:
            print(f"{len(s['failures'])} failed models:")
            for row, error in list(s["failures"].items())[:20]:
                print(f"  row {row}: {error}")
            if len(s["failures"]) > 20:
                print(f"  ... and {len(s['failures']) - 20} more (--json lists all)")
        for line in describe(live):
            print(line)
        if noise is not None:
            from .metrics import ceiling_text

            print(f"held-out models: {noise['num_masks']} masks x {noise['seeds_per_mask']} seeds"
                  + ceiling_text(noise).replace(";", ",", 1) + " (protocol single)" if noise.get("available")
                  else ceiling_text(noise).lstrip("; "))
    return 1 if s["failures"] else 0


def _status_ceiling(store):
    """The noise ceiling of the store's held-out models (single-seed truth), or None without any."""
    from .evaluate import ceiling, held_out_groups

    return ceiling(store) if len(held_out_groups(store)) else None


def cmd_fit(args) -> int:
    import dataclasses

    from .config import FitOptions
    from .regression import fit, resolve_options
    from .store import Store

    arguments.check_fit_args(args)  # the command line's own checks, which name its flags
    # Every fit option is an argument of the same name; checked before minutes of retraining for the prior.
    options = resolve_options(**{f.name: getattr(args, f.name) for f in dataclasses.fields(FitOptions)})

    store = Store(args.store, spec=args.spec, eval_rows=args.eval_rows)
    if args.prior == "trak" and store.seed is None:  # TRAK retrains the store's own models, seeds and all
        raise DatamodelsError(f"--prior trak retrains the store's models with their seeds, but store {store.path} "
                              f"records none (a reference-layout store); fit it without --prior")
    prior = None
    if args.prior == "trak":
        from . import config as config_lib
        from .priors import trak

        path = Path(args.config) if args.config else Path(args.store).parent / "config.yaml"
        if not path.exists():
            raise DatamodelsError(f"--prior trak needs the run's config (data and worker): {path} does not exist; "
                                  f"pass --config")
        cfg = config_lib.load(path, [f"out={Path(args.store).parent}"])
        prior = trak(cfg, num_models=options.prior_models)
    dm = fit(store, args.out, options=options, seed=args.seed, address=args.address, slices=args.slices,
             targets=_target_range(args.targets), prior=prior)
    print(f"fitted {dm['weight'].shape[1]} datamodels over {dm['weight'].shape[0]} training examples "
          f"from {int(dm['num_models'])} models -> {args.out}")
    return 0


def _target_range(text):
    """``--targets A:B`` as a slice of the store's target columns (either end may be empty)."""
    if text is None:
        return None
    try:
        start, stop = (int(v) if v.strip() else None for v in text.split(":"))
    except ValueError:
        raise DatamodelsError(f"--targets must be A:B (target columns A to B-1), got {text!r}") from None
    if any(v is not None and not 0 <= v <= arguments.MAX_COUNT for v in (start, stop)) or \
            (start is not None and stop is not None and stop <= start):
        raise DatamodelsError(f"--targets must be A:B with 0 <= A < B (target columns A to B-1), got {text!r}")
    return slice(start, stop)


def _run_paths(args):
    run = Path(args.run)
    return (Path(args.store) if getattr(args, "store", None) else run / "store",
            Path(args.datamodels) if args.datamodels else run / "datamodels.npz")


def _open_store(args, path):
    from .store import Store

    return Store(path, spec=getattr(args, "spec", None), eval_rows=getattr(args, "eval_rows", None))


def _print_lds(scores: dict, what: str = "") -> None:
    from .metrics import lds_line

    print(lds_line(scores, what))


def cmd_evaluate(args) -> int:
    from .evaluate import lds

    store, dm = _run_paths(args)
    store = _open_store(args, store)
    if args.transpose and not args.scores:
        raise DatamodelsError("--transpose applies to --scores FILE")
    if args.scores:
        if args.datamodels:
            raise DatamodelsError("give --datamodels or --scores, not both")
        scores = lds(store, scores=args.scores, transpose=args.transpose, protocol=args.protocol)
    else:
        scores = lds(store, dm, protocol=args.protocol)
    if args.json:
        _print_json(scores)
    else:
        _print_lds(scores, f" of {args.scores}" if args.scores else "")
    return 0


def cmd_query(args) -> int:
    from . import query

    _, dm = _run_paths(args)
    if args.what == "top":
        result = query.top(dm, args.target, args.k)
        tables = [(f"target {args.target}: training examples that raise its margin most", result["positive"],
                   ["train_index", "weight"]),
                  (f"target {args.target}: training examples that lower its margin most", result["negative"],
                   ["train_index", "weight"])]
    else:
        result = query.nearest(dm, args.target, args.k)
        tables = [(f"targets whose datamodels are closest to target {args.target}'s (cosine)", result["nearest"],
                   ["target", "cosine"])]
    if args.json:
        _print_json(result)
    else:
        print("\n\n".join(f"{title}\n{query.format_table(rows, columns)}" for title, rows, columns in tables))
    return 0


def _analysis_run(args):
    from .analyses import Run

    store, dm = _run_paths(args)
    return Run(args.run, datamodels=dm, store=_open_store(args, store), config=getattr(args, "config", None),
               address=getattr(args, "address", None))


def _saved(run, name: str, result: dict) -> None:
    from .analyses._run import save_result

    path = save_result(run, name, result)
    print(f"(kept in {path} for `datamodels report`)", file=sys.stderr)


def cmd_counterfactual(args) -> int:
    from .analyses.counterfactual import counterfactual, pick_targets, table
    from .analyses.uncertainty import summary_lines
    from .query import format_table

    run = _analysis_run(args)
    if (args.target is None) == (args.batch is None):
        raise DatamodelsError("give --target I (one or more) or --batch N, not both")
    targets = args.target if args.target is not None else pick_targets(run, args.batch, args.seed)
    with (run.ray() if args.verify else _nothing()):
        result = counterfactual(run, targets, args.remove or ["top:10"], verify=args.verify, base=args.base,
                                seed=args.seed)
    if args.verify:
        _saved(run, "counterfactual", result)
    if args.json:
        _print_json(result)
        return 0
    rows = table(result)
    columns = ["target", "remove", "k", "before", "after", "pred_change"]
    if args.verify:
        columns += ["actual_before", "actual_after", "actual_change", "se", "judged"]
    setting = "α-subsets containing the set" if result["base"] == "subset" else "the full training set"
    print(f"predicted margins before and after removal, trained on {setting}"
          + (f"; actual: mean of {args.verify} retrained model pairs" if args.verify else ""))
    print(format_table(rows, columns))
    if args.verify and len(rows) >= 3:
        print("\n" + "\n".join(summary_lines(result["summary"], args.verify)))
    return 0



def cmd_brittleness(args) -> int:
    from .analyses.brittleness import brittleness, histogram
    from .query import format_table

    run = _analysis_run(args)
    with (run.ray() if args.verify else _nothing()):
        result = brittleness(run, base=args.base, targets=args.target, verify=args.verify,
                             max_support=args.max_support, seed=args.seed)
    if args.verify:
        _saved(run, "brittleness", result)
    if args.json:
        _print_json(result)
        return 0
    c = result["counts"]
    print(f"{result['num_targets']} targets: {c['already_wrong']} predicted wrong already, {c['flippable']} flippable "
          f"by removing their most supportive training examples ({c[f'at_most_{args.max_support}']} with at most "
          f"{args.max_support}), {c['never_flips']} not flippable that way")
    print("\nsupport sizes")
    print(format_table(histogram(result), ["support_size", "targets"]))
    brittle = sorted((r for r in result["targets"] if r["support_size"]), key=lambda r: r["support_size"])[:args.k]
    rows = [{"target": r["target"], "support_size": r["support_size"], "pred_before": r["predicted_before"],
             "pred_after": r["predicted_after"], **({"actual_after": r["verified"]["actual_after"],
                                                      "se": r["verified"]["actual_after_se"],
                                                      "flipped": str(r["verified"]["flipped"]),
                                                      "verdict": r["verified"]["verdict"]}
                                                     if "verified" in r else  # not checked: over --max-support
                                                     dict.fromkeys(("actual_after", "se", "flipped", "verdict"), ""))}
            for r in brittle]
    columns = ["target", "support_size", "pred_before", "pred_after"] + (["actual_after", "se", "flipped", "verdict"]
                                                                        if args.verify else [])
    if rows:
        print(f"\nthe {len(rows)} most brittle targets")
        print(format_table(rows, columns))
    v = result.get("verified")
    if v and v["checked"]:
        print(f"\nretrained {v['models']} models without each support set of size <= {args.max_support}: "
              f"{v['flipped']} of {v['checked']} predictions truly flip ({v['share']:.1%}, 95% bootstrap interval "
              f"over targets [{v['share_ci'][0]:.1%}, {v['share_ci'][1]:.1%}]); {v['surely_flipped']} surely flip and "
              f"{v['surely_holds']} surely hold (mean margin over 1.96 se from 0), {v['undecided']} undecided"
              + (f" (up to {v['models_to_settle']} models each would settle them)" if v["models_to_settle"] else ""))
    return 0


def cmd_leakage(args) -> int:
    from .analyses.leakage import leakage, read_pairs
    from .query import format_table

    arguments.existing("--known", args.known)
    run = _analysis_run(args)
    known = read_pairs(args.known) if args.known else None
    result = leakage(run, k=args.k, known=known, similarity=args.similarity)
    if args.json:
        _print_json(result)
        return 0
    print("(target, training example) pairs most likely to be near-duplicates; aligned: similarity after blur, best over "
          "shifts of up to 2 px; similarity: plain pixel cosine (mean image subtracted); effect: margin with minus "
          "without the example, measured on the store, with its standard error (effect_sd: in sd of the target's "
          "margin; effect_z: in standard errors)")
    columns = ["rank", "target", "train", "score", "weight", "aligned", "similarity", "pixel_rank", "effect",
               "effect_se", "effect_sd", "effect_z"]
    print(format_table([{**p, "aligned": p["aligned_similarity"]} for p in result["pairs"]], columns))
    if "known" in result:
        kn = result["known"]
        print(f"\nknown pairs: precision@{args.k} = {kn['precision_at_k']:.3f}, recall@{args.k} = {kn['recall_at_k']:.3f}")
        print(format_table([{**p, "aligned": p["aligned_similarity"]} for p in kn["pairs"]],
                           ["target", "train", "rank", "score", "aligned", "similarity", "pixel_rank", "effect",
                            "effect_se", "effect_sd", "effect_z"]))
    return 0


def cmd_learning_curve(args) -> int:
    from .analyses.learning_curve import learning_curve
    from .query import format_table

    run = _analysis_run(args)
    sizes = None
    if args.sizes:
        try:
            sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
        except ValueError:
            raise DatamodelsError(f"--sizes must be comma-separated whole numbers, got {args.sizes!r}") from None
        if not sizes or any(not 1 <= n <= arguments.MAX_COUNT for n in sizes):
            raise DatamodelsError(f"--sizes must be numbers of models in 1..{arguments.MAX_COUNT}, got {args.sizes!r}")
    result = learning_curve(run, sizes=sizes, num_targets=args.num_targets or None)
    _saved(run, "learning_curve", result)
    if args.json:
        _print_json(result)
        return 0
    print(f"LDS on {result['num_eval_models']} held-out models ({result['num_targets']} targets) against the number "
          f"of models used for fitting")
    print(format_table([{"num_models": p["num_models"], "lds": p["lds"]} for p in result["points"]],
                       ["num_models", "lds"]))
    return 0


def cmd_report(args) -> int:
    from .report import report

    methods = {}
    for item in args.scores or ():
        name, sep, file = item.partition("=")
        if not sep or not name.strip() or not file.strip():
            raise DatamodelsError(f"--scores must look like NAME=FILE, got {item!r}")
        if name.strip() in methods:
            raise DatamodelsError(f"--scores names {name.strip()!r} twice")
        methods[name.strip()] = file.strip()
        arguments.existing("--scores", file.strip())
    arguments.check_report_out(args, methods)
    store = _open_store(args, args.store or Path(args.run) / "store") if (args.store or args.spec or args.eval_rows) else None
    path = report(args.run, args.out, verify=args.verify, datamodels=args.datamodels, config=args.config,
                  address=args.address, learning_curve=args.learning_curve, seed=args.seed, store=store,
                  scores=methods or None, transpose=args.transpose)
    print(f"wrote {path}")
    return 0


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def cmd_run(args) -> int:
    from .pipeline import run

    metrics = run(_config(args), address=args.address)
    print(json.dumps(metrics, indent=2))
    return 0


ADDRESS_HELP = "address of an existing Ray cluster (default: start a local one)"


def build_parser() -> argparse.ArgumentParser:
    from .config import FitOptions

    p = arguments.Parser(prog="datamodels", description="Estimate datamodels: prepare, sweep, fit, evaluate, query.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=arguments.Parser)

    def with_config(sp):
        sp.add_argument("config", help="YAML config, e.g. configs/digits.yaml")
        sp.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. sweep.num_models=2000")

    sp = sub.add_parser("prepare", help="write the data set as FFCV .beton files")
    with_config(sp)
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("sweep", help="train models on random subsets as Ray tasks (resumes)")
    with_config(sp)
    sp.add_argument("--address", type=arguments.address, help=ADDRESS_HELP)
    sp.set_defaults(func=cmd_sweep)

    def with_store_layout(sp):
        sp.add_argument("--spec", metavar="FILE",
                        help="JSON spec of a store that keeps it elsewhere (the reference pipeline's layout; default "
                             "STORE/spec.json, else detected from the .npy headers)")
        sp.add_argument("--eval-rows", metavar="A:B",
                        help="hold out rows A..B-1 for LDS in place of the store's evaluation split (for a store "
                             "without one; give fit and evaluate the same rows)")

    sp = sub.add_parser("status", help="progress, failures, live LDS and its forecast of a store")
    sp.add_argument("store")
    with_store_layout(sp)
    sp.add_argument("--lds", type=arguments.number, action="append",
                    help="forecast the fitting models needed for this LDS (repeatable; default: the next of "
                         "0.8, 0.85, 0.9, 0.95 above the latest checkpoint)")
    sp.add_argument("--budget", type=arguments.positive, action="append",
                    help="forecast the LDS at this many fitting models (repeatable; default: the store's)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("fit", help="fit sparse linear datamodels from a store")
    sp.add_argument("--store", required=True)
    sp.add_argument("--out", required=True, help="output .npz")
    sp.add_argument("--force", action="store_true", help="replace an existing --out file that is not a datamodels .npz")
    with_store_layout(sp)
    sp.add_argument("--device", default=FitOptions.device, help="cpu or cuda")
    sp.add_argument("--val-fraction", type=float, default=FitOptions.val_fraction)
    sp.add_argument("--num-lambdas", type=int, default=FitOptions.num_lambdas)
    sp.add_argument("--lambda-min-ratio", type=float, default=FitOptions.lambda_min_ratio)
    sp.add_argument("--max-iter", type=int, default=FitOptions.max_iter, help="solver iterations per λ")
    sp.add_argument("--tol", type=float, default=FitOptions.tol,
                    help="stop when weights change by less than this, relatively")
    sp.add_argument("--chunk-rows", type=int, default=FitOptions.chunk_rows, help="store rows read at a time (memory)")
    sp.add_argument("--targets", help="fit target columns A:B only (datamodels of the rest: another call)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--address", help="Ray cluster to fit on ('local' starts one): targets are split into slices")
    sp.add_argument("--slices", type=int, help="target slices (Ray tasks); default: one per GPU or per node")
    sp.add_argument("--prior", choices=["none", "trak"], default=FitOptions.prior,
                    help="trak: the lasso around a prior mean from TRAK scores of a few of the store's models")
    sp.add_argument("--prior-models", type=int, default=FitOptions.prior_models, help="models retrained for the TRAK prior")
    sp.add_argument("--prior-gamma", type=float, default=FitOptions.prior_gamma,
                    help="with --prior: weight each example's L1 penalty by (|prior| / mean |prior| + 0.1)^-gamma "
                         "(the adaptive lasso); 0 penalises all alike")
    sp.add_argument("--config", help="the run's config, for --prior trak (default: config.yaml beside the store)")
    sp.set_defaults(func=cmd_fit)

    def with_run(sp):
        sp.add_argument("--run", default="runs/digits", help="output directory of `datamodels run` (default runs/digits)")
        sp.add_argument("--datamodels", help="fitted .npz (default RUN/datamodels.npz)")
        sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
        sp.add_argument("--store", help="store directory (default RUN/store)")
        with_store_layout(sp)

    sp = sub.add_parser("evaluate", help="linear datamodeling score on the held-out models")
    with_run(sp)
    sp.add_argument("--scores", metavar="FILE",
                    help="score LDS of another attribution method: an .npy matrix N_train x N_targets (positive: the "
                         "training example raises the target's margin) instead of the datamodels")
    sp.add_argument("--transpose", action="store_true", help="the --scores matrix is N_targets x N_train")
    sp.add_argument("--protocol", choices=["single", "mean", "dattri", "kronfluence"], default="single",
                    help="the held-out ground truth (docs/lds-protocols.md): single: one seed of every mask; mean: "
                         "the mean over its seeds (TRAK's); dattri: 100 masks x 1 seed; kronfluence: 100 x 5 seeds")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("query", help="most influential training examples, or nearest targets")
    sp.add_argument("what", choices=["top", "nearest"])
    sp.add_argument("--target", type=arguments.count, required=True)
    sp.add_argument("--k", type=arguments.positive, default=10)
    with_run(sp)
    sp.set_defaults(func=cmd_query)

    def with_retrain(sp):
        sp.add_argument("--verify", type=arguments.count, default=0, metavar="R",
                        help="check by retraining R models per mask through the sweep machinery (default 0: predict only)")
        sp.add_argument("--base", choices=["subset", "full"], default="subset",
                        help="train on alpha-subsets (the sweep's setting, default) or on the full training set")
        sp.add_argument("--seed", type=arguments.seed, default=0,
                        help="seed of random targets, subsets and model seeds")
        sp.add_argument("--config", help="config the run was made with, for retraining (default RUN/config.yaml)")
        sp.add_argument("--address", type=arguments.address, help=ADDRESS_HELP)

    sp = sub.add_parser("counterfactual", help="predicted (and retrained) margin after removing training examples")
    sp.add_argument("--target", type=arguments.count, action="append", help="target to study (repeat for several)")
    sp.add_argument("--batch", type=arguments.positive, metavar="N",
                    help="N random targets; reports the correlation when verified")
    sp.add_argument("--remove", action="append", metavar="SPEC",
                    help="top:K, bottom:K, random:K or a file of training indices (repeatable; default top:10)")
    with_retrain(sp)
    with_run(sp)
    sp.set_defaults(func=cmd_counterfactual)

    sp = sub.add_parser("brittleness", help="fewest training examples whose removal flips each prediction")
    sp.add_argument("--target", type=arguments.count, action="append", help="targets to study (default all)")
    sp.add_argument("--max-support", type=arguments.positive, default=20,
                    help="verify targets with support size up to this (default 20)")
    sp.add_argument("--k", type=arguments.positive, default=20, help="brittle targets listed in the table (default 20)")
    with_retrain(sp)
    with_run(sp)
    sp.set_defaults(func=cmd_brittleness)

    sp = sub.add_parser("leakage", help="(test, train) pairs likely to be near-duplicates")
    sp.add_argument("--k", type=arguments.positive, default=20, help="pairs listed (default 20)")
    sp.add_argument("--known", help="file of known duplicate pairs, 'target train' per line: precision and recall")
    sp.add_argument("--similarity", choices=["aligned", "pixels", "none"], default="aligned",
                    help="image similarity the score is weighted by: aligned (blurred, best over shifts of up to 2 px; "
                         "default), pixels (plain cosine) or none (behaviour alone)")
    with_run(sp)
    sp.set_defaults(func=cmd_leakage)

    sp = sub.add_parser("learning-curve", help="LDS against the number of models used for fitting (refits)")
    sp.add_argument("--sizes", help="comma-separated numbers of models (default: 5 geometric steps up to all)")
    sp.add_argument("--num-targets", type=arguments.count, default=100,
                    help="random sample of targets to refit, for speed (default 100; 0 = all)")
    sp.add_argument("--config", help="config whose fit section to use (default RUN/config.yaml, else fit defaults)")
    with_run(sp)
    sp.set_defaults(func=cmd_learning_curve)

    sp = sub.add_parser("report", help="write RUN/report.html: figures of every analysis, images inline")
    sp.add_argument("run", nargs="?", default="runs/digits", help="output directory of `datamodels run` (default runs/digits)")
    sp.add_argument("--out", help="output file (default RUN/report.html)")
    sp.add_argument("--force", action="store_true", help="replace an existing --out file that is not a report")
    sp.add_argument("--datamodels", help="fitted .npz (default RUN/datamodels.npz)")
    sp.add_argument("--store", help="store directory (default RUN/store)")
    with_store_layout(sp)
    sp.add_argument("--scores", action="append", metavar="NAME=FILE",
                    help="another attribution method's score matrix (.npy, N_train x N_targets), shown beside the "
                         "datamodels' LDS (repeatable)")
    sp.add_argument("--transpose", action="store_true", help="the --scores matrices are N_targets x N_train")
    sp.add_argument("--verify", type=arguments.count, default=0, metavar="R",
                    help="also check counterfactuals and brittleness by retraining R models per mask")
    sp.add_argument("--learning-curve", action=argparse.BooleanOptionalAction, default=None,
                    help="refit on growing numbers of models for the learning curve (default: only when the store "
                         "has at least twice as many models as training examples)")
    sp.add_argument("--seed", type=arguments.seed, default=0)
    sp.add_argument("--config", help="config the run was made with, for retraining (default RUN/config.yaml)")
    sp.add_argument("--address", type=arguments.address, help=ADDRESS_HELP)
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("run", help="prepare, sweep, fit and evaluate in one go")
    with_config(sp)
    sp.add_argument("--address", type=arguments.address, help=ADDRESS_HELP)
    sp.set_defaults(func=cmd_run)
    return p


def _log_to_stderr() -> None:
    """The library logs its one-off choices (kernels, precision, K) at INFO; the command line shows them."""
    import logging

    class ToStderr(logging.StreamHandler):
        def emit(self, record):
            self.stream = sys.stderr  # the current one: callers (and test runners) may swap it
            super().emit(record)

    log = logging.getLogger("datamodels")
    if not log.handlers:
        handler = ToStderr()
        handler.setFormatter(logging.Formatter("datamodels: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _log_to_stderr()
    try:
        return args.func(args)
    except DatamodelsError as exc:
        print(f"datamodels: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The environment, not a bug: a full disk, a directory without write permission.
        # One line naming the path, like every other user-facing error.
        import errno

        reason = exc.strerror or str(exc) or type(exc).__name__
        reason = reason[:1].lower() + reason[1:]
        paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        writing = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
        if writing:
            message = f"cannot write {paths}: {reason}" if paths else f"cannot write: {reason}"
        else:
            message = f"{paths}: {reason}" if paths else reason
        print(f"datamodels: error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("datamodels: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
