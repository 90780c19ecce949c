"""The sweep: train every model of the store as Ray tasks, driver-owned writes.

The driver owns all state.  It creates or opens the store, adds the rows the
config asks for (writing their masks), packs the unfinished rows into tasks of
K models, and submits them to Ray.  A task is a pure function of its inputs
(masks, seeds, worker config, data) and returns margins; the driver validates
them and writes them into the store, so worker nodes need no shared file system.
Re-running the same sweep resumes: finished rows are skipped.

Data reaches the nodes through Ray's object store: the driver puts the prepared
``.beton`` files there once, and each node unpacks them into a local cache
directory the first time one of its tasks needs them.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from tqdm.auto import tqdm

from . import config as config_lib
from . import hardware
from . import worker as worker_lib
from .errors import DatamodelsError
from .cluster import check_cluster, needs_connection_first, ray_session, task_request
from .store import Store, model_seed, model_seeds

log = logging.getLogger("datamodels")

# ---- what runs on the workers ----------------------------------------------------------------

def _local_data_dir(digest: str, payload_ref) -> str:
    """This node's copy of the prepared data, checked against ``digest`` before use and unpacked
    from the object store when missing or not what the driver sent (``datamodels.datacache``)."""
    import ray

    from . import datacache

    return datacache.local_data_dir(digest, lambda: ray.get(payload_ref[0]))


def run_task(worker_name: str, masks: np.ndarray, seeds: np.ndarray, worker_cfg: dict, data: dict,
             num_targets: int, payload_ref=None, threads: Optional[int] = None) -> np.ndarray:
    """Train the task's models; the body of every Ray task (also callable without Ray).

    ``threads``: torch's thread count for the task, its CPU share.  Ray's own setting
    (``OMP_NUM_THREADS``) is not enough: it is inherited from the driver's environment when set
    there, a worker process keeps the count of the first task it ran, and FFCV resets it.
    Bad output (wrong shape, NaN/inf) raises here, inside the task, so Ray retries it like
    any other failure instead of the driver storing junk."""
    module = worker_lib.load(worker_name)
    if threads:
        set_torch_threads(threads, environment=True)
    data = dict(data)
    if payload_ref is not None:
        data["dir"] = _local_data_dir(data.pop("digest"), payload_ref)
    result = module.train(masks, seeds, {"worker": worker_cfg, "data": data})
    return check_margins(result, len(masks), num_targets)


def task_threads(cpus_per_task: float) -> int:
    """Torch threads of a task with this CPU share: one per whole CPU, at least one."""
    return max(1, int(cpus_per_task))


def set_torch_threads(threads: int, environment: bool = False) -> Optional[int]:
    """Set torch's intra-op thread count if torch is loaded, returning the previous count; with
    ``environment``, also for a torch loaded later in this process (and its children)."""
    if environment:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    before = torch.get_num_threads()
    if before != threads:
        torch.set_num_threads(threads)
    return before


# ---- the driver ------------------------------------------------------------------------------

def num_targets_for(meta: dict, targets: str) -> int:
    return int(meta["num_test"]) + (int(meta["num_train"]) if targets == "test+train" else 0)


def open_store(cfg, meta: dict) -> Tuple[Store, dict, int]:
    """The sweep's store, created on first use, with the worker settings and K its tasks run with
    (``resolve_worker``).  An existing store must match the config: its own fields are checked
    first, then the config's explicit worker settings, before anything is measured, so a
    mismatch is a one-line error and costs nothing; settings left ``auto`` take the store's values."""
    path = Path(cfg.out) / "store"
    num_targets = num_targets_for(meta, cfg.data.targets)
    store = made_with = None
    if (path / "spec.json").exists():
        store = Store(path, mode="r+")
        made_with = store.meta.get("worker")
        _check_matches(path, {
            "alpha": (store.alpha, float(cfg.sweep.alpha)), "seed": (store.seed, int(cfg.seed)),
            "num_train": (store.num_train, int(meta["num_train"])), "num_targets": (store.num_targets, num_targets),
            "margins_dtype": (str(store.margins.dtype), cfg.sweep.margins_dtype),
            "sweep.eval_seeds": (int(store.meta.get("eval_seeds", 1)), int(cfg.sweep.eval_seeds)),
            "sweep.deterministic": (bool(store.meta.get("deterministic", False)), bool(cfg.sweep.deterministic))})
        if isinstance(made_with, dict):
            explicit = {k: v for k, v in _training_settings(config_lib.to_dict(cfg.worker)).items() if v != "auto"}
            _check_matches(path, {f"worker.{k}": (made_with.get(k), v) for k, v in explicit.items()})
    worker, models_per_task = resolve_worker(cfg, meta, made_with if isinstance(made_with, dict) else None)
    asked = _training_settings(worker)
    if store is None:
        store = Store.create(path, num_train=meta["num_train"], num_targets=num_targets,
                             alpha=cfg.sweep.alpha, seed=cfg.seed, margins_dtype=cfg.sweep.margins_dtype,
                             extra={"targets": cfg.data.targets, "worker": asked, **_protocol_meta(cfg.sweep)})
    elif isinstance(made_with, dict):  # mixing models of different training settings would be silent garbage
        _check_matches(path, {f"worker.{k}": (made_with.get(k), asked.get(k))
                              for k in sorted(set(made_with) | set(asked))})
    return store, worker, models_per_task


