"""ResNet-9 models/hour on one GPU: one model per task (K = 1) against K models per task, on each data path.

The workload of a CIFAR-10 datamodels sweep, on synthetic CIFAR-shaped data generated here
(the GPU machines have no network): 50,000 training and 10,000 test images of 32x32x3 uint8
(class-coloured noise, learnable, so accuracy is a sanity check); masks of 25,000 examples
(alpha = 0.5); the paper's recipe with ``--epochs`` epochs.  For each data path and each K it
calls the worker (``workers.cifar_resnet9.train``) directly, as a sweep task would, after a
one-epoch warm-up that builds the K loaders (or moves the data to the device) and picks the
convolution algorithms, and reports models/hour, the speed-up over K = 1, and the achieved
FLOP/s against the GPU's bf16 peak (FLOPs counted by torch's FlopCounterMode on one training
step and one evaluation pass).

Data paths (``worker.data_path``): ``device`` reads an ``.npz`` of the arrays into GPU memory and
augments there, and needs neither FFCV nor Ray nor OmegaConf; ``ffcv`` prepares FFCV files
through ``datamodels.prepare`` (FFCV and OmegaConf needed) and is skipped where FFCV is missing.
Results are written after every K, so a run stopped by ``--budget-s`` or a time limit keeps what
it measured.

    python benchmarks/perf/training_gpu.py                   # writes benchmarks/results/training_gpu.json
    python benchmarks/perf/training_gpu.py --ks 1,4,8,16 --paths device --compile
    python benchmarks/perf/training_gpu.py --smoke           # a tiny CPU run that checks this script works

Without CUDA it stops with a message (unless --smoke).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
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


def synthetic_arrays(num_train: int, num_test: int, seed: int = 0) -> dict:
    """x_train, y_train, x_test, y_test: class-coloured noise images [n, 32, 32, 3] uint8, labels int64."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (10, 3))

    def split(n):
        labels = rng.integers(0, 10, n)
        pixels = colours[labels][:, None, None, :] + 60 * rng.standard_normal((n, 32, 32, 3), dtype=np.float32)
        return np.clip(pixels, 0, 255).astype(np.uint8), labels.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = split(num_train), split(num_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def source_commit() -> dict:
    """The commit, from git or, in a copy without .git (a bare GPU machine), from DATAMODELS_COMMIT."""
    import os

    from benchmarks.harness import git_commit

    found = git_commit()
    if found["commit"] is None and os.environ.get("DATAMODELS_COMMIT"):
        found = {"commit": os.environ["DATAMODELS_COMMIT"], "dirty": None}
    return found


def ffcv_installed() -> bool:
    try:
        return importlib.util.find_spec("ffcv") is not None
    except ImportError:  # an import hook that refuses it: as good as absent
        return False


def data_for(path: str, arrays: dict, root: Path) -> dict:
    """The worker's ``data`` for a data path: an .npz for ``device``, FFCV files prepared from a CIFAR-10
    archive of the same arrays for ``ffcv``."""
    if path == "device":
        npz = root / "synthetic.npz"
        if not npz.exists():
            np.savez(npz, **arrays)
        return {"source": "npz", "path": str(npz), "targets": "test"}
    from datamodels.prepare import CIFAR_BATCHES, prepare, write_cifar10

    def planes(x):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)

    parts = np.array_split(np.arange(len(arrays["y_train"])), len(CIFAR_BATCHES) - 1)
    batches = {name: (planes(arrays["x_train"][idx]), arrays["y_train"][idx]) for name, idx in
               zip(CIFAR_BATCHES[:-1], parts)}
    batches["test_batch"] = (planes(arrays["x_test"]), arrays["y_test"])
    # uncompressed: gzip would only cost time here
    archive = write_cifar10(root / "cifar-10-python.tar.gz", batches, compress=False)
    data_dir = prepare({"out": str(root / "run"), "data": {"source": "cifar10", "path": str(archive)}},
                       progress=False)
    return {"dir": str(data_dir), "targets": "test"}


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
    parser.add_argument("--paths", default="device,ffcv", help="data paths to measure (ffcv skipped without FFCV)")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--num-train", type=int, default=50_000)
    parser.add_argument("--num-test", type=int, default=10_000)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--loader-workers", type=int, default=0, help="FFCV threads per loader (0: worker default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the GPU's dense bf16 peak, if not listed")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="start no new K once this many seconds have passed (0: no limit)")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: checks the script, measures nothing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    if args.smoke:
        device = torch.device("cpu")
        args.num_train, args.num_test, args.epochs = 256, 64, 1
        ks = [1, 2]
        overrides = {"width": 4, "batch_size": 32, "device": "cpu", "stack": "grouped"}
    else:
        if not torch.cuda.is_available():
            sys.exit("training_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                     "use --smoke for a CPU check of the script")
        device = torch.device("cuda")
        ks = sorted({1, *(int(k) for k in args.ks.split(","))})
        overrides = {"device": "cuda", "stack": "grouped", "precision": "bfloat16", "channels_last": True}
    out_path = Path(args.out or (Path(tempfile.gettempdir()) / "training_gpu_smoke.json" if args.smoke
                                 else HERE.parent / "results" / "training_gpu.json"))

    from datamodels.store import model_seed, subset_mask
    from workers import cifar_resnet9

    settings = {"epochs": args.epochs, "compile": args.compile, "loader_workers": args.loader_workers, **overrides}
    cfg = cifar_resnet9.Config(**settings)
    info = machine_info(device)
    peak = args.peak_tflops * 1e12 or next((p for name, p in PEAKS if name in info.get("gpu", "")), None)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="training-gpu-"))
    arrays = synthetic_arrays(args.num_train, args.num_test)
    step_flops, target_flops = count_flops(cfg, device)
    print(f"{info.get('gpu', 'cpu')}: {args.num_train} training images generated, "
          f"{step_flops / 1e9:.1f} GFLOP per training step", flush=True)
    report = {
        "benchmark": "ResNet-9 on CIFAR-shaped data, models/hour, K models per task"
                     + (" (smoke)" if args.smoke else ""),
        "card": info.get("gpu"), "torch": torch.__version__, **source_commit(),
        "machine": info,
        "settings": {**settings, "num_train": args.num_train, "num_test": args.num_test, "alpha": args.alpha,
                     "mask_size": int(subset_mask(0, 0, args.num_train, args.alpha).sum()),
                     "batch_size": cfg.batch_size, "train_step_gflops_per_model": round(step_flops / 1e9, 2),
                     "target_gflops_per_model": round(target_flops / 1e9, 4), "peak_tflops": peak and peak / 1e12},
        "results": [], "skipped": [],
    }
    for path in args.paths.split(","):
        if path == "ffcv" and not ffcv_installed():
            report["skipped"].append({"data_path": "ffcv", "why": "FFCV is not installed here"})
            print("ffcv path skipped: FFCV is not installed here", flush=True)
            continue
        t = time.perf_counter()
        data = data_for(path, arrays, tmp)
        print(f"[{path}] data ready in {time.perf_counter() - t:.1f} s", flush=True)
        rows = []
        for k in ks:
            if args.budget_s and time.perf_counter() - started > args.budget_s:
                report["skipped"].append({"data_path": path, "models_per_task": k, "why": "--budget-s reached"})
                print(f"[{path}] K={k} skipped: --budget-s reached", flush=True)
                continue
            row = measure(cifar_resnet9, {**settings, "data_path": path}, data, k, args, device, step_flops,
                          target_flops, peak, model_seed, subset_mask)
            rows.append(row)
            row["speedup_vs_k1"] = round(row["models_per_hour"] / rows[0]["models_per_hour"], 2)
            report["results"].append(row)
            print(f"[{path}] K={k:3d}  {row['models_per_hour']:9.1f} models/h  {row['achieved_tflops']:7.2f} TFLOP/s"
                  f"  {row['images_per_s']:8d} img/s  acc {row['test_accuracy']:.3f}  ({row['seconds']:.1f} s, "
                  f"warm-up {row['warmup_s']:.1f} s)", flush=True)
            save_result(out_path, report)  # after every K: a run cut short keeps what it measured
    if report["results"]:
        best = max(report["results"], key=lambda r: r["models_per_hour"])
        report["best"] = {name: best[name] for name in ("data_path", "models_per_task", "models_per_hour",
                                                        "speedup_vs_k1", "share_of_peak")}
        print(f"best: {best['data_path']} K={best['models_per_task']}: {best['models_per_hour']:.0f} models/h")
    save_result(out_path, report)
    return report


