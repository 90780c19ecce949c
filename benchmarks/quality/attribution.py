"""TRAK against datamodels on the digits default, scored by LDS on the same held-out models.

* **Datamodels** fitted (the default fit settings) on the first n fitting models of the
  default run's store, n = 100 ... 10,000.
* **TRAK** (the ``traker`` package, on CPU): checkpoints of this project's own worker
  (``workers.mlp``, the store's recorded training settings, each on the full training set
  with its own seed), wrapped as an equivalent ``torch.nn.Module``; ``image_classification``
  output (TRAK's margin, log p/(1-p)), float32, a Gaussian ``BasicProjector`` or the exact
  gradients (``NoOpProjector``).  The projection dimension and the ridge term ``lambda_reg``
  are chosen on the first half of the held-out models from a small grid at 10 checkpoints;
  then 1 ... 100 checkpoints.
* **Floors**: random scores; and the same-label sign times the cosine similarity of the raw
  pixels (+cos for a training image of the target's label, -cos otherwise).

Every method's LDS is reported on the second half of the held-out models (the first half
chose TRAK's settings), with the same quantiles as ``datamodels evaluate``.  The scores use the
convention of ``datamodels evaluate --scores``: positive raises the target's margin.

    python benchmarks/quality/attribution.py        # makes (or resumes) runs/digits; ~15 min on 2 cores
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import machine_info, save_result  # noqa: E402


def ensure_run(config_path: str, out: str) -> None:
    """The default pipeline into ``out`` (resumes; trains nothing when complete), without its report."""
    from datamodels import config
    from datamodels.pipeline import run
    from datamodels.store import Store

    cfg = config.load(config_path, [f"out={out}"])
    store = Path(out) / "store"
    if (store / "spec.json").exists() and (Path(out) / "datamodels.npz").exists():
        s = Store(store).summary()
        if s["completed"] == s["num_models"] and s["fit"]["total"] >= cfg.sweep.num_models \
                and s["eval"]["total"] >= cfg.sweep.num_eval_models:
            return  # finished: the benchmark fits its own datamodels
    run(cfg, report=False)


class MLP(torch.nn.Module):
    """workers.mlp's network as an nn.Module: Linear(in, hidden), ReLU, Linear(hidden, classes)."""

    def __init__(self, num_in: int, hidden: int, num_classes: int):
        super().__init__()
        self.fc1 = torch.nn.Linear(num_in, hidden)
        self.fc2 = torch.nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def train_checkpoints(x_train, y_train, x_test, y_test, worker: dict, count: int, seed: int):
    """``count`` state dicts of the worker's MLP, each trained on the full training set with its own
    seed, and their margins on the test set (checked against the worker's own)."""
    from workers import mlp
    from workers.common import margins

    fields = {f.name for f in dataclasses.fields(mlp.Config)}
    cfg = mlp.Config(**{k: v for k, v in worker.items() if k in fields})
    device = torch.device("cpu")
    mean, std = mlp._standardiser(x_train)
    x = mlp._flat(x_train, mean, std)
    xt = mlp._flat(x_test, mean, std)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    onehot = torch.eye(num_classes)[torch.from_numpy(y_train.astype(np.int64))]
    seeds = np.random.SeedSequence([seed, 77]).generate_state(count).astype(np.int64)
    net = mlp._StackedMLP(np.ones((count, len(y_train)), bool), seeds, x.shape[1] - 1, num_classes, cfg, device)
    net.fit(x, onehot)
    w1, w2, b2 = net.master
    states = []
    for i in range(count):
        states.append({"fc1.weight": w1[i, :, :-1].clone(), "fc1.bias": w1[i, :, -1].clone(),
                       "fc2.weight": w2[i].clone(), "fc2.bias": b2[i, :, 0].clone()})
    model = MLP(x.shape[1] - 1, cfg.hidden, num_classes)
    yt = torch.from_numpy(y_test.astype(np.int64))
    with torch.no_grad():
        model.load_state_dict(states[0])
        ours = margins(model(xt[:, :-1]), yt)
        theirs = margins(net.logits(xt)[0], yt)
    assert torch.allclose(ours, theirs, atol=1e-4), "the nn.Module does not reproduce the worker's network"
    return states, x[:, :-1].contiguous(), xt[:, :-1].contiguous(), model


