"""The ResNet-9 worker's device data path (training split held and augmented on the device), run on
CPU: its augmentations have the FFCV path's distribution, it trains models of the same accuracy
and margins, and a model's data depends on its own mask and seed only."""

import numpy as np
import pytest
import torch

from datamodels.errors import DatamodelsError
from datamodels.prepare import CIFAR_BATCHES, prepare, write_cifar10
from datamodels.store import model_seed, subset_mask
from workers import cifar_resnet9, device_data

# Trains ResNet-9 models and writes FFCV files.
pytestmark = pytest.mark.integration

H = W = 32
# Every pixel says where it came from: red = 41 + row, green = 41 + column, blue 250.  The fill
# colour (the mean, blue 114) is told apart by its blue.
ROW0, COL0, BLUE = 41, 41, 250


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def position_images(n):
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    image = np.stack([ROW0 + rows, COL0 + cols, np.full_like(rows, BLUE)], -1).astype(np.uint8)
    return np.broadcast_to(image, (n, H, W, 3)).copy()


def write_archive(root, batches):
    """``batches``: {name: (images [n, H, W, 3] uint8, labels)} -> a CIFAR-10 python archive."""
    planes = {name: (np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1), y)
              for name, (x, y) in batches.items()}
    return write_cifar10(root / "cifar-10-python.tar.gz", planes)


def decode(out):
    """Per augmented image [n, H, W, 3]: flip (bool), dy, dx, the visible cutout area, and whether every
    kept pixel is exactly the source's pixel under that flip and translation."""
    n = len(out)
    fill = out[..., 2] != BLUE
    keep = ~fill
    src_row, src_col = out[..., 0].astype(int) - ROW0, out[..., 1].astype(int) - COL0
    i, j = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    i0, j0 = np.divmod(keep.reshape(n, -1).argmax(1), W)  # each image's first kept pixel
    at = (np.arange(n), i0, j0)
    dy = (src_row[at] - i0)[:, None, None]
    # Both hypotheses from that pixel: unflipped (source column j + dx) or flipped (W - 1 - (j + dx)).
    dx_plain = (src_col[at] - j0)[:, None, None]
    dx_flip = (W - 1 - src_col[at] - j0)[:, None, None]
    rows_ok = ((src_row == i + dy) | fill).all((1, 2))
    plain = ((src_col == j + dx_plain) | fill).all((1, 2))
    flipped = ((src_col == W - 1 - (j + dx_flip)) | fill).all((1, 2))
    flip = flipped & ~plain
    dx = np.where(flip[:, None, None], dx_flip, dx_plain)
    inside = (i + dy >= 0) & (i + dy < H) & (j + dx >= 0) & (j + dx < W)
    exact = rows_ok & (plain ^ flipped) & ~(keep & ~inside).any((1, 2))
    return flip, dy.ravel(), dx.ravel(), (fill & inside).sum((1, 2)), exact


def histogram(values, bins):
    return np.array([(values == b).mean() for b in bins])


