"""XᵀX of 0/1 masks: exact kernels (int8, float32, float16 with float32 sums), the choice
among them on this machine, and the products with Grams the solver and statistics share."""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from ..errors import DatamodelsError

# Each kernel takes the bool masks [m, N] and, when the caller has it, their float32 copy,
# and returns XᵀX, or adds it into ``out`` in place: with N = 50,000 an N×N temporary is 10 GB.
def gram_int8(masks: torch.Tensor, x: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None):
    """XᵀX of 0/1 masks as an int8 GEMM with int32 sums: exact, and several times faster
    than float32 where the CPU has int8 dot products (VNNI, AMX); 25-100x slower where not."""
    xi = masks.to(torch.int8)
    xt = xi.T.contiguous()

    def rows(i, j):
        try:
            return torch._int_mm(xt[i:j], xi)
        except RuntimeError:  # shapes some backends reject (e.g. CUDA wants multiples of 8)
            xf = masks.float() if x is None else x
            return xf.T[i:j] @ xf
    return _into(out, rows, masks.shape[1])


def gram_float32(masks: torch.Tensor, x: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None):
    """XᵀX in float32: exact for 0/1 inputs while every count stays below 2**24."""
    x = masks.float() if x is None else x
    if out is None:
        return x.T @ x
    if out.dtype == x.dtype:
        return out.addmm_(x.T, x)
    return _into(out, lambda i, j: x.T[i:j] @ x, x.shape[1])


def gram_float16(masks: torch.Tensor, x: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None):
    """XᵀX from float16 inputs with float32 sums (tensor cores): exact like float32 where the
    backend has ``mm(..., out_dtype=float32)`` (CUDA); elsewhere the probe rejects it."""
    h = masks.half()
    return _into(out, lambda i, j: torch.mm(h.T[i:j], h, out_dtype=torch.float32), masks.shape[1])


def _into(out: Optional[torch.Tensor], rows: Callable, N: int) -> torch.Tensor:
    """All of XᵀX from ``rows(i, j)`` (its rows i:j), or added into ``out`` a row block at a time."""
    if out is None:
        return rows(0, N)
    for i, j in row_blocks(N, N):
        out[i:j] += rows(i, j).to(out.dtype)
    return out


GRAM_KERNELS = {"int8": gram_int8, "float32": gram_float32, "float16": gram_float16}
# The probe: a chunk of this many random masks over at most this many features, timed with
# every kernel.  At N = 1,024 the int8 GEMM's slow path costs ~0.1 s (AVX2), and which kernel
# wins depends on the instruction set, not on N.
_PROBE_ROWS, _PROBE_FEATURES = 512, 1024


# CPU flags of int8 dot-product instructions, without which int8 is no candidate (``gram_kernel``).
_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
# Below this many rows the whole XᵀX costs a few probes: float32, exact and the baseline every
# CPU and GPU runs well, without measuring.
_PROBE_MIN_ROWS = 16 * _PROBE_ROWS


def gram_kernel(num_train: int, device, num_rows: Optional[int] = None) -> str:
    """The XᵀX kernel for this machine and device: the faster of int8 and float32 (and float16
    with float32 sums where the device has it) on a probe of the real work (all are exact on
    0/1 masks), measured once and cached per machine (``datamodels.hardware.choose``); float32
    when ``num_rows`` is too few to repay the probe, and int8 not even probed on a CPU without
    int8 dot products.  ``DATAMODELS_GRAM_KERNEL`` forces one."""
    from .. import hardware

    dev = torch.device(device)
    forced = os.environ.get("DATAMODELS_GRAM_KERNEL")
    if forced:
        if forced not in GRAM_KERNELS:
            raise DatamodelsError(f"DATAMODELS_GRAM_KERNEL must be one of {', '.join(GRAM_KERNELS)}, got {forced!r}")
        hardware.record(f"fit.gram_kernel.{dev.type}", forced, "set by DATAMODELS_GRAM_KERNEL")
        return forced
    if num_rows is not None and num_rows < _PROBE_MIN_ROWS:
        hardware.record(f"fit.gram_kernel.{dev.type}", "float32",
                        f"fewer than {_PROBE_MIN_ROWS} rows: not worth a probe")
        return "float32"
    # Without int8 dot products oneDNN's int8 GEMM runs 25-100x slower than float32: a probe of
    # it alone would cost seconds (~2 s a call on the probe, AVX2), for an answer known in advance.
    skip = {"int8"} if dev.type == "cpu" and not set(hardware.cpu_flags()) & _INT8_DOT_FLAGS else set()
    n = min(num_train, _PROBE_FEATURES)
    probe = torch.rand(_PROBE_ROWS, n, generator=torch.Generator().manual_seed(0)) < 0.5
    probe = probe.to(dev)
    reference = gram_float32(probe)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    candidates = {}
    for name, kernel in GRAM_KERNELS.items():
        if name in skip:
            continue
        try:  # a kernel this torch or device lacks, or one that is not exact here, is no candidate
            if not torch.equal(kernel(probe).to(reference.dtype), reference):
                continue
        except (RuntimeError, AttributeError, NotImplementedError, TypeError):
            continue
        candidates[name] = lambda kernel=kernel: (kernel(probe), sync())
    if skip and list(candidates) == ["float32"]:
        hardware.record(f"fit.gram_kernel.{dev.type}", "float32",
                        f"this CPU has no int8 dot products ({', '.join(sorted(_INT8_DOT_FLAGS))})")
        return "float32"
    bucket = 1 << max(0, (n - 1).bit_length())
    return hardware.choose(f"fit.gram_kernel.{dev.type}", candidates, key=f"n{bucket}")


def row_blocks(N: int, cols: int):
    """Row blocks small enough that a float64 block of ``cols`` columns stays near 16 MiB."""
    step = max(1, (2 << 20) // max(1, cols))
    return ((i, min(N, i + step)) for i in range(0, N, step))


def gram_times(G: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """G·W reading only the rows of G where some column of W is nonzero (G is symmetric, so
    those rows are the columns the product needs): while solutions are sparse, a λ step's
    optimality check costs |support|·N·T instead of N²·T (N = 50,000: 10 GB of G per pass)."""
    rows = torch.nonzero((W != 0).any(1)).squeeze(1)
    if len(rows) > G.shape[0] // 2:
        return G @ W
    out = torch.zeros(G.shape[0], W.shape[1], dtype=W.dtype, device=W.device)
    step = max(1, (4 << 20) // G.shape[0])  # gathered rows of ~16 MiB
    for i in range(0, len(rows), step):
        r = rows[i:i + step]
        out.addmm_(G[r].T, W[r])
    return out
