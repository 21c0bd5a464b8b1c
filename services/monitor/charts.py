"""Geometry of the monitor's SVG charts, computed server-side so the pages need no JavaScript
and load nothing from anyone else; the templates only draw rectangles and text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Point:
    label: str
    value: float  # what the bar's length is proportional to
    text: str  # what the bar says (e.g. "3.5 h")


def columns(points: Sequence[Point], *, width: int = 640, height: int = 220) -> dict[str, Any]:
    """A vertical bar per point: ``{"width", "height", "base", "bars": [{"x", "y", "w", "h",
    "cx", "label", "text"}]}`` in SVG user units."""
    top, bottom, left = 18, 36, 8
    peak = max((p.value for p in points), default=0.0)
    slot = (width - left) / max(len(points), 1)
    bar_w = max(min(slot * 0.7, 60), 2)
    plot_h = height - top - bottom
    bars = []
    for i, p in enumerate(points):
        h = 0.0 if peak <= 0 else plot_h * max(p.value, 0) / peak
        x = left + i * slot + (slot - bar_w) / 2
        bars.append({"x": round(x, 1), "y": round(top + plot_h - h, 1), "w": round(bar_w, 1),
                     "h": round(h, 1), "cx": round(x + bar_w / 2, 1), "label": p.label, "text": p.text})
    return {"width": width, "height": height, "base": top + plot_h, "bars": bars}


def rows(points: Sequence[Point], *, width: int = 640, label_width: int = 200, row_height: int = 22) -> dict[str, Any]:
    """A horizontal bar per point, top to bottom in the given order (the ranking):
    ``{"width", "height", "label_width", "bars": [{"y", "w", "h", "ty", "label", "text"}]}``."""
    gap, pad, text_room = 4, 6, 70
    peak = max((p.value for p in points), default=0.0)
    plot_w = width - label_width - text_room
    bars = []
    for i, p in enumerate(points):
        y = pad + i * row_height
        w = 0.0 if peak <= 0 else plot_w * max(p.value, 0) / peak
        bars.append({"y": y, "w": round(w, 1), "h": row_height - gap, "ty": y + (row_height - gap) / 2 + 4,
                     "label": p.label, "text": p.text})
    return {"width": width, "height": 2 * pad + max(len(points), 1) * row_height,
            "label_width": label_width, "bars": bars}
