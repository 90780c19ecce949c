"""A test worker whose tasks can wait for an event instead of a clock.

A task holding any of ``gate_seeds`` waits until the file ``gate_file`` has at least
``gate_lines`` lines (for example the store's checkpoint log), then trains as ``workers.mlp``.
A test can so hold part of a sweep back until a checkpoint is logged, however loaded the
machine is.  Past ``gate_timeout_s`` the task fails, so a test that never opens the gate ends."""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from workers import mlp


@dataclass
class Config(mlp.Config):
    gate_seeds: List[int] = field(default_factory=list)
    gate_file: str = ""
    gate_lines: int = 0
    gate_timeout_s: float = 600.0


resolve = mlp.resolve
default_models_per_task = mlp.default_models_per_task


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def train(masks, seeds, config):
    params = dict(config["worker"])
    gate_seeds, gate_file, gate_lines, timeout = (params.pop(k) for k in
                                                  ("gate_seeds", "gate_file", "gate_lines", "gate_timeout_s"))
    if set(int(s) for s in seeds) & set(gate_seeds):
        deadline = time.monotonic() + timeout
        while _lines(Path(gate_file)) < gate_lines:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate_file} did not reach {gate_lines} lines in {timeout} s")
            time.sleep(0.02)
    return mlp.train(masks, seeds, {**config, "worker": params})
