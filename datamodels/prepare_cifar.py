"""Reading (and, for tests and benchmarks, writing) the CIFAR-10 python archive, checked:
a malformed archive or batch is a one-line error, and its pickles cannot run code."""
from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from .errors import DatamodelsError

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_META = "batches.meta"


@dataclass
class CifarSplit:
    images: np.ndarray  # [n, 32, 32, 3] uint8
    labels: np.ndarray  # [n] int64


def load_cifar10(path: Path) -> Tuple[CifarSplit, CifarSplit, int]:
    blobs = _cifar_blobs(path)
    batches = {name: _cifar_batch(name, blobs[name]) for name in CIFAR_BATCHES}
    num_classes = 10
    if CIFAR_META in blobs:
        meta = _unpickle(CIFAR_META, blobs[CIFAR_META])
        names = meta.get(b"label_names") if isinstance(meta, dict) else None
        if not isinstance(names, list) or not names:
            raise DatamodelsError(f"CIFAR-10 {CIFAR_META} is corrupt: it has no label_names list")
        num_classes = len(names)
    for name, (_, labels) in batches.items():
        if int(labels.max()) >= num_classes:
            raise DatamodelsError(f"CIFAR-10 batch {name} is corrupt: label {int(labels.max())} is not below "
                                  f"the {num_classes} classes")
    train_names = CIFAR_BATCHES[:-1]
    train = CifarSplit(np.concatenate([batches[n][0] for n in train_names]),
                  np.concatenate([batches[n][1] for n in train_names]))
    test = CifarSplit(*batches["test_batch"])
    return train, test, num_classes


def write_cifar10(archive: Path, batches: Dict[str, Tuple[np.ndarray, np.ndarray]], compress: bool = True) -> Path:
    """Write ``batches`` ({name: (data uint8 [n, 3072] as R, G, B planes, labels [n])}, one per
    name in CIFAR_BATCHES) as a CIFAR-10 python archive: what ``prepare`` reads, for synthetic
    data sets in tests and benchmarks."""
    blobs = {name: pickle.dumps({b"data": data, b"labels": [int(v) for v in labels]}, protocol=2)
             for name, (data, labels) in batches.items()}
    blobs[CIFAR_META] = pickle.dumps({b"label_names": [f"class{i}".encode() for i in range(10)]}, protocol=2)
    with tarfile.open(archive, "w:gz" if compress else "w") as tar:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"{CIFAR_DIR}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return archive


def _cifar_blobs(path: Path) -> Dict[str, bytes]:
    """The raw bytes of the batch files (and batches.meta when present), by base name."""
    wanted = CIFAR_BATCHES + (CIFAR_META,)
    blobs: Dict[str, bytes] = {}
    if path.is_dir():
        folder = path / CIFAR_DIR if (path / CIFAR_DIR).is_dir() else path
        if not (folder / CIFAR_BATCHES[0]).is_file():
            raise DatamodelsError(f"data.path: {path} is neither a {CIFAR_DIR} folder nor its parent "
                                  f"(no {CIFAR_BATCHES[0]} found)")
        for name in wanted:
            if (folder / name).is_file():
                try:
                    blobs[name] = (folder / name).read_bytes()
                except OSError as exc:
                    raise DatamodelsError(f"cannot read {folder / name} ({_first_line(exc)})") from None
        where = str(folder)
    else:
        where = str(path)
        try:
            # One pass in archive order: seeking backwards in a gzip stream decompresses it again.
            # Members are read into memory, never extracted, so odd member paths cannot escape.
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    name = member.name[2:] if member.name.startswith("./") else member.name
                    base = name[len(CIFAR_DIR) + 1:] if name.startswith(CIFAR_DIR + "/") else None
                    if base in wanted and member.isfile():
                        blobs[base] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DatamodelsError(f"{path} is not a valid CIFAR-10 archive ({_first_line(exc)})") from None
    missing = [name for name in CIFAR_BATCHES if name not in blobs]
    if missing:
        shown = ", ".join(f"{CIFAR_DIR}/{name}" for name in missing)
        raise DatamodelsError(f"{where} is not a complete CIFAR-10 archive: {shown} missing")
    return blobs


class _SafeUnpickler(pickle.Unpickler):
    """The CIFAR-10 batches are pickles; allow only what they contain (dicts, lists, bytes and
    numpy arrays), so a doctored file cannot run code."""

    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if module.startswith("numpy.core"):  # pickles from numpy 1.x name the pre-2.0 module
            module = "numpy._core" + module[len("numpy.core"):]
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _unpickle(name: str, blob: bytes):
    try:
        return _SafeUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # a damaged pickle fails in many ways
        raise DatamodelsError(f"CIFAR-10 batch {name} is corrupt: cannot unpickle it ({_first_line(exc)})") from None


def _cifar_batch(name: str, blob: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """Images [n, 32, 32, 3] uint8 (HWC) and labels of one batch, checked."""
    batch = _unpickle(name, blob)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatamodelsError(f"CIFAR-10 batch {name} is corrupt: it is not a dict with data and labels")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = list(data.shape) if isinstance(data, np.ndarray) else type(data).__name__
        raise DatamodelsError(f"CIFAR-10 batch {name} is corrupt: data must be uint8 [n, 3072], got {shape}")
    try:
        labels = np.asarray(labels)
    except Exception:
        labels = np.asarray([])
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise DatamodelsError(f"CIFAR-10 batch {name} is corrupt: labels must be {len(data)} integers")
    if len(data) == 0:
        raise DatamodelsError(f"CIFAR-10 batch {name} is corrupt: it is empty")
    if int(labels.min()) < 0:
        raise DatamodelsError(f"CIFAR-10 batch {name} is corrupt: it has negative labels")
    if int(labels.max()) >= 1 << 31:  # checked before the cast below, which would wrap it
        raise DatamodelsError(f"CIFAR-10 batch {name} is corrupt: label {int(labels.max())} is not a class index")
    # Stored as planes (all red, then green, then blue); FFCV's RGB field wants H×W×3.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int64)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
