"""The worker contract: what a training program must provide, and the one place that loads one.

A config is code: ``worker.name`` names a Python module, and every command that reads the config
imports it (which runs its top-level code) and calls its functions.  Only use configs, and worker
modules on ``sys.path``, that you trust as you would trust a script you run.

A worker module provides::

    train(masks, seeds, config) -> margins

``masks``: bool ``[K, N_train]``, one training subset per model; ``seeds``: int ``[K]``, one seed
per model; ``config``: ``{"worker": <the worker section>, "data": {"dir": ..., "targets": ...}}``.
It returns float32 ``[K, N_targets]``: each model's margin (correct-class logit minus the largest
other logit) on every target example.  It is a pure function of its inputs: the sweep's driver owns
the store and writes the results.  Optional, each checked here when present:

* ``Config``: a dataclass of the worker's settings.  The ``worker`` section is merged into it
  (types converted, unknown keys refused) and it is constructed once, so its ``__post_init__`` can
  refuse bad values (raise ``ValueError`` or ``TypeError`` with a message naming the key).
* ``resolve(worker, meta, models_per_task) -> dict``: settings left ``auto`` made concrete once per
  sweep, on the driver (``meta``: the prepared data's ``meta.json``).
* ``default_models_per_task(worker[, meta]) -> int``: K when ``sweep.models_per_task`` is 0.
* ``gradient_kernels(masks, seeds, config)``: what TRAK priors (``fit.prior: trak``) need.
* ``gradient_features(masks, seeds, config)``: the per-example gradients themselves, with which
  the TRAK prior works in their dimension instead of N×N when N is larger.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
from types import ModuleType
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, runtime_checkable

import numpy as np

from .errors import DatamodelsError

HOOKS = ("resolve", "default_models_per_task", "gradient_kernels", "gradient_features")
# Dotted module path of identifiers: no relative imports, file paths or empty parts.
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Integer settings are passed to numpy and torch, which take at most a signed 64-bit value.
_INT64_MAX = int(np.iinfo(np.int64).max)


@runtime_checkable
class Worker(Protocol):
    """A training program (see the module docstring); the optional hooks are not part of it."""

    def train(self, masks: np.ndarray, seeds: np.ndarray, config: Dict[str, Any]) -> np.ndarray:
        ...


def load(name: Any) -> ModuleType:
    """Import the worker module ``name`` and check its contract; a one-line error otherwise."""
    if not isinstance(name, str) or not _MODULE_NAME.match(name):
        raise DatamodelsError(f"worker.name must name a worker module, e.g. workers.mlp; got {name!r}")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise DatamodelsError(f"worker.name: cannot import worker module {name!r}: {_first_line(exc)}") from None
    except Exception as exc:  # the module's own code failed while importing: name it, in one line
        raise DatamodelsError(f"worker.name: importing worker module {name!r} failed: "
                              f"{type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(module, Worker) or not callable(module.train):
        raise DatamodelsError(f"worker.name: module {name!r} has no train(masks, seeds, config)")
    schema = getattr(module, "Config", None)
    if schema is not None and not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise DatamodelsError(f"worker {name}: Config must be a dataclass")
    for hook_name in HOOKS:
        value = getattr(module, hook_name, None)
        if value is not None and not callable(value):
            raise DatamodelsError(f"worker {name}: {hook_name} must be a function")
    return module


def hook(module: ModuleType, name: str) -> Optional[Callable]:
    """The worker's optional hook ``name`` (one of ``HOOKS``), or None."""
    if name not in HOOKS:
        raise ValueError(f"unknown worker hook {name!r}")
    return getattr(module, name, None)


def settings(section: Any) -> Dict[str, Any]:
    """The ``worker`` section checked against the named module's ``Config``: ``{"name": ..., **values}``."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section)
    if not isinstance(section, Mapping):
        raise DatamodelsError(f"the worker section must be a mapping of settings (name: ..., ...), "
                              f"got {type(section).__name__}")
    name = section.get("name")
    module = load(name)
    for key in section:
        if not isinstance(key, str):
            raise DatamodelsError(f"worker: setting names must be strings, got {key!r}")
    params = {k: v for k, v in section.items() if k != "name"}
    schema = getattr(module, "Config", None)
    if schema is None:
        _check_values(params)
        return {"name": name, **params}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), params)
        values = OmegaConf.to_container(merged)  # stored untyped: the section is a free-form mapping
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        message = str(exc).strip().splitlines()[0]
        raise DatamodelsError(f"bad config: worker.{key}: {message}" if key else f"bad config: worker: {message}") \
            from None
    _check_values(values)
    try:  # the worker's own checks of values (its __post_init__), which merging does not run
        schema(**values)
    except (ValueError, TypeError) as exc:
        raise DatamodelsError(f"bad config: {_first_line(exc)}") from None
    return {"name": name, **values}


def _check_values(values: Mapping[str, Any]) -> None:
    """What no worker setting can be: a NaN or infinite number, or an integer beyond 64 bits."""
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise DatamodelsError(f"worker.{key} must be a finite number, got {value}")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _INT64_MAX:
            raise DatamodelsError(f"worker.{key} is too large: {value}")


def models_per_task(worker: Mapping[str, Any], meta: Optional[Dict[str, Any]] = None) -> int:
    """The worker's ``default_models_per_task(worker[, meta])``, or 1 for a worker without one."""
    choose = hook(load(worker["name"]), "default_models_per_task")
    if choose is None:
        return 1
    takes_meta = len(inspect.signature(choose).parameters) > 1
    return max(1, int(choose(dict(worker), meta) if takes_meta else choose(dict(worker))))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
