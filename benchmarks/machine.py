"""What a benchmark ran on, saved beside its figures: wall-clock numbers mean little without it."""
from __future__ import annotations

import datetime
import importlib
import os
import platform


def machine_info(*packages: str) -> dict:
    """CPU (model, torch's kernel capability, the flags that decide which low-precision kernels
    are fast), OS, Python, torch (threads, GPU) and the versions of ``packages``, plus the load
    average at the call (other work on the machine skews wall-clock figures).  A speed figure
    holds for the CPU capability it was measured on: AVX512-VNNI/BF16 and AVX2-only machines
    differ by 8-25x on low-precision kernels."""
    import torch

    from datamodels.hardware import machine

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()),
    }
    hw = machine()
    info.update(cpu_capability=hw["cpu_capability"], cpu_flags=hw["cpu_flags"], isa_env=hw["isa_env"])
    for name in ("numpy", *packages):
        info[name] = importlib.import_module(name).__version__
    return info


def save_result(path, report: dict) -> None:
    """Write a benchmark's JSON (creating its folder) and say where."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
