"""A small digits data set for tests of the analyses and the report."""
import numpy as np


def small_digits(path, num_train=300, num_test=100, seed=0):
    """Write ``path`` (.npz, for ``data.source=npz``): ``num_train`` training and ``num_test``
    test images drawn from scikit-learn's digits.  Fewer training examples make each one
    matter more, so a thousand models give usable datamodels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    perm = np.random.default_rng(seed).permutation(len(d.target))
    x, y = d.images.astype(np.uint8), d.target.astype(np.int64)
    tr, te = perm[:num_train], perm[num_train:num_train + num_test]
    np.savez(path, x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te])
    return path
