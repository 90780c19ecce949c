"""Training data held in device memory, augmented on the device: the ResNet-9 worker's ``device`` data path.

The training split is read once per process into device memory as uint8 (CIFAR-10's 50,000
images are 154 MB), and every batch is gathered and augmented there, for the K models of a
stack at once, with one indexing kernel: no loader threads, no host-to-device copies, no
CPU cost per image (the way airbench trains CIFAR-10 in seconds).  The recipe is the FFCV
path's, draw for draw in distribution (tests/test_gpu_path.py compares the two): a horizontal
flip with probability 1/2, then a translation by (dy, dx) uniform in {-p..p}² with the
translated-in border filled with the fill colour, then a c×c cutout square (same fill) at a
position uniform over the ones inside the image.

Each model draws from its own ``torch.Generator`` on the device, seeded with the model's
seed: its batch order (a fresh permutation of its subset every epoch, the last partial batch
dropped) and its augmentations, drawn for a whole epoch at once.  So a model's data is a
function of its (mask, seed) alone, whatever models share its stack, and on CPU its training
is reproducible.  CUDA generators draw other numbers than CPU ones from the same seed, and the
FFCV path draws from numba's RNG: the three give other models of the same distribution.

Where the data comes from: a prepared data directory (``data["dir"]``, its ``.beton`` files
read with numpy, FFCV not needed), or, where there is none (a machine without FFCV cannot
prepare), a user's ``.npz`` named by ``data = {"source": "npz", "path": ...}`` with the arrays
``x_train``, ``y_train``, ``x_test``, ``y_test``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch

from datamodels.errors import DatamodelsError

# The device path is chosen automatically on a GPU when the training images take at most this share of its
# memory.  The rest is for what grows with K: the stacked models' activations (several GiB at K = 16 and
# batch 512 in bf16) and cuDNN's workspaces.  CIFAR-10 (154 MB) passes on any card of 1.6 GB or more.
AUTO_MEMORY_SHARE = 0.10

_ARRAYS: Dict[tuple, Tuple[np.ndarray, np.ndarray]] = {}
_RESIDENT: Dict[tuple, "ResidentSplit"] = {}


# ---- reading -----------------------------------------------------------------------------------

def is_prepared(data: dict) -> bool:
    return bool(data.get("dir")) and (Path(data["dir"]) / "meta.json").is_file()


def _npz_arrays(data: dict) -> Dict[str, np.ndarray]:
    if data.get("source") != "npz" or not data.get("path"):
        where = data.get("dir") or data.get("path")
        raise DatamodelsError(f"no prepared data at {where} (meta.json missing) and no data = "
                              "{source: npz, path: ...} to read instead; run `datamodels prepare` first")
    path = Path(data["path"])
    key = (str(path.resolve()), path.stat().st_mtime if path.is_file() else None)
    if key not in _ARRAYS:
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, KeyError, ValueError) as exc:
            raise DatamodelsError(f"cannot read {path} as an .npz with x_train, y_train, x_test, y_test "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        for name in ("x_train", "x_test"):
            if arrays[name].dtype != np.uint8 or arrays[name].ndim != 4 or arrays[name].shape[3] != 3:
                raise DatamodelsError(f"{path}: {name} must be uint8 images [n, H, W, 3], got "
                                      f"{arrays[name].dtype} {list(arrays[name].shape)}")
        _ARRAYS[key] = arrays
    return _ARRAYS[key]


def split_arrays(data: dict, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images [n, H, W, 3] uint8 and int64 labels of ``split`` ("train" or "test"), cached per process."""
    if is_prepared(data):
        from .common import load_split

        return load_split(data["dir"], split)
    arrays = _npz_arrays(data)
    return arrays[f"x_{split}"], arrays[f"y_{split}"].reshape(-1).astype(np.int64)


def target_arrays(data: dict) -> Tuple[np.ndarray, np.ndarray]:
    """The target examples in store column order: the test split, then optionally the training split."""
    x, y = split_arrays(data, "test")
    if data.get("targets", "test") == "test+train":
        x_train, y_train = split_arrays(data, "train")
        x, y = np.concatenate([x, x_train]), np.concatenate([y, y_train])
    return x, y


def num_classes(data: dict) -> int:
    if is_prepared(data):
        import json

        meta = json.loads((Path(data["dir"]) / "meta.json").read_text())
        if "num_classes" in meta:
            return int(meta["num_classes"])
    return int(max(split_arrays(data, "train")[1].max(), split_arrays(data, "test")[1].max())) + 1


def train_nbytes(data: dict) -> int:
    """Bytes of the training images as uint8, without reading them where the metadata says."""
    if is_prepared(data):
        import json

        meta = json.loads((Path(data["dir"]) / "meta.json").read_text())
        return int(meta["num_train"]) * int(np.prod(meta["image_shape"]))
    return split_arrays(data, "train")[0].nbytes


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether ``auto`` holds ``nbytes`` of training images on ``device`` (CUDA only)."""
    if device.type != "cuda":
        return False
    return nbytes <= AUTO_MEMORY_SHARE * torch.cuda.get_device_properties(device).total_memory


# ---- the resident split ------------------------------------------------------------------------

class ResidentSplit:
    """The training images [N, H, W, C] uint8 and labels [N] int64 on one device."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DatamodelsError(f"the device data path needs uint8 images [n, H, W, C], got {images.dtype} "
                                  f"{list(images.shape)}; use worker.data_path: ffcv")
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.device = device