def _protocol_meta(s) -> dict:
    """How the store's models are seeded, recorded only where it differs from the default so
    stores made before these settings existed open unchanged."""
    return {**({"eval_seeds": int(s.eval_seeds)} if s.eval_seeds > 1 else {}),
            **({"deterministic": True} if s.deterministic else {})}


def training_seeds(store: Store, rows) -> np.ndarray:
    """The seeds of the models at ``rows``: one fixed seed for all under deterministic training
    (the store's ``deterministic``), else each row's own."""
    if store.meta.get("deterministic"):
        return np.full(len(rows), model_seed(store.seed, 0), dtype=np.int64)
    return model_seeds(store.seed, rows)


def _check_matches(path: Path, expected: Dict[str, Tuple[Any, Any]]) -> None:
    for name, (have, want) in expected.items():
        if have != want:
            raise DatamodelsError(f"store {path} was made with {name}={have}, but the config asks for {want}; "
                                  f"use another out directory or the original config")


def _training_settings(worker: dict) -> dict:
    """The worker settings that define the model class; where it runs (device) does not."""
    return {k: v for k, v in sorted(worker.items()) if k != "device"}


def stored_worker_settings(out: Path) -> Optional[dict]:
    """The training settings recorded in the store under ``out``, if there is one that has them."""
    spec = Path(out) / "store" / "spec.json"
    if not spec.exists():
        return None
    try:
        made_with = Store(spec.parent).meta.get("worker")
    except Exception:  # a damaged store: opening it for the sweep says what is wrong
        return None
    return made_with if isinstance(made_with, dict) else None


def adopt_store_settings(worker: dict, made_with: Optional[dict]) -> Tuple[dict, List[str]]:
    """``worker`` with each setting left ``auto`` replaced by the store's concrete value: the models
    of one store must share their settings, whatever ``auto`` would pick today (a store made
    before a setting became ``auto``, or on another machine).  Returns the keys adopted."""
    if not isinstance(made_with, dict):
        return worker, []
    adopted = [k for k, v in worker.items()
               if v == "auto" and k != "device" and made_with.get(k) not in (None, "auto")]
    return {**worker, **{k: made_with[k] for k in adopted}}, adopted


