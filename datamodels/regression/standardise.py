"""The standardised problem: centring and scaling applied analytically to the statistics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .gram import row_blocks
from .solver import dense_cutoff, gather, groups, take_cols, working_set_indices
from .stats import Stats

@dataclass
class Problem:
    G: Optional[torch.Tensor]  # [N, N] X̃ᵀX̃/n, solver dtype
    C: torch.Tensor      # [N, T] X̃ᵀ(y − ȳ)/n, solver dtype
    scale: torch.Tensor  # [N] 1/std of each feature (0 for a constant feature), float64
    mx: torch.Tensor     # [N] feature means, float64
    my: torch.Tensor     # [T] target means (offset removed), float64
    centring: Optional["Centring"] = None  # how G was made from XᵀX, to get XᵀX back


@dataclass
class Centring:
    """The map XᵀX ↦ scale · (XᵀX − s_row mxᵀ − mx s_colᵀ + n_term mx mxᵀ) · scale / divide,
    applied in place and undone exactly.

    N×N matrices are what bound the fit's memory, so the standardised Gram overwrites the
    integer counts it is made from instead of sitting beside them, and the refit gets the
    counts back by inverting the map: each count is an integer below 2**24 and the float32
    round-off of a standardised entry is at most ~1e-7 of a centred count (≤ n/4), far below
    ½ while n < 2**24, so rounding restores it exactly.  Rows of constant features (scale 0)
    carry no information after the map and are kept aside."""
    s_row: torch.Tensor
    s_col: torch.Tensor
    mx: torch.Tensor
    n_term: float
    scale: torch.Tensor
    divide: float
    constant: Optional[torch.Tensor] = None  # indices of the constant features
    kept: Optional[torch.Tensor] = None      # their rows of XᵀX
    raw: Optional[torch.Tensor] = None   # XᵀX itself, where the map could not work in place

    def apply(self, xx: torch.Tensor, dtype) -> torch.Tensor:
        """The centred, scaled Gram in ``dtype``, written over ``xx`` when it has that dtype
        (in row blocks, so the float64 working copy never holds all N² entries)."""
        N = xx.shape[0]
        constant = torch.nonzero(self.scale == 0).squeeze(1)
        self.constant, self.kept = constant, xx[constant].clone()
        out = xx if xx.dtype == dtype else torch.empty(N, N, dtype=dtype, device=xx.device)
        if out is not xx:
            self.raw = xx
        mx, sc = self.mx, self.scale
        for i, j in row_blocks(N, N):  # in place on one float64 block: no other temporaries
            block = xx[i:j].double()
            block.addr_(self.s_row[i:j], mx, alpha=-1).addr_(mx[i:j], self.s_col, alpha=-1)
            block.addr_(mx[i:j], mx, alpha=self.n_term).mul_(sc[i:j, None]).mul_(sc[None]).div_(self.divide)
            out[i:j] = block
        return out

    def undo(self, G: torch.Tensor) -> torch.Tensor:
        """XᵀX again, from the output of :meth:`apply` (overwritten)."""
        if self.raw is not None:
            return self.raw
        mx = self.mx
        inv = torch.where(self.scale > 0, 1 / self.scale.clamp(min=1e-300), torch.zeros_like(self.scale))
        for i, j in row_blocks(*G.shape):
            block = G[i:j].double().mul_(inv[i:j, None]).mul_(inv[None]).mul_(self.divide)
            block.addr_(self.s_row[i:j], mx).addr_(mx[i:j], self.s_col).addr_(mx[i:j], mx, alpha=-self.n_term)
            G[i:j] = block.round_()
        G[self.constant] = self.kept
        G[:, self.constant] = self.kept.T  # XᵀX is symmetric
        return G


def standardise(s: Stats, dtype) -> Problem:
    """The standardised problem of ``s``; its Gram takes the place of ``s.xx`` (``Centring``)."""
    n = s.n
    mx, my = s.sx / n, s.sy / n
    var = torch.diagonal(s.xx).double() / n - mx * mx
    # A 0/1 feature's variance is p(1−p) >= (n−1)/n² unless it is constant (exactly 0 here).
    scale = torch.where(var > 0.5 / n ** 2, var.clamp(min=1e-300).rsqrt(), torch.zeros_like(var))
    # Centring: XcᵀXc = XᵀX − n·mx·mxᵀ, the general form with s_row = s_col = 0.
    zero = torch.zeros_like(mx)
    centring = Centring(zero, zero, mx, -n, scale, n)
    C = ((s.xy - n * mx[:, None] * my[None]) * scale[:, None] / n).to(dtype)
    G = centring.apply(s.xx, dtype)
    s.xx = None
    return Problem(G, C, scale, mx, my, centring)


class Validation:
    """Validation MSE of standardised weights from the validation rows' statistics alone.

    With X', y' the validation rows centred at the *training* means and X' scaled by the
    training scale, SSE(w) = y'ᵀy' − 2 wᵀX'ᵀy' + wᵀX'ᵀX'w: the same prediction
    ȳ + (x − x̄)·(scale ⊙ w) the fitted model makes."""

    def __init__(self, p: Problem, v: Stats, dtype):
        n, mx, my = v.n, p.mx, p.my
        self.centring = Centring(v.sx, v.sx, mx, n, p.scale, n)
        self.G = self.centring.apply(v.xx, dtype)  # in place of v.xx
        v.xx = None
        xy = v.xy - v.sx[:, None] * my[None] - mx[:, None] * v.sy[None] + n * mx[:, None] * my[None]
        self.c = (xy * p.scale[:, None] / n).double()
        self.yy = (v.yy - 2 * my * v.sy + n * my * my) / n

    def mse(self, W: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Validation MSE of the columns W of targets ``cols``."""
        whole = len(cols) == self.c.shape[1]
        c, yy = (self.c, self.yy) if whole else (take_cols(self.c, cols), self.yy[cols])
        return yy - 2 * (W.double() * c).sum(0) + _quadratic(self.G, W)


def _quadratic(G: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """wᵀGw for every column w of W (float64 [T]), touching only each column's support when small."""
    out = torch.zeros(W.shape[1], dtype=torch.float64, device=W.device)
    support = W != 0
    sizes = support.sum(0)
    small = sizes <= dense_cutoff(G.shape[0])
    for group in groups(torch.nonzero(small).squeeze(1), sizes):
        idx, valid = working_set_indices(take_cols(support, group), sizes[group])
        if idx.shape[1] == 0:
            continue
        w = (take_cols(W, group).gather(0, idx.T).T * valid).unsqueeze(2)  # [g, K, 1]
        out[group] = (w * torch.bmm(gather(G, idx, valid), w)).sum((1, 2)).double()
    big = torch.nonzero(~small).squeeze(1)
    if len(big):
        Wb = take_cols(W, big)
        out[big] = (Wb * (G @ Wb)).sum(0).double()
    return out
