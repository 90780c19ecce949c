"""Planted duplicates: does the leakage list find the copies that change the models?

For each config (the digits default and ``configs/digits-memorise.yaml``) and each way of
planting (below), n noisy copies of test examples are appended to the digits training set
(``analyses.plant_duplicates``, the ``npz`` data path), the config's whole pipeline runs on
that data (sweep, fit, LDS), and then:

* each planted pair's true effect comes from the store: the target's mean margin over the
  fitting models whose subset holds the copy minus over those without; a pair is
  *effective* when that exceeds one standard deviation of the target's margin;
* the leakage list is ranked over all (test, train) pairs: recall of the effective pairs in
  the top 2n, precision of the top 2n (share of planted pairs), and for the other pairs in
  the top 2n their pixel similarity and measured effect (natural near-duplicates or not);
  the same with the behavioural score alone (``pixels=False``);
* training accuracy: models of the config trained on α-subsets of the planted training set,
  accuracy on their own subset.

Which test examples are copied: ``hardest``, the n with the lowest mean margin over 100
models of the config trained on α-subsets of the unplanted data (seeds apart from the
sweep's), or ``random``, n drawn uniformly.  Ways of planting (``--variants``):

    ink       hardest, Gaussian noise (sd 5% of the pixel range) on the ink pixels only
    all       hardest, the same noise on every pixel, background included
    shifted   hardest, ink noise after a random sub-pixel shift (uniform in ±0.5 px per axis)
    random    random test examples, ink noise

The headline figures (docs/analyses.md) are measured on ``ink`` with the memorising config.

    python benchmarks/quality/leakage.py                 # ~10 min on 2 cores -> benchmarks/results/leakage.json
    python benchmarks/quality/leakage.py --configs configs/digits-memorise.yaml --variants ink
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import machine_info, save_result  # noqa: E402

VARIANTS = {
    "ink": {"choose": "hardest", "noise_on": "ink", "shift": 0.0},
    "all": {"choose": "hardest", "noise_on": "all", "shift": 0.0},
    "shifted": {"choose": "hardest", "noise_on": "ink", "shift": 0.5},
    "random": {"choose": "random", "noise_on": "ink", "shift": 0.0},
}
PROBE_MODELS = 100  # models that rank the test examples by difficulty
ACCURACY_MODELS = 50  # models whose training accuracy is measured


def _worker_margins(cfg, data_dir: Path, masks: np.ndarray, seeds: np.ndarray, which: str = "test") -> np.ndarray:
    """Margins of the config's worker, trained here in-process (no sweep), on the test examples
    (``which="test"``) or on the training examples (``"train"``)."""
    from datamodels.prepare import read_meta

    worker = importlib.import_module(cfg.worker["name"])
    targets = "test" if which == "test" else "test+train"
    config = {"worker": dict(cfg.worker), "data": {"dir": str(data_dir), "targets": targets}}
    margins = worker.train(masks, seeds, config)
    return margins if which == "test" else margins[:, int(read_meta(data_dir)["num_test"]):]


def _masks(n_train: int, alpha: float, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 9917])
    masks = np.zeros((count, n_train), dtype=bool)
    size = int(round(alpha * n_train))
    for i in range(count):
        masks[i, rng.choice(n_train, size, replace=False)] = True
    return masks


def choose_targets(cfg, data_dir: Path, n: int, rule: str, seed: int) -> np.ndarray:
    from datamodels.prepare import read_meta

    meta = read_meta(data_dir)
    if rule == "random":
        return np.sort(np.random.default_rng([seed, 9918]).choice(int(meta["num_test"]), n, replace=False))
    masks = _masks(int(meta["num_train"]), cfg.sweep.alpha, PROBE_MODELS, seed)
    margins = _worker_margins(cfg, data_dir, masks, 10_000_000 + np.arange(PROBE_MODELS))
    return np.argsort(margins.mean(0), kind="stable")[:n]


def training_accuracy(cfg, data_dir: Path, seed: int) -> dict:
    from datamodels.prepare import read_meta

    n_train = int(read_meta(data_dir)["num_train"])
    masks = _masks(n_train, cfg.sweep.alpha, ACCURACY_MODELS, seed + 1)
    m = _worker_margins(cfg, data_dir, masks, 20_000_000 + np.arange(ACCURACY_MODELS), which="train")
    per_model = np.array([(m[i][masks[i]] > 0).mean() for i in range(len(masks))])
    held_out = np.array([(m[i][~masks[i]] > 0).mean() for i in range(len(masks))])
    return {"models": len(masks), "mean": float(per_model.mean()), "min": float(per_model.min()),
            "held_out_train_mean": float(held_out.mean())}


def one(config_path: str, variant: str, root: Path, n: int, noise: float, seed: int) -> dict:
    from datamodels import analyses, config
    from datamodels.analyses.leakage import leakage, planted_check
    from datamodels.pipeline import run as pipeline
    from datamodels.prepare import prepare

    name = Path(config_path).stem
    spec = VARIANTS[variant]
    base_cfg = config.load(config_path, [f"out={root / name / 'base'}"])
    base_data = prepare(base_cfg, progress=False)
    out = root / name / variant
    pairs_file = out / "pairs.json"
    t = time.time()
    if not pairs_file.exists():  # the copies must not change under a resumed run
        chosen = choose_targets(base_cfg, base_data, n, spec["choose"], seed)
        info = analyses.plant_duplicates(base_data, chosen, out / "planted.npz", noise=noise, seed=seed,
                                         noise_on=spec["noise_on"], shift=spec["shift"])
        info["rule"] = spec["choose"]
        pairs_file.write_text(json.dumps(info, indent=1))
    info = json.loads(pairs_file.read_text())
    choose_s = time.time() - t
    cfg = config.load(config_path, [f"out={out}", "data.source=npz", f"data.path={(out / 'planted.npz').resolve()}"])
    metrics = pipeline(cfg, report=False, progress=False)
    pairs = [tuple(p) for p in info["pairs"]]
    run = analyses.Run(out)
    check = planted_check(run, pairs)
    alone = planted_check(run, pairs, pixels=False)  # the behavioural score without the pixel factor
    listed = leakage(run, k=2 * n)["pairs"]
    planted = set(pairs)
    others = [p for p in listed if (p["target"], p["train"]) not in planted]
    effective = [e for e in check["pairs"] if e["visible"]]
    acc = training_accuracy(cfg, run.data_dir, seed)
    effect_sd = np.array([e["effect_sd"] for e in check["pairs"]])
    result = {
        "config": config_path, "variant": variant, **spec, "noise": noise, "planted": n,
        "lds": metrics["lds"], "num_fit_models": metrics["num_fit_models"],
        "num_eval_models": metrics["num_eval_models"],
        "num_pairs": run.num_train * run.num_targets,
        "training_accuracy": acc,
        "effective": len(effective), "share_effective": len(effective) / n,
        "effect_sd": {"min": float(effect_sd.min()), "median": float(np.median(effect_sd)),
                      "max": float(effect_sd.max())},
        "effective_in_top_2n": check["visible_within_limit"],
        "recall_effective_at_2n": check["visible_within_limit"] / len(effective) if effective else float("nan"),
        "planted_in_top_2n": check["all_within_limit"],
        "precision_at_2n": check["precision_at_k"],
        "planted_ranks": sorted(int(e["rank"]) for e in check["pairs"]),
        "behaviour_only": {"effective_in_top_2n": alone["visible_within_limit"],
                           "planted_in_top_2n": alone["all_within_limit"], "precision_at_2n": alone["precision_at_k"],
                           "planted_ranks": sorted(int(e["rank"]) for e in alone["pairs"])},
        "planted_pixel_similarity": {"min": float(min(e["similarity"] for e in check["pairs"])),
                                     "median": float(np.median([e["similarity"] for e in check["pairs"]]))},
        "others_in_top_2n": {
            "count": len(others),
            "effect_sd_above_1": sum(p["effect_sd"] > 1 for p in others),
            "pixel_rank_at_most_5": sum(p["pixel_rank"] <= 5 for p in others),
            "both": sum(p["effect_sd"] > 1 and p["pixel_rank"] <= 5 for p in others),
            "median_similarity": float(np.median([p["similarity"] for p in others])) if others else float("nan"),
            "median_effect_sd": float(np.median([p["effect_sd"] for p in others])) if others else float("nan"),
            "max_weight": float(max((p["weight"] for p in others), default=float("nan"))),
            "pairs": others},
        "pairs": check["pairs"],
        "timings": {"choose_and_plant_s": choose_s, "prepare_s": metrics["prepare_s"], "sweep_s": metrics["sweep_s"],
                    "fit_s": metrics["fit_s"], "models_trained_now": metrics["models_trained_now"]},
    }
    print(f"{name:16s} {variant:8s} LDS {metrics['lds']:.3f}  train acc {acc['mean']:.4f}  effective "
          f"{len(effective)}/{n} (effect/sd median {np.median(effect_sd):.2f})  recall@2n "
          f"{result['recall_effective_at_2n']:.2f}  precision@2n {result['precision_at_2n']:.2f} "
          f"(behaviour alone {result['behaviour_only']['precision_at_2n']:.2f})  "
          f"sweep {metrics['sweep_s']:.0f} s", flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(str(ROOT / "configs" / c)
                                                 for c in ("digits.yaml", "digits-memorise.yaml")))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--planted", type=int, default=20, help="copies planted (n)")
    p.add_argument("--noise", type=float, default=0.05, help="noise sd, as a fraction of the pixel range")
    p.add_argument("--root", default="runs/leakage", help="run directories (made or resumed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE.parent / "results" / "leakage.json"))
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    started = time.time()
    results = [one(c, v, Path(args.root), args.planted, args.noise, args.seed)
               for c in args.configs.split(",") for v in variants]
    goal = next((r for r in results if Path(r["config"]).stem == "digits-memorise" and r["variant"] == "ink"), None)
    out = {
        "machine": machine_info(),
        "command": " ".join(["python", "benchmarks/quality/leakage.py", *(argv if argv is not None else sys.argv[1:])]),
        "goals": {"criterion": "memorising config, ink noise: >= 80% of planted pairs effective, >= 90% of effective "
                               "pairs in the top 2n, precision@2n >= 0.5",
                  "passed": None if goal is None else bool(goal["share_effective"] >= 0.8
                                                           and goal["recall_effective_at_2n"] >= 0.9
                                                           and goal["precision_at_2n"] >= 0.5)},
        "results": results,
        "total_s": time.time() - started,
    }
    print(json.dumps(out["goals"]))
    save_result(args.out, out, indent=1)
    print(f"in {out['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
