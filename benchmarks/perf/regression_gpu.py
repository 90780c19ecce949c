"""The regression at CIFAR-10 scale on one GPU: ``datamodels.fit`` timed, support recovery, share of peak.

A synthetic problem with a known sparse truth, generated on the device (the GPU machines have
no network): exact-size α-subset masks (α = 0.5), margins = masks @ w* + b + noise, with w*
having ``--planted`` non-zeros of magnitude 0.5 to 1.5 per target, written as a store (the
reference layout: spec.json and .npy files), then fitted by the public ``datamodels.fit`` on
the device, as a user would: reading the store into XᵀX and Xᵀy, the λ path, the choice of λ on
validation rows and the refit.

Reported: seconds for writing the store (not counted) and for the fit; support recovery per
target (the top-``planted`` fitted weights against the truth); the achieved FLOP/s of the fit's
main products (2·M·N² for XᵀX plus 2·M·N·T for Xᵀy, over the whole fit: a lower bound of the
rate its GEMMs ran at), and, for scale, a bare XᵀX of one chunk of masks in float32 (TF32 off,
as the exact Gram needs) and bf16, each against the card's dense peak; peak GPU memory.

    python benchmarks/perf/regression_gpu.py                 # N=50,000, T=1,000, M=100,000 on cuda
    python benchmarks/perf/regression_gpu.py --smoke         # a tiny CPU run that checks this script works

Results go to ``benchmarks/results/regression_gpu.json``.  Needs neither Ray nor OmegaConf.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import machine_info, save_result  # noqa: E402

# Dense peaks without sparsity (FLOP/s) from the vendors' data sheets: TF32 tensor cores, plain FP32, BF16.
PEAKS = {"tf32": [("H100 PCIe", 378e12), ("H100", 494e12), ("H200", 494e12), ("GH200", 494e12), ("A100", 156e12)],
         "fp32": [("H100 PCIe", 51e12), ("H100", 67e12), ("H200", 67e12), ("GH200", 67e12), ("A100", 19.5e12)],
         "bf16": [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12)]}


def peak(kind: str, card):
    return next((p for name, p in PEAKS[kind] if card and name in card), None)


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


def source_commit() -> dict:
    """The commit, from git or, in a copy without .git (a bare GPU machine), from DATAMODELS_COMMIT."""
    import os

    from benchmarks.harness import git_commit

    found = git_commit()
    if found["commit"] is None and os.environ.get("DATAMODELS_COMMIT"):
        found = {"commit": os.environ["DATAMODELS_COMMIT"], "dirty": None}
    return found


def write_store(path: Path, chunk, M: int, N: int, T: int, step: int) -> None:
    """The reference-layout store ``benchmarks.harness.write_store`` writes, filled chunk by chunk
    (at M = 100,000 the masks are 5 GB)."""
    path.mkdir(parents=True)
    spec = {"num_models": M, "schema": {"masks": {"shape": [N], "dtype": "bool_"},
                                        "margins": {"shape": [T], "dtype": "float32"}}}
    (path / "spec.json").write_text(json.dumps(spec))
    masks = np.lib.format.open_memmap(path / "masks.npy", mode="w+", dtype=bool, shape=(M, N))
    margins = np.lib.format.open_memmap(path / "margins.npy", mode="w+", dtype=np.float32, shape=(M, T))
    for start in range(0, M, step):
        stop = min(M, start + step)
        x, y = chunk(start, stop)
        masks[start:stop] = x.cpu().numpy()
        margins[start:stop] = y.float().cpu().numpy()
    masks.flush(), margins.flush()
    del masks, margins
    np.save(path / "_completed.npy", np.ones(M, dtype=bool))


def bare_gram_rates(torch, dev, masks, card) -> dict:
    """TFLOP/s of XᵀX for one chunk of masks [m, N], float32 (TF32 off) and bf16, against the card's peaks."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        x = masks.to(dtype)
        (x.T @ x)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        started, reps = time.perf_counter(), 3
        for _ in range(reps):
            (x.T @ x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rate = reps * 2.0 * x.shape[0] * x.shape[1] ** 2 / (time.perf_counter() - started)
        top = peak(name, card)
        out[name] = {"tflops": round(rate / 1e12, 2), "share_of_peak": round(rate / top, 4) if top else None}
        del x
    return out


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
    p.add_argument("--out", default=str(HERE.parent / "results" / "regression_gpu.json"))
    args = p.parse_args(argv)
    if args.smoke:
        args.num_train, args.num_targets, args.num_models, args.planted, args.device = 300, 20, 4000, 5, "cpu"
        args.chunk, args.num_lambdas = 512, 20
        args.out = str(Path(tempfile.gettempdir()) / "regression_gpu_smoke.json") if args.out == p.get_default(
            "out") else args.out

    import torch

    import datamodels

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU machine (or --smoke for a CPU check)", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # XᵀX of 0/1 masks must stay exact
    info = machine_info()
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    weight, bias, chunk = synthetic(args, torch, dev)
    N, T, M = args.num_train, args.num_targets, args.num_models
    tmp = Path(tempfile.mkdtemp(prefix="regression-gpu-"))
    try:
        started = time.perf_counter()
        write_store(tmp / "store", chunk, M, N, T, args.chunk)
        store_s = time.perf_counter() - started
        print(f"store of {M} models x {N} examples x {T} targets written in {store_s:.1f} s", flush=True)
        rates = bare_gram_rates(torch, dev, chunk(0, min(M, args.chunk))[0], card)
        print("bare XᵀX of one chunk: " + ", ".join(f"{k} {v['tflops']} TFLOP/s" for k, v in rates.items()), flush=True)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = datamodels.fit(str(tmp / "store"), device=args.device, num_lambdas=args.num_lambdas,
                                progress=True)
        fit_s = time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    flops = 2.0 * M * N * N + 2.0 * M * N * T

    truth = (weight != 0).cpu().numpy()
    fitted = result["weight"]
    k = args.planted
    top = np.argsort(-np.abs(fitted), axis=0)[:k]  # the k largest fitted weights of each target
    recall_top_k = float(truth[top, np.arange(T)[None, :]].sum(0).mean() / k)
    support = fitted != 0
    tf32 = peak("tf32", card)
    report = {
        "benchmark": "synthetic sparse regression at CIFAR-10 scale, datamodels.fit on one device"
                     + (" (smoke)" if args.smoke else ""),
        "card": card, "torch": torch.__version__, **source_commit(),
        "machine": info,
        "problem": {"num_train": N, "num_targets": T, "num_models": M, "planted_per_target": k, "noise": args.noise,
                    "alpha": 0.5, "num_lambdas": args.num_lambdas},
        "seconds": {"fit": round(fit_s, 2), "writing_the_store_not_counted": round(store_s, 2)},
        "fit_main_products_tflops": round(flops / fit_s / 1e12, 3),
        "fit_share_of_tf32_peak": round(flops / fit_s / tf32, 4) if tf32 else None,
        "bare_gram_one_chunk": rates,
        "support": {"top_k_recall": recall_top_k, "precision": float((support & truth).sum() / max(1, support.sum())),
                    "recall": float((support & truth).sum() / truth.sum()), "mean_nnz": float(support.sum(0).mean())},
        "converged": float(np.mean(result["converged"])),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if dev.type == "cuda" else None,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))
    if args.smoke:
        assert recall_top_k > 0.9, "the smoke problem's planted weights were not recovered"
    save_result(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
