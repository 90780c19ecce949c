"""Turn the configured data set into FFCV ``.beton`` files, once.

``prepare`` writes ``train.beton`` and ``test.beton`` (fields ``image`` and
``label``) plus ``meta.json`` into ``<out>/data``.  Four sources are supported:

* ``digits``: scikit-learn's bundled 8×8 digits, split into train and test by a
  seeded draw of ``data.num_test`` test examples (original order kept in each split);
* ``npz``: a user's ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``;
* ``cifar10``: the standard ``cifar-10-python.tar.gz`` or its extracted folder;
* ``synthetic``: generated class-specific blob images of any size (``datamodels.synthetic``),
  determined by ``data.split_seed`` and the ``data.*`` sizes.

Everything is loaded and validated before anything is written, so bad input
leaves nothing behind.  The betons are written under temporary names and renamed
into place, and ``meta.json`` comes last: its presence means "prepared", so an
interrupted run leaves no ``meta.json`` and the next run starts over.  A data
directory prepared from the same settings is reused as is; one prepared from
other settings is an error, never silently overwritten.

``load_arrays`` reads a split back through an FFCV ``Loader``; workers and tests
use it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Tuple

import numpy as np

from . import config as config_lib
from .errors import DatamodelsError
from .files import atomic_write_text
from .prepare_cifar import CIFAR_BATCHES, CIFAR_DIR, CIFAR_META, load_cifar10, write_cifar10

__all__ = ["prepare", "read_meta", "read_arrays", "load_arrays", "check_beton", "digits_split", "keep_torch_threads",
           "write_cifar10", "CIFAR_BATCHES", "CIFAR_DIR", "CIFAR_META"]

META = "meta.json"
SPLITS = ("train", "test")
FORMAT_VERSION = 1
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# Only writes at least this long get a progress bar; short ones would just add noise.
PROGRESS_MIN_EXAMPLES = 10_000
# Labels are class indices: the model gets one output per class up to the largest label.
MAX_LABEL = (1 << 31) - 1
IMAGE_DTYPES = ("uint8", "float32")
IMAGE_FIELDS = ("ndarray", "rgb")
# The data.* settings of the synthetic source besides num_test and split_seed (datamodels.synthetic.generate's).
SYNTHETIC_KEYS = ("num_train", "image_size", "channels", "num_classes", "label_noise")


@dataclass
class Split:
    images: np.ndarray  # [n, H, W, C], uint8 or float32
    labels: np.ndarray  # [n], int64


# ---- public API -------------------------------------------------------------------------------

def prepare(config=None, data_dir=None, progress: bool = True) -> Path:
    """Write the config's data set as FFCV files into ``data_dir`` (default ``<out>/data``)
    and return that directory.  Does nothing if it already holds the same data."""
    cfg = config_lib.coerce(config)
    data_dir = Path(data_dir) if data_dir is not None else Path(cfg.out) / "data"
    settings = _settings(cfg.data)
    if _is_prepared(data_dir, settings):
        return data_dir

    splits, num_classes, image_field = _load(cfg.data, settings, progress)

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatamodelsError(f"cannot create data directory {data_dir}: {exc.strerror}") from None
    from filelock import FileLock

    # Two runs sharing an output directory may prepare at once; the second waits and reuses.
    with FileLock(str(data_dir / ".prepare.lock")):
        if _is_prepared(data_dir, settings):
            return data_dir
        # Same settings but a beton is gone: drop the stale meta.json first, so a crash during
        # the rewrite cannot leave it pointing at half-written files.
        (data_dir / META).unlink(missing_ok=True)
        for name, split in zip(SPLITS, splits):
            _write_beton(data_dir / f"{name}.beton", split, image_field, progress, name)
        train, test = splits
        meta = {
            **settings,
            "num_train": len(train.labels),
            "num_test": len(test.labels),
            "num_classes": int(num_classes),
            "image_shape": [int(d) for d in train.images.shape[1:]],
            "image_dtype": str(train.images.dtype),
            "image_field": image_field,
            "version": FORMAT_VERSION,
        }
        atomic_write_text(data_dir / META, json.dumps(meta, indent=2))
    return data_dir


def read_meta(data_dir) -> dict:
    """The ``meta.json`` of a prepared data directory."""
    path = Path(data_dir) / META
    if not path.is_file():
        raise DatamodelsError(f"{data_dir} holds no prepared data ({META} is missing); run `datamodels prepare` first")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DatamodelsError(f"{path} is not valid JSON ({_first_line(exc)}); delete {data_dir} and prepare "
                              f"again") from None
    except OSError as exc:
        raise DatamodelsError(f"cannot read {path} ({_first_line(exc)})") from None
    if not isinstance(meta, dict) or meta.get("version") != FORMAT_VERSION:
        raise DatamodelsError(f"{path} was written by an incompatible version; delete {data_dir} and prepare again")
    problem = _meta_problem(meta)
    if problem:
        raise DatamodelsError(f"{path} is damaged: {problem}; delete {data_dir} and prepare again")
    return meta


def _meta_problem(meta: dict):
    """What is wrong with the fields of a ``meta.json`` that readers rely on, or None."""
    def count(value):
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    for key in ("num_train", "num_test", "num_classes"):
        if not count(meta.get(key)):
            return f"{key} must be a positive integer, got {json.dumps(meta.get(key))[:40]}"
    shape = meta.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(count(d) for d in shape)):
        return f"image_shape must be [height, width, channels], got {json.dumps(shape)[:60]}"
    if meta.get("image_dtype") not in IMAGE_DTYPES:
        return f"image_dtype must be one of {', '.join(IMAGE_DTYPES)}, got {json.dumps(meta.get('image_dtype'))[:40]}"
    if meta.get("image_field") not in IMAGE_FIELDS:
        return f"image_field must be one of {', '.join(IMAGE_FIELDS)}, got {json.dumps(meta.get('image_field'))[:40]}"
    return None


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Undo FFCV's changes to torch's thread count: importing FFCV sets it to 1 for the whole
    process, and a loader sets it to its worker count.  The process's count is the caller's
    business (a Ray task's CPU share, the fit's cores)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def read_arrays(data_dir, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """What ``load_arrays`` returns, read straight from the ``.beton`` file's tables with numpy.

    For code that wants a whole split in memory, as the workers do.  FFCV's loader costs several
    seconds per process before the first example (importing FFCV builds numba typed dicts and
    loads OpenCV; a loader compiles its pipeline), more than the digits MLP's whole training, and
    a sweep pays it in every worker process.  This reads the file layout prepare writes (FFCV
    format version 2: an "image" field of raw arrays or raw RGB pixels and an int "label") and
    hands anything else (a JPEG-compressed file written elsewhere) to ``load_arrays``;
    tests/test_prepare.py checks both readers agree."""
    meta = read_meta(data_dir)
    path = Path(data_dir) / f"{split}.beton"
    if split not in SPLITS or not path.is_file():
        return load_arrays(data_dir, split)
    check_beton(data_dir, meta, split)
    try:
        return _read_tables(data_dir, meta, split, path)
    except (ValueError, IndexError) as exc:  # tables that point outside the file
        raise DatamodelsError(f"{path} is corrupt ({_first_line(exc)}); delete {data_dir} and prepare again") from None


def _read_tables(data_dir, meta: dict, split: str, path: Path) -> Tuple[np.ndarray, np.ndarray]:
    num = int(meta[f"num_{split}"])
    shape = tuple(int(d) for d in meta["image_shape"])
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    header = raw[:_FFCV_HEADER.itemsize].view(_FFCV_HEADER)[0]
    fields_at = _FFCV_HEADER.itemsize
    fields = raw[fields_at:fields_at + int(header["num_fields"]) * _FFCV_FIELD.itemsize].view(_FFCV_FIELD)
    names = [bytes(f["name"]).split(b"\0")[0].decode("ascii", "replace") for f in fields]
    kinds = [int(f["type_id"]) for f in fields]
    image_meta = {_FFCV_NDARRAY: np.dtype("<u8"), _FFCV_RGB: _FFCV_RGB_META}.get(kinds[0]) if kinds else None
    if names != ["image", "label"] or kinds[1:] != [_FFCV_INT] or image_meta is None:
        return load_arrays(data_dir, split)
    table = np.dtype([("", image_meta), ("", "<i8")], align=True)
    table_at = fields_at + fields.nbytes
    rows = raw[table_at:table_at + num * table.itemsize].view(table)
    images_meta, labels = rows[table.names[0]], rows[table.names[1]].astype(np.int64)
    if kinds[0] == _FFCV_RGB:
        if (images_meta["mode"] != _FFCV_RGB_RAW).any():
            return load_arrays(data_dir, split)  # JPEG-compressed: decoding takes FFCV's (OpenCV's) decoder
        pointers, dtype = images_meta["data_ptr"], np.dtype(np.uint8)
    else:
        pointers, dtype = images_meta, np.dtype(meta["image_dtype"])
    size = int(np.prod(shape)) * dtype.itemsize
    if len(rows) != num or (len(pointers) and int(pointers.max()) > len(raw) - size):
        raise ValueError("its example table points past the end of the file")
    images = np.empty((num, size), dtype=np.uint8)
    for i, at in enumerate(pointers.tolist()):
        images[i] = raw[at:at + size]
    return images.view(dtype).reshape((num, *shape)), labels


def load_arrays(data_dir, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images [n, H, W, C] (uint8 or float32) and int64 labels [n] of ``split``, read through FFCV."""
    with keep_torch_threads():
        return _load_arrays(data_dir, split)


