"""
The Models page's two charts, drawn on the server as inline SVG (no script, nothing fetched: the
page works offline): a key metric across versions, and the champion timeline.

These functions compute geometry only (coordinates, tick labels, colours by status); the template
writes the SVG elements, so every name and text in them goes through its autoescaping.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow_ml_provider.vocabulary import MOVE_PROMOTION

# A trend chart (one per key metric), in SVG user units.
TREND_W, TREND_H = 340, 150
TREND_PAD = {"left": 52, "right": 12, "top": 12, "bottom": 28}
MAX_X_LABELS = 12
# The timeline: one lane per version that held the alias.
TIMELINE_W = 960
LANE_H = 24
TIMELINE_PAD = {"left": 56, "right": 16, "top": 8, "bottom": 30}
TIME_TICKS = 5


def trend_chart(metric: str, points: list[tuple[str, float, str]]) -> dict[str, Any]:
    """
    A line chart of ``metric`` across versions.

    :param points: ``(version, value, status)`` in version order; ``status`` is one of
        ``champion``, ``was_champion``, ``rolled_back``, ``candidate`` (the marker's class).
    """
    left, right = TREND_PAD["left"], TREND_W - TREND_PAD["right"]
    top, bottom = TREND_PAD["top"], TREND_H - TREND_PAD["bottom"]
    values = [p[1] for p in points]
    lo, hi = _nice_range(min(values), max(values))
    ticks = _ticks(lo, hi)
    n = len(points)

    def x(i: int) -> float:
        return (left + right) / 2 if n == 1 else left + i * (right - left) / (n - 1)

    def y(value: float) -> float:
        return bottom - (value - lo) / (hi - lo) * (bottom - top)

    marks = [
        {"x": round(x(i), 1), "y": round(y(v), 1), "version": ver, "value": v, "status": status}
        for i, (ver, v, status) in enumerate(points)
    ]
    every = max(1, math.ceil(n / MAX_X_LABELS))
    return {
        "metric": metric,
        "width": TREND_W,
        "height": TREND_H,
        "plot": {"left": left, "right": right, "top": top, "bottom": bottom},
        "points": marks,
        "line": " ".join(f"{m['x']},{m['y']}" for m in marks),
        "y_ticks": [{"y": round(y(t), 1), "label": _label(t)} for t in ticks],
        "x_labels": [
            {"x": m["x"], "label": f"v{m['version']}"}
            for i, m in enumerate(marks)
            if i % every == 0 or i == n - 1
        ],
        "latest": points[-1][1],
    }


def timeline_chart(
    periods: list[dict[str, Any]], moves: list[dict[str, Any]], now: datetime
) -> dict[str, Any]:
    """
    Who held the alias when: a lane per version, a bar per period, a marker per rollback or manual move.

    :param periods: ``{"version", "start", "end" (None: still holds it), "kind"}``, oldest first.
    :param moves: the history's moves (``{"at", "kind", "from_version", "to_version", "reason"}``).
    """
    versions = sorted({p["version"] for p in periods}, key=_version_key, reverse=True)  # newest on top
    start = min(p["start"] for p in periods)
    end = max([now, *(p["end"] for p in periods if p["end"] is not None)])
    if end - start < timedelta(minutes=1):
        end = start + timedelta(minutes=1)
    left, right = TIMELINE_PAD["left"], TIMELINE_W - TIMELINE_PAD["right"]
    top = TIMELINE_PAD["top"]
    bottom = top + LANE_H * len(versions)
    span = (end - start).total_seconds()

    def x(at: datetime) -> float:
        return round(left + (at - start).total_seconds() / span * (right - left), 1)

    lane = {v: top + i * LANE_H for i, v in enumerate(versions)}
    bars = []
    for p in periods:
        x0, x1 = x(p["start"]), x(p["end"] or now)
        bars.append(
            {
                "version": p["version"],
                "x": x0,
                "y": lane[p["version"]] + 4,
                "width": round(max(3.0, x1 - x0), 1),
                "height": LANE_H - 8,
                "current": p["end"] is None,
                "kind": p["kind"],
                "title": f"v{p['version']}: {when(p['start'])} – {'now' if p['end'] is None else when(p['end'])}",
            }
        )
    markers = [
        {
            "x": x(m["at"]),
            "kind": m["kind"],
            "title": f"{m['kind']} {when(m['at'])}: {m['reason']}".strip(": "),
        }
        for m in moves
        if m["kind"] != MOVE_PROMOTION
    ]
    ticks = [start + (end - start) * i / (TIME_TICKS - 1) for i in range(TIME_TICKS)]
    return {
        "width": TIMELINE_W,
        "height": bottom + TIMELINE_PAD["bottom"],
        "plot": {"left": left, "right": right, "top": top, "bottom": bottom},
        "lanes": [{"version": v, "y": lane[v] + LANE_H / 2} for v in versions],
        "bars": bars,
        "markers": markers,
        "x_ticks": [{"x": x(t), "label": _tick_label(t, end - start)} for t in ticks],
    }


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    if math.isclose(lo, hi):
        pad = abs(lo) * 0.05 or 0.05
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.1
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    """Round tick values inside [lo, hi]."""
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(s * magnitude for s in (1, 2, 2.5, 5, 10) if s * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (-1, version)


def when(at: datetime) -> str:
    """How the page writes a time: ``2026-12-07 19:37:55 UTC``."""
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _tick_label(at: datetime, span: timedelta) -> str:
    if span <= timedelta(hours=1):
        return at.strftime("%H:%M:%S")
    if span <= timedelta(days=2):
        return at.strftime("%m-%d %H:%M")
    return at.strftime("%Y-%m-%d")
