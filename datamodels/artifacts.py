"""The fitted-datamodels file: an ``.npz`` of numpy arrays (``weight`` [N, T], ``bias`` [T],
``targets`` [T] and the fit's diagnostics), read and written with numpy alone."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from .errors import DatamodelsError
from .files import atomic_replace


def load(path) -> dict:
    """Fitted datamodels saved by ``fit(..., out=path)``."""
    path = Path(path)
    if not path.is_file():
        raise DatamodelsError(f"datamodels file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            dm = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatamodelsError(f"{path} is not a datamodels .npz file ({exc})") from None
    missing = [k for k in ("weight", "bias", "targets") if k not in dm]
    if missing:
        raise DatamodelsError(f"{path} is not a datamodels file: it lacks {', '.join(missing)}")
    check_datamodels(dm, path)
    if "num_models" in dm:
        if dm["num_models"].shape != () or dm["num_models"].dtype.kind not in "iu":
            raise DatamodelsError(f"{path}: num_models should be one whole number, got {dm['num_models']!r:.60}")
        dm["num_models"] = int(dm["num_models"])
    return dm


def check_datamodels(dm: dict, path) -> dict:
    """Datamodels (a dict of arrays, ``path`` naming where they come from) checked: weight [N, T]
    and bias [T] of finite numbers, targets [T] of whole numbers >= 0, N and T at least 1."""
    def array(key, kinds, ndim):
        a = np.asarray(dm[key])
        if a.dtype.kind not in kinds:
            raise DatamodelsError(f"{path}: {key} has dtype {a.dtype}, not "
                                  f"{'whole numbers' if kinds == 'iu' else 'numbers'}")
        if a.ndim != ndim:
            raise DatamodelsError(f"{path}: {key} has shape {list(a.shape)}, expected {ndim} dimension(s)")
        return a

    weight, bias = array("weight", "fiu", 2), array("bias", "fiu", 1)
    targets = array("targets", "iu", 1) if "targets" in dm else np.arange(weight.shape[1])
    T = weight.shape[1]
    if T == 0 or weight.shape[0] == 0:
        raise DatamodelsError(f"{path}: weight has shape {list(weight.shape)}: no datamodels")
    if bias.shape != (T,) or targets.shape != (T,):
        raise DatamodelsError(f"{path}: {T} weight columns, {bias.size} biases and {targets.size} target indices "
                              f"should be equal in number")
    if targets.min() < 0:
        raise DatamodelsError(f"{path}: targets holds the negative index {int(targets.min())}")
    for key, a in (("weight", weight), ("bias", bias)):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise DatamodelsError(f"{path}: {key} has {bad} non-finite values (NaN or inf)")
    return dm


def as_datamodels(datamodels) -> dict:
    """``datamodels`` as a dict of arrays: one already, or the path of a saved file."""
    return datamodels if isinstance(datamodels, dict) else load(datamodels)


def save(datamodels: dict, path) -> None:
    """Write datamodels to ``path`` (.npz), atomically: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
            np.savez(f, **{k: np.asarray(v) for k, v in datamodels.items()})
            f.flush()
            os.fsync(f.fileno())

    atomic_replace(path, write)


def check_writable(path) -> None:
    """Raise the OSError that ``save(…, path)`` would, by creating and removing a file beside it
    (before minutes of fitting, not after)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = path.with_name(path.name + ".tmp")
    with open(probe, "wb"):
        pass
    probe.unlink()


def predict(datamodels, masks) -> np.ndarray:
    """Predicted margins [m, T] (or [T] for one mask) of the given masks [m, N]."""
    dm = as_datamodels(datamodels)
    weight = np.asarray(dm["weight"], dtype=np.float32)
    masks = np.asarray(masks)
    one = masks.ndim == 1
    masks = masks[None] if one else masks
    if masks.ndim != 2 or masks.shape[1] != weight.shape[0]:
        raise DatamodelsError(f"masks of shape {list(np.shape(masks))} do not match datamodels over "
                              f"{weight.shape[0]} training examples")
    pred = masks.astype(np.float32) @ weight + np.asarray(dm["bias"], dtype=np.float32)
    return pred[0] if one else pred
