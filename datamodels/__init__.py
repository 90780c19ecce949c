"""Estimate datamodels at scale.

The Python API mirrors the command line, one function per stage::

    import datamodels
    cfg = datamodels.load_config("configs/digits.yaml", ["sweep.num_models=2000"])
    datamodels.prepare(cfg)                       # FFCV .beton files in <out>/data
    datamodels.sweep(cfg)                         # trained models' margins in <out>/store
    datamodels.live_lds("runs/digits/store")      # the sweep's live LDS checkpoints and forecast
    dm = datamodels.fit("runs/digits/store", "runs/digits/datamodels.npz")
    datamodels.lds("runs/digits/store", dm)       # {"lds": ..., "per_target": ...}
    datamodels.lds("runs/digits/store", scores="trak.npy")  # any method's N_train x N_targets scores
    datamodels.Store("STORE", spec="spec.json", eval_rows="9000:10000")  # a reference-layout store
    datamodels.top(dm, target=3), datamodels.nearest(dm, target=3)
    datamodels.run(cfg)                           # all of the above, with metrics.json
    datamodels.report("runs/digits")              # runs/digits/report.html

The analyses (counterfactuals, brittleness, leakage, embeddings, learning curve) live in
``datamodels.analyses``.
"""
# Stage functions share their modules' names (datamodels.fit is the function, the module is
# datamodels.fit in sys.modules): imported eagerly so the names always mean the functions.
from .errors import DatamodelsError
from .config import load as load_config
from .store import Store
from .prepare import prepare
from .sweep import sweep
from .checkpoints import live_lds
from .fit import fit, predict
from .evaluate import lds
from .query import top, nearest
from .pipeline import run
from .report import report

__all__ = ["DatamodelsError", "load_config", "Store", "prepare", "sweep", "live_lds", "fit", "predict", "lds", "top",
           "nearest", "run", "report"]
