"""
The ML lineage plugin without servers: how Airflow finds it, what it costs every component that
loads it, the rules of what it serves, and the escaping of everything the page shows.

Its routes, access control and MLflow reads run against a real api-server and mlflow server in
tests/integration/test_lineage_ui.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_ml_provider.get_provider_info import get_provider_info
from airflow_ml_provider.plugins import lineage_data
from airflow_ml_provider.plugins.lineage import MLLineagePlugin
from airflow_ml_provider.plugins.lineage_data import feature_name

pytestmark = pytest.mark.unit

HOSTILE = "<script>alert(1)</script>"


def test_airflow_finds_the_plugin_by_entry_point_and_in_provider_info():
    (ep,) = [ep for ep in entry_points(group="airflow.plugins") if ep.name == "airflow_ml_provider_lineage"]
    assert ep.load() is MLLineagePlugin
    (listed,) = get_provider_info()["plugins"]
    assert listed == {
        "name": MLLineagePlugin.name,
        "plugin-class": "airflow_ml_provider.plugins.lineage.MLLineagePlugin",
    }


def test_views_are_on_the_dag_run_and_task_instance_pages():
    views = {v["destination"]: v for v in MLLineagePlugin.external_views}
    assert set(views) == {"dag_run", "task_instance", "nav"}  # nav: the Models page
    assert views["dag_run"]["href"] == "/ml-lineage/lineage?dag_id={DAG_ID}&run_id={RUN_ID}"
    assert views["task_instance"]["href"].endswith("&task_id={TASK_ID}")
    assert len({v["url_route"] for v in views.values()}) == 3
    assert MLLineagePlugin.fastapi_apps[0]["url_prefix"] == "/ml-lineage"


def test_loading_the_plugin_imports_neither_fastapi_nor_mlflow():
    """Every Airflow component (and task process) loads plugins: the app is built on first request."""
    code = (
        "import sys, json; import airflow_ml_provider.plugins.lineage as p; "
        "print(json.dumps(sorted(m for m in ('fastapi', 'mlflow', "
        "'airflow_ml_provider.plugins.lineage_app') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize(
    ("serialized", "name"),
    [
        ("income", "income"),
        ("'<img src=x onerror=alert(1)>'", "<img src=x onerror=alert(1)>"),
        ("'a.b'", "a.b"),
        ("'a.b'.c", "a.b.c"),
        ("'it''s'", "it's"),
        ("parent.child", "parent.child"),
    ],
)
def test_tfdv_feature_paths_read_as_people_write_them(serialized, name):
    assert feature_name(serialized) == name


@pytest.mark.parametrize(
    ("path", "served"),
    [
        ("evaluation/report.html", "text/html; charset=utf-8"),
        ("validation/report.html", "text/html; charset=utf-8"),
        ("tuning/optimization_history.png", "image/png"),
        ("evaluation/metrics.json", "application/json"),
        ("evaluation/../step/spec.json", None),
        ("../evaluation/report.html", None),
        ("evaluation//report.html", None),
        ("step/spec.json", None),  # the step's full spec: not a report
        ("evaluation/eval_config.pbtxt", None),
        ("report.html", None),
        ("model/MLmodel", None),
    ],
)
def test_only_reports_and_plots_of_the_steps_are_served(path, served):
    assert lineage_data._served_media_type(path) == served


def _run(tags: dict[str, str]) -> Any:
    return SimpleNamespace(data=SimpleNamespace(tags=tags))


def test_stages_come_from_the_step_tag_and_tuning_workers_are_left_out():
    assert lineage_data._stage_of(_run({"airflow_ml.step": "validate_data"})) == "validation"
    assert (
        lineage_data._stage_of(_run({"airflow_ml.step": "tune", "airflow_ml.tuning_role": "study"}))
        == "tuning"
    )
    assert (
        lineage_data._stage_of(_run({"airflow_ml.step": "tune", "airflow_ml.tuning_role": "worker"})) is None
    )
    assert lineage_data._stage_of(_run({"airflow_ml.promotion": "promoted"})) == "promotion"
    assert lineage_data._stage_of(_run({"airflow_ml.step": "my_own_step"})) is None


def test_dataset_versions_from_the_parent_runs_tags():
    tags = {
        "dataset.churn.version": "0003",
        "dataset.churn.uri": "s3://lake/churn/version=0003",
        "dataset.version": "7",
        "airflow.run_id": "x",
    }
    assert lineage_data._dataset_versions(tags) == [
        {"asset": "", "version": "7"},
        {"asset": "churn", "version": "0003", "uri": "s3://lake/churn/version=0003"},
    ]


def test_freshness_figures_in_stage_order_with_the_decision():
    parent = SimpleNamespace(
        data=SimpleNamespace(
            metrics={
                "freshness.version_to_decided_seconds": 95.0,
                "freshness.version_to_run_started_seconds": 1.5,
                "freshness.version_to_trained_seconds": 60.25,
                "rows": 3.0,
            },
            tags={"freshness.decision": "not promoted: the candidate is not blessed"},
        )
    )
    assert lineage_data._freshness(parent) == {
        "stages": [
            {"stage": "run_started", "label": "DAG run started", "seconds": 1.5},
            {"stage": "trained", "label": "model trained", "seconds": 60.25},
            {"stage": "decided", "label": "decision made", "seconds": 95.0},
        ],
        "decision": "not promoted: the candidate is not blessed",
    }
    assert lineage_data._freshness(SimpleNamespace(data=SimpleNamespace(metrics={}, tags={}))) is None


def test_a_cache_hit_shows_the_records_of_the_run_it_reused():
    source = _run({"airflow_ml.step": "validate_data"})
    hit = SimpleNamespace(
        info=SimpleNamespace(run_id="hit"),
        data=SimpleNamespace(tags={"airflow_ml.cache_hit": "true", "airflow_ml.cache_source_run_id": "src"}),
    )
    hook = SimpleNamespace(client=SimpleNamespace(get_run=lambda run_id: source if run_id == "src" else None))
    assert lineage_data._details_run(hook, hit) is source
    ran = _run({"airflow_ml.cache_hit": "false"})
    assert lineage_data._details_run(hook, ran) is ran


def _stage(stage: str, status: str = "FINISHED", **details: Any) -> dict[str, Any]:
    return {"stage": stage, "status": status, "details": details}


@pytest.mark.parametrize(
    ("stage", "status", "details", "ok"),
    [
        ("validation", "FINISHED", {"anomaly_count": 0}, True),
        ("validation", "FINISHED", {"anomaly_count": 2}, False),
        ("evaluation", "FINISHED", {"blessed": False}, False),
        ("promotion", "FINISHED", {"outcome": "refused"}, False),
        ("promotion", "FINISHED", {"outcome": "promoted"}, True),
        ("training", "FAILED", {}, False),
        ("training", "RUNNING", {}, None),
    ],
)
def test_whether_a_stage_let_the_loop_go_on(stage, status, details, ok):
    assert lineage_data._ok(stage, _stage(stage, status, **details)) is ok


def test_blessing_needs_the_model_and_the_serving_check():
    model_ok = _stage("evaluation", blessed=True, failed_thresholds=[])
    assert lineage_data._blessing([model_ok])["blessed"] is True
    assert lineage_data._blessing([model_ok, _stage("infra_validation", blessed=False)])["blessed"] is False
    missed = _stage("evaluation", blessed=False, failed_thresholds=["Overall: auc = 0.5; required >= 0.6"])
    assert lineage_data._blessing([missed]) == {
        "blessed": False,
        "model_blessed": False,
        "infra_blessed": None,
        "failed_thresholds": ["Overall: auc = 0.5; required >= 0.6"],
    }
    assert lineage_data._blessing([_stage("training")]) is None


def test_every_field_the_page_shows_is_escaped():
    """Feature names, anomaly texts, slice names, model names, params: data, never markup."""
    from airflow_ml_provider.plugins.lineage_app import OPEN_LINKS_SCRIPT, _environment

    ref = {"mlflow_run_id": "abc", "path": "validation/report.html"}
    common = {"status": "FINISHED", "ok": False, "task_id": HOSTILE, "map_index": -1, "try_number": "1"}
    common["run_url"] = f"javascript:{HOSTILE}"
    common.update(cache_hit=True, cache_source_run_id=HOSTILE, cache_source_url=f"javascript:{HOSTILE}")
    lineage = {
        "empty": False,
        "parent": None,
        "experiment_url": None,
        "dataset": [{"asset": HOSTILE, "version": HOSTILE, "uri": HOSTILE}],
        "freshness": {
            "stages": [{"stage": "trained", "label": HOSTILE, "seconds": 1.0}],
            "decision": HOSTILE,
        },
        "blessing": {
            "blessed": False,
            "model_blessed": False,
            "infra_blessed": None,
            "failed_thresholds": [],
        },
        "stages": [
            {
                **common,
                "stage": "validation",
                "title": "Data validation",
                "details": {
                    "example_count": 1,
                    "feature_count": 1,
                    "anomaly_count": 1,
                    "anomalies": [{"feature": HOSTILE, "kind": HOSTILE, "description": HOSTILE}],
                    "anomalies_truncated": False,
                    "drift": [{"feature": HOSTILE, "kind": HOSTILE, "value": 0.5, "threshold": 0.1}],
                    "report": ref,
                },
            },
            {
                **common,
                "stage": "evaluation",
                "title": "Evaluation",
                "details": {
                    "blessed": False,
                    "candidate_model_uri": HOSTILE,
                    "baseline": {"model_name": HOSTILE, "alias": HOSTILE, "version": HOSTILE},
                    "registered_model_name": HOSTILE,
                    "failed_thresholds": [HOSTILE],
                    "thresholds": [{"metric": HOSTILE, "slice": HOSTILE, "kind": "value", "bound": HOSTILE}],
                    "slices": [
                        {
                            "slice": HOSTILE,
                            "metrics": [
                                {"metric": HOSTILE, "candidate": 1.0, "baseline": 0.5, "failed": True}
                            ],
                        }
                    ],
                    "slices_truncated": False,
                    "example_count": 1,
                    "engine": HOSTILE,
                    "report": None,
                },
            },
            {
                **common,
                "stage": "promotion",
                "title": "Promotion",
                "details": {
                    "outcome": HOSTILE,
                    "refused": HOSTILE,
                    "model_name": HOSTILE,
                    "alias": HOSTILE,
                    "champion_before": HOSTILE,
                    "champion_after": None,
                    "champion_now": HOSTILE,
                    "version_url": None,
                },
            },
        ],
    }
    html = (
        _environment()
        .get_template("ml_lineage.html")
        .render(
            lineage=lineage, dag_id=HOSTILE, run_id=HOSTILE, task_id=None, open_links_script=OPEN_LINKS_SCRIPT
        )
    )
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script") == 1  # the page's own link script only
    assert "javascript:" not in html.replace(
        OPEN_LINKS_SCRIPT, ""
    )  # a run URL that is not http(s) is dropped


@pytest.mark.parametrize(
    ("uri", "root", "inside"),
    [
        ("file:///shared/mlflow/1/abc/artifacts", "/shared/mlflow", True),
        ("/shared/mlflow/1/abc/artifacts", "file:///shared/mlflow/", True),
        ("file:///shared/mlflow-old/1", "/shared/mlflow", False),
        ("file:///shared/mlflow/../etc", "/shared/mlflow", False),
        ("file://otherhost/shared/mlflow/1", "/shared/mlflow", False),
        ("s3://bucket/mlflow/1/abc", "s3://bucket/mlflow", True),
        ("s3://bucket/mlflow2/1", "s3://bucket/mlflow", False),
        ("s3://bucket/mlflow/../other", "s3://bucket/mlflow", False),
        ("http://169.254.169.254/latest", "/shared/mlflow", False),
    ],
)
def test_an_allowed_artifact_root_takes_whole_path_segments(uri, root, inside):
    from airflow_ml_provider.plugins.lineage_artifacts import is_under

    assert is_under(uri, root) is inside
