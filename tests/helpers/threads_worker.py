"""A test worker that reports torch's thread count in its task: the margins of every model are
(threads when the task starts, threads after reading the data through FFCV, ...)."""
import numpy as np
import torch

from workers.common import load_split, targets


def train(masks, seeds, config):
    before = torch.get_num_threads()
    load_split(config["data"]["dir"], "train")
    x, _ = targets(config["data"]["dir"], config["data"].get("targets", "test"))
    out = np.full((len(masks), len(x)), torch.get_num_threads(), dtype=np.float32)
    out[:, 0] = before
    return out
