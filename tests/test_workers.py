"""Workers: the stacked MLP trains each model exactly as torch's autograd and SGD would, alone or
with task-mates; the ResNet-9 worker runs on CPU on a CIFAR-10-format archive, reproducibly, and
its grouped stack of K models trains the same models as K separate networks."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from bounds import gamma  # tests/helpers
from datamodels.prepare import CIFAR_BATCHES, digits_split, prepare, write_cifar10
from datamodels.store import model_seed, subset_mask
from workers import cifar_resnet9, mlp


def training_rounding_bound(scale: float, steps: int, longest_sum: int) -> float:
    """How far float32 rounding alone can move a trained model's outputs of magnitude ``scale``
    when two computations of the same training differ only in summation order (other kernels,
    vector widths, a grouped instead of a plain convolution).  Every SGD step computes its
    forward and its backward pass; each may round a result by up to γ(n) of its magnitude, with n
    the longest sum in the step (tests/helpers/bounds.py), and the perturbations of 2 x ``steps``
    passes add up in the weights and from there in the outputs."""
    return 2 * steps * gamma(longest_sum) * scale


# ---- the MLP -----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as in a one-CPU Ray task: torch's split of an op across threads can move
    float rounding between models, and tiny ops run faster on one thread anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_k_is_timed_with_a_probe_process_per_task_slot(tmp_path, monkeypatch):
    from datamodels import hardware

    monkeypatch.setenv("DATAMODELS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(hardware, "_MEASURED", {})
    k = mlp.default_models_per_task({"name": "workers.mlp", "hidden": 16, "precision": "float32"})
    entry = hardware.choices()["workers.mlp.models_per_task.float32"]
    assert entry["how"].startswith("measured now")
    assert set(entry["seconds"]) == {str(c) for c in mlp._KS["cpu"]}
    assert str(k) == min(entry["seconds"], key=entry["seconds"].get)
    # One-thread tasks: as many at once as this machine has cores (the CI machine: 2).
    assert ("2 processes side by side" in entry["how"]) == (hardware.task_slots(1) == 2)
    assert ("alone" in entry["how"]) == (hardware.task_slots(1) == 1)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    images, labels = d.images.astype(np.uint8)[..., None], d.target.astype(np.int64)
    train, test = digits_split(len(labels), 500, 0)
    return images[train], labels[train], images[test], labels[test]


def models(first, count, num_train, alpha=0.5):
    masks = np.stack([subset_mask(0, i, num_train, alpha) for i in range(first, first + count)])
    return masks, np.array([model_seed(0, i) for i in range(first, first + count)])


def run_mlp(digits, masks, seeds, **settings):
    return mlp.train_arrays(*digits, masks, seeds, mlp.Config(**settings))


def test_mlp_step_is_torch_sgd_on_autograd(digits):
    """The hand-written forward/backward and fused update equal autograd + torch.optim.SGD."""
    x_train, y_train, x_test, _ = digits
    cfg = mlp.Config(epochs=2, precision="float32")
    masks, seeds = models(0, 3, len(y_train))
    mean, std = mlp._standardiser(x_train)
    x, xt = mlp._flat(x_train, mean, std), mlp._flat(x_test, mean, std)
    y = torch.from_numpy(y_train)
    net = mlp._StackedMLP(masks, seeds, x.shape[1] - 1, 10, cfg, torch.device("cpu"))
    w1, w2, b2 = (t.clone() for t in net.master)
    params = [w1[..., :-1].clone().requires_grad_(), w1[..., -1].clone().requires_grad_(),
              w2.requires_grad_(), b2[..., 0].clone().requires_grad_()]
    order = net.order.clone()
    net.fit(x, torch.eye(10)[y])

    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    n = order.shape[2]
    total = -(-n // cfg.batch_size) * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / total)
    a, b, c, d = params
    for epoch in range(cfg.epochs):
        for start in range(0, n, cfg.batch_size):
            idx = order[:, epoch, start:start + cfg.batch_size]
            hidden = torch.relu(torch.einsum("kbi,khi->kbh", x[idx][..., :-1], a) + b[:, None])
            logits = torch.einsum("kbh,kch->kbc", hidden, c) + d[:, None]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), y[idx].reshape(-1),
                                                     reduction="sum") / idx.shape[1]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        hidden = torch.relu(torch.einsum("ni,khi->knh", xt[:, :-1], a) + b[:, None])
        expected = torch.einsum("knh,kch->knc", hidden, c) + d[:, None]
    # The same arithmetic in another order (einsum and autograd against bmm and the hand-written
    # backward): the longest sums are a layer's fan-in (x.shape[1] inputs and the ones column)
    # and a gradient's sum over the batch.
    bound = training_rounding_bound(expected.abs().max().item(), total, max(x.shape[1], cfg.batch_size))
    assert (net.logits(xt) - expected).abs().max().item() <= bound
    # ... and far below how much two different models differ, so a wrong gradient would show
    assert 10 * bound < (expected[0] - expected[1]).abs().max().item()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_mlp_model_does_not_depend_on_its_task_mates(digits, precision):
    masks, seeds = models(0, 12, len(digits[1]))
    together = run_mlp(digits, masks, seeds, precision=precision)
    for rows in ([5], [0, 7], list(range(3, 10))):
        alone = run_mlp(digits, masks[rows], seeds[rows], precision=precision)
        np.testing.assert_array_equal(alone, together[rows])
    # models of different subset sizes in one task train as if alone, too
    small, small_seed = models(40, 2, len(digits[1]), alpha=0.3)
    mixed = run_mlp(digits, np.concatenate([masks[:2], small]), np.concatenate([seeds[:2], small_seed]),
                    precision=precision)
    np.testing.assert_array_equal(mixed[:2], together[:2])
    np.testing.assert_array_equal(mixed[2:], run_mlp(digits, small, small_seed, precision=precision))


def summary(margins):
    """Per-model test accuracy, and the spread of each target's margin across models."""
    return (margins > 0).mean(1), margins.std(0).mean()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_mlp_stacked_models_match_separate_runs_in_distribution(digits, precision):
    """40 models stacked in one task against 40 other models trained one at a time (K = 1)."""
    count = 40
    masks, seeds = models(0, count, len(digits[1]))
    stacked = run_mlp(digits, masks, seeds, precision=precision)
    masks, seeds = models(count, count, len(digits[1]))
    separate = np.concatenate([run_mlp(digits, masks[i:i + 1], seeds[i:i + 1], precision=precision)
                               for i in range(count)])
    acc_stacked, spread_stacked = summary(stacked)
    acc_separate, spread_separate = summary(separate)
    # Statistical bounds, not rounding ones: two sets of 40 different models.  Mean accuracies
    # agree within 4 standard errors, plus one accuracy step (1 of the 500 targets) for the case
    # of models with identical accuracies (zero estimated noise).
    noise = np.sqrt(acc_stacked.var() / count + acc_separate.var() / count)
    assert abs(acc_stacked.mean() - acc_separate.mean()) <= 4 * noise + 1 / stacked.shape[1]
    assert acc_stacked.mean() > 0.9  # the digits MLP reaches ~0.95; chance is 0.1
    # A target's margin spread over 40 models has a relative standard error of 1/sqrt(2 x 39) = 11%,
    # so each side's average over targets is within ~2 of those (±22%) of the truth: a ratio in
    # 0.8..1.25 is equal spreads.
    assert 0.8 < spread_stacked / spread_separate < 1.25


