"""Datamodel space: nearest targets, and a PCA of the datamodel vectors.

Each target's datamodel (its column of weights over the training set) is a vector that
says which training examples it depends on; targets with similar vectors rely on the same
training data.  Vectors are scaled to unit length first, so the geometry is that of the
cosine similarity ``datamodels query nearest`` uses, and a target with large weights does
not dominate the components.
"""
from __future__ import annotations

from typing import Union

import numpy as np

from ..errors import DatamodelsError
from ..resources import check_memory
from ._run import Run, open_run


def nearest(run: Union[Run, str], target: int, k: int = 10) -> dict:
    """The ``k`` targets whose datamodels are closest to ``target``'s by cosine similarity."""
    from ..query import nearest as _nearest

    run = open_run(run)
    return _nearest(run.dm, run.check_target(target), k)


# Below this many targets (or training examples) the PCA is a full SVD, else a randomized one.
_FULL_SVD = 2000


def embeddings_memory(num_train: int, num_targets: int) -> int:
    """Bytes the PCA adds beside the run's weights: float32 [T, N] copies, about 10 of them for a
    full SVD (the unit-length copy, LAPACK's workspace and Vt; measured 9.7-10.4 at N = 20,000-
    40,000, T = 500-1,000) and 2.5 for the randomized one (measured 2.2)."""
    copies = 10.5 if min(num_train, num_targets) <= _FULL_SVD else 2.5
    return int(copies * num_train * num_targets * 4)


def embeddings(run: Union[Run, str], *, num_components: int = 5, k: int = 6, seed: int = 0) -> dict:
    """PCA of the unit-length datamodel vectors.

    Returns ``coords`` [T, num_components] (each target's coordinates; the first two make a
    2-D map), ``explained_variance_ratio``, and per component the ``k`` targets at each end
    (``positive``: highest coordinate first; ``negative``: lowest first) together with the
    training examples whose weights load most on it."""
    run = open_run(run)
    W = run.weight  # [N, T] float32
    T = W.shape[1]
    if T < 3:
        raise DatamodelsError(f"a PCA of datamodels needs at least 3 targets, got {T}")
    num_components = max(1, min(int(num_components), T - 1, W.shape[0]))
    check_memory("the datamodel embeddings", embeddings_memory(W.shape[0], T),
                 f"a PCA of {T:,} datamodels over {W.shape[0]:,} training examples",
                 "run them where there is more memory")
    norms = np.linalg.norm(W, axis=0)
    X = np.divide(W, norms, out=np.zeros_like(W), where=norms > 0).T  # [T, N]
    X -= X.mean(0)
    if min(X.shape) <= _FULL_SVD:
        U, S, Vt = np.linalg.svd(X, full_matrices=False)
        U, S, Vt = U[:, :num_components], S[:num_components], Vt[:num_components]
    else:  # large runs: only the top components are needed
        from sklearn.utils.extmath import randomized_svd

        U, S, Vt = randomized_svd(X, num_components, random_state=seed)
    # A component's sign is arbitrary; fix it so its largest training-example loading is positive.
    signs = np.sign(Vt[np.arange(len(S)), np.abs(Vt).argmax(1)])
    signs[signs == 0] = 1
    U, Vt = U * signs, Vt * signs[:, None]
    coords = U * S
    total = float((X ** 2).sum())
    k = max(1, min(int(k), T // 2))
    components = []
    for c in range(len(S)):
        order = np.argsort(coords[:, c], kind="stable")
        components.append({
            "component": c,
            "explained_variance_ratio": float(S[c] ** 2 / total) if total > 0 else 0.0,
            "positive": order[::-1][:k].tolist(),
            "negative": order[:k].tolist(),
            "train_positive": np.argsort(-Vt[c], kind="stable")[:k].tolist(),
            "train_negative": np.argsort(Vt[c], kind="stable")[:k].tolist(),
        })
    return {"coords": coords.astype(np.float32), "explained_variance_ratio": [c["explained_variance_ratio"] for c in components],
            "components": components}