def _load_arrays(data_dir, split: str) -> Tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    meta = read_meta(data_dir)
    path = Path(data_dir) / f"{split}.beton"
    if not path.is_file():
        raise DatamodelsError(f"{path} is missing; delete {data_dir} and prepare again")
    check_beton(data_dir, meta, split)
    num = int(meta[f"num_{split}"])

    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    decoder = SimpleRGBImageDecoder() if meta["image_field"] == "rgb" else NDArrayDecoder()
    loader = Loader(str(path), batch_size=max(1, min(num, 4096)), num_workers=1, order=OrderOption.SEQUENTIAL,
                    drop_last=False, os_cache=True,
                    pipelines={"image": [decoder, ToTensor()], "label": [IntDecoder(), ToTensor()]})
    images, labels = [], []
    for x, y in loader:
        # The loader reuses its batch buffers, so each batch is copied out before the next.
        images.append(x.numpy().copy())
        labels.append(y.numpy().reshape(-1).astype(np.int64))
    images, labels = np.concatenate(images), np.concatenate(labels)
    if len(labels) != num:
        raise DatamodelsError(f"{path} holds {len(labels)} examples but {META} says {num}; "
                              f"delete {data_dir} and prepare again")
    return images, labels


# ---- settings and reuse -----------------------------------------------------------------------

