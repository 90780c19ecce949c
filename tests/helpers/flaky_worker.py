"""A test worker that misbehaves on a fixed subset of the models (those whose masks hold
training examples 0 and 1), in the way ``fail`` names: raise, nan or shape."""
from dataclasses import dataclass

import numpy as np

from workers import mlp


@dataclass
class Config(mlp.Config):
    fail: str = "raise"


def train(masks, seeds, config):
    params = dict(config["worker"])
    fail = params.pop("fail")
    config = {**config, "worker": params}
    if not (masks[:, 0] & masks[:, 1]).any():
        return mlp.train(masks, seeds, config)
    if fail == "raise":
        raise RuntimeError("planted failure")
    out = mlp.train(masks, seeds, config)
    if fail == "nan":
        out[0, 0] = np.nan
        return out
    return out[:, :-1]