def resolve_worker(cfg, meta: dict, made_with: Optional[dict] = None) -> Tuple[dict, int]:
    """The worker settings every task of a sweep runs with, and K (models per task), decided once
    here on the driver, before any task is packed.

    A worker setting left ``auto`` takes, in order: the store's value (``made_with``: the
    settings an existing store records), so a store never mixes models of two precisions;
    else the worker module's ``resolve(worker, meta, models_per_task)``, which may measure this
    machine (``workers.mlp``: the faster precision, cached per machine).  ``sweep.models_per_task``
    0 asks the worker's ``default_models_per_task(worker, meta)``.  Both run with torch set to the
    tasks' thread count, so a probe sees what a task will.  Explicit settings are passed on as
    they are (``open_store`` refuses a store made with others).  Every choice is recorded
    (``datamodels.hardware.choices``).

    On a cluster the choices are the driver's machine's; nodes of another CPU kind run the
    same settings (consistent models, maybe not their fastest): set them explicitly there."""

    worker, adopted = adopt_store_settings(config_lib.to_dict(cfg.worker), made_with)
    for key in adopted:
        hardware.record(f"{worker['name']}.{key}", worker[key], "the store's models were made with it")
    module = worker_lib.load(worker["name"])
    previous = set_torch_threads(task_threads(cfg.sweep.cpus_per_task))
    try:
        hook = worker_lib.hook(module, "resolve")
        if hook is not None:
            worker = dict(hook(worker, meta, int(cfg.sweep.models_per_task)))
        k = config_lib.models_per_task(cfg, meta=meta, worker=worker)
    finally:
        if previous is not None:
            set_torch_threads(previous)
    hardware.record("sweep.models_per_task", k, "set in the config" if cfg.sweep.models_per_task
                    else f"{worker['name']}'s default_models_per_task")
    return worker, k


def pack_tasks(rows: np.ndarray, models_per_task: int) -> List[np.ndarray]:
    """Unfinished rows grouped by ``row // K``: the same rows always share a task, whatever
    else has finished, so a resumed sweep trains exactly what an undisturbed one would."""
    if len(rows) == 0:
        return []
    groups = rows // models_per_task
    cuts = np.flatnonzero(np.diff(groups)) + 1
    return np.split(rows, cuts)


