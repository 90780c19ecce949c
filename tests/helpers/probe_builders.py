"""Probe builders for tests of ``datamodels.hardware.time_together``: imported by name in the
probe processes it starts (this folder is on their sys.path, as on the test's)."""
import os
import time


def logged_sleeps(log_dir: str, seconds: float) -> dict:
    """Two candidates that sleep and log (label, pid, start, end) of every call."""
    def probe(label):
        def run():
            start = time.time()
            time.sleep(seconds)
            with open(os.path.join(log_dir, f"{os.getpid()}.log"), "a") as f:
                f.write(f"{label} {os.getpid()} {start} {time.time()}\n")
        return run
    return {"short": probe("short"), "long": probe("long")}


def broken(message: str) -> dict:
    raise ValueError(message)
