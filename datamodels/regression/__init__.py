"""Sparse linear datamodels: the regression from training-subset masks to margins.

``fit`` (``api``) reads a store into sufficient statistics (``stats``, with the XᵀX kernels of
``gram``), standardises them (``standardise``), solves the λ path per target and refits
(``path``, with the solver of ``solver``), around a prior if given (``prior``), in this process
or as Ray tasks over target slices (``distributed``), within the memory it checks for
(``memory``).  The fitted file is ``datamodels.artifacts``'s.
"""
from .api import fit, resolve_options
from .gram import GRAM_KERNELS, gram_kernel
from .memory import memory_estimate
from .path import PATH_TOL_FACTOR, PATIENCE, solve_path
from .stats import EXACT_FLOAT32, Stats, accumulate, margins, validation_rows

__all__ = ["fit", "resolve_options", "GRAM_KERNELS", "gram_kernel", "memory_estimate", "PATH_TOL_FACTOR",
           "PATIENCE", "solve_path", "EXACT_FLOAT32", "Stats", "accumulate", "margins", "validation_rows"]
