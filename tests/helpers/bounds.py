"""Test tolerances from first principles: a dtype's unit roundoff and the quantity's scale.

A bound here is what floating point can do on any CPU (whatever kernels, vector width or
summation order torch, numpy or oneDNN pick), not what one machine printed."""
import numpy as np

U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff: |fl(x) - x| <= u|x|
U64 = float(np.finfo(np.float64).eps) / 2


def gamma(n: int, u: float = U32) -> float:
    """γₙ = n·u / (1 − n·u): a sum or dot product of n terms computed in any order in a
    precision with unit roundoff u is off by at most γₙ times the sum of the terms' magnitudes
    (Higham, Accuracy and Stability of Numerical Algorithms, §3.1)."""
    return n * u / (1 - n * u)


def sum_bound(terms, u: float = U32) -> float:
    """Largest rounding error of computing sum(terms) (or a dot product with these products)."""
    terms = np.asarray(terms, dtype=np.float64).ravel()
    return gamma(len(terms) + 1, u) * float(np.abs(terms).sum())


# datamodels.fit stops a target's solve once its largest weight change is at most tol times its
# largest weight.  Two solves of the same problem whose float32 arithmetic differs in rounding
# (another summation order, other columns beside it in a GEMM, another vector width) may stop
# one step apart, so their weights agree to about 2·tol·max|w|, not to the last bit.
FIT_TOL = 1e-4


def solver_bound(weights, tol: float = FIT_TOL) -> float:
    return 2 * tol * float(np.abs(weights).max())


def mse_bound(mse, num_features: int, weight_bound: float):
    """How far a mean squared error can move when every weight moves by at most weight_bound:
    a 0/1 mask over num_features changes each prediction by at most d = num_features·weight_bound,
    so the MSE by at most 2·sqrt(MSE)·d + d²."""
    d = num_features * weight_bound
    return 2 * np.sqrt(np.asarray(mse)) * d + d * d
