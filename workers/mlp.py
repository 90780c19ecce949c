"""The default worker: a one-hidden-layer MLP on flattened pixels, K models at a time.

It fits any prepared image data set (8×8 digits, 28×28 grayscale, 32×32×3) on CPU
or GPU.  The K models of a task are trained together as one stacked network:
every weight carries a leading model axis and the layers are batched matmuls, so
one step advances all K models (a tiny model alone leaves the hardware idle
between Python dispatches).

Why it is fast (one thread of an AMD EPYC, digits defaults, benchmarks/training.py: 37
models per CPU second at K = 1 and 119 at K = 25, where the plain nn.Module + autograd +
torch.optim version, benchmarks/plain_mlp.py, trains 8; 177 at K = 100 with
``precision: bfloat16``):

* no autograd: forward and backward of a two-layer MLP are five batched matmuls written
  out by hand, with activations kept feature-major so the softmax is vectorised;
* all parameters, gradients and momentum buffers of the K models live in flat tensors,
  so one fused SGD kernel updates everything, whatever K is;
* every model's batch order for the whole run is drawn up front, and a batch is gathered
  with one ``index_select`` for all K models.

The update is exactly torch.optim.SGD's (Nesterov momentum, weight decay on every
parameter) on the mean cross-entropy of each model's batch.

Why the models stay independent: each model draws its initialisation and batch
order from its own ``torch.Generator`` seeded with its own seed, sees only its own
subset, and no operation mixes the model axis.  A model's result therefore does not
depend on which other models share its task: bit for bit on one thread (as in a
one-CPU Ray task; tests/test_workers.py checks it), up to float rounding where torch
splits an op across several threads.  Models with different subset sizes take
different numbers of steps, so a task with mixed sizes trains one stack per size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .common import equal_size_groups, load_split, margins, targets


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Config:
    hidden: int = 64
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 0.03  # on all parameters, as torch.optim.SGD does; see configs/digits.yaml
    device: str = "cpu"
    # float32, or bfloat16: matmuls in bf16 with fp32 accumulation, fp32 master weights, momentum, softmax
    # and margins, i.e. what torch.autocast does.  Several times faster where the CPU has bf16 dot
    # products (AVX512-BF16, AMX) or on a GPU; slow where it has not.
    precision: str = "float32"

    def __post_init__(self):
        if self.precision not in _DTYPES:
            raise ValueError(f"worker.precision must be one of {', '.join(_DTYPES)}, got {self.precision!r}")


def default_models_per_task(worker: dict) -> int:
    """K when ``sweep.models_per_task`` is 0.  On 2 CPU cores (benchmarks/training.py) the
    float32 stack ran fastest at K = 25 (K = 100 was 20% slower: the stack outgrows the
    cache) and the bfloat16 one at K = 100.  On a GPU, not measured here, a kernel launch
    costs as much as a small model's step, so the stack should be as large as memory allows."""
    if str(worker.get("device", "cpu")).startswith("cuda"):
        return 500
    return 100 if worker.get("precision") == "bfloat16" else 25


def train(masks: np.ndarray, seeds: np.ndarray, config: dict) -> np.ndarray:
    cfg = Config(**{k: v for k, v in config["worker"].items() if k != "name"})
    data = config["data"]
    x_train, y_train = load_split(data["dir"], "train")
    x_target, y_target = targets(data["dir"], data.get("targets", "test"))
    return train_arrays(x_train, y_train, x_target, y_target, masks, seeds, cfg)


def train_arrays(x_train: np.ndarray, y_train: np.ndarray, x_target: np.ndarray, y_target: np.ndarray,
                 masks: np.ndarray, seeds: np.ndarray, cfg: Config) -> np.ndarray:
    """The worker on in-memory arrays: margins [K, len(y_target)] of one model per mask."""
    device = torch.device(cfg.device)
    mean, std = _standardiser(x_train)
    x = _flat(x_train, mean, std).to(device)
    xt = _flat(x_target, mean, std).to(device)
    num_classes = int(max(y_train.max(), y_target.max())) + 1
    onehot = torch.eye(num_classes, device=device)[torch.from_numpy(y_train.astype(np.int64)).to(device)]
    yt = torch.from_numpy(y_target.astype(np.int64)).to(device)

    masks = np.asarray(masks, dtype=bool)
    seeds = np.asarray(seeds)
    out = np.empty((len(masks), len(y_target)), dtype=np.float32)
    for rows in equal_size_groups(masks):
        net = _StackedMLP(masks[rows], seeds[rows], x.shape[1] - 1, num_classes, cfg, device)
        net.fit(x, onehot)
        out[rows] = margins(net.logits(xt), yt).float().cpu().numpy()
    return out