def _settings(data) -> dict:
    """What identifies a prepared data set: two preparations with equal settings are equal."""
    if data.source == "digits":
        return {"source": "digits", "path": None, "split_seed": int(data.split_seed),
                "num_test_requested": int(data.num_test)}
    if data.source == "synthetic":
        return {"source": "synthetic", "path": None, "split_seed": int(data.split_seed),
                "num_test_requested": int(data.num_test),
                "synthetic": {key: (float(data[key]) if key == "label_noise" else int(data[key]))
                              for key in SYNTHETIC_KEYS}}
    # The split is fixed by the file itself, so the digits-only split keys are left out.
    return {"source": data.source, "path": str(Path(data.path).expanduser().resolve()),
            "split_seed": None, "num_test_requested": None}


def _describe(settings: dict) -> str:
    if settings.get("source") == "digits":
        return (f"digits (num_test={settings.get('num_test_requested')}, "
                f"split_seed={settings.get('split_seed')})")
    if settings.get("source") == "synthetic":
        values = settings.get("synthetic") if isinstance(settings.get("synthetic"), dict) else {}
        sizes = ", ".join(f"{key}={values.get(key)}" for key in SYNTHETIC_KEYS)
        return (f"synthetic ({sizes}, num_test={settings.get('num_test_requested')}, "
                f"split_seed={settings.get('split_seed')})")
    return f"{settings.get('source')} {settings.get('path')}"


