"""The evaluation report: one offline HTML file (inline CSS, plots as base64 PNG) and PNG plots.

The verdict and the failed thresholds come first; then every slice's metrics with candidate,
baseline and difference; one bar chart per metric compares the candidate with the baseline over
the largest slices. An evaluation on several datasets (the new version and a holdout) has one
section of these per dataset, each with its own verdict, under the overall one.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from airflow_ml_provider.ml.evaluation.results import BASELINE, CANDIDATE, OVERALL, EvalOutput
from airflow_ml_provider.ml.validation.report import _CSS, _e

MAX_SLICES_PER_PLOT = 30
MAX_PLOTS = 12
COUNT_METRICS = ("example_count", "weighted_example_count")
_EXTRA_CSS = """
.verdict{font-size:20px;font-weight:bold;padding:6px 12px;display:inline-block;color:#fff}
.blessed{background:#2a7a2a}.not-blessed{background:#b00}
.pos{color:#2a7a2a}.neg{color:#b00}.none{color:#888}
"""


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.6g}"


def _ordered_slices(output: EvalOutput) -> list[str]:
    def size(label: str) -> float:
        return output.metrics[label].get(CANDIDATE, {}).get("example_count", 0.0)

    others = sorted((s for s in output.metrics if s != OVERALL), key=lambda s: (-size(s), s))
    return ([OVERALL] if OVERALL in output.metrics else []) + others


def _plot_metric(output: EvalOutput, metric: str, slices: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib import pyplot as plt

    candidate = [output.metrics[s].get(CANDIDATE, {}).get(metric, np.nan) for s in slices]
    baseline = [output.metrics[s].get(BASELINE, {}).get(metric, np.nan) for s in slices]
    positions = np.arange(len(slices))
    height = 0.4 if output.has_baseline else 0.8
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.32 * len(slices)))
    try:
        ax.barh(positions, candidate, height=height, label="candidate", color="#3b6ea8")
        if output.has_baseline:
            ax.barh(positions + height, baseline, height=height, label="baseline", color="#b0b0b0")
        for y, value in zip(positions, candidate, strict=True):
            if math.isfinite(value):
                ax.annotate(
                    f"{value:.3g}",
                    (value, y),
                    fontsize=6,
                    va="center",
                    xytext=(2, 0),
                    textcoords="offset points",
                )
        ax.set_yticks(positions + (height / 2 if output.has_baseline else 0))
        ax.set_yticklabels([s[:40] for s in slices], fontsize=7)
        ax.invert_yaxis()
        shown = "" if len(slices) == len(output.metrics) else f" ({len(slices)} largest slices)"
        ax.set_title(f"{metric}{shown}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=80)
    finally:
        plt.close(fig)


def _plots(output: EvalOutput, out_dir: Path) -> dict[str, Path]:
    """One PNG per metric (count metrics left out), at most MAX_PLOTS."""
    metrics: list[str] = []
    for models in output.metrics.values():
        for name in models.get(CANDIDATE, {}):
            if name not in metrics and name not in COUNT_METRICS:
                metrics.append(name)
    slices = _ordered_slices(output)[:MAX_SLICES_PER_PLOT]
    plots: dict[str, Path] = {}
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for metric in metrics[:MAX_PLOTS]:
        path = out_dir / "plots" / (re.sub(r"[^\w.-]", "_", metric) + ".png")
        _plot_metric(output, metric, slices, path)
        plots[metric] = path
    return plots


def _failure_rows(output: EvalOutput) -> str:
    rows = [
        f"<tr><td>{_e(f.slice)}</td><td>{_e(f.metric)}</td><td>{_e(f.kind)}</td><td>{_fmt(f.value)}</td>"
        f"<td>{_fmt(f.baseline_value)}</td><td>{_e(f.bound)}</td></tr>"
        for f in output.failures
    ]
    if not rows:
        return "<p>Every threshold is met.</p>"
    head = "<tr><th>slice</th><th>metric</th><th>threshold</th><th>candidate</th><th>baseline</th><th>required</th></tr>"
    return f"<h2>Failed thresholds</h2><table>{head}{''.join(rows)}</table>"


def _metric_rows(output: EvalOutput) -> str:
    head = "<tr><th>slice</th><th>metric</th><th>candidate</th><th>baseline</th><th>difference</th></tr>"
    rows = []
    for label in _ordered_slices(output):
        models = output.metrics[label]
        base = models.get(BASELINE, {})
        for metric, value in models.get(CANDIDATE, {}).items():
            if metric in base:
                diff = value - base[metric]
                css = "pos" if diff > 0 else "neg" if diff < 0 else ""
                cells = f"<td>{_fmt(base[metric])}</td><td class='{css}'>{diff:+.4g}</td>"
            else:
                note = "no baseline" if not output.has_baseline else "-"
                cells = f"<td class='none'>{note}</td><td class='none'>-</td>"
            rows.append(f"<tr><td>{_e(label)}</td><td>{_e(metric)}</td><td>{_fmt(value)}</td>{cells}</tr>")
    return f"<h2>Metrics per slice</h2><table>{head}{''.join(rows)}</table>"


@dataclass(frozen=True)
class DatasetSection:
    """One evaluated dataset in the report: its name, URI, numbers, and the folder for its plots."""

    name: str  # "data" or "holdout"
    data_uri: str
    output: EvalOutput
    folder: str = ""  # relative to the report's folder


def _body(output: EvalOutput, images: dict[str, bytes]) -> str:
    """The failed thresholds, notes, plots and metrics of one dataset."""
    notes = "".join(f"<li>{_e(n)}</li>" for n in output.notes)
    pictures = "".join(
        f"<img alt='{_e(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
        for name, data in images.items()
    )
    return (
        f"{_failure_rows(output)}{f'<ul>{notes}</ul>' if notes else ''}"
        f"<h2>Candidate against baseline</h2><div class='plots'>{pictures}</div>{_metric_rows(output)}"
    )


def _verdict(blessed: bool) -> str:
    css_class = "blessed" if blessed else "not-blessed"
    return f"<div class='verdict {css_class}'>{'BLESSED' if blessed else 'NOT BLESSED'}</div>"


def _facts(facts: dict[str, str]) -> str:
    return (
        "<table>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts.items())
        + "</table>"
    )


def _output_facts(output: EvalOutput) -> dict[str, str]:
    return {
        "engine": output.engine,
        "examples": str(output.example_count),
        "slices": str(len(output.metrics)),
    }


def render_html(
    sections: Sequence[tuple[DatasetSection, dict[str, bytes]]],
    *,
    title: str,
    candidate_uri: str,
    baseline_uri: str | None,
    blessed: bool,
    context: dict[str, str],
) -> str:
    """
    The report as one HTML document: the verdict, then each dataset (with one dataset, its
    numbers directly under the verdict; with several, a section each, with its own verdict).
    """
    facts = {
        "candidate": candidate_uri,
        "baseline": baseline_uri or "none (first model: value thresholds only)",
    }
    if len(sections) == 1:
        facts.update(_output_facts(sections[0][0].output))
        body = _body(sections[0][0].output, sections[0][1])
    else:
        body = "".join(
            f"<h2>On the {_e(section.name)}: {_e(section.data_uri)}</h2>{_verdict(section.output.validation_ok)}"
            f"{_facts(_output_facts(section.output))}{_body(section.output, images)}"
            for section, images in sections
        )
    facts.update(context)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{_CSS}{_EXTRA_CSS}</style></head><body><h1>{_e(title)}</h1>"
        f"{_verdict(blessed)}{_facts(facts)}{body}</body></html>"
    )


def write_report(
    sections: Sequence[DatasetSection],
    out_dir: str,
    *,
    title: str,
    candidate_uri: str,
    baseline_uri: str | None,
    blessed: bool,
    context: dict[str, str] | None = None,
) -> dict[str, str]:
    """
    Write ``report.html`` and each dataset's ``plots/<metric>.png`` into ``out_dir`` (a dataset's
    plots under its ``folder``); return the relative paths.

    :param sections: the evaluated datasets, in order (one for an evaluation on one dataset).
    :param out_dir: the (staging) directory.
    :param title: heading of the report.
    :param candidate_uri: the candidate model.
    :param baseline_uri: the baseline model, or None on a first run.
    :param blessed: the verdict (on every dataset).
    :param context: extra facts shown in the header (DAG run, dataset version ...).
    """
    out = Path(out_dir)
    written = {"report": "report.html"}
    rendered = []
    for section in sections:
        plots = _plots(section.output, out / section.folder)
        rendered.append((section, {name: path.read_bytes() for name, path in plots.items()}))
        prefix = f"{section.name}:" if section.folder else ""
        written.update({f"plot:{prefix}{name}": str(path.relative_to(out)) for name, path in plots.items()})
    page = render_html(
        rendered,
        title=title,
        candidate_uri=candidate_uri,
        baseline_uri=baseline_uri,
        blessed=blessed,
        context=context or {},
    )
    (out / "report.html").write_text(page, encoding="utf-8")
    return written
