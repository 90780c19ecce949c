"""What every analysis needs from a run directory, and the pieces they share.

A *run* is the output directory of ``datamodels run`` (``store/``, ``data/``,
``datamodels.npz``, ``config.yaml``).  Analyses address targets by datamodel column
(the ``--target`` of ``datamodels query``); ``Run.columns`` maps those to store columns.
Verification retrains models through ``datamodels.sweep.train_masks`` with the run's own
config, so the retrained models come from exactly the training program the datamodels
describe.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import DatamodelsError
from ..store import Store, subset_size
from .runfiles import RESULT_SCHEMAS, check_result

# Seed streams of the analyses, kept apart from each other and from the store's models
# (whose seeds come from (seed, index, 1)).
SEED_TAGS = {"counterfactual": 11, "brittleness": 12, "random-removal": 13, "report": 15, "learning-curve": 16}


class Run:
    """Fitted datamodels together with the store, data and config they came from.

    ``config`` (a path, dict or loaded config) is needed only to retrain; by default it is
    ``RUN/config.yaml``, which ``datamodels run`` writes.  Its ``out`` is pointed at the
    run directory, so retraining reads the run's prepared data."""

    def __init__(self, path: Union[str, Path] = "runs/digits", *, datamodels=None, store=None, config=None,
                 address: Optional[str] = None):
        from ..artifacts import check_datamodels, load

        self.path = Path(path)
        if isinstance(datamodels, dict):
            self.dm = check_datamodels(datamodels, "the datamodels")
        else:
            self.dm = load(Path(datamodels) if datamodels is not None else self.path / "datamodels.npz")
        if isinstance(store, Store):
            self.store = store
        else:
            self.store = Store(Path(store) if store is not None else self.path / "store")
        self.weight = np.asarray(self.dm["weight"], dtype=np.float32)
        self.bias = np.asarray(self.dm["bias"], dtype=np.float32)
        self.num_train, self.num_targets = self.weight.shape
        self.columns = np.asarray(self.dm.get("targets", np.arange(self.num_targets)), dtype=np.int64)
        if self.num_train != self.store.num_train:
            raise DatamodelsError(f"the datamodels cover {self.num_train} training examples but store "
                                  f"{self.store.path} has {self.store.num_train}; they come from different runs")
        if len(self.columns) != self.num_targets or (len(self.columns) and self.columns.max() >= self.store.num_targets):
            raise DatamodelsError(f"the datamodels' target columns do not fit store {self.store.path} "
                                  f"({self.store.num_targets} targets); they come from different runs")
        self.alpha = float(self.store.alpha) if self.store.alpha is not None else _mask_density(self.store)
        self.address = address
        self._config_arg = config
        self._config = None
        self._meta = None
        self._moments = None
        self._images = {}

    # ---- the pieces analyses ask for ----------------------------------------------------
    @property
    def config(self):
        """The run's config, for retraining; ``out`` points at this run."""
        if self._config is None:
            from .. import config as config_lib

            arg = self._config_arg
            if arg is None:
                arg = self.path / "config.yaml"
                if not arg.is_file():
                    raise DatamodelsError(f"{arg} is missing, so models cannot be retrained: pass the config the run "
                                          f"was made with (--config CONFIG)")
            if not isinstance(arg, (str, Path)):  # a copy: pointing ``out`` here must not touch the caller's
                arg = config_lib.to_dict(arg) if not isinstance(arg, dict) else dict(arg)
            cfg = config_lib.coerce(arg)
            cfg.out = str(self.path)
            store = self.store
            for name, have, want in (("alpha", store.alpha, cfg.sweep.alpha), ("seed", store.seed, cfg.seed)):
                if have is not None and have != want:
                    raise DatamodelsError(f"store {store.path} was made with {name}={have}, but the config says "
                                          f"{want}; pass the config the run was made with")
            _check_worker(store, cfg)
            self._config = cfg
        return self._config

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def has_data(self) -> bool:
        """Whether the run has its prepared data (a store of the reference pipeline may not)."""
        return (self.data_dir / "meta.json").is_file()

    @property
    def meta(self) -> dict:
        if self._meta is None:
            from ..prepare import read_meta

            self._meta = read_meta(self.data_dir)
        return self._meta

    @property
    def subset_size(self) -> int:
        return subset_size(self.num_train, self.alpha)

    def fingerprint(self) -> str:
        """Identifies these datamodels, so saved results are not shown next to others."""
        h = hashlib.sha1(self.weight.tobytes())
        h.update(self.bias.tobytes())
        return h.hexdigest()[:16]

    def check_target(self, target) -> int:
        t = int(target)
        if not 0 <= t < self.num_targets:
            raise DatamodelsError(f"target {t} is out of range: the datamodels cover targets 0..{self.num_targets - 1}")
        return t

    def targets(self, targets=None) -> np.ndarray:
        if targets is None:
            return np.arange(self.num_targets)
        return np.array([self.check_target(t) for t in np.atleast_1d(targets)], dtype=np.int64)

    def margin_moments(self, chunk: int = 8192):
        """Mean and standard deviation [T] of each target's margin over the fitting models,
        read in chunks (a store may not fit in memory)."""
        if self._moments is None:
            rows = self.store.rows("fit")
            if len(rows) == 0:
                raise DatamodelsError(f"store {self.store.path} has no completed fitting models")
            total = np.zeros(self.num_targets)
            squares = np.zeros(self.num_targets)
            for start in range(0, len(rows), chunk):
                y = np.asarray(self.store.margins[rows[start:start + chunk]], dtype=np.float64)[:, self.columns]
                total += y.sum(0)
                squares += (y * y).sum(0)
            mean = total / len(rows)
            self._moments = (mean, np.sqrt(np.clip(squares / len(rows) - mean * mean, 0, None)))
        return self._moments

    def baseline(self, base: str) -> np.ndarray:
        """Predicted margin [T] with nothing removed: on the full training set, or averaged over
        α-subsets of it."""
        total = self.weight.sum(0, dtype=np.float64)
        return self.bias + (total if base == "full" else self.subset_size / self.num_train * total)

    def target_images(self, targets: Sequence[int]):
        """Images and labels of targets (datamodel columns): test examples, or training
        examples when the store logged ``test+train``."""
        x_test, y_test = self.images("test")
        cols = self.columns[np.asarray(targets, dtype=np.int64)]
        num_test = len(y_test)
        if (cols < num_test).all():
            return x_test[cols], y_test[cols]
        x_train, y_train = self.images("train")
        x = np.concatenate([x_test, x_train])
        y = np.concatenate([y_test, y_train])
        return x[cols], y[cols]

    def is_test_target(self) -> np.ndarray:
        """[T] whether each datamodel column is a test example (not a training example)."""
        if not self.has_data and self.store.meta.get("targets", "test") == "test":
            return np.ones(len(self.columns), dtype=bool)  # a store without prepared data: its targets are test examples
        return self.columns < int(self.meta["num_test"])

    def images(self, split: str):
        """Images and labels of a split of the run's prepared data (read once)."""
        if split not in self._images:
            from ..prepare import load_arrays

            self._images[split] = load_arrays(self.data_dir, split)
        return self._images[split]

    # ---- retraining ---------------------------------------------------------------------
    @contextmanager
    def ray(self):
        """One Ray connection for several retraining calls (starting Ray costs seconds)."""
        from ..cluster import ray_session

        with ray_session(self.address or self.config.sweep.address):
            yield

    def retrain(self, masks: np.ndarray, seeds: np.ndarray, progress: bool = True) -> np.ndarray:
        """Margins [n, T] (datamodel column order) of one model per mask, trained by the run's worker."""
        from ..sweep import train_masks

        masks = np.asarray(masks, dtype=bool)
        if len(masks) == 0:
            return np.zeros((0, self.num_targets), dtype=np.float32)
        # Workers train models of equal subset size together; sorting by size keeps tasks uniform.
        order = np.argsort(masks.sum(1), kind="stable")
        out = train_masks(self.config, masks[order], np.asarray(seeds)[order], address=self.address,
                          progress=progress)
        margins = np.empty_like(out)
        margins[order] = out
        return margins[:, self.columns]


