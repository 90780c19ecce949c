"""The sweep's side of the live LDS: a driver thread at idle priority that solves the due
checkpoints while the tasks train, and the stop rules checked after each."""
from __future__ import annotations

import os
import queue
import threading
import time
from typing import List, Optional

import numpy as np

from ..store import Store
from .checkpoints import LiveLDS
from .stoprules import stop_reason, stop_rules

class Monitor:
    """The sweep's side of the live LDS: it follows which rows are complete and hands each due
    checkpoint, one at a time, to a driver thread that runs ``LiveLDS`` with one torch
    thread under Linux's ``SCHED_IDLE`` policy (Linux schedules each thread by its own policy),
    so that the solves take the cores' idle moments and leave the tasks theirs.

    Why idle priority: Ray runs its task workers at nice 15, so at nice 19 the thread still had
    two fifths of a worker's share of a core (CFS weights 15 against 36), and the digits
    default's sweep took 7-21 % longer with live LDS than without; ``SCHED_IDLE`` weighs 3.
    Why a thread: a child process would import torch again, which cost 2.7 CPU-seconds per
    sweep, as much as its solves.  After each record the config's stop rules are
    checked (``stop``: why the sweep should stop; set at the start too when the log already
    satisfies a rule)."""

    def __init__(self, store: Store, cfg, every: int):
        self.live = LiveLDS(store, cfg, every)
        self.rules = stop_rules(cfg.sweep)
        self.completed = np.asarray(store.completed, dtype=bool).copy()
        self.ready = 0
        self.history = list(self.live.history)
        self.records: List[dict] = []
        self._stop = stop_reason(self.history, self.rules)
        self.error: Optional[str] = None
        self.solve_s = 0.0
        self.started = time.time()
        self._asked: Optional[int] = None  # the checkpoint being solved
        self._last = 0  # the latest checkpoint asked for
        self._thread: Optional[threading.Thread] = None
        self._requests: "queue.Queue[Optional[int]]" = queue.Queue()
        self._results: "queue.Queue[dict]" = queue.Queue()
        self._threads_before: Optional[int] = None
        self._advance()

    @property
    def stop(self) -> Optional[str]:
        """Why the sweep should stop (None: it goes on).  Reading it first takes the record of a
        checkpoint finished since and asks for the next due one, so a driver that checks it
        while waiting on long tasks learns of a stop, and keeps the checkpoints going, without
        waiting for the next task to finish."""
        self.poll()
        return self._stop

    @property
    def latest(self) -> Optional[dict]:
        """The latest checkpoint's record, this sweep's or an earlier one's."""
        return self.history[-1] if self.history else None

    def add(self, rows: np.ndarray) -> None:
        """Rows just written to the store."""
        self.completed[np.asarray(rows)] = True
        self._advance()
        self.poll()

    def _advance(self) -> None:
        fit_rows = self.live.fit_rows
        while self.ready < len(fit_rows) and self.completed[fit_rows[self.ready]]:
            self.ready += 1

    def _eval_complete(self) -> bool:
        rows = self.live.eval_rows
        return len(rows) >= 2 and bool(self.completed[rows].all())

    def poll(self, wait: bool = False) -> None:
        """Take a finished checkpoint's record, if there is one (``wait``: wait for it), and ask
        for the next due one."""
        if self._asked is not None:
            try:
                self._receive(self._results.get(block=wait))
            except queue.Empty:
                return
        if self._asked is None and not self._stop and self.error is None:
            self._ask()

    def _ask(self, final: bool = False) -> bool:
        if not self._eval_complete():
            return False
        n = self.live.next_due(self.ready, final=final, after=self._last)
        if n is None:
            return False
        if self._thread is None:
            import torch

            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(1)  # process-wide: the driver's own thread does no torch work meanwhile
            self._thread = threading.Thread(target=self._serve, name="datamodels-checkpoints", daemon=True)
            self._thread.start()
        self._requests.put(n)
        self._asked, self._last = n, n
        return True

    def _receive(self, message: dict) -> None:
        self._asked = None
        if "error" in message:
            self.error = message["error"]
            return
        self.records.append(message)
        self.history.append(message)
        self.solve_s += message["cpu_s"]
        self._stop = self._stop or stop_reason(self.history, self.rules)

    def _serve(self) -> None:
        """The checkpoint thread: solve each n asked for, hand back its record."""
        _idle_priority()
        while True:
            n = self._requests.get()
            if n is None:
                return
            try:
                self._results.put(self.live.checkpoint(n, self.started))
            except Exception as exc:  # reported by the driver; the sweep goes on
                self._results.put({"error": f"{type(exc).__name__}: {exc}"})
                return

    def finish(self, final: bool = True) -> Optional[str]:
        """Wait for the checkpoint in progress; unless a stop rule fired, solve the remaining due
        ones (``final``: the last, partial one too).  Returns what went wrong in a checkpoint,
        if anything did: the models are trained and stored all the same."""
        try:
            while True:
                if self._asked is not None:
                    self.poll(wait=True)  # which asks for the next due one, if any
                elif self._stop or self.error or not self._ask(final=final):
                    break
        finally:
            self.close()
        return f"live LDS checkpoint failed: {self.error}" if self.error else None

    def close(self) -> None:
        """End the checkpoint thread once it is done with the checkpoint in progress."""
        if self._thread is None:
            return
        import torch

        self._requests.put(None)
        self._thread.join()
        self._thread = None
        torch.set_num_threads(self._threads_before)


def _idle_priority() -> None:
    """``SCHED_IDLE`` for the calling thread (Linux: pid 0 names the calling thread); where that
    policy does not exist, nice 19."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