def _standardiser(x_train: np.ndarray):
    flat = x_train.reshape(len(x_train), -1).astype(np.float32)
    mean, std = flat.mean(0), flat.std(0)
    std[std < 1e-6] = 1.0  # constant pixels (digit borders) carry no signal
    return mean, std


def _flat(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """Standardised, flattened inputs with a column of ones appended (the bias input)."""
    flat = (x.reshape(len(x), -1).astype(np.float32) - mean) / std
    return torch.from_numpy(np.concatenate([flat, np.ones((len(x), 1), np.float32)], axis=1))


class _StackedMLP:
    """K same-shaped MLPs whose subsets all have the same size, trained in lockstep.

    Layout: weights as nn.Linear stores them ([out, in]); the first layer's bias is appended as
    one more input column, fed by a ones column on the data, so it rides along in the forward
    matmul and its gradient falls out of the weight gradient's matmul (no broadcast add over
    [K, hidden, B], no reduction of its own).  Activations are feature-major ([K, features,
    batch]): the softmax then runs over a middle axis, which torch vectorises across the batch;
    over a last axis of 10 classes it is several times slower.
    """

    def __init__(self, masks: np.ndarray, seeds: np.ndarray, num_in: int, num_classes: int, cfg: Config,
                 device: torch.device):
        self.cfg, self.k, self.device = cfg, len(masks), device
        self.dtype = _DTYPES[cfg.precision]
        k, h, c = self.k, cfg.hidden, num_classes
        shapes = [(h, num_in + 1), (c, h), (c, 1)]  # [w1 | b1], w2, b2 of one model
        sizes = [k * a * b for a, b in shapes]

        def views(flat):
            return [part.view(k, *shape) for part, shape in zip(flat.split(sizes), shapes)]

        # Flat fp32 master weights and momentum (one fused optimizer op updates everything); the
        # compute copy of the weights and the gradients are in the compute dtype.  The length is
        # padded to whole SIMD chunks: elements in a vectorised loop's scalar tail may round
        # differently, and which elements land there would depend on K.
        total = sum(sizes)
        self.theta = torch.zeros(total + (-total) % 64, device=device)
        self.buf = torch.zeros_like(self.theta)  # torch's SGD starts its momentum at the first gradient: same thing
        self.theta_c = self.theta if self.dtype == torch.float32 else torch.zeros_like(self.theta, dtype=self.dtype)
        self.grad = torch.zeros_like(self.theta_c)
        self.grad32 = self.grad if self.dtype == torch.float32 else torch.zeros_like(self.theta)
        self.master = views(self.theta[:total])
        self.w1, self.w2, self.b2 = views(self.theta_c[:total])
        self.gw1, self.gw2, self.gb2 = views(self.grad[:total])
        self.w2_t = self.w2.transpose(1, 2)

        # Per model, from its own generator: nn.Linear's default init U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        # of w1, b1, w2, b2 in that order, then the batch order of every epoch.
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        init = torch.empty(k, h + c, num_in + 2)  # rows: both layers' outputs; columns: [weight | bias]
        for i, g in enumerate(generators):
            for rows, fan_in in ((slice(0, h), num_in), (slice(h, h + c), h)):
                fan_out = rows.stop - rows.start
                init[i, rows, :fan_in] = (torch.rand(fan_out, fan_in, generator=g) * 2 - 1) / np.sqrt(fan_in)
                init[i, rows, fan_in] = (torch.rand(fan_out, generator=g) * 2 - 1) / np.sqrt(fan_in)
        self.master[0].copy_(init[:, :h, :num_in + 1])
        self.master[1].copy_(init[:, h:, :h])
        self.master[2].copy_(init[:, h:, h:h + 1])
        self.theta_c.copy_(self.theta)
        subsets = [torch.from_numpy(np.flatnonzero(m)) for m in masks]
        self.n = len(subsets[0])
        self.order = torch.empty(k, cfg.epochs, self.n, dtype=torch.long)  # example ids, per model and epoch
        for i, (subset, g) in enumerate(zip(subsets, generators)):
            if cfg.epochs:
                self.order[i] = subset[torch.stack([torch.randperm(self.n, generator=g) for _ in range(cfg.epochs)])]
        self.order = self.order.to(device)

    def fit(self, x: torch.Tensor, onehot: torch.Tensor) -> None:
        """Train on x [n, in + 1] (last column ones) with one-hot labels [n, classes]."""
        cfg = self.cfg
        x = x.to(self.dtype)
        steps_per_epoch = -(-self.n // cfg.batch_size)
        total = steps_per_epoch * cfg.epochs
        t = 0
        for epoch in range(cfg.epochs):
            order = self.order[:, epoch]
            for start in range(0, self.n, cfg.batch_size):
                # index_select on a flat index: several times faster than x[idx] with a 2-D idx
                idx = order[:, start:start + cfg.batch_size].reshape(-1)
                xb = x.index_select(0, idx).view(self.k, -1, x.shape[1])
                yb = onehot.index_select(0, idx).view(self.k, -1, onehot.shape[1])
                # Linear decay to zero: the last steps average out batch noise, which is noise in the margins.
                self._step(xb, yb, cfg.lr * (1.0 - t / total))
                t += 1

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float) -> None:
        """One SGD step of all K models on batches xb [K, B, in + 1] with one-hot labels yb [K, B, classes]."""
        h = torch.bmm(self.w1, xb.transpose(1, 2)).relu_()  # [K, hidden, B]
        # d(mean cross-entropy)/d(logits) = (softmax - onehot) / B, in fp32
        g = torch.softmax(torch.baddbmm(self.b2, self.w2, h), dim=1, dtype=torch.float32)
        g = g.sub_(yb.transpose(1, 2)).mul_(1.0 / xb.shape[1]).to(self.dtype)
        torch.bmm(g, h.transpose(1, 2), out=self.gw2)
        torch.sum(g, dim=2, keepdim=True, out=self.gb2)
        dh = torch.ops.aten.threshold_backward(torch.bmm(self.w2_t, g), h, 0)  # relu's backward
        torch.bmm(dh, xb, out=self.gw1)
        if self.grad32 is not self.grad:
            self.grad32.copy_(self.grad)
        _sgd(self.theta, self.grad32, self.buf, lr, self.cfg)
        if self.theta_c is not self.theta:
            self.theta_c.copy_(self.theta)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [K, n, classes] of every model on x [n, in + 1], from the fp32 master weights: margins in
        bf16 would carry a rounding error of about 1% of their size into every datamodel target."""
        w1, w2, b2 = self.master
        hidden = torch.bmm(w1, x.t().expand(self.k, *x.t().shape)).relu_()
        return torch.baddbmm(b2, w2, hidden).transpose(1, 2)


def _sgd(theta: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: float, cfg: Config) -> None:
    """torch.optim.SGD(nesterov=True, weight_decay=wd): g += wd*p; buf = m*buf + g; p -= lr*(g + m*buf),
    in one pass over the flat tensors (torch's fused kernel) where available."""
    if _FUSED_SGD:
        torch._fused_sgd_([theta], [grad], [buf], weight_decay=cfg.weight_decay, momentum=cfg.momentum, lr=lr,
                          dampening=0.0, nesterov=True, maximize=False, is_first_step=False)
    else:
        grad.add_(theta, alpha=cfg.weight_decay)
        buf.mul_(cfg.momentum).add_(grad)
        theta.add_(grad.add_(buf, alpha=cfg.momentum), alpha=-lr)


_FUSED_SGD = hasattr(torch, "_fused_sgd_")