def _check_worker(store: Store, cfg) -> None:
    """Retrained models must come from the training program the store's models came from.  Settings
    the config leaves ``auto`` take the store's values (and the config is given them, so
    retraining makes its models as the store's were)."""
    from .. import config as config_lib
    from ..sweep import adopt_store_settings

    made_with = store.meta.get("worker")
    worker, adopted = adopt_store_settings(config_lib.to_dict(cfg.worker), made_with)
    if adopted:
        cfg.worker = worker
    asked = {k: v for k, v in worker.items() if k != "device"}  # device: where, not what
    if isinstance(made_with, str):  # older stores record only the worker's name
        import warnings

        warnings.warn(f"store {store.path} records only its worker's name, not its settings: retraining assumes "
                      f"they were the config's ({asked})", RuntimeWarning, stacklevel=4)
        made_with, asked = {"name": made_with}, {"name": asked.get("name")}
    if isinstance(made_with, dict):
        for key in sorted(set(made_with) | set(asked)):
            if made_with.get(key) != asked.get(key):
                raise DatamodelsError(f"store {store.path} was made with worker.{key}={made_with.get(key)}, but the "
                                      f"config says {asked.get(key)}; pass the config the run was made with")


def _mask_density(store: Store, rows: int = 1000) -> float:
    """α of a store without alpha metadata (another pipeline's): its completed masks' mean density."""
    done = store.rows("all")[:rows]
    if not len(done):
        return 0.5
    return float(np.clip(np.asarray(store.masks[done], dtype=np.float64).mean(), 1e-3, 1 - 1e-3))


def open_run(run: Union[Run, str, Path] = "runs/digits", **kwargs) -> Run:
    """A ``Run`` from a run directory (or the same ``Run`` back)."""
    return run if isinstance(run, Run) else Run(run, **kwargs)


def rng_for(seed: int, tag: str, *extra: int) -> np.random.Generator:
    """The random stream of one analysis (subsets, random targets, random removals)."""
    return np.random.default_rng([int(seed), SEED_TAGS[tag], *map(int, extra)])