def test_device_augmentations_have_the_ffcv_distribution(tmp_path):
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    n, epochs = 320, 8
    images = position_images(n)
    labels = np.arange(n) % 10
    archive = write_archive(tmp_path, {name: (images[:n // 5], labels[:n // 5]) for name in CIFAR_BATCHES})
    data_dir = prepare({"out": str(tmp_path / "run"), "data": {"source": "cifar10", "path": str(archive)}},
                       progress=False)
    # The worker's own FFCV augmentations behind its seeded decoder, stopped before normalisation.
    loader = Loader(str(data_dir / "train.beton"), batch_size=n, num_workers=1, order=OrderOption.RANDOM, seed=3,
                    pipelines={"image": [cifar_resnet9.seeded_decoder(), *cifar_resnet9.ffcv_augmentations(),
                                         ToTensor()],
                               "label": [IntDecoder(), ToTensor()]})
    ffcv_out = np.concatenate([x.numpy().copy() for _ in range(epochs) for x, _ in loader])

    split = device_data.ResidentSplit(images, labels, torch.device("cpu"))
    batches = device_data.StackBatches(split, [np.arange(n)] * 4, [1, 2, 3, 4], n // 4, cifar_resnet9.TRANSLATE,
                                       cifar_resnet9.CUTOUT, cifar_resnet9.FILL)
    device_out = []
    for _ in range(epochs // 4):  # 4 models x n images an epoch
        for x, y in batches:
            assert x.shape == (4, n // 4, H, W, 3) and x.dtype == torch.uint8 and y.shape == (n // 4, 4)
            device_out.append(x.reshape(-1, H, W, 3).numpy())
    device_out = np.concatenate(device_out)
    assert len(device_out) == len(ffcv_out) == n * epochs

    flips_f, dy_f, dx_f, area_f, exact_f = decode(ffcv_out)
    flips_d, dy_d, dx_d, area_d, exact_d = decode(device_out)
    assert exact_f.all() and exact_d.all()  # every kept pixel is the flipped, translated source's
    # Each draw: 2560 images per path, so a frequency's standard error is <= 0.01.
    for flips in (flips_f, flips_d):
        assert abs(flips.mean() - 0.5) < 0.045
    shifts = np.arange(-cifar_resnet9.TRANSLATE, cifar_resnet9.TRANSLATE + 1)
    for values in (dy_f, dx_f, dy_d, dx_d):
        assert np.abs(histogram(values, shifts) - 1 / len(shifts)).max() < 0.045
    # The visible cutout area (the square is cut after the translation, so part of it may fall on the
    # filled border): the same distribution, mostly the full 4x4 square.
    areas = np.arange(cifar_resnet9.CUTOUT ** 2 + 1)
    hist_f, hist_d = histogram(area_f, areas), histogram(area_d, areas)
    assert 0.5 * np.abs(hist_f - hist_d).sum() < 0.06
    # The whole square shows when it misses the border on both axes: for a shift of |d| rows, 29 - |d| of
    # its 29 positions do, so with d uniform in -2..2 it shows whole with probability (139/145)^2 = 0.919.
    for hist in (hist_f, hist_d):
        assert abs(hist[-1] - (139 / 145) ** 2) < 0.03
    assert abs(area_f.mean() - area_d.mean()) < 0.3


def test_device_batches_follow_each_models_own_generator():
    """A model's batches are its mask's examples, the labels theirs, every example once per epoch, and
    depend on its seed alone: the same in a stack of two as alone."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, H, W, 3), dtype=np.uint8)
    labels = np.arange(50)  # label = example id, so the labels say which examples a batch holds
    split = device_data.ResidentSplit(images, labels, torch.device("cpu"))
    subsets = [np.arange(0, 50, 2), np.arange(1, 50, 2)]

    def epochs(subsets, seeds, count=2):
        batches = device_data.StackBatches(split, subsets, seeds, 8, 2, 4, (0, 0, 0))
        return [[(x.clone(), y.clone()) for x, y in batches] for _ in range(count)]

    both = epochs(subsets, [5, 6])
    alone = epochs(subsets[1:], [6])
    for epoch_both, epoch_alone in zip(both, alone):
        assert len(epoch_both) == 25 // 8
        ids = torch.cat([y for _, y in epoch_both])  # [steps * 8, 2]
        assert set(ids[:, 0].tolist()) <= set(subsets[0]) and len(set(ids[:, 0].tolist())) == 24
        assert set(ids[:, 1].tolist()) <= set(subsets[1]) and len(set(ids[:, 1].tolist())) == 24
        for (x2, y2), (x1, y1) in zip(epoch_both, epoch_alone):
            assert torch.equal(x2[1], x1[0]) and torch.equal(y2[:, 1], y1[:, 0])
    assert not torch.equal(both[0][0][1], both[1][0][1])  # a new order and new draws each epoch


@pytest.fixture(scope="module")
def cifar_data(tmp_path_factory):
    """Class-coloured noise, 400 training and 100 test images, as prepared data and as an .npz."""
    root = tmp_path_factory.mktemp("cifar-paths")
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (10, 3))

    def split(n):
        y = rng.integers(0, 10, n)
        x = np.clip(colours[y][:, None, None, :] + rng.normal(0, 70, (n, H, W, 3)), 0, 255).astype(np.uint8)
        return x, y

    batches = {name: split(100 if name == "test_batch" else 80) for name in CIFAR_BATCHES}
    archive = write_archive(root, batches)
    data_dir = prepare({"out": str(root / "run"), "data": {"source": "cifar10", "path": str(archive)}},
                       progress=False)
    x_train = np.concatenate([batches[n][0] for n in CIFAR_BATCHES[:-1]])
    y_train = np.concatenate([batches[n][1] for n in CIFAR_BATCHES[:-1]])
    npz = root / "cifar.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=batches["test_batch"][0], y_test=batches["test_batch"][1])
    return str(data_dir), str(npz)


SMALL = {"width": 8, "epochs": 4, "batch_size": 20, "lr": 0.1, "lr_peak_epoch": 1, "device": "cpu"}


def train(data, masks, seeds, **settings):
    return cifar_resnet9.train(masks, seeds, {"worker": {**SMALL, **settings}, "data": data})


def test_both_data_paths_train_models_of_the_same_quality(cifar_data):
    """Same masks, same seeds, each path's own random numbers: test accuracy and margin mean and spread
    agree within the seed-to-seed spread, and both learn (chance is 10%)."""
    data_dir, _ = cifar_data
    num_models = 4
    masks = np.stack([subset_mask(0, i, 400, 0.5) for i in range(num_models)])
    seeds = np.array([model_seed(0, i) for i in range(num_models)])
    data = {"dir": data_dir, "targets": "test"}
    y_test = device_data.split_arrays(data, "test")[1]
    stats = {}
    for path in ("ffcv", "device"):
        margins = train(data, masks, seeds, data_path=path)
        assert margins.shape == (num_models, 100) and np.isfinite(margins).all()
        stats[path] = np.stack([(margins > 0).mean(1), margins.mean(1), margins.std(1)], 1)  # per model
    for path, per_model in stats.items():
        assert per_model[:, 0].mean() > 0.5, (path, per_model)
    spread = np.maximum(stats["ffcv"].std(0), stats["device"].std(0))
    difference = np.abs(stats["ffcv"].mean(0) - stats["device"].mean(0))
    assert (difference <= 2 * spread + 0.02).all(), (stats, spread)
    assert len(y_test) == 100


def test_device_path_is_reproducible_and_reads_an_npz(cifar_data):
    """On CPU the device path is a function of (mask, seed): the same twice, the same alone as in a
    stack, the same from the prepared files as from the .npz; another seed is another model."""
    data_dir, npz = cifar_data
    masks = np.stack([subset_mask(0, i, 400, 0.5) for i in range(2)])
    seeds = np.array([model_seed(0, i) for i in range(2)])
    settings = {"data_path": "device", "epochs": 1}
    prepared = {"dir": data_dir, "targets": "test"}
    first = train(prepared, masks, seeds, **settings)
    np.testing.assert_array_equal(train(prepared, masks[1:], seeds[1:], **settings), first[1:])
    from_npz = train({"source": "npz", "path": npz, "targets": "test"}, masks, seeds, **settings)
    np.testing.assert_array_equal(from_npz, first)
    other = train(prepared, masks[:1], seeds[1:], **settings)
    assert np.abs(other - first[:1]).max() > 0.05 * np.abs(first).max()
    # auto on CPU with prepared data and FFCV installed: the FFCV path, as before
    assert cifar_resnet9.data_path(cifar_resnet9.Config(), prepared, torch.device("cpu")) == "ffcv"
    assert cifar_resnet9.data_path(cifar_resnet9.Config(), {"source": "npz", "path": npz},
                                   torch.device("cpu")) == "device"


def test_data_path_problems_are_named(cifar_data, tmp_path):
    _, npz = cifar_data
    with pytest.raises(ValueError, match="data_path"):
        cifar_resnet9.Config(data_path="gpu")
    with pytest.raises(DatamodelsError, match="needs prepared data"):
        cifar_resnet9.data_path(cifar_resnet9.Config(data_path="ffcv"), {"source": "npz", "path": npz},
                                torch.device("cpu"))
    with pytest.raises(DatamodelsError, match="no prepared data"):
        device_data.split_arrays({"dir": str(tmp_path)}, "train")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((4, 8, 8), np.float32), y_train=np.zeros(4, int),
             x_test=np.zeros((4, 8, 8), np.float32), y_test=np.zeros(4, int))
    with pytest.raises(DatamodelsError, match="uint8 images"):
        device_data.split_arrays({"source": "npz", "path": str(bad)}, "train")
