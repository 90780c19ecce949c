"""Learning curve: LDS against the number of models used for fitting.

Datamodels are fitted on the first n completed fitting models of the store (masks are
independent draws, so the first n are a random sample, and each smaller set is part of
the larger ones, as a shorter sweep would have been) and scored on the same held-out
evaluation models.  The sums a fit starts from (XᵀX, Xᵀy, ...) are accumulated once in row
order and read off at each n (``prefix_fits``), so the store is read about once for the whole
curve, and each point costs its λ path.  A curve still rising at the right end says more models would pay off.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import numpy as np

from .. import config as config_lib
from ..errors import DatamodelsError
from ..resources import check_memory
from ._run import Run, open_run, rng_for

# Keyword arguments of ``fit`` the prefix statistics reproduce (``prefix_fits``); others (``prior``,
# which for ``fit`` means prior values, a Ray cluster) fall back to one fit per point.
_PREFIX_OPTIONS = ({"options", "seed"} | {f.name for f in dataclasses.fields(config_lib.FitOptions)}) - {"prior"}
# Rows of the prefix that set the margins' offset, as ``fit`` does.
_OFFSET_ROWS = 1024
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

    The store is read about once for all points, but each point solves its own λ path, which
    costs about as much as the run's own fit's, and more when there are fewer models than
    training examples, so by default they cover a random sample of ``num_targets``
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

    reuse = int(run.dm.get("num_models", -1)) == total
    refitted = [n for n in sizes if not (n == total and reuse)]
    # One pass over the store for all points, unless the options need fit's own machinery.
    prefix = None if not refitted or set(options) - _PREFIX_OPTIONS else \
        prefix_fits(store, fit_rows, refitted, run.columns[chosen], options)
    points = []
    for n in tqdm(sizes, desc="learning curve", unit="fit", disable=not progress):
        if n == total and reuse:
            dm = {"weight": run.weight[:, chosen], "bias": run.bias[chosen], "targets": run.columns[chosen]}
        elif prefix is not None:
            dm = next(prefix)
        else:
            dm = fit(store, rows=fit_rows[:n], targets=run.columns[chosen], progress=False, **options)
        scores = lds(store, dm)
        points.append({"num_models": n, "lds": float(scores["lds"]), "quantiles": scores.get("quantiles", {})})
    return {"num_eval_models": int(len(store.rows("eval"))), "num_targets": int(len(chosen)),
            "targets": chosen.tolist(), "fingerprint": run.fingerprint(), "points": points}


def learning_curve_memory(num_train: int, num_targets: int, num_rows: int, chunk_rows: int) -> int:
    """Bytes the learning curve from prefix statistics adds to its process: a fit's (two XᵀX,
    the N×T statistics and the solver's working memory) and one XᵀX more, the running total of
    the prefix that each point's training statistics are taken out of."""
    from ..regression import EXACT_FLOAT32, memory_estimate

    gram = num_train * num_train * (4 if num_rows < EXACT_FLOAT32 else 8)
    return memory_estimate(num_train, num_targets, num_rows, "cpu", chunk_rows)["host"] + gram


def prefix_fits(store, fit_rows: np.ndarray, sizes: Sequence[int], cols: np.ndarray, fit_kwargs: dict):
    """For each n of ``sizes`` (ascending), the result of ``fit(store, rows=fit_rows[:n], targets=cols,
    **fit_kwargs)``, from one pass over the store in row order.

    XᵀX, Xᵀy and the other sums over the first n rows grow with n: they are accumulated once,
    in row order, and read off at each point.  A fit of n rows validates on the rows of the
    prefix with the smallest per-row keys (``validation_rows``), a set that changes with n, so
    each point reads its own validation rows again (a tenth of the prefix) and its training
    statistics are the prefix's less the validation rows'.  The solve is the fit's
    (``solve_path``), so the datamodels equal the fit's up to the order of float sums."""
    import torch

    from ..regression import Stats, accumulate, margins, resolve_options, solve_path, validation_rows
    from ..regression.memory import return_freed_memory

    fit_kwargs = dict(fit_kwargs)
    seed = int(fit_kwargs.pop("seed", 0))
    options = resolve_options(fit_kwargs.pop("options", None), **fit_kwargs)
    dev = torch.device(options.device)
    return_freed_memory()  # as fit does: N×N temporaries handed back when freed, a steady peak
    N, T, largest = store.num_train, len(cols), max(sizes)
    check_memory("the learning curve", learning_curve_memory(N, T, largest, options.chunk_rows),
                 f"{N:,} training examples: three XᵀX; {T:,} targets",
                 "pass fewer --num-targets, or run it where there is more memory")
    offset = margins(store, fit_rows[:_OFFSET_ROWS], cols).mean(axis=0)
    total = Stats.pair(N, T, largest, dev)[0]
    done = 0
    for n in sizes:
        new = fit_rows[done:n]
        # All of these rows go to ``total``: with no validation rows, its pair's second is never added to.
        accumulate(store, new, np.zeros(len(new), dtype=bool), cols, offset, options.chunk_rows, dev,
                   into=(total, total))
        done = n
        rows = fit_rows[:n]
        is_val = validation_rows(rows, store.num_models, options.val_fraction, seed)
        val = Stats.zeros(N, T, total.xx.dtype, dev)
        accumulate(store, rows[is_val], np.ones(int(is_val.sum()), dtype=bool), cols, offset, options.chunk_rows,
                   dev, into=(val, val))
        train = Stats(total.n - val.n, total.sx - val.sx, total.sy - val.sy, total.xx - val.xx,
                      total.xy - val.xy, total.yy - val.yy)
        result = solve_path(train, val, offset, options, dev)
        del train, val
        result["targets"] = cols
        result["num_models"] = np.int64(n)
        yield result


def _config_fit_options(run: Run) -> dict:
    try:
        cfg = run.config
    except DatamodelsError:
        return {}
    return {"options": config_lib.fit_options(cfg), "seed": int(cfg.seed)}
