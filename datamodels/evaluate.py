"""The linear datamodeling score (LDS): how well datamodels rank held-out models' margins.

For each target, the Spearman rank correlation, across the store's completed evaluation
rows (models the regression never saw), between the predicted margin ``mask @ weight +
bias`` and the margin the trained model actually produced; the LDS is the mean over
targets (Park et al., TRAK, arXiv 2303.14186).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import metrics
from .metrics import protocol_shape
from .artifacts import as_datamodels
from .errors import DatamodelsError
from .store import Store


def lds(store, datamodels=None, rows: Optional[Sequence[int]] = None, chunk_rows: int = 8192, *,
        scores=None, transpose: bool = False, eval_rows=None, spec=None, protocol: str = "single") -> dict:
    """The LDS of ``datamodels`` (a dict from ``fit`` or the path of its .npz) on ``store``.

    ``scores`` instead of ``datamodels``: any attribution method's scores (TRAK, influence
    functions...), a path of an ``.npy`` file or an array, N_train x N_targets (T x N with
    ``transpose``); a positive score means the training example raises the target's margin.
    The prediction for a held-out model is then ``mask @ scores`` (a bias would not change the
    ranks).  ``store`` is a ``Store`` or a path, opened with ``spec`` and ``eval_rows`` (see
    ``Store``).

    ``protocol`` (``metrics.PROTOCOLS``, docs/lds-protocols.md): which held-out masks and how many
    of each mask's seeds (``sweep.eval_seeds``) make the ground truth, their margins averaged.
    ``rows`` overrides the rows scored (default: the completed evaluation rows), one model each.
    Besides the LDS: ``ci``, its bootstrap interval over the held-out masks, and ``ceiling``, the
    highest LDS any predictor could reach under this protocol (``metrics.noise_ceiling``; it needs
    >= 2 seeds per mask, else ``{"available": False}``).  Returns
    ``{"lds": mean over targets, "per_target": [T], "num_models": rows scored,
    "num_targets": T, "num_undefined": targets whose correlation is undefined,
    "quantiles": {...} of the defined per-target values}``.  A target whose actual or
    predicted margins are constant over the rows has no rank correlation: it is NaN in
    ``per_target``, left out of the mean and counted in ``num_undefined``.
    """
    if (datamodels is None) == (scores is None):
        raise DatamodelsError("give datamodels or a score matrix (scores), not both")
    if isinstance(store, Store):
        if eval_rows is not None or spec is not None:
            store = Store(store.path, spec=spec if spec is not None else store._spec_arg,
                          eval_rows=eval_rows if eval_rows is not None else store._eval_rows_arg)
    else:
        store = Store(store, spec=spec, eval_rows=eval_rows)
    if scores is not None:
        weight = load_scores(scores, store, transpose)
        bias = np.zeros(weight.shape[1], dtype=np.float32)
        cols = np.arange(weight.shape[1], dtype=np.int64)
    else:
        dm = as_datamodels(datamodels)
        weight = np.asarray(dm["weight"], dtype=np.float32)
        bias = np.asarray(dm["bias"], dtype=np.float32)
        cols = np.asarray(dm["targets"] if "targets" in dm else np.arange(weight.shape[1]), dtype=np.int64)
        _check_shapes(store, weight, bias, cols)
        _warn_if_fitted_on_eval_rows(store, dm)

    protocol_shape(protocol, 0, 0)  # an unknown name is refused before any work
    groups = None
    if rows is None:
        groups = held_out_groups(store)
        rows = groups[:, 0]
        if len(rows) == 0:
            hint = ("hold out rows of it with --eval-rows A:B (and fit with the same --eval-rows)"
                    if store.reference_layout else "grow the sweep's num_eval_models and run it")
            raise DatamodelsError(f"store {store.path} has no completed evaluation rows: {hint}")
    else:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= store.num_models):
            raise DatamodelsError(f"rows must lie in 0..{store.num_models - 1}")
        incomplete = rows[~np.asarray(store.completed, dtype=bool)[rows]]
        if len(incomplete):
            raise DatamodelsError(f"rows {', '.join(map(str, incomplete[:5]))} are not completed")
    if len(rows) < 2:
        raise DatamodelsError(f"a rank correlation needs at least 2 models; store {store.path} has {len(rows)} "
                              f"completed evaluation rows")

    if groups is None:
        groups = np.asarray(rows)[:, None]
    num_masks, seeds = protocol_shape(protocol, len(groups), groups.shape[1])
    groups = groups[:num_masks]
    rows = groups[:, 0]
    predicted = np.empty((len(rows), len(cols)), dtype=np.float64)
    margins = np.empty((len(rows), groups.shape[1], len(cols)), dtype=np.float64)
    for start in range(0, len(rows), chunk_rows):
        g = groups[start:start + chunk_rows]
        predicted[start:start + len(g)] = np.asarray(store.masks[g[:, 0]], dtype=np.float32) @ weight + bias
        margins[start:start + len(g)] = np.asarray(store.margins[g.ravel()], dtype=np.float64)[:, cols].reshape(
            len(g), g.shape[1], len(cols))
    actual = margins[:, :seeds].mean(1)

    result = metrics.lds(predicted, actual)
    return {"lds": result["lds"], "per_target": result["per_target"], "num_models": int(len(rows)),
            "num_targets": int(len(cols)), "num_undefined": result["num_undefined"], "quantiles": result["quantiles"],
            "dropped": result["dropped"],  # {reason: targets} of those without an LDS (metrics.DROP_REASONS)
            "protocol": {"name": protocol, "masks": int(len(rows)), "seeds_per_mask": int(seeds)},
            "ci": metrics.lds_interval(predicted, actual), "ceiling": _public(metrics.noise_ceiling(margins, seeds))}


def held_out_groups(store: Store) -> np.ndarray:
    """[masks, r] the completed held-out rows, one line per held-out mask and one column per seed
    it was trained with (``sweep.eval_seeds``: the store's consecutive held-out rows in groups of
    r share a mask); r = 1 for stores without repeats and for rows held out with ``eval_rows``.
    A mask with any seed unfinished is left out."""
    r = int(store.meta.get("eval_seeds", 1)) if store.eval_override is None else 1
    rows = store.rows("eval", completed_only=False)
    done = np.asarray(store.completed, dtype=bool)[rows]
    whole = len(rows) // r * r
    groups, complete = rows[:whole].reshape(-1, r), done[:whole].reshape(-1, r).all(1)
    return groups[complete]


def ceiling(store, protocol: str = "single", *, eval_rows=None, spec=None) -> dict:
    """The noise ceiling of ``store``'s held-out models under ``protocol`` (``metrics.noise_ceiling``),
    from the margins alone: no datamodels needed."""
    store = store if isinstance(store, Store) else Store(store, spec=spec, eval_rows=eval_rows)
    groups = held_out_groups(store)
    num_masks, seeds = protocol_shape(protocol, len(groups), groups.shape[1])
    groups = groups[:num_masks]
    margins = np.asarray(store.margins[groups.ravel()], dtype=np.float64).reshape(*groups.shape, -1)
    return {"protocol": protocol, **_public(metrics.noise_ceiling(margins, seeds))}


def _public(result: dict) -> dict:
    """A result without its per-target arrays (kept small for JSON and logs)."""
    return {k: v for k, v in result.items() if k != "per_target"}


def load_scores(scores, store: Store, transpose: bool = False) -> np.ndarray:
    """A score matrix as float32 [N_train, N_targets] of ``store``, checked: an ``.npy`` path or
    an array, N_train x N_targets (or N_targets x N_train with ``transpose``), finite numbers."""
    name = "score matrix"
    if not isinstance(scores, np.ndarray):
        path = Path(scores)
        name = f"score matrix {path}"
        if not path.is_file():
            raise DatamodelsError(f"{name} not found")
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
        except OSError as exc:
            raise DatamodelsError(f"{name}: cannot read it ({exc.strerror or exc})") from None
        if magic[:2] == b"PK":
            raise DatamodelsError(f"{name} is not an .npy file of one array (an .npz archive?)")
        if magic != b"\x93NUMPY":
            raise DatamodelsError(f"{name} is not a readable .npy file (no .npy header)")
        try:
            scores = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DatamodelsError(f"{name} is not a readable .npy file ({_first_line(exc)})") from None
        if not isinstance(scores, np.ndarray):  # an .npz archive
            raise DatamodelsError(f"{name} is not an .npy file of one array (an .npz archive?)")
    if scores.dtype.kind not in "fiub":
        raise DatamodelsError(f"{name} has dtype {scores.dtype}, not numbers")
    want = (store.num_train, store.num_targets)
    shape = tuple(scores.shape)
    if transpose:
        if scores.ndim == 2:
            scores = scores.T
        want_given = want[::-1]
    else:
        want_given = want
    if shape != want_given:
        hint = ""
        if len(shape) == 2 and shape == want_given[::-1] and want[0] != want[1]:
            hint = " (drop --transpose)" if transpose else " (T x N? pass --transpose)"
        orient = "N_targets x N_train" if transpose else "N_train x N_targets"
        raise DatamodelsError(f"{name} has shape {list(shape)}, but store {store.path} needs {orient} = "
                              f"{list(want_given)}{hint}")
    out = np.asarray(scores, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DatamodelsError(f"{name} has {int(bad.sum())} non-finite values (NaN or inf), the first at training "
                              f"example {int(i)}, target {int(j)}")
    return out


def _warn_if_fitted_on_eval_rows(store: Store, dm: dict) -> None:
    """Held-out rows chosen here (``eval_rows``) may be rows the datamodels were fitted on."""
    if store.eval_override is None or "num_models" not in dm:
        return
    fitted, outside = int(np.asarray(dm["num_models"])), len(store.rows("fit"))
    if fitted > outside:
        import logging

        start, stop = store.eval_override[0]
        logging.getLogger("datamodels").warning(
            f"warning: the datamodels were fitted on {fitted} models, more than the {outside} completed rows of store "
            f"{store.path} outside eval rows {start}:{stop}; if they were fitted on this store, they saw rows they are "
            f"now scored on: fit with the same --eval-rows")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_shapes(store: Store, weight: np.ndarray, bias: np.ndarray, cols: np.ndarray) -> None:
    if weight.ndim != 2 or weight.shape[0] != store.num_train:
        raise DatamodelsError(f"datamodels have weights of shape {list(weight.shape)}, but store {store.path} has "
                              f"{store.num_train} training examples")
    if bias.shape != (weight.shape[1],) or cols.shape != (weight.shape[1],):
        raise DatamodelsError(f"datamodels are inconsistent: {weight.shape[1]} weight columns, {bias.size} biases, "
                              f"{cols.size} target indices")
    if len(cols) and (cols.min() < 0 or cols.max() >= store.num_targets):
        raise DatamodelsError(f"datamodels cover target columns up to {int(cols.max())}, but store {store.path} has "
                              f"{store.num_targets} targets")
