"""Configuration: YAML files validated against typed defaults.

A config has one section per stage (``data``, ``sweep``, ``worker``, ``fit``)
plus the output directory ``out`` and the master ``seed``.  Every key can be
overridden from the command line as ``section.key=value``.  Unknown keys and
values of the wrong type are rejected up front with a message naming the key,
so a typo never silently falls back to a default.

The ``worker`` section is open: ``worker.name`` names a module (for example
``workers.mlp``) and the rest are that worker's hyperparameters, validated
against the worker module's own ``Config`` dataclass when it has one.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import DatamodelsError


# Auto interval: about this many checkpoints per sweep, none closer than MIN_INTERVAL models
# (below that the regression has too few models per validation split to mean much).  Each costs
# a fraction of a fit: ten, on 100 targets, took 4.9 CPU-seconds on the digits default (AVX2 CPU).
AUTO_CHECKPOINTS = 10
MIN_INTERVAL = 100


@dataclass
class DataConfig:
    source: str = "digits"  # digits | npz | cifar10
    path: Optional[str] = None  # the .npz file or CIFAR-10 archive, for those sources
    num_test: int = 500  # digits only: size of the seeded test split
    split_seed: int = 0  # digits only: seed of the train/test split
    targets: str = "test"  # test | test+train: whose margins the workers log


@dataclass
class SweepConfig:
    num_models: int = 10000  # models used for fitting (training + validation)
    num_eval_models: int = 500  # held-out models used only for LDS
    alpha: float = 0.5  # fraction of the training set in each mask
    models_per_task: int = 0  # K: models one Ray task trains together; 0: the worker's default for its device
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    max_retries: int = 2  # retries of a failing task before it is recorded as failed
    task_timeout_s: float = 0.0  # a task running longer is cancelled and retried; 0 = no limit
    max_in_flight: int = 0  # tasks submitted at once; 0 = twice the cluster's task slots
    address: Optional[str] = None  # existing Ray cluster; None starts a local one
    margins_dtype: str = "float32"
    # Live LDS (datamodels.checkpoints): refit and score every this many fitting models;
    # None: about 1/10 of the sweep (at least 100); 0: off.
    checkpoint_every: Optional[int] = None
    checkpoint_targets: int = 100  # targets sampled for the live LDS; 0: all
    until_lds: Optional[float] = None  # stop once a checkpoint's LDS reaches this
    until_gain: Optional[float] = None  # stop once the forecast gain from doubling the models is below this


@dataclass
class FitConfig:
    device: str = "cpu"
    val_fraction: float = 0.1  # share of the fitting models used to choose lambda
    num_lambdas: int = 40
    lambda_min_ratio: float = 1e-3  # the path ends at this fraction of lambda_max
    max_iter: int = 300  # proximal-gradient iterations per lambda at most
    tol: float = 1e-4  # relative change in the weights that counts as converged
    chunk_rows: int = 8192  # store rows read per chunk when streaming
    # none | trak: the lasso around a prior mean from TRAK scores of a few of the sweep's own
    # models (datamodels.priors), computed by retraining the first prior_models fitting models.
    prior: str = "none"
    prior_models: int = 30
    # the adaptive lasso around the prior: each weight's L1 penalty scaled by
    # (|prior| / mean |prior| + 0.1)^-prior_gamma, so the examples the prior ranks high move freely
    prior_gamma: float = 0.5


@dataclass
class Config:
    out: str = "runs/digits"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    worker: Dict[str, Any] = field(default_factory=lambda: {"name": "workers.mlp"})
    fit: FitConfig = field(default_factory=FitConfig)


def _one_line(exc: OmegaConfBaseException, section: str = "") -> str:
    msg = str(exc).strip().splitlines()[0]
    key = getattr(exc, "full_key", None)
    return f"{section}{key}: {msg}" if key else msg


def load(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> DictConfig:
    """The validated config from a YAML file and ``section.key=value`` overrides."""
    schema = OmegaConf.structured(Config)
    layers = [schema]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DatamodelsError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # YAML syntax errors come in many types
            raise DatamodelsError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}")
        if not isinstance(loaded, DictConfig):
            raise DatamodelsError(f"config {path} must be a mapping of sections, got {type(loaded).__name__}")
        layers.append(loaded)
    for item in overrides:
        if "=" not in item:
            raise DatamodelsError(f"override {item!r} must look like section.key=value")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.merge(*layers)
    except OmegaConfBaseException as exc:
        raise DatamodelsError(f"bad config: {_one_line(exc)}") from None
    return validate(cfg)


def from_dict(values: Dict[str, Any]) -> DictConfig:
    """The validated config from a plain dict (the Python API's entry point)."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(values))
    except OmegaConfBaseException as exc:
        raise DatamodelsError(f"bad config: {_one_line(exc)}") from None
    return validate(cfg)


def coerce(config: Union[None, str, Path, Dict[str, Any], DictConfig]) -> DictConfig:
    """Accept any of the forms the Python API takes: a path, a dict or a loaded config."""
    if config is None:
        return load()
    if isinstance(config, DictConfig):
        return validate(config)
    if isinstance(config, (str, Path)):
        return load(config)
    if isinstance(config, dict):
        return from_dict(config)
    raise DatamodelsError(f"config must be a path, dict or DictConfig, got {type(config).__name__}")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise DatamodelsError(message)


def validate(cfg: DictConfig) -> DictConfig:
    """Range checks the type system cannot express, and the worker's own schema."""
    d, s, f = cfg.data, cfg.sweep, cfg.fit
    _check(d.source in ("digits", "npz", "cifar10"), f"data.source must be digits, npz or cifar10, got {d.source!r}")
    _check(d.source == "digits" or d.path, f"data.path is required when data.source is {d.source}")
    _check(d.targets in ("test", "test+train"), f"data.targets must be 'test' or 'test+train', got {d.targets!r}")
    _check(d.num_test > 0, f"data.num_test must be positive, got {d.num_test}")
    _check(s.num_models > 0, f"sweep.num_models must be positive, got {s.num_models}")
    _check(s.num_eval_models >= 0, f"sweep.num_eval_models must be >= 0, got {s.num_eval_models}")
    _check(0.0 < s.alpha < 1.0, f"sweep.alpha must be in (0, 1), got {s.alpha}")
    _check(s.models_per_task >= 0, f"sweep.models_per_task must be >= 1, or 0 for the worker's default; "
                                   f"got {s.models_per_task}")
    _check(s.cpus_per_task >= 0, f"sweep.cpus_per_task must be >= 0, got {s.cpus_per_task}")
    _check(s.gpus_per_task >= 0, f"sweep.gpus_per_task must be >= 0, got {s.gpus_per_task}")
    _check(s.max_retries >= 0, f"sweep.max_retries must be >= 0, got {s.max_retries}")
    _check(s.task_timeout_s >= 0, f"sweep.task_timeout_s must be >= 0, got {s.task_timeout_s}")
    _check(s.max_in_flight >= 0, f"sweep.max_in_flight must be >= 0, got {s.max_in_flight}")
    _check(s.margins_dtype in ("float16", "float32", "float64"),
           f"sweep.margins_dtype must be float16, float32 or float64, got {s.margins_dtype!r}")
    _check_live(s)
    _check(f.device in ("cpu", "cuda") or str(f.device).startswith("cuda:"),
           f"fit.device must be cpu or cuda, got {f.device!r}")
    _check(0.0 < f.val_fraction < 1.0, f"fit.val_fraction must be in (0, 1), got {f.val_fraction}")
    _check(f.num_lambdas >= 1, f"fit.num_lambdas must be >= 1, got {f.num_lambdas}")
    _check(0.0 < f.lambda_min_ratio < 1.0, f"fit.lambda_min_ratio must be in (0, 1), got {f.lambda_min_ratio}")
    _check(f.max_iter >= 1, f"fit.max_iter must be >= 1, got {f.max_iter}")
    _check(f.tol > 0, f"fit.tol must be positive, got {f.tol}")
    _check(f.chunk_rows >= 1, f"fit.chunk_rows must be >= 1, got {f.chunk_rows}")
    _check(f.prior in ("none", "trak"), f"fit.prior must be none or trak, got {f.prior!r}")
    _check(f.prior_models >= 1, f"fit.prior_models must be >= 1, got {f.prior_models}")
    _check(0 <= f.prior_gamma < float("inf"), f"fit.prior_gamma must be a number >= 0, got {f.prior_gamma}")
    cfg.worker = worker_config(cfg.worker)
    return cfg


def _check_live(s) -> None:
    """The live-LDS settings: each alone, then against the sweep they watch."""
    every = s.checkpoint_every
    _check(every is None or every == 0 or every >= 20,
           f"sweep.checkpoint_every must be 0 (off), >= 20 fitting models, or unset for the default; got {every}")
    _check(every is None or every <= s.num_models,
           f"sweep.checkpoint_every={every} is larger than the sweep (sweep.num_models={s.num_models}): "
           f"no checkpoint would be reached")
    _check(s.checkpoint_targets >= 0, f"sweep.checkpoint_targets must be >= 0 (0: all targets), "
                                      f"got {s.checkpoint_targets}")
    for name in ("until_lds", "until_gain"):
        value = s[name]
        if value is None:
            continue
        _check(0.0 < value < 1.0, f"sweep.{name} must be in (0, 1), got {value}")
        _check(every != 0, f"sweep.{name} needs live LDS checkpoints, but sweep.checkpoint_every is 0")
    watched = [name for name in ("until_lds", "until_gain") if s[name] is not None] + \
        (["checkpoint_every"] if every else [])
    if watched:
        _check(s.num_eval_models >= 2, f"sweep.{watched[0]} needs held-out models to score LDS on, but "
                                       f"sweep.num_eval_models is {s.num_eval_models} (at least 2)")
        _check(interval(s) > 0,
               f"sweep.{watched[0]}: a sweep of {s.num_models} fitting models is too short for the default "
               f"checkpoint interval; set sweep.checkpoint_every")


def interval(sweep_cfg) -> int:
    """Fitting models between checkpoints: ``sweep.checkpoint_every``, or when it is unset
    (None) about 1/10 of the sweep, at least 100 models; 0 (no checkpoints) when unset and
    the sweep has no held-out models or is too small for two checkpoints."""
    every = sweep_cfg.checkpoint_every
    if every is not None:
        return int(every)
    if sweep_cfg.num_eval_models < 2:
        return 0
    every = max(MIN_INTERVAL, int(sweep_cfg.num_models) // AUTO_CHECKPOINTS)
    return every if 2 * every <= sweep_cfg.num_models else 0


def worker_config(section: Any) -> Dict[str, Any]:
    """Validate the worker section against the named worker module's ``Config``."""
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section)
    name = section.get("name")
    _check(isinstance(name, str) and name, "worker.name must name a worker module, e.g. workers.mlp")
    module = load_worker(name)
    schema = getattr(module, "Config", None)
    if schema is None:
        return dict(section)
    _check(dataclasses.is_dataclass(schema), f"worker {name}: Config must be a dataclass")
    params = {k: v for k, v in section.items() if k != "name"}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), params)
    except OmegaConfBaseException as exc:
        raise DatamodelsError(f"bad config: {_one_line(exc, 'worker.')}") from None
    # Stored untyped: the Config section is declared as a free-form mapping.
    values = OmegaConf.to_container(merged)
    try:  # the worker's own checks of values (its __post_init__), which merging does not run
        schema(**values)
    except (ValueError, TypeError) as exc:
        raise DatamodelsError(f"bad config: {str(exc).strip().splitlines()[0]}") from None
    return {"name": name, **values}


