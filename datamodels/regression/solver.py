"""The LASSO solver: FISTA, on working sets (batched sub-Grams) or on all features, for
every target at once, each with its own λ (and, around a prior, its own penalty weights)."""
from __future__ import annotations

import math
from typing import Callable, Tuple

import torch

from .gram import gram_times

# Elements (not bytes) of gathered sub-Grams held at once; 2**25 float32 = 128 MiB.
_GATHER_BUDGET = 2 ** 25
# Grams up to this size are read by dense FISTA iterations from cache rather than memory
# (``Lasso.capped``).  On the digits store (N = 1,297, 6.4 MiB) capped working sets fitted in
# 9.7–10.5 s against 9.0–9.5 s uncapped; at N = 20,000 (1.5 GiB, M = 6,000 models) capping
# halved the median λ step (1.76 → 0.92 s; AVX2 CPU).
_CACHED_GRAM_BYTES = 64 << 20

# Rounds of "solve on the working set, check KKT on all features" before a target falls
# back to FISTA on all features.
_MAX_ROUNDS = 4
# A feature outside the working set violates optimality when |Cⱼ − Gⱼw| > λ(1 + this);
# the slack keeps round-off from reopening a solved problem.  A feature missed within the
# slack would have a weight below this fraction of λ.
_KKT_SLACK = 1e-3


