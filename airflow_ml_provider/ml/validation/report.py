"""A self-contained HTML report (inline CSS, plots as base64 PNG) and PNG plots per feature."""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PLOTS = 30
_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}
th{background:#eee}.ERROR{color:#b00}.WARNING{color:#a60}
.plots img{width:420px;margin:4px;border:1px solid #ddd}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _name(feature: Any) -> str:
    return ".".join(feature.path.step) or feature.name


def _common(feature: Any) -> Any:
    if feature.HasField("num_stats"):
        return feature.num_stats.common_stats
    if feature.HasField("string_stats"):
        return feature.string_stats.common_stats
    return None


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def _feature_row(feature: Any, total: int, drift: dict[str, float]) -> str:
    """One table row: name, type, count, missing %, numeric or categorical summary, drift score."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    common = _common(feature)
    count = int(common.num_non_missing) if common is not None else 0
    missing = 100.0 * (total - count) / total if total else 0.0
    if feature.HasField("num_stats"):
        num = feature.num_stats
        summary = f"mean {_fmt(num.mean)}, std {_fmt(num.std_dev)}, min {_fmt(num.min)}, max {_fmt(num.max)}"
    elif feature.HasField("string_stats"):
        top = ", ".join(f"{v.value} ({int(v.frequency)})" for v in feature.string_stats.top_values[:3])
        summary = f"unique {feature.string_stats.unique}; top {top}"
    else:
        summary = ""
    name = _name(feature)
    score = drift.get(name)
    cells = [
        name,
        statistics_pb2.FeatureNameStatistics.Type.Name(feature.type),
        count,
        f"{missing:.2f}",
        summary,
        "" if score is None else f"{score:.4f}",
    ]
    return "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"


def _numeric_buckets(feature: Any) -> list[tuple[float, float, float]]:
    from tensorflow_metadata.proto.v0 import statistics_pb2

    for histogram in feature.num_stats.histograms:
        if histogram.type == statistics_pb2.Histogram.STANDARD:
            return [
                (b.low_value, b.high_value, b.sample_count)
                for b in histogram.buckets
                if math.isfinite(b.low_value) and math.isfinite(b.high_value)
            ]
    return []


def _categorical_counts(feature: Any) -> dict[str, float]:
    buckets = feature.string_stats.rank_histogram.buckets
    if buckets:
        return {b.label: b.sample_count for b in buckets}
    return {v.value: v.frequency for v in feature.string_stats.top_values}


def _plot_numeric(ax: Any, current: Any, previous: Any | None) -> None:
    for feature, label, color in ((previous, "previous", "#999"), (current, "current", "#36c")):
        if feature is None or not feature.HasField("num_stats"):
            continue
        buckets = _numeric_buckets(feature)
        total = sum(b[2] for b in buckets) or 1.0
        lefts = [b[0] for b in buckets]
        widths = [max(b[1] - b[0], 1e-12) for b in buckets]
        ax.bar(
            lefts,
            [b[2] / total for b in buckets],
            width=widths,
            align="edge",
            alpha=0.5,
            label=label,
            color=color,
        )


def _plot_categorical(ax: Any, current: Any, previous: Any | None) -> None:
    now = _categorical_counts(current)
    before = (
        _categorical_counts(previous) if previous is not None and previous.HasField("string_stats") else {}
    )
    labels = sorted(set(now) | set(before), key=lambda k: -now.get(k, before.get(k, 0)))[:15]
    xs = range(len(labels))
    for counts, label, shift, color in ((before, "previous", -0.2, "#999"), (now, "current", 0.2, "#36c")):
        if counts:
            total = sum(counts.values()) or 1.0
            ax.bar(
                [x + shift for x in xs],
                [counts.get(k, 0) / total for k in labels],
                width=0.4,
                label=label,
                color=color,
            )
    ax.set_xticks(list(xs))
    ax.set_xticklabels([label[:20] for label in labels], rotation=45, ha="right", fontsize=7)


def _plot(current: Any, previous: Any | None, path: Path) -> bytes:
    """Draw one feature's distribution against the previous version's; save it and return the PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    try:
        if current.HasField("string_stats"):
            _plot_categorical(ax, current, previous)
        else:
            _plot_numeric(ax, current, previous)
        ax.set_title(_name(current)[:60], fontsize=9)
        ax.set_ylabel("fraction", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=80)
    finally:
        plt.close(fig)
    return path.read_bytes()


def _plots(out: Path, stats: Any, previous: Any | None) -> tuple[list[str], list[str]]:
    """
    Save one PNG per feature (at most MAX_PLOTS) under ``out/plots``; return file names and img tags.

    :param out: the staging directory.
    :param stats: statistics of this version.
    :param previous: previous statistics (no plots without them).
    """
    if previous is None:
        return [], []
    before = {_name(f): f for f in previous.datasets[0].features}
    (out / "plots").mkdir()
    names, tags = [], []
    for index, feature in enumerate(stats.datasets[0].features[:MAX_PLOTS]):
        name = _name(feature)
        file_name = f"{index:02d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)[:60]}.png"
        png = _plot(feature, before.get(name), out / "plots" / file_name)
        names.append(file_name)
        data = base64.b64encode(png).decode("ascii")
        tags.append(f'<img alt="{_e(name)}" src="data:image/png;base64,{data}">')
    return names, tags


def _anomaly_rows(result: dict[str, Any]) -> str:
    rows = [
        f'<tr class="{_e(a["severity"])}"><td>{_e(a["feature"])}</td><td>{_e(a["kind"])}</td>'
        f"<td>{_e(a['severity'])}</td><td>{_e(a['description'])}</td></tr>"
        for a in result["anomalies"]
    ]
    return "".join(rows) or '<tr><td colspan="4">No anomalies.</td></tr>'


def render_html(result: dict[str, Any], stats: Any, images: list[str]) -> str:
    """
    Build the report page.

    :param result: the step result (summary, anomalies, drift scores).
    :param stats: statistics of this version.
    :param images: ``<img>`` tags with embedded PNGs.
    """
    total = int(stats.datasets[0].num_examples)
    features = "".join(_feature_row(f, total, result["drift"]) for f in stats.datasets[0].features)
    summary = [
        ("data_uri", result["data_uri"]),
        ("format", result["format"]),
        ("examples", result["example_count"]),
        ("features", result["feature_count"]),
        ("schema", result["schema_uri"] or "inferred in memory"),
        ("schema created by this run", result["schema_created"]),
        ("anomalies", result["anomaly_count"]),
    ]
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Data validation report</title>'
        f"<style>{_CSS}</style></head><body><h1>Data validation report</h1><table>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary)
        + "</table><h2>Anomalies</h2><table><tr><th>feature</th><th>kind</th><th>severity</th>"
        + f"<th>description</th></tr>{_anomaly_rows(result)}</table><h2>Features</h2><table><tr>"
        + "<th>feature</th><th>type</th><th>count</th><th>missing %</th><th>summary</th><th>drift</th></tr>"
        + f"{features}</table>"
        + (
            f'<h2>Distributions (current vs previous)</h2><div class="plots">{"".join(images)}</div>'
            if images
            else ""
        )
        + "</body></html>"
    )


def write_report(out: Path, result: dict[str, Any], stats: Any, previous: Any | None) -> list[str]:
    """
    Write ``report.html`` and ``plots/*.png`` into ``out``.

    :param out: the (staging) output directory.
    :param result: the step result so far.
    :param stats: statistics of this version.
    :param previous: previous statistics, or None.
    :return: the plot file names (relative to ``out/plots``).
    """
    names, images = _plots(out, stats, previous)
    (out / "report.html").write_text(render_html(result, stats, images), encoding="utf-8")
    log.info("Wrote the report with %d plot(s)", len(names))
    return names