def resident(data: dict, device: torch.device) -> ResidentSplit:
    """The training split on ``device``, read and copied once per process."""
    key = (data.get("dir") if is_prepared(data) else data.get("path"), str(device))
    if key not in _RESIDENT:
        _RESIDENT[key] = ResidentSplit(*split_arrays(data, "train"), device)
    return _RESIDENT[key]


# ---- augmentation ------------------------------------------------------------------------------

def draw(generator: torch.Generator, shape: Tuple[int, ...], height: int, width: int, padding: int,
         cutout: int) -> Dict[str, torch.Tensor]:
    """Augmentation draws for ``shape`` images from one generator: flip (bool), the translation
    (dy, dx) in -padding..padding, and the cutout square's corner (cy, cx)."""
    dev = generator.device

    def randint(high):
        return torch.randint(0, high, shape, generator=generator, device=dev)

    return {"flip": randint(2) == 1,
            "dy": randint(2 * padding + 1) - padding, "dx": randint(2 * padding + 1) - padding,
            "cy": randint(height - cutout + 1), "cx": randint(width - cutout + 1)}


def augment(images: torch.Tensor, index: torch.Tensor, draws: Dict[str, torch.Tensor], cutout: int,
            fill) -> torch.Tensor:
    """``images[index]`` flipped, translated and cut out per ``draws``: uint8 [*index.shape, H, W, C].

    Output pixel (i, j) of an image is the flipped source's pixel (i + dy, j + dx), i.e. the
    source's (i + dy, W - 1 - (j + dx)) when flipped, or the fill colour where that falls outside
    the image or inside the cutout square: FFCV's flip, then translate, then cutout.  One gather
    from the flat pixel table does the batch selection, flip and translation of every image."""
    n_shape = index.shape
    _, height, width, channels = images.shape
    index = index.reshape(-1)
    d = {name: value.reshape(-1, 1) for name, value in draws.items()}
    rows = torch.arange(height, device=index.device)[None, :] + d["dy"]  # [n, H] source row per output row
    cols = torch.arange(width, device=index.device)[None, :] + d["dx"]  # [n, W] column in the flipped source
    inside = (((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :])
    cols = torch.where(d["flip"], width - 1 - cols, cols)
    flat = ((index[:, None, None] * height + rows.clamp(0, height - 1)[:, :, None]) * width
            + cols.clamp(0, width - 1)[:, None, :])  # [n, H, W] pixel numbers
    pixels = images.reshape(-1, channels)[flat]  # [n, H, W, C]
    ar_h, ar_w = torch.arange(height, device=index.device), torch.arange(width, device=index.device)
    cut = (((ar_h[None, :] >= d["cy"]) & (ar_h[None, :] < d["cy"] + cutout))[:, :, None]
           & ((ar_w[None, :] >= d["cx"]) & (ar_w[None, :] < d["cx"] + cutout))[:, None, :])
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    out = torch.where((inside & ~cut)[..., None], pixels, fill)
    return out.reshape(*n_shape, height, width, channels)


class StackBatches:
    """The training batches of K models, each on its own subset with its own seed, from a resident split.

    Iterating gives one epoch: ``steps`` pairs (images uint8 [K, B, H, W, C], labels [B, K]).
    Every epoch draws each model's new order and augmentations from the model's generator."""

    def __init__(self, split: ResidentSplit, subsets: List[np.ndarray], seeds, batch_size: int, padding: int,
                 cutout: int, fill):
        self.split, self.batch_size, self.padding, self.cutout, self.fill = split, batch_size, padding, cutout, fill
        dev = split.device
        self.subsets = [torch.from_numpy(np.asarray(s, dtype=np.int64)).to(dev) for s in subsets]
        self.generators = [torch.Generator(device=dev).manual_seed(int(seed)) for seed in seeds]
        self.steps = len(self.subsets[0]) // batch_size

    def __len__(self) -> int:
        return self.steps

    def _epoch(self):
        """Per model: its example ids for the epoch [steps, B] and its draws; stacked to [steps, K, B]."""
        used = self.steps * self.batch_size
        _, height, width, _ = self.split.images.shape
        orders, draws = [], []
        for subset, generator in zip(self.subsets, self.generators):
            perm = torch.randperm(len(subset), generator=generator, device=subset.device)[:used]
            orders.append(subset[perm].view(self.steps, self.batch_size))
            draws.append(draw(generator, (self.steps, self.batch_size), height, width, self.padding, self.cutout))
        order = torch.stack(orders, 1)
        return order, {name: torch.stack([d[name] for d in draws], 1) for name in draws[0]}

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order, draws = self._epoch()
        for step in range(self.steps):
            index = order[step]  # [K, B]
            images = augment(self.split.images, index, {n: v[step] for n, v in draws.items()}, self.cutout,
                             self.fill)
            yield images, self.split.labels[index].T


def to_network_input(images: torch.Tensor, mean, std, channels_last: bool) -> torch.Tensor:
    """uint8 [K, B, H, W, C] -> the stacked network's normalised float input [B, K*C, H, W] (model k's
    channels k*C..k*C+C-1), channels_last in memory when asked (then no copy beyond the float conversion)."""
    k, b, h, w, c = images.shape
    x = images.permute(1, 2, 3, 0, 4).reshape(b, h, w, k * c).float()
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).repeat(k)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).repeat(k)
    x = ((x - mean) / std).permute(0, 3, 1, 2)
    return x if channels_last else x.contiguous()
