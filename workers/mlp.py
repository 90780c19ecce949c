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

What is fastest depends on the machine, so two settings are measured there rather than fixed:
``precision: auto`` (the default) and K (``sweep.models_per_task: 0``, the default).  A short probe
(``resolve``, ``default_models_per_task``: a few SGD steps of the real stack on random data of
the real shapes, cached per machine by ``datamodels.hardware``) picks K among 10, 25, 50 and
100 models, timed on CPU in one process per task slot at once as the sweep's tasks run (a few
seconds, once per machine), and bfloat16 only where it trains at least 1.5x more models per
second than float32, which needs bf16 dot products (AVX512-BF16 or AMX; never on AVX2-only CPUs,
where bf16 matmuls run ~8x slower).  The sweep's driver decides once per sweep and records the
choices (``metrics.json``) and the precision (the store).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from datamodels import hardware

from .common import equal_size_groups, load_split, margins, targets


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_PRECISIONS = ("auto", *_DTYPES)
# bfloat16 changes a model's numbers, so it must win by a margin that measurement noise cannot
# close: a near-tie keeps float32.  On the digits MLP, bf16 (AVX512-BF16) ran ~1.2x faster than
# float32, each at its best K; a 1.3x margin was crossed by a probe run while two other processes
# shared the 2 cores.
_BF16_MARGIN = 1.5
# Candidate K (models per task) for ``sweep.models_per_task: 0``, timed by a probe on the machine.
_KS = {"cpu": (10, 25, 50, 100), "cuda": (100, 250, 500, 1000)}


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
    # products (AVX512-BF16, AMX) or on a GPU; several times slower where it has not.  auto: decided
    # once per sweep by the driver (see ``resolve``), and recorded in the store.
    precision: str = "auto"

    def __post_init__(self):
        for name in ("hidden", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"worker.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "momentum", "weight_decay"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"worker.{name} must be >= 0, got {getattr(self, name)}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"worker.precision must be one of {', '.join(_PRECISIONS)}, got {self.precision!r}")


# ---- choices made on the machine: precision and K ------------------------------------------------

def resolve(worker: dict, meta: Optional[dict] = None, models_per_task: int = 0) -> dict:
    """``worker`` with ``precision: auto`` made concrete, for a sweep of ``models_per_task`` models
    per task (0: the default K).  ``meta``: the prepared data's ``meta.json`` (input and class counts).

    The sweep's driver calls this once, before it packs tasks, and sends the concrete value to
    every task and into the store, so one sweep never mixes precisions.  On CPU it measures here,
    on the driver's machine, with the tasks' thread count (``datamodels.hardware.choose``: cached
    per machine): bfloat16 only where it trains ``_BF16_MARGIN`` times more models per second
    than float32 (each at its best K), and never on a CPU without bf16 dot products.  On a cluster of unlike
    nodes the choice is the driver's; give ``worker.precision`` explicitly when the nodes differ."""
    if _config(worker).precision != "auto":
        return worker
    return {**worker, "precision": choose_precision(_config(worker), _shape(meta), models_per_task)}


def default_models_per_task(worker: dict, meta: Optional[dict] = None) -> int:
    """K when ``sweep.models_per_task`` is 0: of a few candidates, the one that trains the most
    models per second in a short probe of the stacked MLP at the data's shapes and the resolved
    precision, on this machine with the tasks' thread count (cached per machine).  Small K leaves
    the cores waiting on Python between tiny matmuls; large K outgrows the caches."""
    cfg = _config(worker)
    shape = _shape(meta)
    if cfg.precision == "auto":
        cfg = dataclasses.replace(cfg, precision=choose_precision(cfg, shape))
    return choose_models_per_task(cfg, shape)


def choose_precision(cfg: Config, shape: Tuple[int, int, int], models_per_task: int = 0) -> str:
    name = "workers.mlp.precision"
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            hardware.record(name, "float32", "worker.device is cuda, but there is no GPU here to ask about "
                                             "bfloat16; set worker.precision to choose")
            return "float32"
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        value = "bfloat16" if native else "float32"
        hardware.record(name, value, f"{torch.cuda.get_device_name(device)} "
                                     f"{'computes' if native else 'does not compute'} bfloat16 natively")
        return value
    missing = _cpu_bf16_missing()
    if missing:
        hardware.record(name, "float32", missing)
        return "float32"
    ks = {p: models_per_task or choose_models_per_task(dataclasses.replace(cfg, precision=p), shape) for p in _DTYPES}
    probes = {p: _probe(dataclasses.replace(cfg, precision=p), shape, ks[p], _model_steps(device)) for p in _DTYPES}
    key = f"{_shape_key(cfg, shape)} k={ks['float32']},{ks['bfloat16']} margin={_BF16_MARGIN}"
    return hardware.choose(name, probes, key=key, prefer="float32", margin=_BF16_MARGIN)


