"""Learning curve: LDS against the number of models used for fitting.

Datamodels are refitted on the first n completed fitting models of the store (masks are
independent draws, so the first n are a random sample, and each smaller set is part of
the larger ones, as a shorter sweep would have been) and scored on the same held-out
evaluation models.  A curve still rising at the right end says more models would pay off.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from .. import config as config_lib
from ..errors import DatamodelsError
from ._run import Run, open_run, rng_for

# Fewer fitting models than this leave too few for a validation split worth the name.
MIN_MODELS = 40


def default_sizes(num_models: int, points: int = 5, smallest: float = 1 / 16) -> list:
    """Geometric steps from ``smallest`` * ``num_models`` (at least MIN_MODELS) up to ``num_models``."""
    lo = max(MIN_MODELS, int(num_models * smallest))
    if num_models <= lo:
        return [num_models]
    return sorted({int(round(x)) for x in np.geomspace(lo, num_models, points)})


def learning_curve(run: Union[Run, str], *, sizes: Optional[Sequence[int]] = None, num_targets: Optional[int] = 100,
                   fit_options: Optional[dict] = None, seed: int = 0, progress: bool = True) -> dict:
    """LDS (and its quantiles over targets) of datamodels refitted on growing numbers of models.

    Refits cost about as much as the run's own fit each, and more when there are fewer models
    than training examples, so by default they cover a random sample of ``num_targets``
    targets (``None``: all); every point uses the same sample, so the curve is comparable
    along its length, and a target's datamodel does not depend on which others are fitted
    with it.  ``fit_options`` are keyword arguments of ``datamodels.fit`` (default: the run
    config's ``fit`` section and seed when there is one).  The largest size reuses the run's own
    datamodels when it equals the number of models they were fitted on."""
    from ..evaluate import lds
    from ..regression import fit

    run = open_run(run)
    store = run.store
    fit_rows = store.rows("fit")
    total = len(fit_rows)
    if store.num_eval == 0 or len(store.rows("eval")) == 0:
        raise DatamodelsError(f"store {store.path} has no completed evaluation models to score LDS on")
    if total < MIN_MODELS:
        raise DatamodelsError(f"store {store.path} has {total} fitting models; a learning curve needs at least "
                              f"{MIN_MODELS}")
    sizes = default_sizes(total) if sizes is None else sorted({int(n) for n in sizes})
    bad = [n for n in sizes if not MIN_MODELS <= n <= total]
    if bad:
        raise DatamodelsError(f"--sizes must lie in {MIN_MODELS}..{total} (the store's completed fitting models), "
                              f"got {bad}")
    options = dict(fit_options) if fit_options is not None else _config_fit_options(run)
    options.pop("targets", None)
    chosen = np.arange(run.num_targets)
    if num_targets is not None and num_targets < run.num_targets:
        if int(num_targets) < 1:
            raise DatamodelsError(f"--num-targets must be >= 1, got {num_targets}")
        chosen = np.sort(rng_for(seed, "learning-curve").choice(run.num_targets, int(num_targets), replace=False))
    from tqdm.auto import tqdm

    points = []
    for n in tqdm(sizes, desc="learning curve", unit="fit", disable=not progress):
        if n == total and int(run.dm.get("num_models", -1)) == total:
            dm = {"weight": run.weight[:, chosen], "bias": run.bias[chosen], "targets": run.columns[chosen]}
        else:
            dm = fit(store, rows=fit_rows[:n], targets=run.columns[chosen], progress=False, **options)
        scores = lds(store, dm)
        points.append({"num_models": n, "lds": float(scores["lds"]), "quantiles": scores.get("quantiles", {})})
    return {"num_eval_models": int(len(store.rows("eval"))), "num_targets": int(len(chosen)),
            "targets": chosen.tolist(), "fingerprint": run.fingerprint(), "points": points}


def _config_fit_options(run: Run) -> dict:
    try:
        cfg = run.config
    except DatamodelsError:
        return {}
    return {"options": config_lib.fit_options(cfg), "seed": int(cfg.seed)}
