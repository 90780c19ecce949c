"""Host memory: what is available to this process, and the one-line refusal every stage gives
before it starts when its estimated need is more than that.

No torch here, so the data preparation and the analyses can check memory without loading it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import DatamodelsError

# Set to skip every stage's memory check (an estimate can be pessimistic, e.g. with swap).
SKIP_ENV = "DATAMODELS_SKIP_MEMORY_CHECK"


def available_memory() -> Optional[int]:
    """Bytes of host memory available to this process: MemAvailable, capped by the cgroup's
    limit less its usage where one is set; None where neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    limit, used = (Path("/sys/fs/cgroup") / name for name in ("memory.max", "memory.current"))
    try:
        if limit.exists() and limit.read_text().strip() != "max":
            available = min(available, int(limit.read_text()) - int(used.read_text()))
    except (OSError, ValueError):
        pass
    return available


def gib(num_bytes: float) -> str:
    """``num_bytes`` as GiB (MiB below one GiB), for messages."""
    return f"{num_bytes / 2 ** 30:.1f} GiB" if num_bytes >= 2 ** 30 else f"{num_bytes / 2 ** 20:.0f} MiB"


def check_memory(what: str, need: int, detail: str, hint: str) -> None:
    """Raise ``DatamodelsError`` naming ``what`` needs (``detail``: what the bytes are for) against
    what is available, unless it fits, the amount available is unknown, or ``SKIP_ENV`` is set."""
    free = available_memory()
    if os.environ.get(SKIP_ENV) or free is None or int(need) <= free:
        return
    raise DatamodelsError(f"{what} needs about {gib(need)} ({detail}) but {gib(max(free, 0))} is available: "
                          f"{hint}, or set {SKIP_ENV}=1 to try anyway")