def _is_prepared(data_dir: Path, settings: dict) -> bool:
    if not (data_dir / META).is_file():
        return False
    meta = read_meta(data_dir)
    if any(meta.get(key) != value for key, value in settings.items()):
        raise DatamodelsError(f"{data_dir} holds data prepared from {_describe(meta)}, but the config asks for "
                              f"{_describe(settings)}; use another output directory or delete {data_dir}")
    if not all((data_dir / f"{name}.beton").is_file() for name in SPLITS):
        return False
    for name in SPLITS:
        check_beton(data_dir, meta, name)
    return True


# The layout of an FFCV file (ffcv.types, format version 2), spelled out here so that checking a
# file costs no import of FFCV: a header, field descriptors and per-example metadata, the
# pages of data, and at the end the allocation table of (example, offset, size) records.
_FFCV_VERSION = 2
_FFCV_HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                         ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
_FFCV_ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
_FFCV_FIELD = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
_FFCV_INT, _FFCV_RGB, _FFCV_NDARRAY = 1, 2, 4  # field type ids
_FFCV_RGB_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
_FFCV_RGB_RAW = 1  # RGB field mode: raw pixels (0: JPEG)


def check_beton(data_dir, meta: dict, split: str) -> None:
    """A one-line error unless ``split``'s .beton is a whole FFCV file of the examples
    ``meta.json`` counts: a damaged or cut-off file would otherwise fail only inside the
    training tasks, once per task, after the store has grown."""
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.beton"
    advice = f"delete {data_dir} and prepare again"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(_FFCV_HEADER.itemsize)
            if len(head) < _FFCV_HEADER.itemsize:
                raise DatamodelsError(f"{path} is truncated ({size} bytes, shorter than an FFCV header); {advice}")
            header = np.frombuffer(head, dtype=_FFCV_HEADER)[0]
            if int(header["version"]) != _FFCV_VERSION:
                raise DatamodelsError(f"{path} is corrupt: not an FFCV file of format version {_FFCV_VERSION}; "
                                      f"{advice}")
            expected = meta.get(f"num_{split}")
            if expected is not None and int(header["num_samples"]) != int(expected):
                raise DatamodelsError(f"{path} is corrupt: it holds {int(header['num_samples'])} examples, "
                                      f"{META} says {expected}; {advice}")
            table_at = int(header["alloc_table_ptr"])
            if table_at > size or (size - table_at) % _FFCV_ALLOC.itemsize:
                raise DatamodelsError(f"{path} is truncated ({size} bytes): its allocation table does not end "
                                      f"the file; {advice}")
            f.seek(table_at)
            table = np.frombuffer(f.read(size - table_at), dtype=_FFCV_ALLOC)
            # prepare writes one image allocation per example
            if expected is not None and len(table) != int(expected):
                raise DatamodelsError(f"{path} is truncated ({size} bytes): its allocation table lists "
                                      f"{len(table)} of {expected} examples; {advice}")
            # compared without adding: uint64 sums can wrap around
            if len(table) and ((table["ptr"] > table_at) | (table["size"] > table_at - table["ptr"])).any():
                raise DatamodelsError(f"{path} is corrupt: its allocation table points past the data; {advice}")
    except OSError as exc:
        raise DatamodelsError(f"cannot read {path} ({_first_line(exc)})") from None


# ---- loading and validation -------------------------------------------------------------------