def load_worker(name: str):
    """Import a worker module; it must define ``train(masks, seeds, config)``."""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise DatamodelsError(f"worker.name: cannot import worker module {name!r}: {exc}") from None
    _check(callable(getattr(module, "train", None)), f"worker.name: module {name!r} has no train(masks, seeds, config)")
    return module


def models_per_task(cfg: DictConfig, meta: Optional[Dict[str, Any]] = None,
                    worker: Optional[Dict[str, Any]] = None) -> int:
    """K for the sweep: ``sweep.models_per_task``, or when it is 0 the worker's
    ``default_models_per_task(worker, meta)`` (how many models it trains best at once on its
    device; ``meta``: the prepared data's), or 1 for a worker without one.  ``worker``: the
    worker settings to ask about (the sweep's, with ``auto`` resolved); by default the config's."""
    if cfg.sweep.models_per_task > 0:
        return int(cfg.sweep.models_per_task)
    worker = worker if worker is not None else to_dict(cfg.worker)
    choose = getattr(load_worker(worker["name"]), "default_models_per_task", None)
    if choose is None:
        return 1
    takes_meta = len(inspect.signature(choose).parameters) > 1
    return max(1, int(choose(worker, meta) if takes_meta else choose(worker)))


def to_dict(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def save(cfg: DictConfig, path: Union[str, Path]) -> None:
    OmegaConf.save(cfg, path)
