"""The digits MLP trained the plain PyTorch way, one model at a time: the reference point.

This is how the published pipeline trains: one model per task, an ``nn.Module``, autograd and
``torch.optim.SGD``.  Same network, initialisation (nn.Linear's default), input
standardisation, batch size, epochs, Nesterov momentum, weight decay and linear learning-rate
decay as ``workers.mlp``; benchmarks/perf/training.py times it beside the stacked worker.
"""
import numpy as np
import torch

from workers.common import load_split, margins, targets
from workers.mlp import Config, _standardiser


def train(masks, seeds, config):
    cfg = Config(**{k: v for k, v in config["worker"].items() if k not in ("name", "precision")})
    x, y = load_split(config["data"]["dir"], "train")
    xt, yt = targets(config["data"]["dir"], config["data"].get("targets", "test"))
    mean, std = _standardiser(x)
    x = torch.from_numpy((x.reshape(len(x), -1).astype(np.float32) - mean) / std)
    xt = torch.from_numpy((xt.reshape(len(xt), -1).astype(np.float32) - mean) / std)
    y, yt = torch.from_numpy(y.astype(np.int64)), torch.from_numpy(yt.astype(np.int64))
    classes = int(max(y.max(), yt.max())) + 1
    out = []
    for mask, seed in zip(masks, seeds):
        g = torch.Generator().manual_seed(int(seed))
        torch.manual_seed(int(seed))
        model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], cfg.hidden), torch.nn.ReLU(),
                                    torch.nn.Linear(cfg.hidden, classes))
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                              weight_decay=cfg.weight_decay)
        subset = torch.from_numpy(np.flatnonzero(mask))
        steps = cfg.epochs * -(-len(subset) // cfg.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - t / steps)
        for _ in range(cfg.epochs):
            order = subset[torch.randperm(len(subset), generator=g)]
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            out.append(margins(model(xt), yt).numpy())
    return np.stack(out).astype(np.float32)
