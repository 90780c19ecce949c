"""A generated image set of any size: ``data.source: synthetic``.

Each class is two Gaussian bumps at its own places (and, with 3 channels, in its own colours);
every image is its class's bumps shifted by a few pixels, plus pixel noise, as uint8 in
H×W×C.  A fraction ``label_noise`` of the training labels is then replaced by another class,
so some training examples matter more than others (the mislabelled ones hurt their class).

At 12×12×1 and 10 classes the image distribution is that of ``benchmarks.harness.make_synthetic``
(bumps of variance 2, shifts up to 2 pixels, noise of standard deviation 0.35); bump widths and
shifts scale with ``image_size``.

The output is a function of the settings and ``seed`` alone: every chunk of images draws from
its own generator, seeded by (seed, split, chunk index), and the chunk length is fixed by the
image shape, so generation holds one chunk of float work at a time and the test split does not
change with ``num_train``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .errors import DatamodelsError
from .resources import available_memory

__all__ = ["SyntheticData", "generate", "images_bytes", "check_memory"]

# Pixel values computed per chunk: bounds the float32 working memory (about 16 bytes a value).
CHUNK_VALUES = 1 << 22
# Generations of at least this many pixel values (a few seconds) get a progress bar.
PROGRESS_MIN_VALUES = 1 << 26
BUMPS = 2  # Gaussian bumps per class
NOISE_STD = 0.35  # pixel noise, in units of a bump's peak
SCALE, OFFSET = 120.0, 40.0  # bump height and background in uint8 levels
_TRAIN, _TEST, _LABEL_NOISE = range(1, 4)  # random streams of one seed, independent of each other


@dataclass
class SyntheticData:
    x_train: np.ndarray  # [num_train, H, W, C] uint8
    y_train: np.ndarray  # [num_train] int64, after label noise
    x_test: np.ndarray  # [num_test, H, W, C] uint8
    y_test: np.ndarray  # [num_test] int64, never noisy
    noisy: np.ndarray  # sorted indices of the training examples whose label was replaced


def images_bytes(num_train: int, num_test: int, image_size: int, channels: int) -> int:
    """Bytes of the uint8 images of both splits."""
    return (int(num_train) + int(num_test)) * int(image_size) ** 2 * int(channels)


def check_memory(num_train: int, num_test: int, image_size: int, channels: int) -> None:
    """A one-line error unless the images fit in half the memory available here (the other half
    is for writing them out and for everything else on the machine)."""
    need = images_bytes(num_train, num_test, image_size, channels)
    available = _available_memory()
    if available is not None and need > available // 2:
        raise DatamodelsError(f"data: {num_train:,} + {num_test:,} synthetic images of {image_size}x{image_size}x"
                              f"{channels} need {_gib(need)} of memory, more than half of the {_gib(available)} "
                              f"available; lower data.num_train or data.image_size")


def generate(num_train: int, num_test: int, image_size: int = 12, channels: int = 1, num_classes: int = 10,
             label_noise: float = 0.1, seed: int = 0, progress: bool = False) -> SyntheticData:
    """The synthetic train and test splits of these settings (see the module's docstring)."""
    size, channels, classes = int(image_size), int(channels), int(num_classes)
    # The class layout is the first draw of default_rng(seed), as in make_synthetic: at 12 pixels the
    # same seed gives the same classes.
    layout = np.random.default_rng(int(seed))
    # Centres inside the image whatever the shift: at 12 pixels, uniform in [2, 9].
    margin = size / 6
    centres = layout.uniform(margin, size - 1 - margin, (classes, BUMPS, 2)).astype(np.float32)
    if channels == 1:
        colours = np.ones((classes, BUMPS, 1), dtype=np.float32)
    else:
        colours = layout.uniform(0.2, 1.0, (classes, BUMPS, channels)).astype(np.float32)
    # At 12 pixels: variance 2 (exp(-d² / 4)) and shifts of up to 2 pixels.
    variance = 2.0 * (size / 12) ** 2
    shift = int(round(2 * size / 12))
    shape = (size, size, channels)
    per_chunk = max(1, CHUNK_VALUES // int(np.prod(shape)))
    show = progress and images_bytes(num_train, num_test, size, channels) >= PROGRESS_MIN_VALUES
    with tqdm(total=int(num_train) + int(num_test), desc="synthetic", unit="image", disable=not show) as bar:
        x_train, y_train = _split(int(num_train), _TRAIN, seed, per_chunk, centres, colours, variance, shift,
                                  shape, bar)
        x_test, y_test = _split(int(num_test), _TEST, seed, per_chunk, centres, colours, variance, shift, shape, bar)

    flips = _rng(seed, _LABEL_NOISE)
    count = int(round(float(label_noise) * len(y_train)))
    noisy = np.sort(flips.choice(len(y_train), count, replace=False))
    # Adding 1..classes-1 modulo classes gives each other class with equal probability.
    y_train[noisy] = (y_train[noisy] + flips.integers(1, classes, count)) % classes
    return SyntheticData(x_train, y_train, x_test, y_test, noisy)


def _split(num, stream, seed, per_chunk, centres, colours, variance, shift, shape, bar):
    images = np.empty((num, *shape), dtype=np.uint8)
    labels = np.empty(num, dtype=np.int64)
    for index, start in enumerate(range(0, num, per_chunk)):
        stop = min(num, start + per_chunk)
        rng = _rng(seed, stream, index)
        labels[start:stop] = rng.integers(0, len(centres), stop - start)
        images[start:stop] = _images(rng, labels[start:stop], centres, colours, variance, shift, shape)
        bar.update(stop - start)
    return images, labels


def _images(rng, labels, centres, colours, variance, shift, shape) -> np.ndarray:
    m, (size, _, channels) = len(labels), shape
    offsets = rng.integers(-shift, shift + 1, (m, 1, 2)).astype(np.float32)
    noise = rng.standard_normal((m, *shape), dtype=np.float32)
    at = centres[labels] + offsets  # [m, bumps, (y, x)]
    pixels = np.arange(size, dtype=np.float32)
    # A bump is separable: exp(-(dy² + dx²) / 2σ²) = exp(-dy² / 2σ²) · exp(-dx² / 2σ²).
    profile = np.exp(-(pixels - at[..., None]) ** 2 / np.float32(2 * variance))  # [m, bumps, 2, size]
    across = profile[:, :, 1, :, None] * colours[labels][:, :, None, :]  # [m, bumps, size, channels]
    # One bump at a time into preallocated buffers: several times faster than broadcasting all factors at once.
    img = np.empty((m, *shape), dtype=np.float32)
    bump = np.empty_like(img)
    for b in range(centres.shape[1]):
        np.multiply(profile[:, b, 0, :, None, None], across[:, b, None], out=bump if b else img)
        if b:
            img += bump
    noise *= np.float32(NOISE_STD)
    img += noise
    img *= np.float32(SCALE)
    img += np.float32(OFFSET)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)  # truncation, as make_synthetic always did


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


def _available_memory():
    """Bytes available to this process, or None if unknown (``resources.available_memory``)."""
    return available_memory()


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2 ** 30:.1f} GiB" if num_bytes >= 2 ** 30 else f"{num_bytes / 2 ** 20:.0f} MiB"
