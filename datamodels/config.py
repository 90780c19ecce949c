"""Configuration: YAML files validated against typed defaults.

A config has one section per stage (``data``, ``sweep``, ``worker``, ``fit``)
plus the output directory ``out`` and the master ``seed``.  Every key can be
overridden from the command line as ``section.key=value``.  Unknown keys and
values of the wrong type are rejected up front with a message naming the key,
so a typo never silently falls back to a default.

The ``worker`` section is open: ``worker.name`` names a module (for example
``workers.mlp``) and the rest are that worker's hyperparameters, validated
against the worker module's own ``Config`` dataclass when it has one.  A config is code:
``worker.name`` is imported (see ``datamodels.worker``), so use only configs you trust.

A config is validated once: ``load``, ``from_dict`` and ``coerce`` return a checked config, and
``coerce`` passes one that was already checked (unchanged since) through without checking it again.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

try:
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException
except ImportError:  # FitOptions and its checks need no OmegaConf: the fit runs without it (a bare GPU node)
    DictConfig = OmegaConf = None

    class OmegaConfBaseException(Exception):
        """Never raised: keeps the except clauses valid where OmegaConf is missing."""

from . import worker as worker_lib
from .errors import DatamodelsError
from .files import atomic_write_text


# Auto interval: about this many checkpoints per sweep, none closer than MIN_INTERVAL models
# (below that the regression has too few models per validation split to mean much).  Each costs
# a fraction of a fit: ten, on 100 targets, took 4.9 CPU-seconds on the digits default (AVX2 CPU).
AUTO_CHECKPOINTS = 10
MIN_INTERVAL = 100


@dataclass
class DataConfig:
    source: str = "digits"  # digits | npz | cifar10 | synthetic
    path: Optional[str] = None  # the .npz file or CIFAR-10 archive, for those sources
    num_test: int = 500  # digits: size of the seeded test split; synthetic: test images generated
    split_seed: int = 0  # digits: seed of the train/test split; synthetic: seed of the generated images
    targets: str = "test"  # test | test+train: whose margins the workers log
    # synthetic only (datamodels.synthetic): class-specific blob images generated from split_seed
    num_train: int = 1500  # training images
    image_size: int = 12  # images are image_size x image_size pixels
    channels: int = 1  # 1 (grayscale) or 3 (colour)
    num_classes: int = 10
    label_noise: float = 0.1  # fraction of training labels replaced by a random other class


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
    # Live LDS (datamodels.live): refit and score every this many fitting models;
    # None: about 1/10 of the sweep (at least 100); 0: off.
    checkpoint_every: Optional[int] = None
    checkpoint_targets: int = 100  # targets sampled for the live LDS; 0: all
    until_lds: Optional[float] = None  # stop once a checkpoint's LDS reaches this
    until_gain: Optional[float] = None  # stop once the forecast gain from doubling the models is below this
    # Each held-out mask trained with this many seeds (extra held-out rows sharing the mask): >= 2
    # gives the seed-mean LDS protocol (TRAK's) and the noise ceiling (docs/lds-protocols.md).
    eval_seeds: int = 1
    deterministic: bool = False  # every model trained with one fixed seed (MAGIC's setting)


@dataclass
class FitOptions:
    """The regression's options: the config's ``fit`` section, and the keyword options of
    ``datamodels.fit`` (``fit(store, out, num_lambdas=10)`` overrides one of these defaults)."""
    device: str = "cpu"
    val_fraction: float = 0.1  # share of the fitting models used to choose lambda
    num_lambdas: int = 40
    lambda_min_ratio: float = 1e-3  # the path ends at this fraction of lambda_max
    max_iter: int = 300  # proximal-gradient iterations per lambda at most
    tol: float = 1e-4  # relative change in the weights that counts as converged
    chunk_rows: int = 8192  # store rows read per chunk when streaming
    # none | trak: the lasso around a prior mean from TRAK scores of a few of the sweep's own
    # models (datamodels.priors), computed by retraining the first prior_models fitting models.
    # ``datamodels.fit`` itself fits around the prior values it is given (its ``prior`` argument).
    prior: str = "none"
    prior_models: int = 30
    # The adaptive lasso around the prior: each weight's L1 penalty scaled by
    # (|prior| / mean |prior| + 0.1)^-prior_gamma, so the examples the prior ranks high move freely.
    # Digits, TRAK prior from 30 models, LDS at 100 / 300 / 1,000 / 3,000 models
    # (benchmarks/adaptive_prior.py): gamma = 0: 0.792 / 0.802 / 0.829 / 0.852; 0.5: 0.801 / 0.818 /
    # 0.841 / 0.858; 1 and 2 lower than 0.5 at every budget.  The second data set at 100 / 300:
    # 0.776 / 0.778 against 0.777 / 0.781 (0.5, again the best).
    prior_gamma: float = 0.5


@dataclass
class Config:
    out: str = "runs/digits"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    worker: Dict[str, Any] = field(default_factory=lambda: {"name": "workers.mlp"})
    fit: FitOptions = field(default_factory=FitOptions)


def _one_line(exc: OmegaConfBaseException, section: str = "") -> str:
    msg = str(exc).strip().splitlines()[0]
    key = getattr(exc, "full_key", None)
    return f"{section}{key}: {msg}" if key else msg


SECTIONS = ("data", "sweep", "worker", "fit")
# The largest count (models, targets, rows, iterations) a setting may ask for: row indices and
# shapes are int32 in places, and a larger sweep could not be stored anyway.
MAX_COUNT = 2**31 - 1
# Seeds are passed to numpy (SeedSequence, default_rng) and torch; a uint32 fits all of them.
MAX_SEED = 2**32 - 1


def load(path: Optional[Union[str, Path]] = None, overrides: Sequence[str] = ()) -> DictConfig:
    """The validated config from a YAML file and ``section.key=value`` overrides."""
    layers = []
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise DatamodelsError(f"config {path} is a directory, not a YAML file")
        if not path.is_file():
            raise DatamodelsError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # YAML syntax errors come in many types
            raise DatamodelsError(f"config {path} is not valid YAML: {_first_line(exc)}") from None
        if not isinstance(loaded, DictConfig):
            raise DatamodelsError(f"config {path} must be a mapping of sections, got {type(loaded).__name__}")
        layers.append(_checked_layer(loaded, f"config {path}"))
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise DatamodelsError(f"override {item!r} must look like section.key=value")
        if item.split("=", 1)[0].strip() == "":
            raise DatamodelsError(f"override {item!r} names no key: it must look like section.key=value")
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise DatamodelsError(f"bad override: {_one_line(exc)}") from None
    except Exception as exc:  # values are parsed as YAML, whose errors come in many types
        raise DatamodelsError(f"bad override: {_first_line(exc)} in {' '.join(map(repr, overrides))}") from None
    layers.append(_checked_layer(dotlist, "override"))
    return _validated(_merge(layers))


def from_dict(values: Dict[str, Any]) -> DictConfig:
    """The validated config from a plain dict (the Python API's entry point)."""
    if not isinstance(values, dict):
        raise DatamodelsError(f"config must be a mapping of sections, got {type(values).__name__}")
    try:
        layer = OmegaConf.create(values)
    except OmegaConfBaseException as exc:
        raise DatamodelsError(f"bad config: {_one_line(exc)}") from None
    return _validated(_merge([_checked_layer(layer, "config")]))


def coerce(config: Union[None, str, Path, Dict[str, Any], DictConfig]) -> DictConfig:
    """Accept any of the forms the Python API takes: a path, a dict or a loaded config.

    A config that ``load``, ``from_dict`` or ``coerce`` already validated, and that has not
    changed since, is returned as it is (the stages each call this on the config they are given)."""
    if config is None:
        return load()
    if isinstance(config, DictConfig):
        return _validated(config)
    if isinstance(config, (str, Path)):
        return load(config)
    if isinstance(config, dict):
        return from_dict(config)
    raise DatamodelsError(f"config must be a path, dict or DictConfig, got {type(config).__name__}")


# The configs validated in this process, by content (their YAML): validation is a function of the
# content alone, so an equal config needs no second check, and one changed since is checked again.
_VALIDATED: "OrderedDict[str, None]" = OrderedDict()
_VALIDATED_KEPT = 256


def _fingerprint(cfg: DictConfig) -> Optional[str]:
    try:
        return OmegaConf.to_yaml(cfg, resolve=True)
    except OmegaConfBaseException:
        return None


def is_validated(cfg: Any) -> bool:
    """Whether ``cfg`` is a config that was validated, unchanged since."""
    if not isinstance(cfg, DictConfig):
        return False
    key = _fingerprint(cfg)
    return key is not None and key in _VALIDATED


def _validated(cfg: DictConfig) -> DictConfig:
    if is_validated(cfg):
        return cfg
    try:
        OmegaConf.resolve(cfg)  # an interpolation that does not resolve is a bad value, found here
    except OmegaConfBaseException as exc:
        raise DatamodelsError(f"bad config: {_one_line(exc)}") from None
    cfg = validate(cfg)
    key = _fingerprint(cfg)
    if key is not None:
        _VALIDATED[key] = None
        while len(_VALIDATED) > _VALIDATED_KEPT:
            _VALIDATED.popitem(last=False)
    return cfg


def _merge(layers) -> DictConfig:
    try:
        return OmegaConf.merge(OmegaConf.structured(Config), *layers)
    except OmegaConfBaseException as exc:
        raise DatamodelsError(f"bad config: {_one_line(exc)}") from None
    except (TypeError, ValueError) as exc:  # omegaconf's own, for shapes it cannot merge at all
        raise DatamodelsError(f"bad config: {_first_line(exc)}") from None


def _checked_layer(layer: DictConfig, where: str) -> DictConfig:
    """A file or the overrides, before merging: sections are mappings, keys are names."""
    raw = OmegaConf.to_container(layer, resolve=False)  # interpolations stay as written
    for key in raw:
        if not isinstance(key, str):
            raise DatamodelsError(f"{where}: keys must be names, got {key!r}")
    for name in SECTIONS:
        if name not in raw:
            continue
        value = raw[name]
        if not isinstance(value, dict):
            what = "null" if value is None else ("a list" if isinstance(value, list) else repr(value))
            raise DatamodelsError(f"{where}: the {name} section must be a mapping of settings "
                                  f"({name}.key: value), got {what}")
        for key in value:
            if not isinstance(key, str):
                raise DatamodelsError(f"{where}: keys of the {name} section must be names, got {key!r}")
    return layer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise DatamodelsError(message)


def validate(cfg: DictConfig) -> DictConfig:
    """Range checks the type system cannot express, and the worker's own schema."""
    d, s, f = cfg.data, cfg.sweep, cfg.fit
    _check_values(cfg)
    _check(d.source in DATA_SOURCES, f"data.source must be digits, npz, cifar10 or synthetic, got {d.source!r}")
    _check(d.source in ("digits", "synthetic") or d.path, f"data.path is required when data.source is {d.source}")
    _check_synthetic(d)
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
    _check(s.eval_seeds >= 1, f"sweep.eval_seeds must be >= 1, got {s.eval_seeds}")
    _check(s.eval_seeds == 1 or not s.deterministic, f"sweep.eval_seeds={s.eval_seeds} with sweep.deterministic: "
           f"every seed of a mask would train the same model; use one")
    _check_live(s)
    check_fit_options(f)
    cfg.worker = worker_config(cfg.worker)
    return cfg


DATA_SOURCES = ("digits", "npz", "cifar10", "synthetic")


def _check_synthetic(d) -> None:
    """The generated source's sizes (whether its images fit in memory is checked by prepare, on the
    machine that generates them)."""
    if d.source != "synthetic":
        return
    for name in ("num_train", "image_size"):
        _check(d[name] > 0, f"data.{name} must be positive, got {d[name]}")
    _check(d.channels in (1, 3), f"data.channels must be 1 or 3, got {d.channels}")
    _check(d.num_classes >= 2, f"data.num_classes must be at least 2, got {d.num_classes}")
    _check(0.0 <= d.label_noise < 1.0, f"data.label_noise must be in [0, 1), got {d.label_noise}")


def _is_int(value, least: int) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and int(value) == value and value >= least


def check_fit_options(f) -> None:
    """The range checks of the fit options (a ``FitOptions`` or the config's ``fit`` section)."""
    _check(str(f.device) in ("cpu", "cuda") or str(f.device).startswith("cuda:"),
           f"fit.device must be cpu or cuda, got {f.device!r}")
    _check(0.0 < f.val_fraction < 1.0, f"fit.val_fraction must be in (0, 1), got {f.val_fraction}")
    _check(_is_int(f.num_lambdas, 1), f"fit.num_lambdas must be an integer >= 1, got {f.num_lambdas}")
    _check(0.0 < f.lambda_min_ratio < 1.0, f"fit.lambda_min_ratio must be in (0, 1), got {f.lambda_min_ratio}")
    _check(_is_int(f.max_iter, 1), f"fit.max_iter must be an integer >= 1, got {f.max_iter}")
    _check(f.tol > 0, f"fit.tol must be positive, got {f.tol}")
    _check(_is_int(f.chunk_rows, 1), f"fit.chunk_rows must be an integer >= 1, got {f.chunk_rows}")
    _check(f.prior in ("none", "trak"), f"fit.prior must be none or trak, got {f.prior!r}")
    _check(_is_int(f.prior_models, 1), f"fit.prior_models must be an integer >= 1, got {f.prior_models}")
    gamma = f.prior_gamma
    _check(isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and 0 <= gamma < float("inf"),
           f"fit.prior_gamma must be a number >= 0, got {gamma!r}")


def fit_options(cfg: DictConfig, **overrides) -> FitOptions:
    """The config's ``fit`` section as ``FitOptions`` (``overrides``: some of them replaced)."""
    return FitOptions(**{**OmegaConf.to_container(cfg.fit, resolve=True), **overrides})


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
    return worker_lib.settings(section)


def models_per_task(cfg: DictConfig, meta: Optional[Dict[str, Any]] = None,
                    worker: Optional[Dict[str, Any]] = None) -> int:
    """K for the sweep: ``sweep.models_per_task``, or when it is 0 the worker's
    ``default_models_per_task(worker, meta)`` (how many models it trains best at once on its
    device; ``meta``: the prepared data's), or 1 for a worker without one.  ``worker``: the
    worker settings to ask about (the sweep's, with ``auto`` resolved); by default the config's."""
    if cfg.sweep.models_per_task > 0:
        return int(cfg.sweep.models_per_task)
    return worker_lib.models_per_task(worker if worker is not None else to_dict(cfg.worker), meta)


def to_dict(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)


def save(cfg: DictConfig, path: Union[str, Path]) -> None:
    """Write ``cfg`` as YAML, atomically (a reader sees the old file or the new one)."""
    atomic_write_text(path, OmegaConf.to_yaml(cfg))


# The settings that make a run's models and data what they are: a run directory holds models of
# one setting of each, so a run asked for with another is refused (``differences``).  The rest
# (how many models, how they are scheduled, how the regression is fitted) may change between calls.
DEFINING = ("seed", "data", "sweep.alpha", "sweep.margins_dtype", "worker")


def differences(old: Dict[str, Any], new: Dict[str, Any], keys: Sequence[str] = DEFINING) -> List[str]:
    """``"key old -> new"`` for every setting under ``keys`` on which two configs (as dicts) differ."""
    def flat(values: Any, prefix: str) -> Dict[str, Any]:
        if not isinstance(values, dict):
            return {prefix: values}
        out: Dict[str, Any] = {}
        for k, v in values.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out

    a, b = flat(old, ""), flat(new, "")
    chosen = [k for k in sorted(set(a) | set(b)) if any(k == p or k.startswith(p + ".") for p in keys)]
    missing = "(unset)"
    return [f"{k} {a.get(k, missing)} -> {b.get(k, missing)}" for k in chosen if a.get(k, missing) != b.get(k, missing)]


def read_saved(path: Union[str, Path]) -> Dict[str, Any]:
    """A run's saved ``config.yaml`` as a dict with every default filled in (the worker's too), to
    compare with another config (``differences``); read, not validated: it describes models made."""
    path = Path(path)
    try:
        loaded = OmegaConf.load(path)
    except OSError:
        raise
    except Exception as exc:  # YAML syntax errors come in many types
        raise DatamodelsError(f"{path} is not valid YAML ({_first_line(exc)}); it describes the run's models: "
                              f"restore it, or start a new out=") from None
    if not isinstance(loaded, DictConfig):
        raise DatamodelsError(f"{path} is not a config (a mapping of sections); restore it, or start a new out=")
    try:
        values = to_dict(_merge([_checked_layer(loaded, str(path))]))
        values["worker"] = worker_lib.settings(values["worker"])
    except (DatamodelsError, OmegaConfBaseException) as exc:
        raise DatamodelsError(f"{path} cannot be read as a config ({_first_line(exc)}); restore it, or start a "
                              f"new out=") from None
    return values


def _check_values(cfg: DictConfig) -> None:
    """What the types let through but no setting may be: NaN or infinite numbers, integers beyond
    what numpy and torch take, empty names and malformed addresses."""
    _check(isinstance(cfg.out, str) and cfg.out.strip() != "", f"out must name the run directory, got {cfg.out!r}")
    _check("\0" not in cfg.out, "out must not contain a NUL character")
    for name in ("seed", "data.split_seed"):
        value = OmegaConf.select(cfg, name)
        _check(0 <= value <= MAX_SEED, f"{name} must be in 0..{MAX_SEED} (a 32-bit seed), got {value}")
    for section in ("data", "sweep", "fit"):
        for key, value in cfg[section].items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, float):
                _check(math.isfinite(value), f"{section}.{key} must be a finite number, got {value}")
            elif isinstance(value, int) and key != "split_seed":
                _check(abs(value) <= MAX_COUNT, f"{section}.{key} is too large: {value} (at most {MAX_COUNT})")
    _check(cfg.sweep.num_models + cfg.sweep.num_eval_models <= MAX_COUNT,
           f"sweep.num_models + sweep.num_eval_models is too large (at most {MAX_COUNT})")
    path = cfg.data.path
    _check(path is None or (path.strip() != "" and "\0" not in path), f"data.path must name a file, got {path!r}")
    check_address(cfg.sweep.address, "sweep.address")


def check_address(address: Optional[str], what: str = "--address") -> None:
    """A Ray address: ``auto``, ``local``, ``HOST:PORT`` or ``ray://HOST:PORT`` (port 1..65535)."""
    if address is None:
        return
    _check(isinstance(address, str) and address.strip() == address and address != "",
           f"{what} must be auto, local, HOST:PORT or ray://HOST:PORT, got {address!r}")
    if address in ("auto", "local"):
        return
    rest = address.split("://", 1)[1] if "://" in address else address
    _check(address.count("://") <= 1 and (address.startswith("ray://") or "://" not in address),
           f"{what} must be auto, local, HOST:PORT or ray://HOST:PORT, got {address!r}")
    host, sep, port = rest.rstrip("/").rpartition(":")
    _check(bool(sep) and bool(host.strip("[]")) and port.isdigit() and 0 < int(port) < 65536 and " " not in host,
           f"{what} must be auto, local, HOST:PORT or ray://HOST:PORT (port 1..65535), got {address!r}")
