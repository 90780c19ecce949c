"""Rules that stop the sweep once more models would not pay, checked after every checkpoint.

Each rule is a small object with a ``name`` (its setting in the config's ``sweep`` section)
and ``check(records)``, which says why the sweep should stop after the latest of the
checkpoint records, or returns None."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

from .checkpoints import comparable
from .forecast import curve_at, fit_curve


class StopRule:
    """A reason to stop the sweep: ``check(records)`` explains it, or returns None."""

    name = ""

    def check(self, records: List[dict]) -> Optional[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class LdsReached(StopRule):
    """Stop at the first checkpoint whose LDS reaches ``level`` (``sweep.until_lds``)."""

    level: float
    name = "until_lds"

    def check(self, records: List[dict]) -> Optional[str]:
        if not records or records[-1]["lds"] < self.level:
            return None
        latest = records[-1]
        return (f"LDS {latest['lds']:.4f} at {latest['num_fit_models']} fitting models reached "
                f"sweep.until_lds={self.level:g}")


@dataclass(frozen=True)
class GainBelow(StopRule):
    """Stop once the learning curve through three or more comparable checkpoints forecasts a
    gain below ``gain`` from doubling the models (``sweep.until_gain``)."""

    gain: float
    name = "until_gain"

    def check(self, records: List[dict]) -> Optional[str]:
        points = comparable(records)
        if len(points) < 3:
            return None
        p = fit_curve([r["num_fit_models"] for r in points], [r["lds"] for r in points])
        now = points[-1]["num_fit_models"]
        gain = float(curve_at(p, 2 * now) - curve_at(p, now))
        if gain >= self.gain:
            return None
        return f"forecast gain from doubling {now} fitting models is {gain:.4f}, below sweep.until_gain={self.gain:g}"


def stop_rules(sweep_cfg) -> List[StopRule]:
    """The rules a config's ``sweep`` section sets, in the order they are checked."""
    rules: List[StopRule] = []
    if sweep_cfg.until_lds is not None:
        rules.append(LdsReached(float(sweep_cfg.until_lds)))
    if sweep_cfg.until_gain is not None:
        rules.append(GainBelow(float(sweep_cfg.until_gain)))
    return rules


def stop_reason(records: List[dict], rules: Sequence[StopRule]) -> Optional[str]:
    """Why the sweep should stop after the latest record: the first rule that says so, or None."""
    if not records:
        return None
    for rule in rules:
        reason = rule.check(records)
        if reason is not None:
            return reason
    return None
