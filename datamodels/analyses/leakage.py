"""Train-test leakage: (test, train) pairs that behave like near-duplicates.

A copy of a test example in the training set shows up in the test example's datamodel as
one training example with a large weight, large against how much that target's margin
varies anyway, and, unlike a typical helpful example, that training example matters much
less to every other target.  The score of a pair (test target t, training example j):

    z_jt  = w_jt / sd_t                              (j's effect in units of t's margin spread)
    score = z_jt * z_jt / (z_jt + max_{t' != t} z_jt')   (times how exclusive that effect is)

with sd_t the standard deviation of t's margin over the sweep's models and negative effects
counted as 0.  The second factor is near 1 when t is the only target j moves, and at most
1/2 when j moves another target at least as much.  A duplicate is only visible when it
changes the model's behaviour: a copy of an easy test example barely moves its margin and
stays invisible, to this score and to any other.

``plant_duplicates`` builds a data set with known duplicates (noisy copies of chosen test
examples appended to the training set), and ``planted_effects`` measures each planted
pair's true effect from a sweep over it, so the score can be checked against ground truth.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DatamodelsError
from ._run import Run, open_run


def scores(run: Union[Run, str]) -> np.ndarray:
    """Leakage scores [N_train, T] (0 for targets that are training examples themselves)."""
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


def leakage(run: Union[Run, str], *, k: int = 20, known: Optional[Iterable[Tuple[int, int]]] = None) -> dict:
    """The ``k`` highest-scoring (test target, training example) pairs, and with ``known``
    duplicate pairs (target, train index) their ranks and precision/recall in the top k."""
    run = open_run(run)
    if int(k) < 1:
        raise DatamodelsError(f"--k must be >= 1, got {k}")
    S = scores(run)
    flat = S.T.reshape(-1)  # target-major: index = t * N + j
    N = S.shape[0]
    k = min(int(k), flat.size)
    top = np.argpartition(-flat, k - 1)[:k] if k < flat.size else np.arange(flat.size)
    top = top[np.lexsort((top, -flat[top]))]  # by score, ties by index
    W = run.weight
    pairs = [{"rank": r + 1, "target": int(i // N), "train": int(i % N), "score": float(flat[i]),
              "weight": float(W[i % N, i // N])} for r, i in enumerate(top)]
    result = {"k": k, "fingerprint": run.fingerprint(), "pairs": pairs}
    if known is not None:
        known = [(run.check_target(t), _check_train(j, N)) for t, j in known]
        result["known"] = evaluate_known(S, known, k)
    return result


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
                     seed: int = 0) -> dict:
    """Write ``out_path`` (.npz for ``data.source=npz``): the prepared data of ``data_dir`` with a
    noisy copy of each chosen test example appended to the training set.

    ``noise`` is the standard deviation of the added Gaussian noise as a fraction of the pixel
    range.  Returns ``{"path", "pairs": [(test index, train index of its copy)], ...}``."""
    from ..prepare import load_arrays

    x_train, y_train = load_arrays(data_dir, "train")
    x_test, y_test = load_arrays(data_dir, "test")
    idx = np.asarray(test_indices, dtype=np.int64)
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= len(y_test):
        raise DatamodelsError(f"test indices to copy must lie in 0..{len(y_test) - 1}")
    rng = np.random.default_rng(seed)
    copies = x_test[idx].astype(np.float32)
    lo, hi = (0.0, 255.0) if x_test.dtype == np.uint8 else (float(x_test.min()), float(x_test.max()))
    if x_test.dtype == np.uint8:
        hi = float(max(x_train.max(), x_test.max()))  # digits use 0..16, not the whole byte
    copies = np.clip(copies + rng.normal(0.0, noise * (hi - lo), copies.shape), lo, hi)
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
    return {"path": str(out_path), "pairs": pairs, "num_train": len(y_new), "noise": float(noise)}


def planted_effects(run: Union[Run, str], pairs: Sequence[Tuple[int, int]]) -> List[dict]:
    """Each planted pair's true effect, from the sweep itself: the target's mean margin over
    fitting models whose subset holds the copy, minus over those without; and that target's
    margin standard deviation across models."""
    run = open_run(run)
    rows = run.store.rows("fit")
    if len(rows) == 0:
        raise DatamodelsError(f"store {run.store.path} has no completed fitting models")
    out = []
    for t, j in pairs:
        t, j = run.check_target(t), _check_train(j, run.num_train)
        has = np.asarray(run.store.masks[rows, j], dtype=bool)
        if has.all() or not has.any():
            raise DatamodelsError(f"training example {j} is in every or no fitting subset; its effect is undefined")
        y = np.asarray(run.store.margins[rows, run.columns[t]], dtype=np.float64)
        out.append({"target": int(t), "train": int(j), "effect": float(y[has].mean() - y[~has].mean()),
                    "margin_std": float(y.std())})
    return out


def planted_check(run: Union[Run, str], pairs: Sequence[Tuple[int, int]]) -> dict:
    """The planted-leakage criterion: every planted pair whose true effect exceeds one standard
    deviation of its target's margin ranks within the top 2n pairs (n planted pairs)."""
    run = open_run(run)
    S = scores(run)
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
