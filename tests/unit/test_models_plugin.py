"""
The Models page without servers: its place in the Airflow UI, the charts' geometry, and the
escaping of everything the page shows. Its MLflow reads and access rule:
tests/integration/test_models_page.py; on a real api-server and in a browser:
tests/integration/test_lineage_ui.py.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from airflow_ml_provider.plugins.lineage import MLLineagePlugin
from airflow_ml_provider.plugins.models_charts import timeline_chart, trend_chart

pytestmark = pytest.mark.unit

HOSTILE = "<script>alert(1)</script>"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def test_the_models_page_is_in_the_navigation_bar_and_mounted_at_ml_models():
    [nav] = [v for v in MLLineagePlugin.external_views if v["destination"] == "nav"]
    assert nav["href"] == "/ml-models/models" and nav["url_route"] == "ml-models"
    assert nav["icon"] == "/ml-models/icon.svg" and nav["nav_top_level"] is True
    assert {a["url_prefix"] for a in MLLineagePlugin.fastapi_apps} == {"/ml-lineage", "/ml-models"}


def test_loading_the_plugin_imports_none_of_the_models_app():
    code = (
        "import sys; import airflow_ml_provider.plugins.lineage; "
        "print([m for m in sys.modules if m.startswith('airflow_ml_provider.plugins.models')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_trend_chart_draws_higher_values_higher_and_labels_every_version():
    chart = trend_chart(
        "auc", [("1", 0.8, "was_champion"), ("2", 0.9, "rolled_back"), ("3", 0.85, "champion")]
    )
    ys = [p["y"] for p in chart["points"]]
    assert ys[1] < ys[2] < ys[0]  # SVG y grows downwards
    xs = [p["x"] for p in chart["points"]]
    assert xs == sorted(xs) and xs[0] == chart["plot"]["left"] and xs[-1] == chart["plot"]["right"]
    assert [label["label"] for label in chart["x_labels"]] == ["v1", "v2", "v3"]
    plot = chart["plot"]
    assert (
        all(plot["top"] <= t["y"] <= plot["bottom"] for t in chart["y_ticks"]) and len(chart["y_ticks"]) >= 3
    )
    assert chart["line"].count(",") == 3 and chart["latest"] == 0.85


@pytest.mark.parametrize("values", [[0.5], [0.5, 0.5], [0.0, 0.0], [-3.0, 1e6]])
def test_a_trend_chart_of_one_point_or_flat_values_stays_inside_the_plot(values):
    chart = trend_chart("m", [(str(i + 1), v, "candidate") for i, v in enumerate(values)])
    plot = chart["plot"]
    assert all(plot["top"] <= p["y"] <= plot["bottom"] for p in chart["points"])
    assert all(plot["left"] <= p["x"] <= plot["right"] for p in chart["points"])


def test_many_versions_get_at_most_a_dozen_labels_and_the_last_one():
    chart = trend_chart("m", [(str(i), float(i), "candidate") for i in range(1, 101)])
    labels = [label["label"] for label in chart["x_labels"]]
    assert len(labels) <= 13 and labels[0] == "v1" and labels[-1] == "v100"


def test_the_timeline_has_a_lane_per_version_a_bar_per_period_and_a_marker_per_rollback():
    periods = [
        {"version": "1", "start": T0, "end": T0 + timedelta(hours=1), "kind": "promotion"},
        {
            "version": "2",
            "start": T0 + timedelta(hours=1),
            "end": T0 + timedelta(hours=2),
            "kind": "promotion",
        },
        {"version": "1", "start": T0 + timedelta(hours=2), "end": None, "kind": "rollback"},
    ]
    moves = [
        {
            "at": p["start"],
            "kind": p["kind"],
            "from_version": None,
            "to_version": p["version"],
            "reason": "why",
        }
        for p in periods
    ]
    chart = timeline_chart(periods, moves, now=T0 + timedelta(hours=4))
    assert [lane["version"] for lane in chart["lanes"]] == ["2", "1"]
    first, second, third = chart["bars"]
    assert first["x"] == chart["plot"]["left"] and third["current"] and not first["current"]
    assert second["x"] == pytest.approx(first["x"] + first["width"], abs=0.2)
    assert third["x"] + third["width"] == pytest.approx(chart["plot"]["right"], abs=0.2)  # until now
    [marker] = chart["markers"]
    assert marker["kind"] == "rollback" and marker["x"] == third["x"] and "why" in marker["title"]
    assert len(chart["x_ticks"]) == 5


def _model(**over: Any) -> dict[str, Any]:
    """A model as models_data.model_detail returns it, with every text field hostile."""
    at = T0
    move = {
        "epoch": 0,
        "at": at,
        "at_text": HOSTILE,
        "kind": "rollback",
        "from_version": HOSTILE,
        "to_version": "1",
        "reason": HOSTILE,
        "actor": HOSTILE,
        "dag_id": HOSTILE,
        "run_id": HOSTILE,
        "task_id": HOSTILE,
        "dataset_version": HOSTILE,
        "evaluation_run_id": HOSTILE,
        "lineage_url": "/dags/%3Cscript%3E/runs/x/plugin/ml-lineage",
    }
    row = {
        "version": "1",
        "created_at": HOSTILE,
        "provider": True,
        "dag_id": HOSTILE,
        "run_id": HOSTILE,
        "dataset_version": HOSTILE,
        "metrics": {HOSTILE: 0.5},
        "promoted_at": HOSTILE,
        "replaced_version": HOSTILE,
        "evaluated_against": HOSTILE,
        "rolled_back_at": HOSTILE,
        "refused": HOSTILE,
        "aliases": ["champion", HOSTILE],
        "blessing": {"blessed": True, "recorded": True, "infra_blessed": False},
        "freshness": {"promoted": 42.0},
        "mlflow_url": f"javascript:{HOSTILE}",
        "champion_seconds": 3600.0,
        "lineage_url": "/dags/x/runs/y/plugin/ml-lineage",
    }
    period = {"version": "1", "start": at, "end": None, "kind": "rollback"}
    return {
        "name": HOSTILE,
        "alias": "champion",
        "champion": "1",
        "champion_row": row,
        "aliases": {"champion": "1"},
        "mlflow_url": f"javascript:{HOSTILE}",
        "versions": [row],
        "versions_truncated": False,
        "history": [move],
        "rollbacks": [move],
        "timeline": timeline_chart([period], [{**move, "reason": HOSTILE}], now=at + timedelta(hours=1)),
        "trends": [trend_chart(HOSTILE, [("1", 0.5, "champion")])],
        **over,
    }


def test_every_field_the_model_page_shows_is_escaped():
    from airflow_ml_provider.plugins.ui_common import OPEN_LINKS_SCRIPT, render

    html = render("ml_model.html", {"model": _model(), "name": HOSTILE, "airflow_base": ""})
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script") == 1  # the page's own link script only
    assert "javascript:" not in html.replace(OPEN_LINKS_SCRIPT, "")  # a link that is not http(s) is dropped
    assert "<svg" in html and "<circle" in html and "<rect" in html


def test_every_field_the_models_list_shows_is_escaped():
    from airflow_ml_provider.plugins.ui_common import render

    model = {
        "name": HOSTILE,
        "url": "models/%3Cscript%3E",
        "versions": 2,
        "latest": "2",
        "champion": HOSTILE,
        "dataset_version": HOSTILE,
        "metrics": {HOSTILE: 1.0},
        "since": HOSTILE,
        "last_move": HOSTILE,
        "rollbacks": 1,
        "dag_ids": [HOSTILE],
        "mlflow_url": None,
    }
    html = render("ml_models.html", {"listing": {"models": [model], "mlflow_url": None}, "airflow_base": ""})
    assert HOSTILE not in html and "&lt;script&gt;" in html


@pytest.mark.parametrize(
    ("template", "context"),
    [
        ("ml_models.html", {"listing": {"models": [], "mlflow_url": None}}),
        ("ml_models.html", {"error": HOSTILE}),
        ("ml_model.html", {"error": HOSTILE, "name": HOSTILE}),
        (
            "ml_model.html",
            {
                "model": _model(
                    champion=None, champion_row=None, history=[], rollbacks=[], timeline=None, trends=[]
                ),
                "name": "m",
            },
        ),
    ],
)
def test_empty_and_error_states_render(template, context):
    from airflow_ml_provider.plugins.ui_common import render

    html = render(template, {**context, "airflow_base": ""})
    assert HOSTILE not in html and "</html>" in html