def seeds_for(seed: int, tag: str, n: int, offset: int = 0) -> np.ndarray:
    """``n`` training seeds of one analysis, a pure function of (seed, analysis, index)."""
    return np.array([np.random.SeedSequence([int(seed), SEED_TAGS[tag], offset + i]).generate_state(1)[0]
                     for i in range(n)], dtype=np.int64)


def pool_masks(rng: np.random.Generator, excluded: np.ndarray, size: int, count: int) -> np.ndarray:
    """``count`` uniformly random masks of exactly ``size`` examples, none of them ``excluded``."""
    pool = np.flatnonzero(~excluded)
    if size > len(pool):
        raise DatamodelsError(f"cannot draw subsets of {size} examples from the {len(pool)} left after removal")
    masks = np.zeros((count, len(excluded)), dtype=bool)
    for i in range(count):
        masks[i, rng.choice(pool, size, replace=False)] = True
    return masks


def parse_remove(spec: str, weight: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Training indices named by a removal spec, for one target's weight vector:
    ``top:K`` (the K largest weights: the examples that support the target most),
    ``bottom:K`` (the K most negative), ``random:K``, or a file of indices (text, or .npy of
    indices or a boolean mask)."""
    n = len(weight)
    spec = str(spec).strip()
    kind, sep, value = spec.partition(":")
    if sep and kind in ("top", "bottom", "random"):
        try:
            k = int(value)
        except ValueError:
            raise DatamodelsError(f"--remove {spec!r}: K must be a whole number, e.g. {kind}:10") from None
        if not 1 <= k < n:
            raise DatamodelsError(f"--remove {spec!r}: K must be between 1 and {n - 1} (the training set has {n} examples)")
        if kind == "top":
            return np.sort(np.argsort(-weight, kind="stable")[:k])
        if kind == "bottom":
            return np.sort(np.argsort(weight, kind="stable")[:k])
        rng = rng if rng is not None else np.random.default_rng(0)
        return np.sort(rng.choice(n, k, replace=False))
    path = Path(spec)
    if not path.is_file():
        raise DatamodelsError(f"--remove {spec!r}: expected top:K, bottom:K, random:K or a file of training indices")
    return read_indices(path, n)


def read_indices(path: Path, n: int) -> np.ndarray:
    """Training indices from a file: a .npy of indices or of a boolean mask, or text with
    whitespace- or comma-separated integers (``#`` starts a comment)."""
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DatamodelsError(f"{path}: not a readable .npy file ({exc})") from None
        if arr.dtype == bool:
            if arr.shape != (n,):
                raise DatamodelsError(f"{path}: a boolean mask must have one entry per training example ({n}), "
                                      f"got shape {list(arr.shape)}")
            idx = np.flatnonzero(arr)
        elif np.issubdtype(arr.dtype, np.integer):
            idx = arr.reshape(-1)
        else:
            raise DatamodelsError(f"{path}: expected integer indices or a boolean mask, got dtype {arr.dtype}")
    else:
        tokens = []
        for line in path.read_text().splitlines():
            tokens += line.split("#", 1)[0].replace(",", " ").split()
        try:
            idx = np.array([int(t) for t in tokens], dtype=np.int64)
        except ValueError:
            bad = next(t for t in tokens if not t.lstrip("-").isdigit())
            raise DatamodelsError(f"{path}: {bad!r} is not a training index (expected whole numbers)") from None
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        raise DatamodelsError(f"{path} names no training examples")
    if idx.min() < 0 or idx.max() >= n:
        raise DatamodelsError(f"{path}: training indices must lie in 0..{n - 1}, got {int(idx.min())}..{int(idx.max())}")
    idx = np.unique(idx)
    if len(idx) >= n:
        raise DatamodelsError(f"{path} names every training example; nothing would be left to train on")
    return idx


RESULTS_DIR = "analyses"


def save_result(run: Run, name: str, result: dict) -> Path:
    """Keep an expensive (retrained) result in RUN/analyses/NAME.json, where the report finds it."""
    import json

    from ..files import atomic_write_text

    path = run.path / RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(result, indent=1, default=_jsonable))


def load_result(run: Run, name: str) -> Optional[dict]:
    """A result kept by ``save_result``, if it was computed from these very datamodels (None when
    there is none, or it is of other datamodels).  A file that is not JSON, or whose structure is
    not a kept result's, is a DatamodelsError naming it and the problem."""
    import json

    path = run.path / RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatamodelsError(f"{path} is not JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(result, dict):
        raise DatamodelsError(f"{path} should hold a JSON object, got {type(result).__name__}")
    if result.get("fingerprint") != run.fingerprint():
        return None
    return check_result(result, name, path) if name in RESULT_SCHEMAS else result


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def correlation(x, y) -> dict:
    """Pearson and Spearman correlation (NaN when undefined)."""
    from scipy.stats import pearsonr, spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "n": int(len(x))}
    return {"pearson": float(pearsonr(x, y)[0]), "spearman": float(spearmanr(x, y)[0]), "n": int(len(x))}