def choose_models_per_task(cfg: Config, shape: Tuple[int, int, int]) -> int:
    name = f"workers.mlp.models_per_task.{cfg.precision}"
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        # No GPU here to measure on: a GPU step costs kernel launches more than arithmetic, so the
        # largest candidate that surely fits in memory.
        k = _KS["cuda"][-2]
        hardware.record(name, k, "worker.device is cuda, but there is no GPU here to measure on")
        return k
    together = None
    if device.type == "cpu":
        # Every task slot of a sweep trains at once, sharing the caches and the memory bus: a
        # stack that is fastest alone may not be when the others run too (on a 2-core AVX2 EPYC,
        # K = 50 won alone, but two copies side by side trained 175-181 models/s at K = 25 against
        # 152-163 at K = 50).  So K is timed with a probe process per task slot.
        together = hardware.Together("workers.mlp:k_probes", (dataclasses.asdict(cfg), list(shape)),
                                     copies=hardware.task_slots(torch.get_num_threads()),
                                     threads=torch.get_num_threads())
    return int(hardware.choose(name, k_probes(cfg, shape), key=_shape_key(cfg, shape), together=together))


def k_probes(cfg, shape) -> dict:
    """{K: a probe of a stack of K models} for every candidate K (``cfg``: a Config or its dict)."""
    cfg = cfg if isinstance(cfg, Config) else Config(**cfg)
    device = torch.device(cfg.device)
    ks = _KS["cuda" if device.type == "cuda" else "cpu"]
    return {str(k): _probe(cfg, tuple(shape), k, _model_steps(device)) for k in ks}


def _cpu_bf16_missing() -> str:
    """Why bfloat16 matmuls cannot be fast on this CPU, or '' if they can."""
    flags = set(hardware.cpu_flags())
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return "float32: this CPU has no bfloat16 dot products (avx512_bf16, amx_bf16)"
    capability = torch.backends.cpu.get_cpu_capability()
    if not capability.startswith("AVX512"):
        return f"float32: torch runs {capability} kernels here, which have no bfloat16 dot products"
    try:
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        native = True
    return "" if native else "float32: oneDNN has no bfloat16 kernels here"


def _shape(meta: Optional[dict]) -> Tuple[int, int, int]:
    """(inputs, classes, training examples) of the prepared data; the digits' without ``meta``."""
    if not meta:
        return 64, 10, 1297
    return int(np.prod(meta["image_shape"])), int(meta.get("num_classes", 10)), int(meta.get("num_train", 1297))


def _shape_key(cfg: Config, shape: Tuple[int, int, int]) -> str:
    return (f"in={shape[0]} classes={shape[1]} train={shape[2]} hidden={cfg.hidden} batch={cfg.batch_size} "
            f"device={cfg.device}")


def _model_steps(device: torch.device) -> int:
    """Models x SGD steps per probe call: four steps of the largest candidate stack."""
    return 4 * _KS["cuda" if device.type == "cuda" else "cpu"][-1]