def trak_scores(model, states, x, y, xt, yt, proj_dim: int, lambda_reg: float, subsets, workdir: Path) -> dict:
    """TRAK scores [N, T] as traker computes them, for the first k checkpoints for each k in ``subsets``."""
    from trak import TRAKer
    from trak.projectors import BasicProjector, NoOpProjector, ProjectionType

    grad_dim = sum(p.numel() for p in model.parameters())
    if proj_dim >= grad_dim:
        projector = NoOpProjector(grad_dim=grad_dim, proj_dim=0, device="cpu")
    else:
        projector = BasicProjector(grad_dim=grad_dim, proj_dim=proj_dim, seed=0, proj_type=ProjectionType.normal,
                                   device="cpu", block_size=min(512, max(1, proj_dim // 2)), dtype=torch.float32)
    save_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="trak-"))
    traker = TRAKer(model=model, task="image_classification", train_set_size=len(y), save_dir=str(save_dir),
                    load_from_save_dir=True, device="cpu", projector=projector, use_half_precision=False,
                    lambda_reg=lambda_reg, logging_level=logging.ERROR)
    y = torch.from_numpy(y.astype(np.int64))
    yt = torch.from_numpy(yt.astype(np.int64))
    started = time.time()
    for i, state in enumerate(states):
        traker.load_checkpoint(state, model_id=i)
        traker.featurize(batch=(x, y), num_samples=len(y))
    traker.finalize_features()
    for i, state in enumerate(states):
        traker.start_scoring_checkpoint(exp_name="targets", checkpoint=state, model_id=i, num_targets=len(yt))
        traker.score(batch=(xt, yt), num_samples=len(yt))
    setup_s = time.time() - started
    out = {}
    for k in subsets:
        t = time.time()
        scores = np.array(traker.finalize_scores(exp_name="targets", model_ids=list(range(k))), dtype=np.float32)
        out[k] = {"scores": scores, "finalize_s": time.time() - t}
    shutil.rmtree(save_dir, ignore_errors=True)
    return {"by_checkpoints": out, "featurize_and_score_s": setup_s,
            "proj_dim": int(grad_dim if proj_dim >= grad_dim else proj_dim), "grad_dim": int(grad_dim)}


def summary(scores: dict) -> dict:
    return {"lds": round(float(scores["lds"]), 4),
            **{k: round(float(scores["quantiles"][k]), 4) for k in ("p10", "median", "p90")}}


def plot(results: dict, run: Path, path: Path) -> None:
    """LDS against models trained and against wall seconds, for TRAK, datamodels and the floors.

    Seconds: datamodels on n models cost n × (the run's sweep seconds per model, from
    RUN/metrics.json) plus the fit; TRAK on c checkpoints costs c × (training + featurising
    per checkpoint, as measured here) plus its finalising.  Both on the same 2-core machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = json.loads((run / "metrics.json").read_text())
    per_model = metrics["sweep_s"] / metrics["num_models"]
    trak = results["trak"]
    per_checkpoint = (trak["checkpoint_training_s"] + trak["featurize_and_score_s"]) / max(
        r["checkpoints"] for r in trak["by_checkpoints"])
    dm = [(r["num_models"], r["num_models"] * per_model + r["fit_s"], r["lds"]) for r in results["datamodels"]]
    tk = [(r["checkpoints"], r["checkpoints"] * per_checkpoint + r["finalize_s"], r["lds"])
          for r in trak["by_checkpoints"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, x, label in ((axes[0], 0, "models (datamodels) or checkpoints (TRAK) trained"),
                         (axes[1], 1, "wall seconds on the 2-core machine (training + attribution)")):
        ax.plot([p[x] for p in dm], [p[2] for p in dm], "o-", label="datamodels (first n models)")
        ax.plot([p[x] for p in tk], [p[2] for p in tk], "s-", label="TRAK (full-set checkpoints)")
        for name, floor in results["floors"].items():
            ax.axhline(floor["lds"], ls=":", c="grey")
            ax.text(0.01, floor["lds"] + 0.01, name.replace("_", " "), fontsize=8, color="grey",
                    transform=ax.get_yaxis_transform())
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("LDS (held-out models)")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"digits default: {per_model * 1e3:.0f} ms per α-model in the sweep, "
                 f"{per_checkpoint:.2f} s per TRAK checkpoint", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    p.add_argument("--run", default="runs/digits", help="run directory of the default config (made or resumed)")
    p.add_argument("--sizes", default="100,300,1000,3000,10000", help="datamodels: fitting models used")
    p.add_argument("--checkpoints", default="1,3,10,30,100", help="TRAK: checkpoints used")
    p.add_argument("--proj-dims", default="512,2048", help="TRAK grid; 0: no projection (exact gradients, slow)")
    p.add_argument("--lambdas", default="1e-3,1e-2,1e-1,1", help="TRAK grid, times the mean diagonal of XᵀX")
    p.add_argument("--grid-checkpoints", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE.parent / "results" / "attribution.json"))
    p.add_argument("--only", choices=["trak"], help="rerun only TRAK, keeping the other entries of --out")
    p.add_argument("--plot", action="store_true", help="only redraw the figure from --out (and RUN/metrics.json)")
    args = p.parse_args(argv)
    if args.plot:
        plot(json.loads(Path(args.out).read_text()), Path(args.run), Path(args.out).with_suffix(".png"))
        return 0
    torch.manual_seed(args.seed)

    from datamodels import config as config_lib
    from datamodels.evaluate import lds
    from datamodels.regression import fit
    from datamodels.prepare import load_arrays
    from datamodels.store import Store

    t = time.time()
    ensure_run(args.config, args.run)
    pipeline_s = time.time() - t
    cfg = config_lib.load(args.config, [f"out={args.run}"])
    store = Store(Path(args.run) / "store")
    data = Path(args.run) / "data"
    x_train, y_train = load_arrays(data, "train")
    x_test, y_test = load_arrays(data, "test")
    eval_rows = store.rows("eval")
    val_rows, test_rows = eval_rows[: len(eval_rows) // 2], eval_rows[len(eval_rows) // 2:]
    print(f"store {store.path}: {len(store.rows('fit'))} fitting, {len(eval_rows)} held-out models "
          f"({len(val_rows)} choose TRAK's settings, {len(test_rows)} score every method)", flush=True)
    results = {"run": args.run, "num_train": store.num_train, "num_targets": store.num_targets,
               "held_out_models": {"selection": len(val_rows), "reported": len(test_rows)},
               "pipeline_s": round(pipeline_s, 1), "datamodels": [], "trak": {}, "floors": {}}

    if args.only:
        kept = json.loads(Path(args.out).read_text())
        results.update({k: kept[k] for k in ("floors", "datamodels", "earlier_grid", "earlier_by_checkpoints")
                        if k in kept})
        results["reused"] = "floors and datamodels from the previous run of this script (deterministic LDS)"
    # ---- floors ----------------------------------------------------------------------------------
    rng = np.random.default_rng(args.seed)
    random = rng.normal(size=(store.num_train, store.num_targets)).astype(np.float32)
    if not args.only:
        results["floors"]["random"] = summary(lds(store, scores=random, rows=test_rows))
        a = x_train.reshape(len(x_train), -1).astype(np.float64)
        b = x_test.reshape(len(x_test), -1).astype(np.float64)
        cos = (a @ b.T) / (np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :] + 1e-12)
        same = np.where(y_train[:, None] == y_test[None, :], 1.0, -1.0)
        results["floors"]["same_label_pixel_cosine"] = summary(lds(store, scores=same * cos, rows=test_rows))
        print(f"floors: {results['floors']}", flush=True)

    # ---- datamodels on the first n models --------------------------------------------------------
    f = cfg.fit
    options = dict(val_fraction=f.val_fraction, num_lambdas=f.num_lambdas, lambda_min_ratio=f.lambda_min_ratio,
                   max_iter=f.max_iter, tol=f.tol, chunk_rows=f.chunk_rows, seed=int(cfg.seed), progress=False)
    import warnings

    for n in [] if args.only else [int(s) for s in args.sizes.split(",")]:
        n = min(n, len(store.rows("fit")))
        t = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # unconverged targets at small n
            dm = fit(store, rows=store.rows("fit")[:n], **options)
        fit_s = time.time() - t
        row = {"num_models": n, "fit_s": round(fit_s, 2), **summary(lds(store, dm, rows=test_rows))}
        results["datamodels"].append(row)
        print(f"datamodels n={n}: {row}", flush=True)

    # ---- TRAK ------------------------------------------------------------------------------------
    worker = store.meta.get("worker") or {}
    checkpoints = [int(s) for s in args.checkpoints.split(",")]
    t = time.time()
    states, x, xt, model = train_checkpoints(x_train, y_train, x_test, y_test, worker, max(checkpoints), args.seed)
    train_s = time.time() - t
    print(f"trained {len(states)} checkpoints on the full training set in {train_s:.1f} s", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="attribution-"))
    try:
        # The ridge term's scale: the mean diagonal of XᵀX of one checkpoint's features, as traker normalises them.
        grad_dim = sum(p.numel() for p in model.parameters())
        from trak.gradient_computers import FunctionalGradientComputer
        from trak.modelout_functions import ImageClassificationModelOutput

        model.load_state_dict(states[0])
        gc = FunctionalGradientComputer(model=model, task=ImageClassificationModelOutput(), grad_dim=grad_dim,
                                        dtype=torch.float32, device="cpu")
        g = gc.compute_per_sample_grad(batch=(x, torch.from_numpy(y_train.astype(np.int64))))
        g = torch.cat([v.reshape(len(x), -1) for v in g.values()], 1) if isinstance(g, dict) else g
        scale = float((g.detach() / np.sqrt(grad_dim)).pow(2).sum(0).mean())  # trace(XᵀX) / d, exact gradients
        grid = []
        for proj_dim in [int(s) for s in args.proj_dims.split(",")]:
            for c in [float(s) for s in args.lambdas.split(",")]:
                # A coordinate of traker's features is g·p/sqrt(d) with p ~ N(0, I): its mean square is
                # grad_dim times that of an exact-gradient coordinate, whatever the projection dimension.
                lam = c * scale * (grad_dim if proj_dim else 1.0)
                t = time.time()
                r = trak_scores(model, states[:args.grid_checkpoints], x, y_train, xt, y_test,
                                proj_dim or grad_dim, lam, [args.grid_checkpoints], workdir)
                sc = r["by_checkpoints"][args.grid_checkpoints]["scores"]
                point = {"proj_dim": r["proj_dim"], "lambda_reg": lam, "lambda_rel": c,
                         "selection_lds": round(float(lds(store, scores=sc, rows=val_rows)["lds"]), 4),
                         "s": round(time.time() - t, 1)}
                grid.append(point)
                print(f"TRAK grid: {point}", flush=True)
        best = max(grid, key=lambda q: q["selection_lds"])
        results["trak"]["grid"] = {"checkpoints": args.grid_checkpoints, "points": grid, "chosen": best}
        t = time.time()
        r = trak_scores(model, states, x, y_train, xt, y_test, best["proj_dim"], best["lambda_reg"], checkpoints,
                        workdir)
        rows = []
        for k in checkpoints:
            sc = r["by_checkpoints"][k]["scores"]
            rows.append({"checkpoints": k, "finalize_s": round(r["by_checkpoints"][k]["finalize_s"], 2),
                         **summary(lds(store, scores=sc, rows=test_rows))})
            print(f"TRAK k={k}: {rows[-1]}", flush=True)
        np.save(workdir.parent / "trak_scores.npy", r["by_checkpoints"][max(checkpoints)]["scores"])
        results["trak"].update({
            "settings": {"package": "traker 0.3.2", "task": "image_classification (log p/(1-p))",
                         "projector": "NoOpProjector (exact gradients)" if best["proj_dim"] >= grad_dim
                         else "BasicProjector, normal", "proj_dim": best["proj_dim"], "grad_dim": grad_dim,
                         "lambda_reg": best["lambda_reg"], "use_half_precision": False, "device": "cpu",
                         "checkpoints_trained_on": "the full training set, one seed each",
                         "worker": {k: v for k, v in worker.items()}},
            "checkpoint_training_s": round(train_s, 1), "featurize_and_score_s": round(r["featurize_and_score_s"], 1),
            "by_checkpoints": rows, "total_s": round(time.time() - t, 1)})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"] = machine_info("trak")
    save_result(args.out, results)
    plot(results, Path(args.run), Path(args.out).with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