def check_margins(result, num_models: int, num_targets: int) -> np.ndarray:
    arr = np.asarray(result, dtype=np.float32) if result is not None else np.empty(0)
    if arr.shape != (num_models, num_targets):
        raise ValueError(f"worker returned margins of shape {arr.shape}, expected {(num_models, num_targets)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"worker returned non-finite margins ({int((~np.isfinite(arr)).sum())} values)")
    return arr


def _data_payload(data_dir: Path) -> Tuple[str, Dict[str, bytes]]:
    from . import datacache

    return datacache.payload(data_dir)


def sweep(config=None, *, address: Optional[str] = None, progress: bool = True,
          until_lds: Optional[float] = None, until_gain: Optional[float] = None) -> dict:
    """Train all models the config asks for into ``<out>/store``; returns a summary.

    ``address`` (or ``sweep.address``) connects to an existing Ray cluster; otherwise a local
    Ray instance is started for the run and stopped after it.  Held-out (evaluation) models are
    trained first; every ``sweep.checkpoint_every`` fitting models the live LDS is measured
    (``datamodels.live``).  ``until_lds`` / ``until_gain`` (or ``sweep.until_lds`` /
    ``sweep.until_gain``) stop the sweep early once the live LDS reaches that level, or once the
    forecast gain from doubling the models falls below it; the summary's ``stopped`` says why.
    """
    from .live import Monitor
    from .prepare import prepare, read_meta

    cfg = config_lib.coerce(config)
    if until_lds is not None or until_gain is not None:
        values = config_lib.to_dict(cfg)
        values["sweep"].update({k: v for k, v in (("until_lds", until_lds), ("until_gain", until_gain))
                                if v is not None})
        cfg = config_lib.from_dict(values)
    s = cfg.sweep
    address = address or s.address
    request = task_request(s)
    # Before any file is written (the prepared data, the store): the address is well formed and
    # answers, and a node can run a task; a cluster to join is joined now to see its nodes.
    check_cluster(address, request)
    from .live import check_live_memory

    check_live_memory(cfg)  # the live LDS's statistics, where the config gives N (synthetic data)
    started = time.time()
    with ExitStack() as on_ray, ExitStack() as locked:
        if needs_connection_first(address):
            on_ray.enter_context(ray_session(address, request))
        data_dir = prepare(cfg, progress=progress)
        meta = read_meta(data_dir)

        def plan(on_allocated=None):
            """Grow the store; the unfinished rows and their tasks, held-out models first (so
            the live LDS is scored from the first checkpoint on; a stable sort: within each
            part, the row order of an undisturbed sweep)."""
            store.grow(s.num_models, s.num_eval_models * s.eval_seeds, on_allocated=on_allocated)
            todo = np.flatnonzero(~np.asarray(store.completed, dtype=bool))
            tasks = [(rows, np.asarray(store.masks[rows]), training_seeds(store, rows))
                     for rows in pack_tasks(todo, models_per_task)]
            is_eval = store.is_eval
            tasks.sort(key=lambda task: not is_eval[task[0]].any())
            return todo, tasks

        with hardware.log_on_success():  # the choices are logged once the store has grown
            store, worker, models_per_task = open_store(cfg, meta)
            locked.enter_context(store.lock())
            if store.num_models - store.num_eval < s.num_models or store.num_eval < s.num_eval_models * s.eval_seeds:
                # new rows to make: Ray starts meanwhile (and a resume starts it only if needed)
                todo, tasks = _plan_while_connecting(plan, on_ray, address, request)
            else:
                todo, tasks = plan()
        summary = {"store": str(store.path), "num_models": store.num_models,
                   "already_done": int(store.num_models - len(todo)), "trained": 0, "failed": {},
                   "retried": 0, "timed_out": 0, "stopped": None}
        is_eval = store.is_eval
        every = config_lib.interval(s)
        live = None
        if every and store.num_eval >= 2:
            live = Monitor(store, cfg, every)
            if live.stop:  # a rerun of a sweep that stopped: nothing more to train
                tasks = [t for t in tasks if is_eval[t[0]].any()]

        def on_result(rows, margins):
            store.write(rows, margins)
            store.clear_failures(rows)
            summary["trained"] += len(rows)
            if live is not None:
                live.add(rows)

        def on_failure(rows, message):
            store.record_failures({int(i): message for i in rows})
            summary["failed"].update({int(i): message for i in rows})

        def postfix():
            latest = live.latest if live is not None else None
            return {"lds": f"{latest['lds']:.3f}@{latest['num_fit_models']}"} if latest else {}

        try:
            if tasks:
                on_ray.enter_context(ray_session(address, request))  # a no-op if connected above
                summary.update(execute(tasks, cfg, data_dir, store.num_targets, on_result, on_failure, progress,
                                       desc="sweep", worker=worker,
                                       should_stop=None if live is None else (lambda: live.stop is not None),
                                       postfix=postfix))
        except BaseException:
            if live is not None:
                live.close()
            raise
        on_ray.close()  # Ray stopped (if started here) before the last checkpoint's solve
        if live is not None:
            problem = live.finish(final=not summary["failed"])
            summary["stopped"] = live.stop
            if problem:
                log.warning("%s", problem)
                summary["checkpoint_error"] = problem
            summary["checkpoints"] = len(live.records)
            summary["checkpoint_solve_s"] = round(live.solve_s, 3)
            if live.latest:
                summary["live_lds"] = {k: live.latest[k] for k in ("num_fit_models", "lds", "quantiles")}
    summary["wall_s"] = time.time() - started
    if summary["failed"]:
        rows = sorted(summary["failed"])
        raise DatamodelsError(f"sweep finished with {len(rows)} failed models (rows {rows[:10]}"
                              f"{' ...' if len(rows) > 10 else ''}); see `datamodels status {store.path}`")
    return summary


def train_masks(config, masks: np.ndarray, seeds: Optional[np.ndarray] = None, *, address: Optional[str] = None,
                progress: bool = True) -> np.ndarray:
    """Train one model per given mask through the sweep machinery and return their margins
    [num_masks, num_targets], without touching the store (used to verify predictions by retraining).

    Seeds default to ones derived from the config's seed, disjoint from the store's models.
    Settings left ``auto`` take the values recorded in the store under ``out``, if there is one,
    so retrained models are made as the store's were."""
    cfg = config_lib.coerce(config)
    address = address or cfg.sweep.address
    request = task_request(cfg.sweep)
    check_cluster(address, request)  # before prepare writes anything
    with ExitStack() as on_ray:
        if needs_connection_first(address):
            on_ray.enter_context(ray_session(address, request))
        return _train_masks(cfg, masks, seeds, address, request, progress)


def _train_masks(cfg, masks, seeds, address, request, progress) -> np.ndarray:
    from .prepare import prepare, read_meta

    data_dir = prepare(cfg, progress=progress)
    meta = read_meta(data_dir)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2 or masks.shape[1] != int(meta["num_train"]):
        raise DatamodelsError(f"masks must have shape [n, {meta['num_train']}] (one column per training example), "
                              f"got {list(masks.shape)}")
    if seeds is None:
        seeds = model_seeds(cfg.seed + 1_000_003, np.arange(len(masks)))
    num_targets = num_targets_for(meta, cfg.data.targets)
    worker, models_per_task = resolve_worker(cfg, meta, stored_worker_settings(cfg.out))
    out = np.full((len(masks), num_targets), np.nan, dtype=np.float32)
    errors: Dict[int, str] = {}
    rows_all = np.arange(len(masks))
    tasks = [(rows, masks[rows], np.asarray(seeds)[rows]) for rows in pack_tasks(rows_all, models_per_task)]

    def on_result(rows, margins):
        out[rows] = margins

    def on_failure(rows, message):
        errors.update({int(i): message for i in rows})

    with ray_session(address, request):  # a no-op if connected already
        execute(tasks, cfg, data_dir, num_targets, on_result, on_failure, progress, desc="retrain", worker=worker)
    if errors:
        first = next(iter(errors.values()))
        raise DatamodelsError(f"{len(errors)} of {len(masks)} retraining models failed; first error: {first}")
    return out


def _plan_while_connecting(plan: Callable, on_ray: ExitStack, address: Optional[str], request=None):
    """``plan(on_allocated)``'s result, with Ray connected (its session entered into ``on_ray``)
    meanwhile.  New rows' masks and seeds take ~70 us a model to make (seconds for a big sweep)
    and a local Ray takes seconds to start, so plan runs in a thread and Ray starts (on this,
    the main thread: Ray's driver needs it) as soon as plan reports that the store's files have
    room: a full disk fails before Ray starts, the store unchanged.  Only a local instance starts
    this way, its resources checked against the request before (``check_cluster``): a cluster
    to join is joined, and checked, before the store grows."""
    allocated = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="datamodels-plan") as pool:
        planned = pool.submit(plan, allocated.set)
        while not allocated.wait(0.05) and not planned.done():
            pass
        if planned.done() and planned.exception() is not None:
            return planned.result()  # raises
        try:
            on_ray.enter_context(ray_session(address, request))
        finally:
            result = planned.result()  # the store is whole before any error surfaces
    return result


