"""Building blocks of the HTML report's sections: figures as inline PNGs, tables, notes.

A section is ``{"title", "lead", "blocks"}``; the page template (``templates/report.html.j2``)
draws each block by its ``kind``: ``img``, ``table``, ``note`` or ``warning``.
"""
from __future__ import annotations

import base64
import io
from typing import List, Optional, Sequence

import numpy as np


def plain(name) -> str:
    """A name (score file, removal spec) drawn as it is: an escaped ``$`` starts no math text,
    so ``$\\cmd$`` is drawn verbatim rather than parsed (our tick labels still use math text)."""
    return str(name).replace("$", "\\$")


def figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def img(fig, alt: str) -> dict:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return {"kind": "img", "alt": alt, "src": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}


def note(text, kind: str = "note") -> dict:
    """A paragraph: a note, or a ``warning`` (a run file not used, data left out, and why)."""
    return {"kind": kind, "text": text}


def section(title: str, lead, *blocks) -> dict:
    """A section of the page: ``lead`` a plain string (escaped) or Markup; blocks from img,
    table, note (None ones are left out)."""
    return {"title": title, "lead": lead, "blocks": [b for b in blocks if b]}


def table(rows: Sequence[dict], columns: Sequence[str], left: Sequence[str] = ()) -> dict:
    def cell(v):
        if isinstance(v, float):
            return "n/a" if not np.isfinite(v) else f"{v:.3g}"
        return str(v)

    return {"kind": "table", "columns": list(columns), "left": list(left),
            "rows": [[cell(r.get(c, "")) for c in columns] for r in rows]}


def show(ax, image: np.ndarray, title: str = "", color: Optional[str] = None) -> None:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img, dtype=np.float32)
    ax.imshow(img, cmap="gray_r" if img.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set(visible=color is not None, color=color or "black", linewidth=2)
    if title:
        ax.set_title(title, fontsize=8)


def image_rows(rows: List[List[tuple]], row_labels: Sequence[str], cell: float = 1.0):
    """A grid of images: rows of (image, caption, frame colour or None)."""
    ncols = max(len(r) for r in rows)
    fig = figure(cell * ncols + 1.2, cell * 1.25 * len(rows) + 0.2)
    axes = np.atleast_2d(fig.subplots(len(rows), ncols, squeeze=False))
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = axes[i, j]
            if j < len(row):
                image, caption, color = row[j]
                show(ax, image, caption, color)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(row_labels[i], fontsize=8, rotation=0, ha="right", va="center", labelpad=8)
    return fig