def _load(data, settings, progress: bool = False) -> Tuple[Tuple[Split, Split], int, str]:
    """The validated (train, test) splits, the number of classes and the FFCV image field kind."""
    if data.source == "digits":
        train, test = _load_digits(int(data.num_test), int(data.split_seed))
        return (train, test), 10, "ndarray"
    if data.source == "synthetic":
        return _generate(settings, progress), int(data.num_classes), "ndarray"
    path = Path(settings["path"])
    if not path.exists():
        raise DatamodelsError(f"data.path: {path} not found")
    if data.source == "npz":
        train, test = _load_npz(path)
        return (train, test), int(max(train.labels.max(), test.labels.max())) + 1, "ndarray"
    train, test, num_classes = load_cifar10(path)
    return (train, test), num_classes, "rgb"


def digits_split(num_examples: int, num_test: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of the digits train and test splits, each in the original order."""
    test = np.zeros(num_examples, dtype=bool)
    test[np.random.default_rng(seed).permutation(num_examples)[:num_test]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def _load_digits(num_test: int, seed: int) -> Tuple[Split, Split]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.target)
    if num_test >= n:
        raise DatamodelsError(f"data.num_test={num_test} leaves no training examples (digits has {n})")
    # Pixel values are whole numbers 0..16, so uint8 holds them exactly at a quarter of the size.
    images = digits.images.astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    train, test = digits_split(n, num_test, seed)
    return Split(images[train], labels[train]), Split(images[test], labels[test])


def _generate(settings: dict, progress: bool) -> Tuple[Split, Split]:
    from . import synthetic

    values = settings["synthetic"]
    num_test = settings["num_test_requested"]
    synthetic.check_memory(values["num_train"], num_test, values["image_size"], values["channels"])
    data = synthetic.generate(num_test=num_test, seed=settings["split_seed"], progress=progress, **values)
    return Split(data.x_train, data.y_train), Split(data.x_test, data.y_test)


def _load_npz(path: Path) -> Tuple[Split, Split]:
    if not path.is_file():
        raise DatamodelsError(f"data.path: {path} is not a file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise DatamodelsError(f"{path} is not a valid .npz file ({_first_line(exc)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatamodelsError(f"{path} is not a valid .npz file (it holds a single array, not named arrays)")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive.files]
        if missing:
            raise DatamodelsError(f"{path} is missing {', '.join(missing)} (needs {', '.join(NPZ_KEYS)})")
        arrays = {}
        for key in NPZ_KEYS:
            try:
                arrays[key] = archive[key]
            except MemoryError:
                raise DatamodelsError(f"{path}: cannot read {key} (its header asks for more memory than there "
                                      f"is: damaged?)") from None
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
                    RuntimeError) as exc:  # e.g. pickled objects, a damaged or encrypted member
                raise DatamodelsError(f"{path}: cannot read {key} ({_first_line(exc)})") from None
            if not isinstance(arrays[key], np.ndarray):  # a member without a .npy header reads as bytes
                raise DatamodelsError(f"{path}: {key} is not a numpy array (not a .npy member)")
    splits = [_check_split(name, arrays[f"x_{name}"], arrays[f"y_{name}"]) for name in SPLITS]
    train, test = splits
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DatamodelsError(f"{path}: train images are {_shape(train.images)} but test images are "
                              f"{_shape(test.images)}; both splits need the same image shape")
    if train.images.dtype != test.images.dtype:
        # One split uint8 and the other float: float32 holds both exactly.
        train.images, test.images = train.images.astype(np.float32), test.images.astype(np.float32)
    return train, test


def _check_split(name: str, x: np.ndarray, y: np.ndarray) -> Split:
    xk, yk = f"x_{name}", f"y_{name}"
    if y.ndim == 2 and y.shape[1] == 1:  # column vectors of labels are common; they mean the same
        y = y[:, 0]
    if x.ndim == 0 or y.ndim != 1:
        raise DatamodelsError(f"{xk} must be an array of images and {yk} a 1-D array of labels, "
                              f"got shapes {list(x.shape)} and {list(y.shape)}")
    if len(x) != len(y):
        raise DatamodelsError(f"{name} split: {xk} has {len(x)} examples but {yk} has {len(y)}")
    if len(x) == 0:
        raise DatamodelsError(f"{name} split is empty: {xk} and {yk} have no examples")
    if y.dtype.kind not in "iu":
        raise DatamodelsError(f"{yk} must hold integer class labels, got dtype {y.dtype}")
    if int(y.min()) < 0:
        raise DatamodelsError(f"{yk} has negative labels (min {int(y.min())}); labels must be 0, 1, 2, ...")
    if int(y.max()) > MAX_LABEL:  # Python integers: a uint64 label must not wrap to a negative int64
        raise DatamodelsError(f"{yk} has label {int(y.max())}, beyond the largest class index {MAX_LABEL}; "
                              f"labels must be 0, 1, 2, ... (one per class)")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3) or 0 in x.shape[1:]:
        raise DatamodelsError(f"{xk} images must be H×W or H×W×C with C 1 or 3, got per-image shape "
                              f"{list(x.shape[1:])}")
    if x.dtype == np.uint8:
        pass
    elif x.dtype.kind in "iub":
        # Integer pixels that fit a byte are stored as bytes, losslessly.
        if x.min() < 0 or x.max() > 255:
            raise DatamodelsError(f"{xk} has integer pixels outside 0..255 ({x.dtype}); store them as uint8 or float")
        x = x.astype(np.uint8)
    elif x.dtype.kind == "f":
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DatamodelsError(f"{xk} has NaN or infinite values (after conversion to float32)")
    else:
        raise DatamodelsError(f"{xk} must hold uint8 or floating-point pixels, got dtype {x.dtype}")
    return Split(np.ascontiguousarray(x), y.astype(np.int64))


# ---- writing ----------------------------------------------------------------------------------

class _Examples:
    """The indexed data set FFCV's writer reads: (image, label) pairs."""

    def __init__(self, split: Split):
        self.images, self.labels = split.images, split.labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _write_beton(path: Path, split: Split, image_field: str, progress: bool, name: str) -> None:
    with keep_torch_threads():
        _write_beton_ffcv(path, split, image_field, progress, name)


def _write_beton_ffcv(path: Path, split: Split, image_field: str, progress: bool, name: str) -> None:
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    from ffcv.writer import DatasetWriter

    n = len(split.labels)
    if image_field == "rgb":
        field = RGBImageField(write_mode="raw")
    else:
        field = NDArrayField(dtype=split.images.dtype, shape=tuple(split.images.shape[1:]))
    # Every example must fit in one page; beyond that, small pages keep small data sets small.
    example_bytes = split.images[0].nbytes + 64
    page_size = 1 << max(21, int(np.ceil(np.log2(4 * example_bytes))))
    if page_size >= 1 << 32:
        raise DatamodelsError(f"images of {example_bytes} bytes are too large for an FFCV file")
    tmp = path.with_name(path.name + ".tmp")
    show = progress and n >= PROGRESS_MIN_EXAMPLES
    if show:
        print(f"writing {n} {name} examples to {path}", file=sys.stderr)
    try:
        # One writer process: with several, pages land in the file in whichever order the processes
        # finish them, so the same data gave different bytes; one was as fast at 50,000 examples of
        # 12x12 and of 32x32x3 (1.2 s and 1.1-1.5 s against 1.3 s and 1.4 s with two processes).
        writer = DatasetWriter(str(tmp), {"image": field, "label": IntField()}, page_size=page_size, num_workers=1)
        with _writer_progress(show, name):
            writer.from_indexed_dataset(_Examples(split))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _writer_progress(show: bool, name: str) -> Iterator[None]:
    """FFCV's writer always draws a progress bar; keep it only when asked for."""
    import ffcv.writer

    original = ffcv.writer.tqdm
    ffcv.writer.tqdm = functools.partial(original, desc=name, disable=not show)
    try:
        yield
    finally:
        ffcv.writer.tqdm = original


# ---- small helpers ----------------------------------------------------------------------------

def _shape(images: np.ndarray) -> str:
    return "×".join(str(d) for d in images.shape[1:])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