def dense_cutoff(N: int) -> int:
    """Working sets up to this size are solved on gathered sub-Grams; larger ones join the
    dense FISTA, one GEMM per iteration for all of them.  Gathering is latency-bound (~8 ns
    per entry on CPU) while the GEMM runs near peak, so the dense side wins early: on the
    digits store (N = 1,297, supports of ~700) N/20 fitted 16% faster than N/10, and N/40
    no faster than N/20."""
    return max(16, N // 20)


def groups(todo: torch.Tensor, sizes: torch.Tensor):
    """Split targets into groups of similar working-set size whose gathered sub-Grams fit the
    memory budget (sorted by size, so padding to the largest in a group wastes little)."""
    if len(todo) == 0:
        return
    order = todo[torch.argsort(sizes[todo], stable=True)]
    s = sizes[order].tolist()
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * max(1, s[stop]) ** 2 <= _GATHER_BUDGET:
            stop += 1
        yield order[start:stop]
        start = stop


def working_set_indices(S: torch.Tensor, sizes: torch.Tensor):
    """[g, K] feature indices of each column's working set in index order, padded with
    feature 0, and the [g, K] mask of real entries."""
    K = int(sizes.max()) if len(sizes) else 0
    g = S.shape[1]
    col, feature = torch.nonzero(S.T, as_tuple=True)  # sorted by column, then feature
    start = torch.cumsum(sizes, 0) - sizes
    pos = torch.arange(len(col), device=S.device) - start[col]
    idx = torch.zeros(g, K, dtype=torch.long, device=S.device)
    idx[col, pos] = feature
    valid = torch.arange(K, device=S.device)[None, :] < sizes[:, None]
    return idx, valid


def take_cols(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[:, idx] for an index or boolean mask tensor: ``index_select`` copies whole rows' worth of
    columns at a time, 3-4x faster than advanced indexing on the solver's [N, T] matrices."""
    if idx.dtype == torch.bool:
        idx = torch.nonzero(idx).squeeze(1)
    return x.index_select(1, idx)


def put_cols(x: torch.Tensor, idx: torch.Tensor, src: torch.Tensor) -> None:
    """x[:, idx] = src, in place (``index_copy_``, faster than advanced-index assignment)."""
    x.index_copy_(1, idx, src.to(x.dtype))


def gather(G: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The [g, K, K] sub-Grams G[idx_t, idx_t], zero in padded rows and columns."""
    sub = G[idx[:, :, None], idx[:, None, :]]
    return sub.masked_fill_(~(valid[:, :, None] & valid[:, None, :]), 0)


def _top_eigenvalue(G: torch.Tensor) -> float:
    """An upper estimate of G's largest eigenvalue (the gradient's Lipschitz constant).

    The spectrum of a random-mask Gram has no gap at the top, so power iteration creeps;
    Lanczos with full reorthogonalisation pins the top Ritz value in a few dozen matvecs,
    and adding its residual bound guards against stopping just below it."""
    N = G.shape[0]
    if N <= 64:
        return float(torch.linalg.eigvalsh(G.double())[-1].clamp(min=1e-12)) * (1 + 1e-6)
    steps = min(N, 60)
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(N, generator=gen, dtype=torch.float64).to(G.device)
    Q = torch.zeros(steps, N, dtype=torch.float64, device=G.device)
    Q[0] = q / q.norm()
    alpha, beta = [], []
    for j in range(steps):
        w = (G @ Q[j].to(G.dtype)).double()  # float32 products: an upper estimate needs no more
        alpha.append(float(w @ Q[j]))
        for _ in range(2):  # twice is enough to keep the basis orthogonal in floating point
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = float(w.norm())
        beta.append(b)
        if j + 1 == steps or b < 1e-10:
            break
        Q[j + 1] = w / b
    m = len(alpha)
    Tm = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(beta[: m - 1], dtype=torch.float64)
        Tm += torch.diag(off, 1) + torch.diag(off, -1)
    theta, vecs = torch.linalg.eigh(Tm)
    residual = abs(beta[m - 1] * float(vecs[-1, -1]))
    return max(float(theta[-1]) + residual, 1e-12) * (1 + 1e-3)


def fista(matvec: Callable, c: torch.Tensor, lam: torch.Tensor, x0: torch.Tensor, L: float, tol: float,
           max_iter: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FISTA for min ½xᵀAx − cᵀx + λ‖x‖₁, one problem per column of c [n, T]; ``lam`` is [T],
    or [n, T] for a penalty per entry (λ‖x‖₁ is then Σᵢ λᵢ|xᵢ|).

    ``matvec(z, cols)`` returns A·z for the columns ``cols`` still running.  A column stops
    once its largest change is at most ``tol`` times its largest entry; stopped columns drop
    out of the matvec, so each column's result is the same whichever others run beside it.
    Momentum restarts when it points uphill (O'Donoghue and Candès), which keeps the linear
    rate of the well-conditioned Grams of random masks.  Returns (x, c − A·z at each
    column's last step, converged).

    The elementwise work is written to make few passes over [n, T]: with a GEMM of ~N
    multiply-adds per entry it is cheap, but a naive version costs half as much again."""
    T = c.shape[1]
    x, z = x0.clone(), x0.clone()
    resid = c.clone()
    t = torch.ones(T, dtype=c.dtype, device=c.device)
    thresh = lam / L
    converged = torch.zeros(T, dtype=torch.bool, device=c.device)
    act = torch.arange(T, device=c.device)
    for _ in range(max_iter):
        whole = len(act) == T
        za = z if whole else z.index_select(1, act)
        xa = x if whole else x.index_select(1, act)
        ta, th = (t, thresh) if whole else (t[act], thresh.index_select(thresh.dim() - 1, act))
        u = za - (matvec(za, act) - (c if whole else c.index_select(1, act))) / L  # gradient step
        xn = u - u.clamp(-th, th)  # soft threshold
        d = xn - xa
        t_next = (1 + torch.sqrt(1 + 4 * ta * ta)) / 2
        uphill = torch.linalg.vecdot(za, d, dim=0) > torch.linalg.vecdot(xn, d, dim=0)
        momentum = torch.where(uphill, torch.zeros_like(ta), (ta - 1) / t_next)
        t_next = torch.where(uphill, torch.ones_like(t_next), t_next)
        # (abs().amax(0) is much faster here than vector_norm(inf) or einsum along dim 0)
        done = d.abs().amax(0) <= tol * xn.abs().amax(0)
        zn = d.mul_(momentum).add_(xn)
        if whole:
            x, z, t = xn, zn, t_next
        else:
            x.index_copy_(1, act, xn)
            z.index_copy_(1, act, zn)
            t[act] = t_next
        if done.any():
            stop = torch.nonzero(done).squeeze(1)
            # c − A·z from the step: A·z − c = L·(z − u)
            resid.index_copy_(1, act[stop], (u.index_select(1, stop) - za.index_select(1, stop)) * L)
            converged[act[stop]] = True
            act = act[~done]
            if len(act) == 0:
                break
    else:  # out of iterations: the residual of the columns still running, computed afresh
        if len(act):
            za = z.index_select(1, act)
            resid.index_copy_(1, act, c.index_select(1, act) - matvec(za, act))
    return x, resid, converged


class _Batched:
    """A×z for a group of gathered sub-Grams [g, K, K]; as columns stop it computes on the
    last compacted superset and compacts only when a quarter of that has stopped."""

    def __init__(self, sub: torch.Tensor):
        self.sub = sub
        self.cols = torch.arange(sub.shape[0], device=sub.device)

    def __call__(self, z: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        if len(act) <= 0.75 * len(self.cols):
            keep = torch.isin(self.cols, act)
            self.sub, self.cols = self.sub[keep], self.cols[keep]
        if len(act) == len(self.cols):
            return torch.bmm(self.sub, z.T.unsqueeze(2)).squeeze(2).T
        pos = torch.searchsorted(self.cols, act)
        full = torch.zeros(z.shape[0], len(self.cols), dtype=z.dtype, device=z.device)
        full[:, pos] = z
        return torch.bmm(self.sub, full.T.unsqueeze(2)).squeeze(2).T[:, pos]


class Lasso:
    """min_w ½wᵀGw − cᵀw + λ‖w‖₁ for every column c of C, at one λ per column."""

    def __init__(self, G: torch.Tensor, tol: float, max_iter: int):
        self.G, self.tol, self.max_iter = G, tol, max_iter
        self.L = _top_eigenvalue(G)
        self.cutoff = dense_cutoff(G.shape[0])
        # While G fits in cache a dense FISTA iteration for many targets costs less than
        # gathering their sub-Grams, and a strong-rule set past the cutoff goes dense.  A
        # larger G is read from memory on every dense iteration (N = 50,000: 10 GB), so
        # working sets are capped at the cutoff instead (``prioritised``) and only a
        # support that fills the cap goes dense.
        self.capped = G.numel() * G.element_size() > _CACHED_GRAM_BYTES

    def _limit(self, candidates, support, score):
        return prioritised(candidates, support, score, self.cutoff) if self.capped else candidates

    def _too_big(self, sizes, support):
        """Targets to solve on all features: a working set past the cutoff, or a support that fills it."""
        return (sizes > self.cutoff) | (support.sum(0) >= self.cutoff)

    def solve(self, C, lam, W, R, lam_prev, penalty=None):
        """Warm-started from W, with R = C − G·W at the previous λ (``lam_prev``) for the
        strong rule; ``penalty`` [N, T] weights each feature's λ.  Returns (W, C − G·W, converged)."""
        G = self.G
        scaled = (lambda v: v[None, :]) if penalty is None else (lambda v: v[None, :] * penalty)
        T = C.shape[1]
        W, R = W.clone(), R.clone()
        converged = torch.zeros(T, dtype=torch.bool, device=C.device)
        # Sequential strong rule (Tibshirani et al. 2012): a feature with |Rⱼ| < 2λ − λ_prev
        # at the previous solution is very likely zero now.  The KKT check below catches
        # the rare exceptions, so the rule only decides where to look first.
        support = W != 0
        S = self._limit(support | (R.abs() >= scaled(2 * lam - lam_prev)), support, R)
        sizes = S.sum(0)
        big = self._too_big(sizes, support)
        dense = [torch.nonzero(big).squeeze(1)]
        todo = torch.nonzero(~big).squeeze(1)
        for _ in range(_MAX_ROUNDS):
            if len(todo) == 0:
                break
            for group in groups(todo, sizes):
                w, converged[group] = self._on_working_sets(
                    take_cols(C, group), lam[group], take_cols(W, group), take_cols(S, group), sizes[group],
                    None if penalty is None else take_cols(penalty, group))
                put_cols(W, group, w)
            Wt = take_cols(W, todo)
            Rt = take_cols(C, todo) - gram_times(G, Wt)
            put_cols(R, todo, Rt)
            St, lt = take_cols(S, todo), take_cols(scaled(lam), todo)
            violated = (Rt.abs() > lt * (1 + _KKT_SLACK)) & ~St
            # The next working set: this one and the violators (largest |Rⱼ| first where capped).
            support = Wt != 0
            score = torch.where(violated, Rt.abs() + lt, Rt.abs()) if self.capped else None
            S_next = self._limit(violated | St, support, score)
            sizes_next = S_next.sum(0)
            again = violated.any(0)
            too_big = again & self._too_big(sizes_next, support)
            dense.append(todo[too_big])
            keep = again & ~too_big
            todo = todo[keep]
            put_cols(S, todo, take_cols(S_next, keep))
            sizes[todo] = sizes_next[keep]
        dense.append(todo)  # still finding violators after every round: solve on all features
        dense = torch.cat(dense)
        if len(dense):
            dense = torch.sort(dense).values
            lam_dense = lam[dense] if penalty is None else take_cols(scaled(lam), dense)
            w, r, converged[dense] = fista(
                lambda z, act: G @ z, take_cols(C, dense), lam_dense, take_cols(W, dense), self.L, self.tol,
                self.max_iter)
            put_cols(W, dense, w)
            put_cols(R, dense, r)
        return W, R, converged

    def _on_working_sets(self, C, lam, W, S, sizes, penalty=None):
        idx, valid = working_set_indices(S, sizes)
        if idx.shape[1] == 0:  # nothing can be nonzero: w = 0 (the KKT check confirms it)
            return torch.zeros_like(W), torch.ones(W.shape[1], dtype=torch.bool, device=W.device)
        c = C.gather(0, idx.T) * valid.T
        w0 = W.gather(0, idx.T) * valid.T
        if penalty is not None:  # padded entries have c = w0 = 0 and stay 0 under any threshold
            lam = lam[None, :] * penalty.gather(0, idx.T)
        w, _, converged = fista(_Batched(gather(self.G, idx, valid)), c, lam, w0, self.L, self.tol,
                                 self.max_iter)
        out = torch.zeros_like(W)
        col, pos = torch.nonzero(valid, as_tuple=True)
        out[idx[col, pos], col] = w[pos, col]
        return out, converged


def prioritised(candidates: torch.Tensor, support: torch.Tensor, score: torch.Tensor, limit: int) -> torch.Tensor:
    """Working sets [N, T]: each column's ``candidates``, but where they number more than
    ``limit``, only the support and then the candidates of largest |score| up to ``limit``
    features (as working-set solvers such as celer and skglm prioritise).  Without the limit a
    path on fewer models than features (M < N) would send its targets to FISTA on all N
    features as soon as the strong rule's set passes the cutoff, long before the solutions
    stop being sparse: at N = 20,000 most of the path's time went there."""
    over = torch.nonzero(candidates.sum(0) > limit).squeeze(1)
    if len(over) == 0:
        return candidates
    rank = score[:, over].abs().masked_fill(~candidates[:, over], -1.0)
    rank = rank.masked_fill_(support[:, over], math.inf)
    top = torch.topk(rank, limit, dim=0).indices
    chosen = torch.zeros(candidates.shape[0], len(over), dtype=torch.bool, device=candidates.device)
    chosen.scatter_(0, top, True)
    out = candidates.clone()
    out[:, over] = chosen & candidates[:, over]
    return out
