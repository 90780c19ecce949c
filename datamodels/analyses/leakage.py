"""Train-test leakage: (test, train) pairs that behave like near-duplicates.

A copy of a test example in the training set shows up in the test example's datamodel as
one training example with a large weight, large against how much that target's margin
varies anyway, and, unlike a typical helpful example, that training example matters much
less to every other target.  The score of a pair (test target t, training example j):

    z_jt      = w_jt / sd_t                              (j's effect in units of t's margin spread)
    behaviour = z_jt * z_jt / (z_jt + max_{t' != t} z_jt')   (times how exclusive that effect is)
    score     = behaviour * ((1 + a_jt) / 2) ** 4         (times how alike the two images look)

with sd_t the standard deviation of t's margin over the sweep's models, negative effects
counted as 0, and a_jt the aligned similarity of the two images (``aligned_similarities``:
blurred, brightness and contrast removed, best over shifts of up to 2 px; 0 where undefined).
Real near-duplicates are shifted, cropped, brightened, blurred or re-encoded, which the plain
pixel cosine (``pixel_similarities``, ``similarity="pixels"``: behaviour * (1 + c_jt) / 2) does
not survive.  The exclusivity factor is near 1 when t is the only target j moves, and at most
1/2 when j moves another target at least as much.  The similarity factor is 1 for identical
images and lower for unrelated ones: among pairs with equally strong, exclusive effects it ranks
those whose images look alike first (``similarity="none"`` or ``pixels=False`` ranks by
``behaviour`` alone).  On copies planted under eight transform families
(benchmarks/quality/leakage_transforms.py) every copy that moved its target by more than one
standard deviation ranked in the top 2n; the fourth power lets a copy whose effect is real but
smaller outrank natural pairs of dissimilar images with larger effects.  A duplicate is only
visible when it changes the model's behaviour: a copy of an easy test example, or one moved so far
that the model no longer treats it as its original, barely moves its margin and stays invisible,
to this score and to any other.

Each listed pair comes with two figures that tell a near-duplicate from a spurious weight
(``pair_details``): ``similarity``, the cosine similarity of the two images' pixels after
subtracting the training set's mean image (1 for identical images), with ``pixel_rank``,
where the training image ranks among all training images by that similarity to the target
(1: its nearest), and ``aligned_similarity``; and ``effect``, measured on the store without the
datamodels: the target's mean margin over fitting models whose subset holds the training example
minus over those without, with its standard error (``effect_se``), in units of the target's
margin standard deviation (``effect_sd``) and of that standard error (``effect_z``).  A model
class that memorises has noisy margins: an effect can be real (many standard errors) and still
under one standard deviation.  A large weight with a small measured effect is the regression's
doing, not the models'.

``plant_duplicates`` builds a data set with known duplicates (noisy copies of chosen test
examples appended to the training set), and ``planted_effects`` measures each planted
pair's true effect from a sweep over it, so the score can be checked against ground truth.
Where the noise goes matters for a model on standardised pixels, such as the MLP worker: a
pixel that is blank in nearly every training image (the digits' borders) has a tiny
standard deviation, so a grey level of 1 there puts the copy many standard deviations away
from its original in the model's input space, and the copy stops acting as a duplicate.
``noise_on="ink"`` adds the noise only where the original has ink.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DatamodelsError
from ..resources import check_memory
from ._run import Run, open_run


SIMILARITIES = ("aligned", "pixels", "none")


def scores(run: Union[Run, str], pixels: bool = True, similarity: str = "aligned") -> np.ndarray:
    """Leakage scores [N_train, T] (0 for targets that are training examples themselves):
    the behavioural score times ((1 + similarity) / 2) ** ``ALIGNED_POWER`` with ``similarity``
    ``aligned`` (``aligned_similarities``, the default), or times (1 + similarity) / 2 with
    ``pixels`` (``pixel_similarities``, the plain pixel cosine); ``none``,
    ``pixels=False``, or a run without prepared data (no images to compare): the behavioural
    score alone."""
    run = open_run(run)
    name = _similarity_name(run, pixels, similarity)
    check_memory("leakage scores", leakage_memory(run.num_train, run.num_targets, name != "none"),
                 f"{run.num_train:,} x {run.num_targets:,} (training example, target) pairs",
                 "run it where there is more memory")
    return _scores(run, behaviour_scores(run), name)


def leakage_memory(num_train: int, num_targets: int, similarity: bool = True) -> int:
    """Bytes of the float32 [N, T] arrays the scores of all pairs hold at once: 6.5 for the
    behavioural score's temporaries (measured 6.2 at N = 20,000-40,000, T = 500-1,000) and 2 more
    for a similarity factor and its product."""
    return int((6.5 + (2 if similarity else 0)) * num_train * num_targets * 4)


def _similarity_name(run: Run, pixels: bool, similarity: str) -> str:
    if similarity not in SIMILARITIES:
        raise DatamodelsError(f"--similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
    return similarity if pixels and run.has_data else "none"


def _scores(run: Run, B: np.ndarray, similarity: str) -> np.ndarray:
    if similarity == "none":
        return B
    if similarity == "pixels":
        return B * ((1.0 + np.nan_to_num(pixel_similarities(run), nan=0.0)) / 2)
    return B * ((1.0 + np.nan_to_num(aligned_similarities(run), nan=0.0)) / 2) ** ALIGNED_POWER


def pixel_similarities(run: Union[Run, str], chunk: int = 4096) -> np.ndarray:
    """``pixel_similarity`` of every (training example, target) pair [N_train, T], float32."""
    run = open_run(run)
    x_train, _ = run.images("train")
    mean = x_train.reshape(len(x_train), -1).astype(np.float64).mean(0)
    x_t, _ = run.target_images(np.arange(run.num_targets))
    t = _centred_pixels(x_t, mean).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    out = np.empty((run.num_train, run.num_targets), dtype=np.float32)
    for start in range(0, run.num_train, chunk):
        a = _centred_pixels(x_train[start:start + chunk], mean).astype(np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + chunk] = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ t.T
    return out


ALIGN_SHIFT = 2  # pixels: the largest translation (per axis) ``aligned_similarities`` undoes
ALIGN_BLUR = 0.6  # pixels: the Gaussian blur before comparing, so a sub-pixel or re-encoding change moves little
ALIGN_SIZE = 16  # larger images are averaged down to about this many pixels a side first
# The aligned factor ((1 + similarity) / 2) ** 4: 0.96 for a copy at similarity 0.98, 0.52 for a
# natural pair of the same class at 0.7.  A copy whose effect is real but under one standard
# deviation of its target's margin then outranks natural pairs with larger effects; with the power
# 1 of the plain pixel factor they crowded it out (benchmarks/quality/leakage_transforms.py).
ALIGNED_POWER = 4


def _aligned_features(x: np.ndarray) -> np.ndarray:
    """Blurred (and, for large images, downsampled) images as float32 [n, H, W, C]."""
    from scipy.ndimage import gaussian_filter

    x = x.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    f = -(-x.shape[1] // ALIGN_SIZE)
    if f > 1:  # block means: a cheap, shift-tolerant downsampling
        h, w = x.shape[1] // f * f, x.shape[2] // f * f
        x = x[:, :h, :w].reshape(len(x), h // f, f, w // f, f, x.shape[3]).mean((2, 4))
    return gaussian_filter(x, (0, ALIGN_BLUR, ALIGN_BLUR, 0), mode="nearest")


def _standardise(a: np.ndarray) -> np.ndarray:
    """Rows with their own mean removed (a brightness offset) and unit norm (a contrast factor)."""
    a = a - a.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return a / np.linalg.norm(a, axis=1, keepdims=True)


def _aligned_cosines(run: Run, x_rows: np.ndarray, x_targets: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """[len(x_rows), len(x_targets)]: the best over shifts of the rows' images of the cosine of
    standardised, mean-subtracted features (the mean: that of the training set's standardised ones)."""
    train = _aligned_features(run.images("train")[0])
    background = float(train.min())
    flat = lambda x: _standardise(x.reshape(len(x), -1))  # noqa: E731
    mean = np.nan_to_num(flat(train)).mean(0)
    t = _standardise(flat(_aligned_features(x_targets)) - mean).astype(np.float32)
    rows = _aligned_features(x_rows)
    H, W = rows.shape[1:3]
    out = np.full((len(rows), len(t)), -np.inf, dtype=np.float32)
    # Shifts in pixels of the (possibly downsampled) features: a 32 px image averaged down by 2 needs
    # only 1, and 9 alignments instead of 25 keep the cost near that of the plain cosine.
    n = -(-ALIGN_SHIFT // -(-x_rows.shape[1] // ALIGN_SIZE))
    for dy in range(-n, n + 1):
        for dx in range(-n, n + 1):
            moved = np.full_like(rows, background)
            moved[:, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
                rows[:, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
            for start in range(0, len(rows), chunk):
                a = _standardise(flat(moved[start:start + chunk]) - mean).astype(np.float32)
                np.maximum(out[start:start + chunk], np.nan_to_num(a @ t.T, nan=-np.inf), out=out[start:start + chunk])
    out[~np.isfinite(out)] = np.nan
    return out


def aligned_similarities(run: Union[Run, str]) -> np.ndarray:
    """Similarity of every (training example, target) pair's images [N_train, T], float32, made to
    hold under what near-duplicates undergo: both images blurred (sigma ``ALIGN_BLUR`` px; images
    over ``ALIGN_SIZE`` px are first averaged down), each image's own mean removed (brightness) and
    its norm divided out (contrast), the training set's mean of those subtracted, and the cosine
    taken at the best of every translation of the training image by up to ``ALIGN_SHIFT`` px per
    axis (shifts, crops; in steps of the downsampled image's pixels).  Identical images score 1; unrelated ones score above ``pixel_similarities`` gives them,
    as the best of 25 alignments is taken."""
    run = open_run(run)
    x_train, _ = run.images("train")
    x_t, _ = run.target_images(np.arange(run.num_targets))
    return _aligned_cosines(run, x_train, x_t)


def aligned_similarity(run: Union[Run, str], pairs: Sequence[Tuple[int, int]]) -> np.ndarray:
    """``aligned_similarities`` of the listed (target, train) pairs alone."""
    run = open_run(run)
    if not pairs:
        return np.zeros(0)
    x_train, _ = run.images("train")
    x_t, _ = run.target_images([t for t, _ in pairs])
    sims = _aligned_cosines(run, x_train[[j for _, j in pairs]], x_t)
    return np.diagonal(sims).astype(np.float64)


def behaviour_scores(run: Union[Run, str]) -> np.ndarray:
    """The behavioural part of the leakage score [N_train, T]: z * z / (z + rival)."""
    run = open_run(run)
    _, sd = run.margin_moments()
    test = run.is_test_target()
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.clip(run.weight, 0, None) / sd[None, :].astype(np.float32)
    z = np.nan_to_num(np.where(test[None, :], z, 0.0), nan=0.0, posinf=0.0)  # a training target's own column is not leakage
    # Each entry's largest rival in its row: the row maximum, or the runner-up for the maximum itself.
    if z.shape[1] > 1:
        top2 = np.partition(z, z.shape[1] - 2, axis=1)[:, -2:]
        rival = np.where(z >= top2[:, 1:2], top2[:, 0:1], top2[:, 1:2])
    else:
        rival = np.zeros_like(z)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = z * z / (z + rival)
    return np.nan_to_num(s, nan=0.0).astype(np.float32)


def leakage(run: Union[Run, str], *, k: int = 20, known: Optional[Iterable[Tuple[int, int]]] = None,
            pixels: bool = True, similarity: str = "aligned") -> dict:
    """The ``k`` highest-scoring (test target, training example) pairs, and with ``known``
    duplicate pairs (target, train index) their ranks and precision/recall in the top k.
    Each pair comes with its ``weight``, ``behaviour`` score and ``pair_details``."""
    run = open_run(run)
    if int(k) < 1:
        raise DatamodelsError(f"--k must be >= 1, got {k}")
    similarity = _similarity_name(run, pixels, similarity)  # a store without its images: behaviour alone
    B = behaviour_scores(run)
    S = _scores(run, B, similarity)
    flat = S.T.reshape(-1)  # target-major: index = t * N + j
    N = S.shape[0]
    k = min(int(k), flat.size)
    top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    top = top[np.lexsort((top, -flat[top]))]  # by score, ties by index
    W = run.weight
    pairs = [{"rank": r + 1, "target": int(i // N), "train": int(i % N), "score": float(flat[i]),
              "weight": float(W[i % N, i // N]), "behaviour": float(B[i % N, i // N])} for r, i in enumerate(top)]
    for p, d in zip(pairs, pair_details(run, [(p["target"], p["train"]) for p in pairs])):
        p.update({key: d[key] for key in DETAILS})
    result = {"k": k, "fingerprint": run.fingerprint(), "pixels": similarity != "none", "similarity": similarity,
              "pairs": pairs}
    if known is not None:
        known = [(run.check_target(t), _check_train(j, N)) for t, j in known]
        result["known"] = evaluate_known(S, known, k)
        for p, d in zip(result["known"]["pairs"], pair_details(run, known)):
            p.update({key: d[key] for key in DETAILS})
    return result


# What ``pair_details`` adds to each listed pair.
DETAILS = ("similarity", "aligned_similarity", "pixel_rank", "effect", "effect_se", "effect_sd", "effect_z")


def pair_details(run: Union[Run, str], pairs: Sequence[Tuple[int, int]], chunk: int = 8192) -> List[dict]:
    """For each (target, train) pair: ``similarity`` and ``pixel_rank`` of the two images
    (``pixel_similarity``; NaN and 0 for a run without prepared data), and the pair's ``effect`` measured on the store (``measured_effects``)
    with ``effect_sd``, that effect over the target's margin standard deviation."""
    run = open_run(run)
    pairs = [(run.check_target(t), _check_train(j, run.num_train)) for t, j in pairs]
    if not pairs:
        return []
    if run.has_data:
        sim, rank = pixel_similarity(run, pairs)
        aligned = aligned_similarity(run, pairs)
    else:  # no images to compare (a store without prepared data)
        sim, rank = np.full(len(pairs), np.nan), np.zeros(len(pairs), dtype=int)
        aligned = np.full(len(pairs), np.nan)
    effects, ses = effect_estimates(run, pairs, chunk=chunk)
    _, sd = run.margin_moments()
    out = []
    for (t, j), s, a, r, e, se in zip(pairs, sim, aligned, rank, effects, ses):
        out.append({"target": int(t), "train": int(j), "similarity": float(s), "aligned_similarity": float(a),
                    "pixel_rank": int(r),
                    "effect": float(e), "effect_se": float(se), "margin_std": float(sd[t]),
                    "effect_sd": float(e / sd[t]) if sd[t] > 0 else float("nan"),
                    "effect_z": float(e / se) if se > 0 else float("nan")})
    return out


def _centred_pixels(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64) - mean


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with each row of ``b`` [len(a), len(b)]; NaN where
    a row is all zeros."""
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a @ b.T) / (na * nb.T)


def pixel_similarity(run: Union[Run, str], pairs: Sequence[Tuple[int, int]]) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel-space similarity of each (target, train) pair's two images: the cosine similarity of
    their pixels after subtracting the training set's mean image (1 for identical images, about
    0 for unrelated ones; the raw pixels of any two digits would share much of their direction),
    and the training image's rank by that similarity among all training images (1: the target's
    nearest).  NaN where an image equals the mean image."""
    run = open_run(run)
    x_train, _ = run.images("train")
    mean = x_train.reshape(len(x_train), -1).astype(np.float64).mean(0)
    train = _centred_pixels(x_train, mean)
    targets = sorted({t for t, _ in pairs})
    x_t, _ = run.target_images(targets)
    sims = cosine_rows(_centred_pixels(x_t, mean), train)  # [targets, N]
    row = {t: i for i, t in enumerate(targets)}
    sim = np.array([sims[row[t], j] for t, j in pairs])
    rank = np.array([int((np.nan_to_num(sims[row[t]], nan=-np.inf) > np.nan_to_num(sims[row[t], j], nan=-np.inf)).sum())
                     + 1 for t, j in pairs])
    return sim, rank


def measured_effects(run: Union[Run, str], pairs: Sequence[Tuple[int, int]], chunk: int = 8192) -> np.ndarray:
    """Each (target t, train j) pair's effect measured on the store, without the datamodels: t's
    mean margin over the fitting models whose subset holds j, minus its mean over those without
    (one pass over the store in chunks of rows)."""
    return effect_estimates(run, pairs, chunk)[0]


def effect_estimates(run: Union[Run, str], pairs: Sequence[Tuple[int, int]],
                     chunk: int = 8192) -> Tuple[np.ndarray, np.ndarray]:
    """``measured_effects`` and the standard error of each: that of a difference of two means
    over independent groups of models, sqrt(var_with / n_with + var_without / n_without), so an
    effect can be judged against the noise of its own estimate and not only against the spread
    of the target's margin."""
    run = open_run(run)
    rows = run.store.rows("fit")
    if len(rows) == 0:
        raise DatamodelsError(f"store {run.store.path} has no completed fitting models")
    ts = np.array([run.check_target(t) for t, _ in pairs], dtype=np.int64)
    js = np.array([_check_train(j, run.num_train) for _, j in pairs], dtype=np.int64)
    cols = run.columns[ts]
    has_n, has_sum, has_sq, total, total_sq = (np.zeros(len(js)) for _ in range(5))
    for start in range(0, len(rows), chunk):
        r = rows[start:start + chunk]
        has = np.asarray(run.store.masks[r], dtype=bool)[:, js]
        y = np.asarray(run.store.margins[r], dtype=np.float64)[:, cols]
        has_n += has.sum(0)
        has_sum += np.where(has, y, 0.0).sum(0)
        has_sq += np.where(has, y * y, 0.0).sum(0)
        total += y.sum(0)
        total_sq += (y * y).sum(0)
    without_n = len(rows) - has_n
    bad = (has_n == 0) | (without_n == 0)
    if bad.any():
        j = int(js[np.flatnonzero(bad)[0]])
        raise DatamodelsError(f"training example {j} is in every or no fitting subset; its effect is undefined")
    mean_with = has_sum / has_n
    mean_without = (total - has_sum) / without_n
    with np.errstate(invalid="ignore", divide="ignore"):  # one model in a group: no variance, NaN
        var_with = np.clip(has_sq - has_n * mean_with ** 2, 0, None) / (has_n - 1)
        var_without = np.clip(total_sq - has_sq - without_n * mean_without ** 2, 0, None) / (without_n - 1)
    return mean_with - mean_without, np.sqrt(var_with / has_n + var_without / without_n)


def _check_train(j, n: int) -> int:
    j = int(j)
    if not 0 <= j < n:
        raise DatamodelsError(f"training index {j} is out of range 0..{n - 1}")
    return j


def ranks(S: np.ndarray, pairs: Sequence[Tuple[int, int]]) -> np.ndarray:
    """1-based rank of each (target, train) pair among all pairs, by decreasing score (ties
    counted against the pair)."""
    values = np.array([S[j, t] for t, j in pairs], dtype=S.dtype)
    if len(values) <= 32:
        return np.array([int((S >= v).sum()) for v in values], dtype=np.int64)
    flat = np.sort(S.reshape(-1))
    return (flat.size - np.searchsorted(flat, values, side="left")).astype(np.int64)


def evaluate_known(S: np.ndarray, known: Sequence[Tuple[int, int]], k: int) -> dict:
    r = ranks(S, known)
    found = int((r <= k).sum())
    return {"pairs": [{"target": t, "train": j, "rank": int(x), "score": float(S[j, t])} for (t, j), x in zip(known, r)],
            "precision_at_k": found / k, "recall_at_k": found / len(known) if known else float("nan")}


def read_pairs(path) -> List[Tuple[int, int]]:
    """Known duplicate pairs from a text file: one ``target train`` pair per line (commas or
    spaces; ``#`` comments), or a .npy of shape [n, 2]."""
    path = Path(path)
    if not path.is_file():
        raise DatamodelsError(f"--known {path}: file not found")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        rows = []
        for line in path.read_text().splitlines():
            tokens = line.split("#", 1)[0].replace(",", " ").split()
            if tokens:
                try:
                    rows.append([int(x) for x in tokens])
                except ValueError:
                    raise DatamodelsError(f"--known {path}: {line.strip()!r} is not a pair of whole numbers") from None
        arr = np.array(rows, dtype=np.int64).reshape(-1, 2) if all(len(r) == 2 for r in rows) else None
    if arr is None or arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DatamodelsError(f"--known {path}: expected one 'target train' pair of indices per line")
    return [(int(t), int(j)) for t, j in arr]


# ---- planted duplicates: ground truth for the score -----------------------------------------

def hardest_targets(run: Union[Run, str], n: int) -> np.ndarray:
    """The ``n`` test targets with the lowest mean margin over the sweep's fitting models."""
    run = open_run(run)
    mean, _ = run.margin_moments()
    mean = np.where(run.is_test_target(), mean, np.inf)
    return np.argsort(mean, kind="stable")[:n]


def plant_duplicates(data_dir, test_indices: Sequence[int], out_path, *, noise: float = 0.05,
                     seed: int = 0, noise_on: str = "all", shift: float = 0.0) -> dict:
    """Write ``out_path`` (.npz for ``data.source=npz``): the prepared data of ``data_dir`` with a
    noisy copy of each chosen test example appended to the training set.

    ``noise`` is the standard deviation of the added Gaussian noise as a fraction of the pixel
    range; ``noise_on`` is ``all`` (every pixel) or ``ink`` (only pixels above the background
    level of the, possibly shifted, original).  ``shift`` > 0 first moves each copy by a random
    offset drawn uniformly from [-shift, shift] pixels along each axis (bilinear interpolation,
    background filling in).  Returns ``{"path", "pairs": [(test index, train index of its copy)],
    "offsets", ...}``."""
    from ..prepare import load_arrays

    if noise_on not in ("all", "ink"):
        raise DatamodelsError(f"noise_on must be 'all' or 'ink', got {noise_on!r}")
    if not noise >= 0:
        raise DatamodelsError(f"noise must be >= 0 (a fraction of the pixel range), got {noise}")
    x_train, y_train = load_arrays(data_dir, "train")
    x_test, y_test = load_arrays(data_dir, "test")
    if not 0 <= shift < min(x_test.shape[1:3]) / 2:
        raise DatamodelsError(f"shift must be >= 0 and below half the image size ({min(x_test.shape[1:3]) / 2:g} "
                              f"pixels), got {shift}")
    idx = np.asarray(test_indices, dtype=np.int64)
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= len(y_test):
        raise DatamodelsError(f"test indices to copy must lie in 0..{len(y_test) - 1}")
    rng = np.random.default_rng(seed)
    copies = x_test[idx].astype(np.float32)
    lo, hi = (0.0, 255.0) if x_test.dtype == np.uint8 else (float(x_test.min()), float(x_test.max()))
    if x_test.dtype == np.uint8:
        hi = float(max(x_train.max(), x_test.max()))  # digits use 0..16, not the whole byte
    pixel_noise = rng.normal(0.0, noise * (hi - lo), copies.shape)
    offsets = np.zeros((len(idx), 2))
    if shift > 0:
        from scipy.ndimage import shift as move

        offsets = rng.uniform(-shift, shift, (len(idx), 2))
        copies = np.stack([move(c, (dy, dx) + (0,) * (c.ndim - 2), order=1, mode="grid-constant", cval=lo)
                           for c, (dy, dx) in zip(copies, offsets)])
    if noise_on == "ink":
        pixel_noise = pixel_noise * (copies > lo + 0.01 * (hi - lo))
    copies = np.clip(copies + pixel_noise, lo, hi)
    if x_test.dtype == np.uint8:
        copies = np.rint(copies).astype(np.uint8)
    else:
        copies = copies.astype(x_test.dtype)
    x_new = np.concatenate([x_train, copies])
    y_new = np.concatenate([y_train, y_test[idx]])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_path, x_train=x_new, y_train=y_new, x_test=x_test, y_test=y_test)
    pairs = [(int(t), len(y_train) + i) for i, t in enumerate(idx)]
    return {"path": str(out_path), "pairs": pairs, "num_train": len(y_new), "noise": float(noise),
            "noise_on": noise_on, "shift": float(shift), "offsets": offsets.round(4).tolist()}


def planted_effects(run: Union[Run, str], pairs: Sequence[Tuple[int, int]]) -> List[dict]:
    """Each planted pair's true effect, from the sweep itself: the target's mean margin over
    fitting models whose subset holds the copy, minus over those without; and that target's
    margin standard deviation across models."""
    return [{k: d[k] for k in ("target", "train", "effect", "margin_std", "effect_sd", "similarity", "pixel_rank")}
            for d in pair_details(run, pairs)]


def planted_check(run: Union[Run, str], pairs: Sequence[Tuple[int, int]], pixels: bool = True,
                  similarity: str = "aligned") -> dict:
    """The planted-leakage criterion: every planted pair whose true effect exceeds one standard
    deviation of its target's margin ranks within the top 2n pairs (n planted pairs)."""
    run = open_run(run)
    S = scores(run, pixels=pixels, similarity=similarity)
    effects = planted_effects(run, pairs)
    r = ranks(S, [(e["target"], e["train"]) for e in effects])
    n = len(pairs)
    for e, x in zip(effects, r):
        e["rank"] = int(x)
        e["visible"] = e["effect"] > e["margin_std"]
    visible = [e for e in effects if e["visible"]]
    return {"num_planted": n, "num_visible": len(visible), "limit": 2 * n,
            "passed": all(e["rank"] <= 2 * n for e in visible),
            "visible_within_limit": sum(e["rank"] <= 2 * n for e in visible),
            "all_within_limit": int((r <= 2 * n).sum()), "pairs": effects,
            **{k: v for k, v in evaluate_known(S, [(e["target"], e["train"]) for e in effects], 2 * n).items()
               if k != "pairs"}}
