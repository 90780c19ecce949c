"""Estimate datamodels at scale.

The Python API mirrors the command line, one function per stage::

    import datamodels
    cfg = datamodels.load_config("configs/digits.yaml", ["sweep.num_models=2000"])
    datamodels.prepare(cfg)                       # FFCV .beton files in <out>/data
    datamodels.sweep(cfg)                         # trained models' margins in <out>/store
    datamodels.live_lds("runs/digits/store")      # the sweep's live LDS checkpoints and forecast
    dm = datamodels.fit("runs/digits/store", "runs/digits/datamodels.npz")
    dm = datamodels.fit("runs/digits/store", prior=datamodels.trak_prior(cfg))  # around TRAK scores
    datamodels.lds("runs/digits/store", dm)       # {"lds": ..., "per_target": ...}
    datamodels.lds("runs/digits/store", scores="trak.npy")  # any method's N_train x N_targets scores
    datamodels.Store("STORE", spec="spec.json", eval_rows="9000:10000")  # a reference-layout store
    datamodels.top(dm, target=3), datamodels.nearest(dm, target=3)
    datamodels.run(cfg)                           # all of the above, with metrics.json
    datamodels.report("runs/digits")              # runs/digits/report.html

The analyses (counterfactuals, brittleness, leakage, embeddings, learning curve) live in
``datamodels.analyses``.
"""
import importlib
import sys
import types

from .errors import DatamodelsError

# name -> (module, attribute).  Each is imported on first use: the stages pull in torch, Ray
# and FFCV, seconds of start-up that `datamodels --help` or a command stopped by a bad config
# should not pay.
_API = {"load_config": ("config", "load"), "Store": ("store", "Store"), "prepare": ("prepare", "prepare"),
        "sweep": ("sweep", "sweep"), "live_lds": ("live", "live_lds"), "fit": ("regression", "fit"),
        "trak_prior": ("priors", "trak"), "predict": ("artifacts", "predict"), "lds": ("evaluate", "lds"),
        "top": ("query", "top"), "nearest": ("query", "nearest"), "run": ("pipeline", "run"),
        "report": ("report", "report")}

__all__ = ["DatamodelsError", *_API]


class _Package(types.ModuleType):
    """Stage functions share their modules' names (``datamodels.sweep`` is the function, the module
    is ``sys.modules["datamodels.sweep"]``): the import system's binding of a submodule to its
    name on the package is skipped for those names, so they always mean the functions."""

    def __getattr__(self, name):
        if name not in _API:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        module, attr = _API[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name, value):
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_API))


sys.modules[__name__].__class__ = _Package
