"""A test worker that misbehaves on purpose.

``fail`` picks how a fixed subset of the models (those whose masks hold training examples 0
and 1) goes wrong: ``raise``, ``nan``, ``shape`` or ``none``.  With ``fail_once_dir`` set, each
task fails only on its first attempt (a marker file per task remembers it).  ``sleep`` delays
every task, to give fault injection time to land; ``hang_rows`` makes tasks holding those rows
sleep for an hour (stragglers)."""
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np

from workers import mlp


@dataclass
class Config(mlp.Config):
    fail: str = "none"
    fail_once_dir: str = ""
    sleep: float = 0.0
    hang_seeds: List[int] = field(default_factory=list)


# The MLP's choices of precision and K, made on the driver as for the MLP itself.
resolve = mlp.resolve
default_models_per_task = mlp.default_models_per_task


def train(masks, seeds, config):
    params = dict(config["worker"])
    fail, once_dir, sleep, hang = (params.pop(k) for k in ("fail", "fail_once_dir", "sleep", "hang_seeds"))
    config = {**config, "worker": params}
    time.sleep(sleep)
    if set(int(s) for s in seeds) & set(hang):
        time.sleep(3600)
    if fail == "none" or not (masks[:, 0] & masks[:, 1]).any():
        return mlp.train(masks, seeds, config)
    if once_dir:
        marker = Path(once_dir) / hashlib.sha1(np.asarray(seeds).tobytes()).hexdigest()
        if marker.exists():
            return mlp.train(masks, seeds, config)
        marker.touch()
    if fail == "raise":
        raise RuntimeError("planted failure")
    out = mlp.train(masks, seeds, config)
    if fail == "nan":
        out[0, 0] = np.nan
        return out
    return out[:, :-1]
