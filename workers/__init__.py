"""Training programs for sweeps.

A worker is a module with one function::

    train(masks: np.ndarray[K, N_train] bool, seeds: np.ndarray[K] int, config: dict)
        -> np.ndarray[K, N_targets] float32

It trains one model per mask, on that subset of the training set, seeding each
model with its own seed, and returns every model's margins on the target
examples (correct-class logit minus the largest other logit).  ``config`` holds
``config["worker"]`` (this worker's hyperparameters, validated against the
module's optional ``Config`` dataclass) and ``config["data"]`` (``dir``: a
directory with ``train.beton``, ``test.beton`` and ``meta.json`` on the machine
running the task; ``targets``: ``"test"`` or ``"test+train"``, the order of the
target columns).  A worker is a pure function of its inputs: the sweep driver
owns the store and writes the results.
"""
