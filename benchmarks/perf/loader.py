"""CPU cost of feeding the ResNet-9 worker: FFCV's loader against the device data path's code.

* **FFCV**: images/s of the worker's FFCV training pipeline (its seeded raw-RGB decoder, random
  flip, translate (2 px) and cutout (4 px), to a tensor) on synthetic 32x32x3 uint8 images
  prepared by ``datamodels.prepare`` from a CIFAR-10-format archive, at batch 512, with 1 and 2
  loader threads, after one warm-up epoch (pipeline compilation).  What a GPU node's CPUs must
  sustain per model-stream on the ffcv path: the steps after these (to the device, to float,
  normalisation) run on the GPU there.
* **device path on CPU**: images/s of ``workers.device_data``'s gather-and-augment (and of it
  plus the conversion to the network's normalised float input) run on CPU tensors with one torch
  thread, K = 8 models at batch 512.  On a GPU these run as a few kernels per step; the CPU
  figure bounds how much work they are, and the device path's CPU cost on a GPU node is only
  the Python launching them.

    python benchmarks/perf/loader.py                # writes benchmarks/results/loader.json
    python benchmarks/perf/loader.py --smoke        # seconds; checks the script, measures nothing
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.harness import machine_info, save_result  # noqa: E402


def cifar_like(root: Path, num_train: int, seed: int = 0) -> Path:
    """A CIFAR-10 python archive of class-coloured noise (50 test images), uncompressed."""
    from datamodels.prepare import CIFAR_BATCHES, write_cifar10

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (10, 3))

    def batch(n):
        labels = rng.integers(0, 10, n)
        planes = colours[labels][:, :, None] + rng.normal(0, 60, (n, 3, 1024))
        return np.clip(planes, 0, 255).astype(np.uint8).reshape(n, 3072), labels

    batches = {name: batch(50 if name == "test_batch" else num_train // 5) for name in CIFAR_BATCHES}
    return write_cifar10(root / "cifar-10-python.tar.gz", batches, compress=False)


def ffcv_rate(data_dir: Path, workers: int, batch_size: int, epochs: int) -> dict:
    import torch
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    from workers import cifar_resnet9

    threads = torch.get_num_threads()
    loader = Loader(str(data_dir / "train.beton"), batch_size=batch_size, num_workers=workers,
                    order=OrderOption.RANDOM, drop_last=True, os_cache=True, seed=0,
                    pipelines={"image": [cifar_resnet9.seeded_decoder(), *cifar_resnet9.ffcv_augmentations(),
                                         ToTensor()],
                               "label": [IntDecoder(), ToTensor()]})
    for _ in loader:  # warm-up epoch: compiles the pipeline, fills the page cache
        pass
    started, images = time.perf_counter(), 0
    for _ in range(epochs):
        for x, _ in loader:
            images += len(x)
    seconds = time.perf_counter() - started
    torch.set_num_threads(threads)  # FFCV sets it to its worker count
    return {"path": "ffcv", "loader_workers": workers, "images": images, "seconds": round(seconds, 3),
            "images_per_s": round(images / seconds), "images_per_s_per_core": round(images / seconds / workers)}


def device_path_rate(num_train: int, k: int, batch_size: int, epochs: int, convert: bool) -> dict:
    import torch

    from datamodels.store import subset_mask
    from workers import cifar_resnet9, device_data

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (num_train, 32, 32, 3), dtype=np.uint8)
    split = device_data.ResidentSplit(images, rng.integers(0, 10, num_train), torch.device("cpu"))
    subsets = [np.flatnonzero(subset_mask(0, i, num_train, 0.5)) for i in range(k)]
    batches = device_data.StackBatches(split, subsets, range(k), batch_size, cifar_resnet9.TRANSLATE,
                                       cifar_resnet9.CUTOUT, cifar_resnet9.FILL)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for x, _ in batches:  # warm-up epoch
            pass
        started, count = time.perf_counter(), 0
        for _ in range(epochs):
            for x, _ in batches:
                if convert:
                    x = device_data.to_network_input(x, cifar_resnet9.MEAN, cifar_resnet9.STD, True)
                count += k * batch_size
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)
    what = "gather+augment+to_float_input" if convert else "gather+augment"
    return {"path": "device (on CPU tensors)", "work": what, "models_per_stack": k, "torch_threads": 1,
            "images": count, "seconds": round(seconds, 3), "images_per_s": round(count / seconds),
            "images_per_s_per_core": round(count / seconds)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-train", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after one warm-up epoch")
    parser.add_argument("--workers", default="1,2", help="FFCV loader threads to measure")
    parser.add_argument("--k", type=int, default=8, help="models per stack on the device path")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_train, args.batch_size, args.epochs, args.k = 500, 64, 1, 2
    out = Path(args.out or (Path(tempfile.gettempdir()) / "loader_smoke.json" if args.smoke
                            else HERE.parent / "results" / "loader.json"))

    from datamodels.prepare import prepare

    tmp = Path(tempfile.mkdtemp(prefix="loader-bench-"))
    archive = cifar_like(tmp, args.num_train)
    data_dir = prepare({"out": str(tmp / "run"), "data": {"source": "cifar10", "path": str(archive)}}, progress=False)
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        rows.append(ffcv_rate(data_dir, workers, args.batch_size, args.epochs))
        print(rows[-1], flush=True)
    for convert in (False, True):
        rows.append(device_path_rate(args.num_train, args.k, args.batch_size, args.epochs, convert))
        print(rows[-1], flush=True)
    report = {"benchmark": "ResNet-9 training data: FFCV loader and device-path augmentation, images/s per CPU core"
                           + (" (smoke)" if args.smoke else ""),
              "machine": machine_info("ffcv"),
              "settings": {"num_train": args.num_train, "image_shape": [32, 32, 3], "batch_size": args.batch_size,
                           "timed_epochs": args.epochs, "augmentations": "flip, translate 2 px, cutout 4 px"},
              "results": rows}
    save_result(out, report)
    return report


if __name__ == "__main__":
    main()
