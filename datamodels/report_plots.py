"""The report's LDS marks: the per-target LDS histogram with its mean, interval and noise ceiling,
the ceiling's line on the live-LDS forecast, and the LDS figure with its interval."""
from __future__ import annotations

from typing import Optional

import numpy as np

CEILING_COLOR = "#2a9d8f"


def lds_histogram(ax, scores: dict) -> None:
    """Per-target LDS histogram: the mean (with its interval shaded) and the noise ceiling."""
    per_target = np.asarray(scores["per_target"], dtype=np.float64)
    ax.hist(per_target[np.isfinite(per_target)], bins=40, color="#4c72b0")
    ci = scores.get("ci") or {}
    if np.isfinite(ci.get("low", np.nan)):
        ax.axvspan(ci["low"], ci["high"], color="#e4572e", alpha=0.2,
                   label=f"{100 * ci['level']:.0f}% CI [{ci['low']:.3f}, {ci['high']:.3f}]")
    ax.axvline(scores["lds"], color="#e4572e", lw=1.5, label=f"mean {scores['lds']:.3f}")
    ceiling_line(ax, scores.get("ceiling"), vertical=True)
    ax.set_xlabel("Spearman correlation per target")
    ax.set_ylabel("targets")
    protocol = (scores.get("protocol") or {}).get("name")
    ax.set_title("Linear datamodeling score (LDS) per target" + (f", protocol {protocol}" if protocol else ""),
                 fontsize=10)
    ax.legend(fontsize=8)


def ceiling_line(ax, ceiling: Optional[dict], vertical: bool = False) -> None:
    """The noise ceiling as a line (vertical on a histogram), when it is available."""
    if not ceiling or not ceiling.get("available"):
        return
    label = f"noise ceiling {ceiling['ceiling']:.3f}"
    (ax.axvline if vertical else ax.axhline)(ceiling["ceiling"], color=CEILING_COLOR, ls=":", lw=1.5, label=label)


def lds_figure(scores: dict) -> str:
    """``0.812 [0.801, 0.823]``: the LDS with its interval, for the summary."""
    ci = scores.get("ci") or {}
    interval = f" [{ci['low']:.3f}, {ci['high']:.3f}]" if np.isfinite(ci.get("low", np.nan)) else ""
    return f"{scores['lds']:.3f}{interval}"


def ceiling_sentence(scores: Optional[dict]) -> str:
    """A sentence on the noise ceiling for the accuracy section."""
    from .metrics import ceiling_text, protocol_text

    if not scores:
        return ""
    c = scores.get("ceiling")
    text = ceiling_text(c).lstrip("; ")
    return (f" Ground truth{protocol_text(scores.get('protocol'))}; {text}" + (
        ": the highest LDS any predictor of the margin from the mask could reach under this protocol, from the "
        "agreement between seeds of the same held-out mask." if c and c.get("available") else ".")) if c else ""
