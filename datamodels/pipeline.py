"""``datamodels run``: prepare → sweep → fit → evaluate, with timings in ``metrics.json``."""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import config as config_lib


def run(config=None, *, address=None, progress: bool = True, report: bool = True) -> dict:
    """The whole pipeline for one config; every stage resumes, so re-running is cheap.

    ``report`` also writes ``<out>/report.html`` (see ``datamodels.report``), after
    ``metrics.json``, so a failing report never costs the metrics."""
    from . import hardware
    from .evaluate import lds
    from .fit import fit
    from .prepare import prepare, read_meta
    from .sweep import sweep

    cfg = config_lib.coerce(config)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config_lib.save(cfg, out / "config.yaml")
    times = {}

    t = time.time()
    data_dir = prepare(cfg, progress=progress)
    times["prepare_s"] = time.time() - t

    t = time.time()
    sweep_summary = sweep(cfg, address=address, progress=progress)
    times["sweep_s"] = time.time() - t

    t = time.time()
    f = cfg.fit
    prior = None
    if f.prior == "trak":
        from .priors import trak

        prior = trak(cfg, num_models=f.prior_models, progress=progress)
        times["prior_s"] = time.time() - t
        t = time.time()
    datamodels = fit(out / "store", out / "datamodels.npz", device=f.device, val_fraction=f.val_fraction,
                     num_lambdas=f.num_lambdas, lambda_min_ratio=f.lambda_min_ratio, max_iter=f.max_iter,
                     tol=f.tol, chunk_rows=f.chunk_rows, seed=cfg.seed, prior=prior,
                     prior_gamma=f.prior_gamma, progress=progress)
    times["fit_s"] = time.time() - t

    t = time.time()
    scores = lds(out / "store", datamodels)
    times["evaluate_s"] = time.time() - t

    meta = read_meta(data_dir)
    metrics = {
        "lds": scores["lds"],
        "lds_quantiles": scores.get("quantiles"),
        "num_models": sweep_summary["num_models"],
        "num_fit_models": int(datamodels["num_models"]),
        "num_eval_models": scores["num_models"],
        "num_train": int(meta["num_train"]),
        "num_targets": int(datamodels["weight"].shape[1]),
        "models_trained_now": sweep_summary["trained"],
        **times,
        "total_s": sum(times.values()),
        # The hardware-dependent choices this run made (kernels, precision, K) and where.
        "hardware": {"machine": hardware.machine(), "choices": hardware.choices()},
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    if report:
        from .report import report as write_report

        t = time.time()
        metrics["report"] = str(write_report(out, datamodels=datamodels, config=cfg, address=address,
                                             progress=progress))
        metrics["report_s"] = time.time() - t
        metrics["total_s"] += metrics["report_s"]
        metrics["hardware"]["choices"] = hardware.choices()
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