def test_mlp_reads_prepared_data(prepared_digits):
    """Through train(): FFCV-read data, targets in store column order (test, then train)."""
    masks, seeds = models(0, 3, 1697)
    worker = {"name": "workers.mlp", "hidden": 16, "epochs": 2}
    out = mlp.train(masks, seeds, {"worker": worker, "data": {"dir": str(prepared_digits), "targets": "test+train"}})
    assert out.shape == (3, 100 + 1697) and out.dtype == np.float32 and np.isfinite(out).all()
    with pytest.raises(ValueError, match="precision"):
        mlp.Config(precision="float8")


def test_mlp_gradient_kernels_are_inner_products_of_per_example_gradients(prepared_digits):
    """The closed-form kernels equal ΦΦᵀ of per-example gradients of log(p/(1−p)) taken by
    autograd (torch.func) at the same trained weights; float64 throughout, so they agree to
    ~1e-12 of the kernel's scale."""
    from datamodels.prepare import read_arrays

    masks, seeds = models(0, 2, 1697)
    worker = {"name": "workers.mlp", "hidden": 16, "epochs": 2, "precision": "float32"}
    data = {"dir": str(prepared_digits), "targets": "test"}
    got = list(mlp.gradient_kernels(masks, seeds, {"worker": worker, "data": data}))
    assert [row for row, *_ in got] == [0, 1]

    x_train, y_train = read_arrays(prepared_digits, "train")
    x_test, y_test = read_arrays(prepared_digits, "test")
    cfg = mlp.Config(**{k: v for k, v in worker.items() if k != "name"})
    (rows, net, (x, xt, _, yt)), = mlp._trained(x_train, y_train, x_test, y_test, masks, seeds, cfg)
    params = {name: w[1].double() for name, w in zip(("w1", "w2", "b2"), net.master)}

    def f(p, xi, yi):
        logits = p["w2"] @ (p["w1"] @ xi).relu() + p["b2"][:, 0]
        logp = torch.log_softmax(logits, 0).gather(0, yi[None])[0]
        return logp - torch.log1p(-logp.exp())

    def features(inputs, labels):
        grads = torch.func.vmap(torch.func.grad(f), in_dims=(None, 0, 0))(params, inputs.double(), labels)
        return torch.cat([g.reshape(len(inputs), -1) for g in grads.values()], 1)

    phi = features(x, torch.from_numpy(y_train))
    phi_t = features(xt, yt)
    _, k_train, k_target, q = got[1]
    scale = float(np.abs(k_train).max())
    np.testing.assert_allclose(k_train, (phi @ phi.T).numpy(), rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(k_target, (phi_t @ phi.T).numpy(), rtol=0, atol=1e-10 * scale)
    p_correct = torch.softmax(net.logits(x)[1].double(), 1).gather(1, torch.from_numpy(y_train)[:, None])[:, 0]
    np.testing.assert_allclose(q, (1 - p_correct).numpy(), rtol=1e-5, atol=1e-6)  # logits in float32


# ---- the ResNet-9 ------------------------------------------------------------------------------

def write_cifar(root, per_batch=40, num_test=30, seed=0):
    """A CIFAR-10 python archive of class-coloured noise images (learnable by a tiny network)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (10, 3))

    def batch(n):
        labels = rng.integers(0, 10, n)
        planes = colours[labels][:, :, None] + rng.normal(0, 40, (n, 3, 1024))  # CHW planes, as CIFAR stores them
        return np.clip(planes, 0, 255).astype(np.uint8).reshape(n, 3072), labels

    batches = {name: batch(num_test if name == "test_batch" else per_batch) for name in CIFAR_BATCHES}
    return write_cifar10(root / "cifar-10-python.tar.gz", batches)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    archive = write_cifar(root)
    return str(prepare({"out": str(root / "run"), "data": {"source": "cifar10", "path": str(archive)}},
                       progress=False))


def run_resnet(data_dir, masks, seeds, targets="test", **settings):
    # A small learning rate: at the paper's 0.5, batches of 16 make training chaotic enough to
    # blow float rounding up to visible differences within two epochs.
    worker = {"width": 4, "epochs": 2, "batch_size": 16, "lr": 0.05, "device": "cpu", **settings}
    return cifar_resnet9.train(masks, seeds, {"worker": worker, "data": {"dir": data_dir, "targets": targets}})


def test_resnet9_trains_on_cpu_reproducibly(cifar_dir):
    masks, seeds = models(0, 3, 200)
    first = run_resnet(cifar_dir, masks, seeds)
    assert first.shape == (3, 30) and first.dtype == np.float32 and np.isfinite(first).all()
    # the same masks and seeds give the same models, also alone (augmentations included)
    np.testing.assert_array_equal(run_resnet(cifar_dir, masks, seeds), first)
    np.testing.assert_array_equal(run_resnet(cifar_dir, masks[1:2], seeds[1:2]), first[1:2])
    # another seed on the same mask is another model: far beyond what rounding could do
    assert np.abs(run_resnet(cifar_dir, masks[:1], seeds[1:2]) - first[:1]).max() > \
        10 * resnet_rounding_bound(first, 200)
    both = run_resnet(cifar_dir, masks[:1], seeds[:1], targets="test+train", precision="bfloat16", flip_tta=False)
    assert both.shape == (1, 230) and np.isfinite(both).all()


def resnet_rounding_bound(margins: np.ndarray, num_train: int, epochs: int = 2, batch_size: int = 16) -> float:
    """``training_rounding_bound`` for ``run_resnet``'s training: its longest sums are BatchNorm's
    statistics (and their gradients) over a batch of 32x32 images, and it takes ``epochs`` x the
    full batches of an α = 0.5 subset steps."""
    steps = epochs * (num_train // 2 // batch_size)
    return training_rounding_bound(np.abs(margins).max(), steps, batch_size * 32 * 32)


def test_resnet9_grouped_stack_trains_the_same_models(cifar_dir):
    """K models as one grouped network = K separate networks, up to float rounding."""
    masks, seeds = models(0, 3, 200)
    sequential = run_resnet(cifar_dir, masks, seeds, stack="sequential")
    grouped = run_resnet(cifar_dir, masks, seeds, stack="grouped")
    other_seeds = run_resnet(cifar_dir, masks, seeds + 1, stack="grouped")
    bound = resnet_rounding_bound(sequential, 200)
    assert np.abs(grouped - sequential).max() <= bound
    # The bound is tight enough to catch a grouped network that mixed up models: other seeds (other
    # models) differ by far more.
    assert (np.abs(other_seeds - sequential).max(1) > 10 * bound).all()


def test_stacked_batchnorm_is_per_model():
    """Channel group k of the stacked network is exactly model k, BatchNorm statistics included."""
    seeds = [11, 22]
    stacked = cifar_resnet9.StackedResNet9(2, width=4)
    stacked.reset(seeds)
    alone = []
    for seed in seeds:
        net = cifar_resnet9.StackedResNet9(1, width=4)
        net.reset([seed])
        alone.append(net)
    x = torch.randn(6, 2, 3, 32, 32)
    out = stacked(x.flatten(1, 2))  # train mode: batch statistics, running averages updated
    # One forward pass, summed in other orders: each of the 8 conv-BN layers may round by γ(n) of
    # its magnitude, n its longest sum (BatchNorm's statistics over the batch of 32x32 images).
    bound = 8 * gamma(len(x) * 32 * 32) * out.abs().max().item()
    for k, net in enumerate(alone):
        assert (out[:, k] - net(x[:, k])[:, 0]).abs().max().item() <= bound
    stacked.eval()
    for net in alone:
        net.eval()
    out = stacked(x.flatten(1, 2))  # eval mode: the running averages
    for k, net in enumerate(alone):
        assert (out[:, k] - net(x[:, k])[:, 0]).abs().max().item() <= bound
    assert 10 * bound < (out[:, 0] - out[:, 1]).abs().max().item()  # two models differ by far more
