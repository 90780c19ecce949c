"""Estimate datamodels at scale.

The Python API mirrors the command line, one function per stage::

    import datamodels
    cfg = datamodels.load_config("configs/digits.yaml", ["sweep.num_models=2000"])
    datamodels.prepare(cfg)                       # FFCV .beton files in <out>/data
    datamodels.sweep(cfg)                         # trained models' margins in <out>/store
    dm = datamodels.fit("runs/digits/store", "runs/digits/datamodels.npz")
    datamodels.lds("runs/digits/store", dm)       # {"lds": ..., "per_target": ...}
    datamodels.top(dm, target=3), datamodels.nearest(dm, target=3)
    datamodels.run(cfg)                           # all of the above, with metrics.json
"""
import importlib

from .errors import DatamodelsError

# Imported on first use, so `datamodels status` does not pay for torch and Ray.
_API = {
    "load_config": ("config", "load"),
    "prepare": ("prepare", "prepare"),
    "Store": ("store", "Store"),
    "sweep": ("sweep", "sweep"),
    "fit": ("fit", "fit"),
    "predict": ("fit", "predict"),
    "lds": ("evaluate", "lds"),
    "top": ("query", "top"),
    "nearest": ("query", "nearest"),
    "run": ("pipeline", "run"),
}
__all__ = ["DatamodelsError", *_API]


def __getattr__(name):
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'datamodels' has no attribute {name!r}")