def _probe(cfg: Config, shape: Tuple[int, int, int], k: int, model_steps: int) -> Callable[[], None]:
    """A call that trains a stack of ``k`` models on random data of the real shapes for
    ``model_steps // k`` SGD steps through the real code (batch gathers, step, update): every
    candidate does the same work, so the fastest call has the most models per second.  Each
    model trains on its own random subset of the real number of training examples (at most
    half of them), as in a sweep: the batch gathers then touch as much memory as real ones,
    which is what separates the candidates when several tasks share the caches.  Built on its
    first call (the untimed warm-up), so a cached choice costs nothing."""
    device = torch.device(cfg.device)
    num_in, classes, rows = shape
    steps = max(1, model_steps // k)
    # the fewest epochs whose subsets fit in half the data; steps a multiple of them
    half = max(rows // 2, cfg.batch_size)
    epochs = next(e for e in range(1, steps + 1) if steps % e == 0 and steps // e * cfg.batch_size <= half)
    size = steps // epochs * cfg.batch_size
    rows = max(rows, size)
    state = {}

    def run():
        if not state:
            g = torch.Generator().manual_seed(0)
            state["x"] = torch.cat([torch.randn(rows, num_in, generator=g), torch.ones(rows, 1)], dim=1).to(device)
            state["onehot"] = torch.eye(classes)[torch.randint(classes, (rows,), generator=g)].to(device)
            masks = np.zeros((k, rows), dtype=bool)
            for i, picked in enumerate(np.random.default_rng(0).random((k, rows)).argsort(1)[:, :size]):
                masks[i, picked] = True
            state["net"] = _StackedMLP(masks, np.arange(k), num_in, classes,
                                       dataclasses.replace(cfg, epochs=epochs), device)
        state["net"].fit(state["x"], state["onehot"])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def _config(worker: dict) -> Config:
    """This worker's settings from a worker section (keys it does not know, e.g. a wrapper's, left out)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in worker.items() if k in fields})


# ---- training -----------------------------------------------------------------------------------

def train(masks: np.ndarray, seeds: np.ndarray, config: dict) -> np.ndarray:
    cfg = Config(**{k: v for k, v in config["worker"].items() if k != "name"})
    data = config["data"]
    x_train, y_train = load_split(data["dir"], "train")
    x_target, y_target = targets(data["dir"], data.get("targets", "test"))
    return train_arrays(x_train, y_train, x_target, y_target, masks, seeds, cfg)


def train_arrays(x_train: np.ndarray, y_train: np.ndarray, x_target: np.ndarray, y_target: np.ndarray,
                 masks: np.ndarray, seeds: np.ndarray, cfg: Config) -> np.ndarray:
    """The worker on in-memory arrays: margins [K, len(y_target)] of one model per mask.

    ``precision: auto`` is resolved here only when the worker is called outside a sweep (a sweep
    resolves it once on its driver); then this machine's cached choice decides."""
    out = np.empty((len(masks), len(y_target)), dtype=np.float32)
    for rows, net, (x, xt, onehot, yt) in _trained(x_train, y_train, x_target, y_target, masks, seeds, cfg):
        out[rows] = margins(net.logits(xt), yt).float().cpu().numpy()
    return out


def _trained(x_train, y_train, x_target, y_target, masks, seeds, cfg: Config):
    """(rows, stack of trained models, (x, x_target, one-hot labels, target labels)) per subset size."""
    device = torch.device(cfg.device)
    mean, std = _standardiser(x_train)
    x = _flat(x_train, mean, std).to(device)
    xt = _flat(x_target, mean, std).to(device)
    num_classes = int(max(y_train.max(), y_target.max())) + 1
    if cfg.precision == "auto":
        cfg = dataclasses.replace(cfg, precision=choose_precision(cfg, (x.shape[1] - 1, num_classes, len(x))))
    onehot = torch.eye(num_classes, device=device)[torch.from_numpy(y_train.astype(np.int64)).to(device)]
    yt = torch.from_numpy(y_target.astype(np.int64)).to(device)
    masks = np.asarray(masks, dtype=bool)
    seeds = np.asarray(seeds)
    for rows in equal_size_groups(masks):
        net = _StackedMLP(masks[rows], seeds[rows], x.shape[1] - 1, num_classes, cfg, device)
        net.fit(x, onehot)
        yield rows, net, (x, xt, onehot, yt)


# ---- gradient kernels, for priors from TRAK (datamodels.priors) -----------------------------------

def gradient_kernels(masks: np.ndarray, seeds: np.ndarray, config: dict):
    """Per model (one per mask, trained as ``train`` trains it): the kernels of the per-example
    gradients of TRAK's output function f = log(p / (1 − p)), p the correct class's probability,
    with respect to all parameters.  Yields ``(row, k_train [N, N], k_target [T, N], q [N])``:
    k_train = ΦΦᵀ over the training examples, k_target = Φ_target Φᵀ, and q = 1 − p of each
    training example (TRAK's Q).

    No gradient is formed: for this MLP ⟨∇f(a), ∇f(b)⟩ = (uₐ·u_b)(xₐ·x_b) + (gₐ·g_b)(hₐ·h_b + 1),
    with g = ∂f/∂logits = (onehot − softmax)/(1 − p), h the hidden layer and u = (W₂ᵀg) ⊙ [h > 0]
    (the first layer's gradient is u xᵀ, the second's g hᵀ and the output bias's g), so each
    kernel is a few products of [n, 64]-wide matrices."""
    for row, train, target in _per_model_gradient_parts(masks, seeds, config):
        k_train, k_target = (sum(k) for k in zip(*kernel_parts(train, target)))
        yield row, k_train.cpu().numpy(), k_target.cpu().numpy(), train[4].cpu().numpy()


def gradient_features(masks: np.ndarray, seeds: np.ndarray, config: dict):
    """Per model, as ``gradient_kernels`` but with the per-example gradients themselves, for
    training sets larger than the gradient dimension P = hidden·(inputs + 1) + classes·(hidden + 1):
    yields ``(row, train_features, target_features [T, P], q [N])``, where
    ``train_features(start, stop)`` is Φ's rows start:stop [stop − start, P] (float64, made on
    demand: all of Φ would be N·P·8 bytes).  Φ = [u ⊗ x, g ⊗ h, g], whose inner products are
    the kernels of ``gradient_kernels``."""
    for row, train, target in _per_model_gradient_parts(masks, seeds, config):
        yield (row, lambda start, stop, parts=train: _features(parts, start, stop).cpu().numpy(),
               _features(target, 0, len(target[0])).cpu().numpy(), train[4].cpu().numpy())


def _per_model_gradient_parts(masks: np.ndarray, seeds: np.ndarray, config: dict):
    """Each mask's model trained as ``train`` trains it, then ``(row, parts of the training
    examples, parts of the targets)`` from ``_gradient_parts``, in float64."""
    cfg = Config(**{k: v for k, v in config["worker"].items() if k != "name"})
    data = config["data"]
    x_train, y_train = load_split(data["dir"], "train")
    x_target, y_target = targets(data["dir"], data.get("targets", "test"))
    for rows, net, (x, xt, onehot, yt) in _trained(x_train, y_train, x_target, y_target, masks, seeds, cfg):
        w1, w2, b2 = (w.double() for w in net.master)
        labels = onehot.argmax(1)
        for i, row in enumerate(rows):
            yield (int(row), _gradient_parts(w1[i], w2[i], b2[i], x.double(), labels),
                   _gradient_parts(w1[i], w2[i], b2[i], xt.double(), yt))


def _features(parts, start: int, stop: int) -> torch.Tensor:
    """Rows start:stop of Φ = [u ⊗ x, g ⊗ h, g] from ``_gradient_parts``."""
    u, xs, g, h = (p[start:stop] for p in parts[:4])
    n = len(u)
    return torch.cat([(u[:, :, None] * xs[:, None, :]).reshape(n, -1), (g[:, :, None] * h[:, None, :]).reshape(n, -1),
                      g], dim=1)


def kernel_parts(train, target):
    """[(ΦΦᵀ, Φ_targetΦᵀ)] of each parameter group (first layer; second layer's weights; its
    bias), from ``_gradient_parts`` of the training and target examples: their sums are the
    kernels of ``gradient_kernels``."""
    (u, xs, g, h, _), (ut, xts, gt, ht, _) = train, target
    return [((u @ u.T) * (xs @ xs.T), (ut @ u.T) * (xts @ xs.T)),
            ((g @ g.T) * (h @ h.T), (gt @ g.T) * (ht @ h.T)),
            (g @ g.T, gt @ g.T)]


def _gradient_parts(w1, w2, b2, x, labels):
    """(u, x, g, h, 1 − p) of every example of x [n, in + 1] (see ``gradient_kernels``)."""
    h = (x @ w1.T).relu()  # [n, hidden]
    p = torch.softmax(h @ w2.T + b2.T, dim=1)  # [n, classes]
    correct = p.gather(1, labels[:, None]).squeeze(1)
    q = (1 - correct).clamp(min=1e-12)
    g = (torch.nn.functional.one_hot(labels, p.shape[1]).double() - p) / q[:, None]
    u = (g @ w2) * (h > 0)
    return u, x, g, h, q


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
        # rows: both layers' outputs; columns: [weight | bias], as wide as the wider layer's fan-in
        init = torch.empty(k, h + c, max(num_in, h) + 1)
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