def measure(cifar_resnet9, settings, data, k, args, device, step_flops, target_flops, peak, model_seed,
            subset_mask) -> dict:
    """One (data path, K) row: a warm-up epoch, then K models timed."""
    import torch

    masks = np.stack([subset_mask(0, i, args.num_train, args.alpha) for i in range(k)])
    seeds = np.array([model_seed(0, i) for i in range(k)])
    # Warm-up: builds this K's loaders or device data and network, picks convolution algorithms (and compiles).
    warm = time.perf_counter()
    if not args.smoke:  # (the smoke run checks the code, and its figures mean nothing anyway)
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
    batch_size = cifar_resnet9.Config(**settings).batch_size
    steps = args.epochs * (int(masks[0].sum()) // batch_size)
    flops = k * (steps * step_flops + args.num_test * target_flops)
    return {"data_path": settings["data_path"], "models_per_task": k, "seconds": round(seconds, 2),
            "seconds_per_epoch": round(seconds / args.epochs, 3), "warmup_s": round(warmup_s, 2),
            "models_per_hour": round(k / seconds * 3600, 1),
            "images_per_s": round(k * steps * batch_size / seconds),
            "achieved_tflops": round(flops / seconds / 1e12, 2),
            "share_of_peak": round(flops / seconds / peak, 4) if peak else None,
            "test_accuracy": round(float((margins > 0).mean()), 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.type == "cuda"
            else None}


if __name__ == "__main__":
    main()
