"""The default worker: a one-hidden-layer MLP on flattened pixels, K models at a time.

It fits any prepared image data set (8×8 digits, 28×28 grayscale, 32×32×3) on CPU
or GPU.  The K models of a task are trained together as one stacked network:
every weight carries a leading model axis and the layers are batched matmuls, so
one optimizer step advances all K models (a tiny model alone leaves the hardware
idle between Python dispatches).  The models stay independent: each has its own
initialisation and batch order drawn from its own seed, its own subset, and the
loss is a sum over models so no gradient crosses models.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .common import load_split, margins, targets


@dataclass
class Config:
    hidden: int = 64
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    device: str = "cpu"


def _standardiser(x_train: np.ndarray):
    flat = x_train.reshape(len(x_train), -1).astype(np.float32)
    mean, std = flat.mean(0), flat.std(0)
    std[std < 1e-6] = 1.0  # constant pixels (digit borders) carry no signal
    return lambda x: torch.from_numpy((x.reshape(len(x), -1).astype(np.float32) - mean) / std)


def _init(shape_in: int, shape_out: int, generators, device) -> tuple:
    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn per model from its own generator
    bound = 1.0 / np.sqrt(shape_in)
    w = torch.stack([(torch.rand(shape_in, shape_out, generator=g) * 2 - 1) * bound for g in generators])
    b = torch.stack([(torch.rand(shape_out, generator=g) * 2 - 1) * bound for g in generators])
    return w.to(device).requires_grad_(), b.unsqueeze(1).to(device).requires_grad_()


def train(masks: np.ndarray, seeds: np.ndarray, config: dict) -> np.ndarray:
    cfg = Config(**{k: v for k, v in config["worker"].items() if k != "name"})
    data = config["data"]
    device = torch.device(cfg.device)
    x_train, y_train = load_split(data["dir"], "train")
    x_target, y_target = targets(data["dir"], data.get("targets", "test"))
    standardise = _standardiser(x_train)
    x = standardise(x_train).to(device)
    y = torch.from_numpy(y_train.astype(np.int64)).to(device)
    num_classes = int(max(y_train.max(), y_target.max())) + 1

    masks = np.asarray(masks, dtype=bool)
    k = len(masks)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    subsets = [torch.from_numpy(np.flatnonzero(m)) for m in masks]
    n = max(len(s) for s in subsets)
    steps_per_epoch = max(1, -(-n // cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs

    w1, b1 = _init(x.shape[1], cfg.hidden, generators, device)
    w2, b2 = _init(cfg.hidden, num_classes, generators, device)
    params = [w1, b1, w2, b2]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    # Linear decay to zero: the last steps average out batch noise, which is noise in the margins.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / total_steps)

    def forward(inputs):
        return torch.baddbmm(b2, torch.relu(torch.baddbmm(b1, inputs, w1)), w2)

    for _ in range(cfg.epochs):
        # Each model walks through its own subset in its own order; a smaller subset wraps
        # around so every step has a full batch for every model.
        order = torch.stack([s[torch.randperm(len(s), generator=g)].repeat(-(-n // len(s)))[:n]
                             for s, g in zip(subsets, generators)]).to(device)
        for step in range(steps_per_epoch):
            idx = order[:, step * cfg.batch_size:(step + 1) * cfg.batch_size]
            logits = forward(x[idx])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, num_classes), y[idx].reshape(-1),
                                                     reduction="sum") / idx.shape[1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    with torch.no_grad():
        xt = standardise(x_target).to(device)
        logits = forward(xt.expand(k, *xt.shape))
        out = margins(logits, torch.from_numpy(y_target.astype(np.int64)).to(device))
    return out.float().cpu().numpy()
