"""The regression at CIFAR-10 scale on one GPU: time, support recovery, share of matmul peak.

A synthetic problem with a known sparse truth, generated on the device (the GPU machines have
no network, and a 100,000 × 50,000 mask matrix is 5 GB): exact-size α-subset masks
(α = 0.5), margins = masks @ w* + b + noise, with w* having ``--planted`` non-zeros of
magnitude 0.5 to 1.5 per target.  The fit is ``datamodels.fit``'s own code path: the
sufficient statistics are accumulated chunk by chunk exactly as from a store (``_Stats.add``),
then ``_solve`` runs the λ path, the choice of λ on validation rows and the refit.

Reported: seconds for the statistics and for the solve; support recovery per target
(precision and recall of the fitted support's top-``planted`` entries against the truth);
the achieved matmul FLOP/s during the statistics (2·M·N² for XᵀX plus 2·M·N·T for Xᵀy)
against the GPU's dense float32 (TF32 tensor-core) peak; peak GPU memory.

    python benchmarks/perf/regression_gpu.py                 # N=50,000, T=1,000, M=100,000 on cuda
    python benchmarks/perf/regression_gpu.py --smoke         # a tiny CPU run that checks this script works

Results go to ``benchmarks/perf/results/regression_gpu.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import machine_info, save_result  # noqa: E402

# Dense TF32 tensor-core peaks (FLOP/s, without sparsity) from the vendors' data sheets.
PEAKS = [("H100 PCIe", 378e12), ("H100", 494e12), ("H200", 494e12), ("GH200", 494e12), ("A100", 156e12)]


def synthetic(args, torch, dev):
    """(true weight [N, T], bias [T], a function chunk(i) -> (masks bool [m, N], margins [m, T]))."""
    g = torch.Generator(device=dev).manual_seed(args.seed)
    N, T, k = args.num_train, args.num_targets, args.planted
    weight = torch.zeros(N, T, device=dev)
    idx = torch.rand(T, N, generator=g, device=dev).argsort(dim=1)[:, :k]  # k distinct features per target
    values = (torch.rand(T, k, generator=g, device=dev) + 0.5) * torch.where(
        torch.rand(T, k, generator=g, device=dev) < 0.5, -1.0, 1.0)
    weight[idx.T, torch.arange(T, device=dev)[None, :].expand(k, T)] = values.T
    bias = torch.randn(T, generator=g, device=dev)

    def chunk(start, stop):
        cg = torch.Generator(device=dev).manual_seed(args.seed * 1_000_003 + start)
        keys = torch.rand(stop - start, N, generator=cg, device=dev)
        masks = keys < keys.kthvalue(N // 2, dim=1, keepdim=True).values  # N//2 − 1 examples each
        noise = torch.randn(stop - start, T, generator=cg, device=dev) * args.noise
        return masks, (masks.float() @ weight + bias + noise).double()

    return weight, bias, chunk


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-train", type=int, default=50_000)
    p.add_argument("--num-targets", type=int, default=1_000)
    p.add_argument("--num-models", type=int, default=100_000)
    p.add_argument("--planted", type=int, default=20, help="true non-zero weights per target")
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--num-lambdas", type=int, default=40)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: checks the script, measures nothing")
    p.add_argument("--out", default=str(HERE / "results" / "regression_gpu.json"))
    args = p.parse_args(argv)
    if args.smoke:
        args.num_train, args.num_targets, args.num_models, args.planted, args.device = 300, 20, 4000, 5, "cpu"
        args.chunk, args.out = 512, None

    import torch

    from datamodels.fit import _EXACT_FLOAT32, _GRAM_KERNELS, _Stats, _solve, gram_kernel

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU machine (or --smoke for a CPU check)", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # XᵀX of 0/1 masks must stay exact
    info = machine_info()
    weight, bias, chunk = synthetic(args, torch, dev)
    N, T, M = args.num_train, args.num_targets, args.num_models
    num_val = M // 10  # the last tenth validates, as fit's val_fraction = 0.1
    xx_dtype = torch.float32 if M < _EXACT_FLOAT32 else torch.float64
    train = _Stats.zeros(N, T, xx_dtype, dev)
    val = _Stats.zeros(N, T, xx_dtype, dev)
    kernel = gram_kernel(N, dev)  # the XᵀX kernel fit would choose on this device
    gram = _GRAM_KERNELS[kernel]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sync()
    started = time.perf_counter()
    generate_s = 0.0
    for start in range(0, M, args.chunk):
        stop = min(M, start + args.chunk)
        t = time.perf_counter()
        masks, margins = chunk(start, stop)
        sync()
        generate_s += time.perf_counter() - t
        cut = max(0, min(stop, M - num_val) - start)
        train.add(masks[:cut], margins[:cut], gram)
        val.add(masks[cut:], margins[cut:], gram)
    sync()
    stats_s = time.perf_counter() - started - generate_s
    flops = 2.0 * M * N * N + 2.0 * M * N * T

    started = time.perf_counter()
    params = dict(num_lambdas=args.num_lambdas, lambda_min_ratio=1e-3, max_iter=300, tol=1e-4)
    result = _solve(train, val, np.zeros(T), params, dev, progress=True)
    sync()
    solve_s = time.perf_counter() - started

    truth = (weight != 0).cpu().numpy()
    fitted = result["weight"]
    k = args.planted
    top = np.argsort(-np.abs(fitted), axis=0)[:k]  # the k largest fitted weights of each target
    hits = truth[top, np.arange(T)[None, :]].sum(0)
    recall_top_k = float(hits.mean() / k)
    support = fitted != 0
    precision = float((support & truth).sum() / max(1, support.sum()))
    recall = float((support & truth).sum() / truth.sum())
    peak = next((p for name, p in PEAKS if info["cuda"] and name in info["cuda"]), None)
    report = {
        "benchmark": "synthetic sparse regression at CIFAR-10 scale",
        "machine": info,
        "problem": {"num_train": N, "num_targets": T, "num_models": M, "num_validation": num_val,
                    "planted_per_target": k, "noise": args.noise, "alpha": 0.5},
        "seconds": {"statistics": round(stats_s, 2), "solve": round(solve_s, 2), "total": round(stats_s + solve_s, 2),
                    "generating_data_not_counted": round(generate_s, 2)},
        "gram_kernel": kernel,
        "statistics_tflops": round(flops / stats_s / 1e12, 2),
        "share_of_fp32_tensor_peak": round(flops / stats_s / peak, 4) if peak else None,
        "support": {"top_k_recall": recall_top_k, "precision": precision, "recall": recall,
                    "mean_nnz": float(support.sum(0).mean())},
        "converged": float(result["converged"].mean()),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if dev.type == "cuda" else None,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    if args.smoke:
        assert recall_top_k > 0.9, "the smoke problem's planted weights were not recovered"
    if args.out:
        save_result(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