def execute(tasks: List[Tuple[np.ndarray, np.ndarray, np.ndarray]], cfg, data_dir: Path, num_targets: int,
            on_result: Callable, on_failure: Callable, progress: bool, desc: str,
            worker: Optional[dict] = None, should_stop: Optional[Callable[[], bool]] = None,
            postfix: Optional[Callable[[], dict]] = None) -> Dict[str, int]:
    """Run ``(rows, masks, seeds)`` tasks on Ray with bounded submissions, handing each result
    (or final failure) to the driver's callbacks as it arrives.  ``worker``: the settings the
    tasks run with (``resolve_worker``'s); by default the config's.

    The driver owns the retry policy: a task that raises, returns junk, dies with its worker
    or node, or runs past ``sweep.task_timeout_s`` is resubmitted up to ``sweep.max_retries``
    times, then reported to ``on_failure``.  Once ``should_stop()`` is true no more tasks are
    submitted and the ones in flight are let finish (a clean early stop: every completed row is
    kept).  ``postfix()``: extra fields for the progress bar.  Returns counts of tasks retried
    and timed out."""
    import ray

    s = cfg.sweep
    worker_cfg = dict(worker) if worker is not None else config_lib.to_dict(cfg.worker)
    threads = task_threads(s.cpus_per_task)
    digest, files = _data_payload(data_dir)
    payload_ref = [ray.put(files)]  # nested in a list: tasks fetch it only when their node lacks the data
    data = {"digest": digest, "targets": cfg.data.targets}
    custom = {name: amount for name, amount in task_request(s).items() if name not in ("CPU", "GPU")}
    remote = ray.remote(run_task).options(num_cpus=s.cpus_per_task, num_gpus=s.gpus_per_task,
                                          resources=custom or None, max_retries=0, retry_exceptions=False)
    resources = ray.cluster_resources()
    slots = max(1, int(resources.get("CPU", 1) // max(s.cpus_per_task, 1e-3)))
    if s.gpus_per_task > 0:
        slots = min(slots, max(1, int(resources.get("GPU", 0) // s.gpus_per_task)))
    max_in_flight = s.max_in_flight or 2 * slots  # enough to keep every slot busy, not the whole sweep queued

    pending = list(reversed(tasks))
    in_flight: Dict = {}  # ref -> (task, submitted at, attempt)
    counts = {"retried": 0, "timed_out": 0}
    bar = tqdm(total=sum(len(t[0]) for t in tasks), unit="model", desc=desc, disable=not progress, smoothing=0.05)

    def submit(task, attempt=0):
        rows, masks, seeds = task
        ref = remote.remote(worker_cfg["name"], masks, seeds, worker_cfg, data, num_targets, payload_ref, threads)
        in_flight[ref] = (task, time.monotonic(), attempt)

    def failed(task, attempt, message):
        if attempt < s.max_retries:
            counts["retried"] += 1
            submit(task, attempt + 1)
        else:
            on_failure(task[0], message)
            bar.update(len(task[0]))

    try:
        while pending or in_flight:
            if pending and should_stop is not None and should_stop():
                pending.clear()
            while pending and len(in_flight) < max_in_flight:
                submit(pending.pop())
            # A deadline or a stop rule is looked at every second, not only when a task finishes.
            wake = 1.0 if s.task_timeout_s or should_stop is not None else None
            done, _ = ray.wait(list(in_flight), num_returns=1, timeout=wake)
            for ref in done:
                task, _, attempt = in_flight.pop(ref)
                try:
                    margins = check_margins(ray.get(ref), len(task[0]), num_targets)
                except Exception as exc:  # raised in the worker, worker or node died, or bad output
                    failed(task, attempt, _describe(exc))
                else:
                    on_result(task[0], margins)
                    bar.update(len(task[0]))
                    if postfix is not None:
                        bar.set_postfix(postfix(), refresh=False)
            if s.task_timeout_s:
                # Measured from submission: at most 2x the task slots are submitted, so a task
                # waits in Ray's queue for at most about one task's time before it starts.
                now = time.monotonic()
                for ref, (task, submitted, attempt) in list(in_flight.items()):
                    if now - submitted > s.task_timeout_s:
                        ray.cancel(ref, force=True)
                        del in_flight[ref]
                        counts["timed_out"] += 1
                        failed(task, attempt, f"TimeoutError: task ran longer than sweep.task_timeout_s="
                                              f"{s.task_timeout_s} s, {attempt + 1} attempts")
    finally:
        bar.close()
    return counts


def _describe(exc: Exception) -> str:
    """One line: the worker's exception type and last message line."""
    import ray

    cause = exc
    if isinstance(exc, ray.exceptions.RayTaskError) and getattr(exc, "cause", None) is not None:
        cause = exc.cause
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"
