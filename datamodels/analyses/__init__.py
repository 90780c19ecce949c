"""Analyses of fitted datamodels, each claim checkable by retraining.

::

    from datamodels import analyses
    run = analyses.Run("runs/digits")                       # store, data, datamodels, config
    analyses.counterfactual(run, 7, "top:10", verify=10)    # predicted vs actual margin after removal
    analyses.brittleness(run, verify=10)                    # support sizes, share that truly flip
    analyses.leakage(run, k=20)                             # likely (test, train) near-duplicates
    analyses.embeddings(run)                                # PCA of datamodel vectors
    analyses.learning_curve(run)                            # LDS against the number of models

``verify=R`` trains R models per counterfactual mask through the sweep machinery
(``datamodels.sweep.train_masks``), so the check uses the same worker and Ray setup as the
sweep that produced the datamodels.
"""
from ._run import Run, open_run, parse_remove
from .brittleness import brittleness, support_sizes
from .counterfactual import counterfactual, pick_targets
from .embeddings import embeddings, nearest
from .leakage import hardest_targets, leakage, plant_duplicates, planted_check, planted_effects
from .learning_curve import learning_curve

__all__ = ["Run", "open_run", "parse_remove", "counterfactual", "pick_targets", "brittleness", "support_sizes",
           "leakage", "hardest_targets", "plant_duplicates", "planted_effects", "planted_check", "embeddings",
           "nearest", "learning_curve"]
