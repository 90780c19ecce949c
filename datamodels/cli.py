"""The ``datamodels`` command: a thin layer over the Python API, one subcommand per stage."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

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
    return 0


def cmd_status(args) -> int:
    from .store import Store

    s = Store(args.store).summary()
    if args.json:
        _print_json(s)
    else:
        print(f"store {s['path']}: {s['completed']}/{s['num_models']} models complete "
              f"(fit {s['fit']['completed']}/{s['fit']['total']}, eval {s['eval']['completed']}/{s['eval']['total']}); "
              f"{s['num_train']} training examples, {s['num_targets']} targets, alpha={s['alpha']}, seed={s['seed']}")
        if s["failures"]:
            print(f"{len(s['failures'])} failed models:")
            for row, error in list(s["failures"].items())[:20]:
                print(f"  row {row}: {error}")
            if len(s["failures"]) > 20:
                print(f"  ... and {len(s['failures']) - 20} more (--json lists all)")
    return 1 if s["failures"] else 0


def cmd_fit(args) -> int:
    from .fit import fit

    dm = fit(args.store, args.out, device=args.device, val_fraction=args.val_fraction,
             num_lambdas=args.num_lambdas, lambda_min_ratio=args.lambda_min_ratio, seed=args.seed,
             chunk_rows=args.chunk_rows)
    print(f"fitted {dm['weight'].shape[1]} datamodels over {dm['weight'].shape[0]} training examples "
          f"from {int(dm['num_models'])} models -> {args.out}")
    return 0


def _run_paths(args):
    run = Path(args.run)
    return (Path(args.store) if getattr(args, "store", None) else run / "store",
            Path(args.datamodels) if args.datamodels else run / "datamodels.npz")


def cmd_evaluate(args) -> int:
    from .evaluate import lds

    store, dm = _run_paths(args)
    scores = lds(store, dm)
    if args.json:
        _print_json(scores)
    else:
        q = scores.get("quantiles", {})
        print(f"LDS {scores['lds']:.4f} over {len(scores['per_target'])} targets and {scores['num_models']} "
              f"held-out models; quantiles " + ", ".join(f"{k}: {v:.3f}" for k, v in q.items()))
    return 0


def cmd_query(args) -> int:
    from . import query

    _, dm = _run_paths(args)
    if args.what == "top":
        result = query.top(dm, args.target, args.k)
        if args.json:
            _print_json(result)
        else:
            print(f"target {args.target}: training examples that raise its margin most")
            print(query.format_table(result["positive"], ["train_index", "weight"]))
            print(f"\ntarget {args.target}: training examples that lower its margin most")
            print(query.format_table(result["negative"], ["train_index", "weight"]))
    else:
        result = query.nearest(dm, args.target, args.k)
        if args.json:
            _print_json(result)
        else:
            print(f"targets whose datamodels are closest to target {args.target}'s (cosine)")
            print(query.format_table(result["nearest"], ["target", "cosine"]))
    return 0


def cmd_run(args) -> int:
    from .pipeline import run

    metrics = run(_config(args), address=args.address)
    print(json.dumps(metrics, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="datamodels", description="Estimate datamodels: prepare, sweep, fit, evaluate, query.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("config", help="YAML config, e.g. configs/digits.yaml")
        sp.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. sweep.num_models=2000")

    sp = sub.add_parser("prepare", help="write the data set as FFCV .beton files")
    with_config(sp)
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("sweep", help="train models on random subsets as Ray tasks (resumes)")
    with_config(sp)
    sp.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("status", help="progress and failures of a store")
    sp.add_argument("store")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("fit", help="fit sparse linear datamodels from a store")
    sp.add_argument("--store", required=True)
    sp.add_argument("--out", required=True, help="output .npz")
    sp.add_argument("--device", default="cpu", help="cpu or cuda")
    sp.add_argument("--val-fraction", type=float, default=0.1)
    sp.add_argument("--num-lambdas", type=int, default=40)
    sp.add_argument("--lambda-min-ratio", type=float, default=1e-3)
    sp.add_argument("--chunk-rows", type=int, default=8192)
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_fit)

    def with_run(sp):
        sp.add_argument("--run", default="runs/digits", help="output directory of `datamodels run` (default runs/digits)")
        sp.add_argument("--datamodels", help="fitted .npz (default RUN/datamodels.npz)")
        sp.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sp = sub.add_parser("evaluate", help="linear datamodeling score on the held-out models")
    with_run(sp)
    sp.add_argument("--store", help="store directory (default RUN/store)")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("query", help="most influential training examples, or nearest targets")
    sp.add_argument("what", choices=["top", "nearest"])
    sp.add_argument("--target", type=int, required=True)
    sp.add_argument("--k", type=int, default=10)
    with_run(sp)
    sp.set_defaults(func=cmd_query)

    sp = sub.add_parser("run", help="prepare, sweep, fit and evaluate in one go")
    with_config(sp)
    sp.add_argument("--address", help="address of an existing Ray cluster (default: start a local one)")
    sp.set_defaults(func=cmd_run)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DatamodelsError as exc:
        print(f"datamodels: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("datamodels: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
