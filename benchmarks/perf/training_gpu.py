"""ResNet-9 models/hour on one GPU: one model per task (K = 1) against K models per task.

The workload of a CIFAR-10 datamodels sweep, on synthetic CIFAR-shaped data generated here
(the GPU machines have no network): 50,000 training and 10,000 test images of 32x32x3, written
as a CIFAR-10 python archive and prepared into FFCV files by ``datamodels.prepare``; masks of
25,000 examples (alpha = 0.5); the paper's recipe with 16 epochs.  For each K it calls the
worker (``workers.cifar_resnet9.train``) directly, as a sweep task would, after a one-epoch
warm-up that builds the K loaders and picks the convolution algorithms, and reports
models/hour, the speed-up over K = 1, and the achieved FLOP/s against the GPU's bf16 peak
(FLOPs counted by torch's FlopCounterMode on one training step and one evaluation pass).

    python benchmarks/perf/training_gpu.py                   # writes benchmarks/perf/results/training_gpu.json
    python benchmarks/perf/training_gpu.py --ks 1,4,8,16 --compile
    python benchmarks/perf/training_gpu.py --smoke           # a tiny CPU run that checks this script works

Without CUDA it stops with a message (unless --smoke).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import save_result  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device name.
PEAKS = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12),
         ("L40S", 362e12), ("A10", 125e12)]


def synthetic_cifar(root: Path, num_train: int, num_test: int, seed: int = 0) -> Path:
    """A CIFAR-10 python archive of class-coloured noise images: learnable, so accuracy is a sanity check."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (10, 3))

    def batch(n):
        labels = rng.integers(0, 10, n)
        planes = colours[labels][:, :, None] + rng.normal(0, 60, (n, 3, 1024))
        return np.clip(planes, 0, 255).astype(np.uint8).reshape(n, 3072), labels

    from datamodels.prepare import CIFAR_BATCHES, write_cifar10

    batches = {name: batch(num_test if name == "test_batch" else num_train // 5) for name in CIFAR_BATCHES}
    # uncompressed: gzip would only cost time here
    return write_cifar10(root / "cifar-10-python.tar.gz", batches, compress=False)


def count_flops(cfg, device, num_classes: int = 10) -> tuple:
    """FLOPs of one training step of one model (forward + backward at the training batch size) and
    of one target image's evaluation (forward, twice with flip TTA)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from workers.cifar_resnet9 import StackedResNet9

    net = StackedResNet9(1, cfg.width, num_classes).to(device)
    x = torch.randn(cfg.batch_size, 3, 32, 32, device=device)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    step = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x[:1])
    per_target = counter.get_total_flops() * (2 if cfg.flip_tta else 1)
    return step, per_target


def machine_info(device) -> dict:
    import torch

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    sm_count=props.multi_processor_count)
    return info


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,2,4,8", help="models per task to compare; 1 is always included")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--num-train", type=int, default=50_000)
    parser.add_argument("--num-test", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--loader-workers", type=int, default=0, help="FFCV threads per loader (0: worker default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's dense bf16 peak, if not listed")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: checks the script, measures nothing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    if args.smoke:
        device = torch.device("cpu")
        args.num_train, args.num_test, args.epochs = 1000, 200, 1
        ks = [1, 2]
        overrides = {"width": 8, "batch_size": 64, "device": "cpu", "stack": "grouped"}
    else:
        if not torch.cuda.is_available():
            sys.exit("training_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                     "use --smoke for a CPU check of the script")
        device = torch.device("cuda")
        ks = sorted({1, *(int(k) for k in args.ks.split(","))})
        overrides = {"device": "cuda", "stack": "grouped", "precision": "bfloat16", "channels_last": True}
    out_path = Path(args.out or (Path(tempfile.gettempdir()) / "training_gpu_smoke.json" if args.smoke
                                 else HERE / "results" / "training_gpu.json"))

    from datamodels.prepare import prepare
    from datamodels.store import model_seed, subset_mask
    from workers import cifar_resnet9

    settings = {"epochs": args.epochs, "compile": args.compile, "loader_workers": args.loader_workers, **overrides}
    cfg = cifar_resnet9.Config(**settings)
    info = machine_info(device)
    peak = args.peak_tflops * 1e12 or next((p for name, p in PEAKS if name in info.get("gpu", "")), None)

    tmp = Path(tempfile.mkdtemp(prefix="training-gpu-"))
    started = time.perf_counter()
    archive = synthetic_cifar(tmp, args.num_train, args.num_test)
    data_dir = str(prepare({"out": str(tmp / "run"), "data": {"source": "cifar10", "path": str(archive)}},
                           progress=False))
    prepare_s = time.perf_counter() - started
    data = {"dir": data_dir, "targets": "test"}
    step_flops, target_flops = count_flops(cfg, device)

    results = []
    for k in ks:
        masks = np.stack([subset_mask(0, i, args.num_train, args.alpha) for i in range(k)])
        seeds = np.array([model_seed(0, i) for i in range(k)])
        # Warm-up: builds this K's loaders and network, picks convolution algorithms (and compiles).
        warm = time.perf_counter()
        cifar_resnet9.train(masks, seeds + 1, {"worker": {**settings, "epochs": 1}, "data": data})
        warmup_s = time.perf_counter() - warm
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        margins = cifar_resnet9.train(masks, seeds, {"worker": settings, "data": data})
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        steps = args.epochs * (int(masks[0].sum()) // cfg.batch_size)
        flops = k * (steps * step_flops + args.num_test * target_flops)
        row = {"models_per_task": k, "seconds": round(seconds, 2), "warmup_s": round(warmup_s, 2),
               "models_per_hour": round(k / seconds * 3600, 1),
               "images_per_s": round(k * steps * cfg.batch_size / seconds),
               "achieved_tflops": round(flops / seconds / 1e12, 2),
               "share_of_peak": round(flops / seconds / peak, 4) if peak else None,
               "test_accuracy": round(float((margins > 0).mean()), 4),
               "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.type == "cuda"
               else None}
        results.append(row)
        print(f"K={k:3d}  {row['models_per_hour']:9.1f} models/h  {row['achieved_tflops']:7.2f} TFLOP/s  "
              f"acc {row['test_accuracy']:.3f}  ({seconds:.1f} s, warm-up {warmup_s:.1f} s)", flush=True)

    base = results[0]["models_per_hour"]
    for row in results:
        row["speedup_vs_k1"] = round(row["models_per_hour"] / base, 2)
    best = max(results, key=lambda r: r["models_per_hour"])
    report = {
        "benchmark": "ResNet-9 on CIFAR-shaped data, models/hour, K models per task" + (" (smoke)" if args.smoke else ""),
        "machine": info,
        "settings": {**settings, "num_train": args.num_train, "num_test": args.num_test, "alpha": args.alpha,
                     "mask_size": int(masks[0].sum()), "batch_size": cfg.batch_size,
                     "train_step_gflops_per_model": round(step_flops / 1e9, 2),
                     "target_gflops_per_model": round(target_flops / 1e9, 4), "peak_tflops": peak and peak / 1e12,
                     "prepare_s": round(prepare_s, 1)},
        "results": results,
        "best": {"models_per_task": best["models_per_task"], "models_per_hour": best["models_per_hour"],
                 "speedup_vs_k1": best["speedup_vs_k1"], "share_of_peak": best["share_of_peak"]},
    }
    print(f"best K={best['models_per_task']}: {best['models_per_hour']:.0f} models/h, "
          f"{best['speedup_vs_k1']:.2f}x K=1")
    save_result(out_path, report)
    return report


if __name__ == "__main__":
    main()
