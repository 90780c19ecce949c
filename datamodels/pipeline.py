"""``datamodels run``: prepare → sweep → fit → evaluate, with timings in ``metrics.json``."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from . import config as config_lib
from .errors import DatamodelsError
from .files import (DATAMODELS_KEYS, REPORT_MARKER, atomic_write_text, check_output, json_with_keys, npz_with_keys,
                    store_directory, text_with_marker)

log = logging.getLogger("datamodels")
METRICS_KEYS = ("lds", "num_models")  # what an earlier call's metrics.json holds


def run(config=None, *, address=None, progress: bool = True, report: bool = True) -> dict:
    """The whole pipeline for one config; every stage resumes, so re-running is cheap.

    ``report`` also writes ``<out>/report.html`` (see ``datamodels.report``), after
    ``metrics.json``, so a failing report never costs the metrics."""
    from . import hardware
    from .evaluate import lds
    from .regression import fit
    from .prepare import prepare, read_meta
    from .sweep import sweep

    from .cluster import check_cluster, task_request

    cfg = config_lib.coerce(config)
    out = Path(cfg.out)
    saved = check_run_directory(cfg, report=report)
    check_cluster(address or cfg.sweep.address, task_request(cfg.sweep))  # before anything is written
    times = {}

    t = time.time()
    data_dir = prepare(cfg, progress=progress)
    times["prepare_s"] = time.time() - t
    if saved is None:  # a new run: its config, once the data it names has been read
        config_lib.save(cfg, out / "config.yaml")

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
    datamodels = fit(out / "store", out / "datamodels.npz", options=config_lib.fit_options(cfg), seed=cfg.seed,
                     prior=prior, progress=progress)
    times["fit_s"] = time.time() - t

    t = time.time()
    scores = lds(out / "store", datamodels)
    times["evaluate_s"] = time.time() - t

    meta = read_meta(data_dir)
    metrics = {
        "lds": scores["lds"],
        "lds_quantiles": scores.get("quantiles"),
        # The held-out protocol, the LDS's interval and the noise ceiling (docs/lds-protocols.md).
        **{k: scores[k] for k in ("protocol", "ci", "ceiling") if k in scores},
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
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))

    if report:
        from .report import report as write_report

        t = time.time()
        metrics["report"] = str(write_report(out, datamodels=datamodels, config=cfg, address=address,
                                             progress=progress))
        metrics["report_s"] = time.time() - t
        metrics["total_s"] += metrics["report_s"]
        metrics["hardware"]["choices"] = hardware.choices()
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def check_run_directory(cfg, report: bool = True):
    """Before anything is written: ``out`` is a directory outside any store, the files ``run``
    writes there are its own from an earlier call (or absent), and a ``config.yaml`` already there
    asks for the same models and data as ``cfg`` (it is never rewritten).  Returns that config as
    a dict, or None for a new run."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DatamodelsError(f"out={out} is a file; out must name a directory for the run")
    store = store_directory(out)
    if store is not None:
        raise DatamodelsError(f"out={out} is inside the store {store}; choose a directory of its own")
    hint = "move it away or choose another out="
    outputs = [("datamodels.npz", npz_with_keys(*DATAMODELS_KEYS)), ("metrics.json", json_with_keys(*METRICS_KEYS))]
    if report:
        outputs.append(("report.html", text_with_marker(REPORT_MARKER)))
    for name, produced in outputs:
        check_output(out / name, produced=produced, what="output", hint=hint)
    path = out / "config.yaml"
    if not path.exists():
        check_output(path, what="output", hint=hint)  # not a directory, nor under a file
        return None
    if not path.is_file():
        raise DatamodelsError(f"{path} is not a file; {hint}")
    saved = config_lib.read_saved(path)
    changed = config_lib.differences(saved, config_lib.to_dict(cfg))
    if changed:
        raise DatamodelsError(f"config differs from the run's {path}: {'; '.join(changed)}; start a new out= or "
                              f"use the run's config")
    others = config_lib.differences(saved, config_lib.to_dict(cfg), keys=("sweep", "fit"))
    if others:
        log.info("%s keeps the run's first settings; this call uses %s", path, "; ".join(others))
    return saved
