"""The command line's arguments: parsing with one-line errors, and the checks of values that argparse
cannot express (ranges, finite numbers, outputs that would overwrite something), run before any
command reads or writes a file."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .config import MAX_COUNT, MAX_SEED, check_address
from .errors import DatamodelsError
from .files import DATAMODELS_KEYS, REPORT_MARKER, check_output, npz_with_keys, text_with_marker


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (``datamodels: error: ...``) like every other error."""

    def error(self, message):
        command = self.prog.removeprefix("datamodels").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"datamodels: error: {where}{' '.join(message.split())} (see {self.prog} --help)\n")


def integer(least: int, most: int = MAX_COUNT):
    """An argparse type: a whole number in least..most."""
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if not least <= value <= most:
            raise argparse.ArgumentTypeError(f"must be in {least}..{most}, got {value}")
        return value
    parse.__name__ = "whole number"
    return parse


def number(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


number.__name__ = "number"
count, positive, seed = integer(0), integer(1), integer(0, MAX_SEED)


def address(text: str) -> str:
    try:
        check_address(text)
    except DatamodelsError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--address ")) from None
    return text


address.__name__ = "address"


def existing(what: str, path, *, directory: bool = False):
    """Refuse a named input that is not there (before anything runs)."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise DatamodelsError(f"{what} {path} not found")
    if directory and not p.is_dir():
        raise DatamodelsError(f"{what} {path} is not a directory")
    if not directory and p.is_dir():
        raise DatamodelsError(f"{what} {path} is a directory, not a file")


def check_fit_args(args) -> None:
    """The fit options given on the command line, and its output and inputs, checked before anything
    is read or written."""
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise DatamodelsError(message)

    # None: not given, the fit's default (checked where it is defined).
    for name, low, high in (("val_fraction", 0.0, 1.0), ("lambda_min_ratio", 0.0, 1.0)):
        value = getattr(args, name, None)
        check(value is None or (math.isfinite(value) and low < value < high),
              f"--{name.replace('_', '-')} must be in ({low:g}, {high:g}), got {value}")
    tol = getattr(args, "tol", None)
    check(tol is None or (math.isfinite(tol) and tol > 0), f"--tol must be a positive number, got {tol}")
    for name in ("num_lambdas", "max_iter", "chunk_rows", "prior_models", "slices"):
        value = getattr(args, name, None)
        check(value is None or 1 <= value <= MAX_COUNT,
              f"--{name.replace('_', '-')} must be in 1..{MAX_COUNT}, got {value}")
    seed = getattr(args, "seed", None)
    check(seed is None or 0 <= seed <= MAX_SEED, f"--seed must be in 0..{MAX_SEED}, got {seed}")
    device = getattr(args, "device", None)
    check(device is None or str(device) in ("cpu", "cuda") or (str(device).startswith("cuda:")
                                                               and str(device)[5:].isdigit()),
          f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if args.address is not None:
        check_address(args.address)
    existing("--config", args.config)
    existing("--spec", args.spec)
    check_output(args.out, [args.store, args.spec, args.config], args.force, produced=npz_with_keys(*DATAMODELS_KEYS))


def check_report_out(args, methods: dict) -> None:
    """Refuse a report path that would overwrite one of the report's inputs or something else."""
    run = Path(args.run)
    existing("--config", args.config)
    existing("--spec", args.spec)
    out = Path(args.out) if args.out else run / "report.html"
    inputs = [args.datamodels or run / "datamodels.npz", args.config or run / "config.yaml", args.spec,
              *methods.values()]
    check_output(out, inputs, args.force, produced=text_with_marker(REPORT_MARKER))

