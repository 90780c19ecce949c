"""ResNet-9 on CIFAR-10: the training program of the datamodels paper, K models per task.

The recipe (Ilyas et al. 2022, after FFCV's CIFAR-10 example): the KakaoBrain ResNet-9
(conv-BN-ReLU blocks of 64-128-256-128 channels, two residual blocks, max-pooling, a
bias-free linear head scaled by 0.2), SGD with momentum 0.9 and weight decay 5e-4, batch
512, a triangular learning rate rising linearly from 0 to 0.5 at epoch 5 and back to 0 at
the last step, label smoothing 0.1, random flip, translate (2 px) and cutout (4 px), and
flip test-time augmentation (the margins come from the average of the logits of an image
and of its mirror image).  24 epochs on 50% of CIFAR-10 reach about 90% test accuracy.

The tricks, and why each is here:

* **K models in one network (``stack: grouped``, the default on GPU).**  A ResNet-9 at
  batch 512 leaves much of a large GPU idle between kernel launches and in its small
  late layers.  Stacking the K models of a task along the channel axis turns every
  convolution into a grouped convolution (``groups=K``) and every BatchNorm into one
  BatchNorm over K×C channels; one kernel launch then serves K models.  The models stay
  separate: group k of every layer sees only model k's channels, BatchNorm normalises each
  channel over its own model's batch (its statistics, running averages and eval-mode
  behaviour are exactly those of K separate networks), and the loss is the sum of the K
  models' mean losses, so no gradient crosses models.  ``stack: sequential`` trains the
  models one after another (the default on CPU, where one model already fills a core).
* **One FFCV loader per model slot, reused.**  Every model reads its own subset (the
  loader's ``indices``) in its own order with its own augmentations, from its own FFCV
  ``Loader``; the K loaders of a grouped stack run side by side and their batches are
  concatenated along the channel axis.  Building a ``Loader`` costs ~0.6 s (pipeline
  compilation), more than a small model's training, so each process keeps its loaders and
  points them at the next model's subset and seed instead of building new ones.
* **Seeded augmentations.**  FFCV's flip, translate and cutout draw from numba's RNG,
  which every loader thread seeds from OS entropy.  The decoder here seeds it before each
  batch from a hash of the batch's example ids, which follow the model's own shuffled
  order, so on CPU (one loader thread) a model's result depends only on its mask and seed.
  With several loader threads (GPU) the per-image draws happen in numba's worker threads
  and are not reproducible; GPU kernels are not bit-reproducible either.
* **cuDNN autotuning** (``cudnn.benchmark``): every batch of a sweep has the same shape, so
  the one-time search for the fastest convolution algorithms pays off within the first task.
* **channels_last and bf16 autocast on GPU** (fp16 with a loss scaler on request):
  tensor-core convolutions want both.  The loss scaler is shared by the K stacked models,
  so an fp16 overflow in one model skips that step for all of them; bf16 needs no scaler.
* **Optional ``torch.compile``** (``compile: true``): fuses BatchNorm/ReLU/residual
  elementwise work; worth it for long sweeps, as the compiled network is kept and reused
  by every task of the process.

Training batches come from one of two data paths (``data_path``):

* **ffcv**: FFCV loaders as above; the augmentations run on CPU threads (8 per loader on a GPU
  node), so a GPU node needs CPU cores in proportion to its images/s.
* **device**: the training split held in device memory as uint8 and augmented there, K models
  at once (``workers.device_data``); no loader threads, no host-to-device copies.  The same
  recipe and the same draw distributions, from other random numbers.
* **auto** (default): ``device`` on CUDA when the training images take at most
  ``device_data.AUTO_MEMORY_SHARE`` (10%) of the GPU's memory, else ``ffcv``; on CPU ``ffcv``
  (reproducible through its seeded decoder, and the figures of the CPU benchmarks), unless FFCV
  is not installed or the data is an unprepared ``.npz`` (``data = {source: npz, path: ...}``).

The target images are read with numpy from the prepared files (or the ``.npz``) once per process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodels.errors import DatamodelsError

from . import device_data
from .common import equal_size_groups, margins

# CIFAR-10 channel statistics on the 0-255 scale.
MEAN = (125.307, 122.961, 113.8575)
STD = (51.5865, 50.847, 51.255)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The augmentations: random flip, translate by up to TRANSLATE px, a CUTOUT x CUTOUT square, both
# filled with the mean colour; the same on both data paths.
TRANSLATE = 2
CUTOUT = 4
FILL = tuple(int(round(m)) for m in MEAN)


@dataclass
class Config:
    epochs: int = 24
    batch_size: int = 512
    lr: float = 0.5  # peak of the triangular schedule
    lr_peak_epoch: float = 5.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    width: int = 64  # channels of the first block; the blocks have width x (1, 2, 4, 2)
    flip_tta: bool = True
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: str = "auto"  # auto: bfloat16 autocast on cuda, float32 on cpu; or float32, bfloat16, float16
    channels_last: bool = True
    compile: bool = False
    stack: str = "auto"  # grouped | sequential; auto: grouped on cuda, sequential on cpu
    # FFCV threads per loader; 0: 1 on cpu (reproducible augmentations), 8 on cuda.  FFCV also sets
    # torch's CPU thread count to this at every epoch, so on CPU it is the training's thread count too.
    loader_workers: int = 0
    eval_batch_size: int = 1000
    data_path: str = "auto"  # ffcv | device; auto: device on cuda when the data fits, else ffcv (see above)

    def __post_init__(self):
        checks = {"precision": ("auto", *_DTYPES), "stack": ("auto", "grouped", "sequential"),
                  "data_path": ("auto", "ffcv", "device")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"worker.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


# ---- the network ------------------------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.inner = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.inner(x)


class StackedResNet9(nn.Module):
    """K ResNet-9s side by side: input [B, 3K, H, W] (model k's images in channels 3k..3k+2),
    output logits [B, K, classes].  With K = 1 it is the plain ResNet-9."""

    def __init__(self, k: int, width: int = 64, num_classes: int = 10):
        super().__init__()
        self.k = k
        w1, w2, w3, w4 = width, 2 * width, 4 * width, 2 * width

        def conv_bn(c_in, c_out, kernel=3, stride=1, padding=1):
            return nn.Sequential(
                nn.Conv2d(k * c_in, k * c_out, kernel, stride, padding, groups=k, bias=False),
                nn.BatchNorm2d(k * c_out),
                nn.ReLU(inplace=True))

        self.body = nn.Sequential(
            conv_bn(3, w1),
            conv_bn(w1, w2, kernel=5, stride=2, padding=2),
            Residual(conv_bn(w2, w2), conv_bn(w2, w2)),
            conv_bn(w2, w3),
            nn.MaxPool2d(2),
            Residual(conv_bn(w3, w3), conv_bn(w3, w3)),
            conv_bn(w3, w4, padding=0),
            nn.AdaptiveMaxPool2d(1))
        self.head = nn.Parameter(torch.empty(k, w4, num_classes))  # bias-free linear layer per model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x).flatten(1).view(len(x), self.k, -1)  # [B, K, w4]
        # The 0.2 scale keeps the initial logits small: a cheap stand-in for a temperature.
        return torch.einsum("bkc,kco->bko", features, self.head) * 0.2

    @torch.no_grad()
    def reset(self, seeds) -> None:
        """Fresh weights for K new models, model k's drawn from its own generator in a fixed order
        (PyTorch's default init: U(+-1/sqrt(fan_in)) for convolutions and the head; BatchNorm 1, 0)."""
        convs = [m for m in self.body.modules() if isinstance(m, nn.Conv2d)]
        for i, seed in enumerate(seeds):
            g = torch.Generator().manual_seed(int(seed))
            for weight in [c.weight for c in convs] + [self.head]:
                block = weight.shape[0] // self.k if weight is not self.head else 1
                shape = (block, *weight.shape[1:])
                fan_in = math.prod(shape[1:]) if weight is not self.head else shape[1]
                bound = 1.0 / math.sqrt(fan_in)
                values = torch.empty(shape).uniform_(-bound, bound, generator=g)
                weight[i * block:(i + 1) * block].copy_(values.to(weight.dtype))
        for m in self.body.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # weight 1, bias 0, running statistics cleared


# ---- data -------------------------------------------------------------------------------------

class Normalize(nn.Module):
    def __init__(self, device: torch.device):
        super().__init__()
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def forward(self, x):
        return (x - self.mean) / self.std


def ffcv_augmentations() -> list:
    """FFCV's flip, translate and cutout, as the ffcv path runs them (after decoding, on uint8 HWC)."""
    from ffcv.transforms import Cutout, RandomHorizontalFlip, RandomTranslate

    return [RandomHorizontalFlip(), RandomTranslate(padding=TRANSLATE, fill=FILL), Cutout(CUTOUT, FILL)]


def seeded_decoder():
    """FFCV's raw RGB decoder, preceded by seeding numba's RNG (the one FFCV's flip, translate
    and cutout draw from) from a hash of the batch's example ids.  Those follow the model's own
    shuffled order, which its seed fixes, so the augmentations become a function of (mask, seed).
    It lives in the decoder because FFCV's stage planner cannot place a plain Python stage ahead
    of JIT-compiled ones."""
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.pipeline.compiler import Compiler

    class SeededRGBImageDecoder(SimpleRGBImageDecoder):
        def generate_code(self):
            decode = Compiler.compile(super().generate_code())

            def seeded_decode(batch_indices, destination, metadata, storage_state):
                h = np.uint64(14695981039346656037)  # FNV-1a over the example ids
                for i in batch_indices:
                    h = (h ^ np.uint64(i)) * np.uint64(1099511628211)
                np.random.seed(np.int64(h >> np.uint64(33)))
                return decode(batch_indices, destination, metadata, storage_state)

            return seeded_decode

    return SeededRGBImageDecoder()


class _ModelLoader:
    """One FFCV training loader, pointed at one model after another (subset and seed)."""

    def __init__(self, path: str, cfg: Config, device: torch.device, workers: int):
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import Convert, Squeeze, ToDevice, ToTensor, ToTorchImage

        image = [seeded_decoder(), *ffcv_augmentations(), ToTensor(), ToDevice(device, non_blocking=True),
                 ToTorchImage(channels_last=cfg.channels_last), Convert(torch.float32), Normalize(device)]
        label = [IntDecoder(), ToTensor(), ToDevice(device, non_blocking=True), Squeeze()]
        self.loader = Loader(path, batch_size=cfg.batch_size, num_workers=workers, order=OrderOption.RANDOM,
                             drop_last=True, os_cache=True, seed=0, pipelines={"image": image, "label": label})

    def point_at(self, indices: np.ndarray, seed: int) -> "_ModelLoader":
        """What a new ``Loader(indices=indices, seed=seed)`` would do, without rebuilding the pipeline."""
        loader = self.loader
        loader.indices = np.asarray(indices)
        loader.seed = int(seed)
        loader.traversal_order = type(loader.traversal_order)(loader)
        loader.next_epoch = 0
        loader.first_traversal_order = loader.next_traversal_order()
        return self

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


_LOADERS: Dict[tuple, List[_ModelLoader]] = {}
_NETS: Dict[tuple, Tuple[nn.Module, nn.Module]] = {}
_TARGETS: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}


def _loaders(data_dir: str, cfg: Config, device: torch.device, count: int) -> List[_ModelLoader]:
    from pathlib import Path

    path = str(Path(data_dir) / "train.beton")
    workers = cfg.loader_workers or (8 if device.type == "cuda" else 1)
    key = (path, cfg.batch_size, str(device), workers, cfg.channels_last)
    pool = _LOADERS.setdefault(key, [])
    while len(pool) < count:
        pool.append(_ModelLoader(path, cfg, device, workers))
    return pool[:count]


def _target_images(data: dict, device: torch.device, channels_last: bool):
    """The target images, normalised, on the device, and their labels; cached per process."""
    key = (data.get("dir"), data.get("path"), data.get("targets", "test"), str(device), channels_last)
    if key not in _TARGETS:
        images, labels = device_data.target_arrays(data)  # [n, H, W, 3] uint8
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
        x = Normalize(device)(x)
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        _TARGETS[key] = (x, torch.from_numpy(labels.astype(np.int64)).to(device))
    return _TARGETS[key]


# ---- training ---------------------------------------------------------------------------------

def _resolve(cfg: Config) -> Tuple[torch.device, torch.dtype, str]:
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = cfg.precision if cfg.precision != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    stack = cfg.stack if cfg.stack != "auto" else ("grouped" if device.type == "cuda" else "sequential")
    return device, _DTYPES[precision], stack


def _ffcv_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("ffcv") is not None
    except ImportError:  # an import hook that refuses it: as good as absent
        return False


def data_path(cfg: Config, data: dict, device: torch.device) -> str:
    """``ffcv`` or ``device``: the configured path, or what ``auto`` means for this data and device."""
    prepared = device_data.is_prepared(data)
    if cfg.data_path == "ffcv":
        if not prepared:
            raise DatamodelsError("worker.data_path ffcv needs prepared data (a data directory with meta.json); "
                                  "prepare it, or use worker.data_path: device")
        if not _ffcv_installed():
            raise DatamodelsError("worker.data_path ffcv needs FFCV, which is not installed here; "
                                  "use worker.data_path: device")
        return "ffcv"
    if cfg.data_path == "device":
        return "device"
    if not prepared or not _ffcv_installed():
        return "device"
    return "device" if device_data.fits_on(device, device_data.train_nbytes(data)) else "ffcv"


def _network(k: int, cfg: Config, num_classes: int, device: torch.device) -> Tuple[StackedResNet9, nn.Module]:
    """The process's network for stacks of k models and the module that runs it (compiled when asked):
    kept across tasks, so compilation happens once per process; the caller re-initialises it."""
    key = (k, cfg.width, num_classes, str(device), cfg.channels_last, cfg.compile)
    if key not in _NETS:
        net = StackedResNet9(k, cfg.width, num_classes).to(device)
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        _NETS[key] = (net, torch.compile(net) if cfg.compile else net)
    return _NETS[key]


def default_models_per_task(worker: dict, meta: dict = None) -> int:
    """K when ``sweep.models_per_task`` is 0: a grouped stack of 8 on a GPU (as configs/cifar10.yaml
    sets; the driver choosing K may have no GPU itself, so ``auto`` counts as one), one at a time
    on CPU.

    A rule from what the hardware is, not a measurement, because measuring is not cheap here: one
    SGD step of a ResNet-9 at batch 512 takes seconds on a CPU, and a GPU probe would need a GPU
    on the driver and cuDNN's autotuning per candidate.  On CPU, models of a task train one after
    another (``stack: sequential``), so K only sets how often a task returns, and a model alone
    runs for minutes, against milliseconds of task overhead.  On a GPU, K models share every
    kernel launch; 8 fill the late, small layers of a large GPU without outgrowing a small one's
    memory at batch 512."""
    return 1 if worker.get("device") == "cpu" else 8


def train(masks: np.ndarray, seeds: np.ndarray, config: dict) -> np.ndarray:
    cfg = Config(**{k: v for k, v in config["worker"].items() if k != "name"})
    data = config["data"]
    device, dtype, stack = _resolve(cfg)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # shapes never change within a sweep: autotune once
    path = data_path(cfg, data, device)
    x_target, y_target = _target_images(data, device, cfg.channels_last)
    num_classes = device_data.num_classes(data)

    masks = np.asarray(masks, dtype=bool)
    seeds = np.asarray(seeds)
    out = np.empty((len(masks), len(y_target)), dtype=np.float32)
    for rows in equal_size_groups(masks):
        per_stack = len(rows) if stack == "grouped" else 1
        for start in range(0, len(rows), per_stack):
            chunk = rows[start:start + per_stack]
            net = _fit(masks[chunk], seeds[chunk], cfg, data, path, device, dtype, num_classes)
            logits = _predict(net, x_target, cfg, device, dtype)  # [n, k, classes]
            out[chunk] = margins(logits.transpose(0, 1), y_target).cpu().numpy()
    return out


def _ffcv_batches(masks: np.ndarray, seeds: np.ndarray, cfg: Config, data_dir: str, device: torch.device):
    """(steps per epoch, a function giving one epoch's (x [B, 3K, H, W], y [B, K]) batches) from FFCV loaders."""
    k = len(masks)
    loaders = [loader.point_at(np.flatnonzero(mask), seed)
               for loader, mask, seed in zip(_loaders(data_dir, cfg, device, k), masks, seeds)]

    def epoch():
        for batches in zip(*loaders):
            if device.type == "cuda":
                # FFCV's last stages allocate these on its own CUDA stream; tell the allocator they are
                # used on ours, or it may hand their memory to the next batch while we still read it.
                for images, labels in batches:
                    images.record_stream(torch.cuda.current_stream())
                    labels.record_stream(torch.cuda.current_stream())
            x = torch.cat([images for images, _ in batches], dim=1) if k > 1 else batches[0][0]
            yield x, torch.stack([labels for _, labels in batches], dim=1)

    return len(loaders[0]), epoch


def _device_batches(masks: np.ndarray, seeds: np.ndarray, cfg: Config, data: dict, device: torch.device):
    """What ``_ffcv_batches`` gives, from the training split held and augmented on the device."""
    batches = device_data.StackBatches(device_data.resident(data, device), [np.flatnonzero(m) for m in masks], seeds,
                                       cfg.batch_size, TRANSLATE, CUTOUT, FILL)

    def epoch():
        for images, labels in batches:
            yield device_data.to_network_input(images, MEAN, STD, cfg.channels_last), labels

    return len(batches), epoch


def _fit(masks: np.ndarray, seeds: np.ndarray, cfg: Config, data: dict, path: str, device: torch.device,
         dtype: torch.dtype, num_classes: int) -> StackedResNet9:
    """Train K models (one stack) on their masks, with batches from the ``path`` data path."""
    k = len(masks)
    net, model = _network(k, cfg, num_classes, device)
    net.reset(seeds)
    net.train()
    if path == "ffcv":
        steps, epoch = _ffcv_batches(masks, seeds, cfg, data["dir"], device)
    else:
        steps, epoch = _device_batches(masks, seeds, cfg, data, device)
    if steps == 0:
        raise ValueError(f"a subset of {masks[0].sum()} examples holds no full batch of {cfg.batch_size}")
    total = cfg.epochs * steps
    # Triangular schedule, per step: 0 -> lr at lr_peak_epoch -> 0 at the end.
    schedule = np.interp(np.arange(total + 1), [0, cfg.lr_peak_epoch * steps, total], [0, cfg.lr, 0])
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          **fused)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    step = 0
    for _ in range(cfg.epochs):
        for x, y in epoch():  # x [B, 3K, H, W] normalised, y [B, K]
            for group in opt.param_groups:
                group["lr"] = schedule[step]
            with autocast:
                logits = model(x)
            # Mean over the flattened [B*K] batch times K = the sum of the K models' mean losses.
            loss = F.cross_entropy(logits.float().reshape(-1, num_classes), y.reshape(-1),
                                   label_smoothing=cfg.label_smoothing) * k
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
    return net


@torch.no_grad()
def _predict(net: StackedResNet9, images: torch.Tensor, cfg: Config, device: torch.device,
             dtype: torch.dtype) -> torch.Tensor:
    """Logits [n, K, classes] of the K stacked models, averaged with the mirror images' (flip TTA).
    Eager even when training is compiled: evaluation is ~2% of the work and has other shapes."""
    net.eval()
    k = net.k
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    out = []
    for chunk in images.split(cfg.eval_batch_size):
        x = chunk.repeat(1, k, 1, 1) if k > 1 else chunk  # every model sees the same targets
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = net(x).float()
            if cfg.flip_tta:
                logits = (logits + net(x.flip(-1)).float()) / 2
        out.append(logits)
    net.train()
    return torch.cat(out)
