"""Airflow itself finds the provider: the real `airflow providers` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def _airflow(*args: str) -> list[dict]:
    """Run an `airflow providers ...` command with --output json; return the parsed rows."""
    result = subprocess.run(
        [AIRFLOW, *args, "--output", "json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Airflow may log a line before the JSON document; the document is the line that parses.
    for line in result.stdout.splitlines():
        if line.startswith("[{") or line == "[]":
            return json.loads(line)
    raise AssertionError(f"no JSON rows in: {result.stdout[-2000:]}")


def test_providers_list_shows_the_package():
    rows = _airflow("providers", "list")
    ours = [row for row in rows if row["package_name"] == "airflow-ml-provider"]
    assert ours, [row["package_name"] for row in rows]
    assert ours[0]["version"] == "0.1.0"


def test_providers_hooks_shows_the_connection_type():
    rows = _airflow("providers", "hooks")
    ours = [row for row in rows if row["connection_type"] == "mlflow"]
    assert ours, rows
    assert ours[0]["class"] == "airflow_ml_provider.hooks.mlflow.MlflowHook"
    assert ours[0]["package_name"] == "airflow-ml-provider"
    assert ours[0]["hook_name"] == "MLflow"


def test_providers_links_and_widgets():
    links = json.dumps(_airflow("providers", "links"))
    assert "airflow_ml_provider.links.mlflow.MlflowRunLink" in links
    widgets = _airflow("providers", "widgets")
    names = {
        row["connection_parameter_name"] for row in widgets if row["package_name"] == "airflow-ml-provider"
    }
    assert {"extra__mlflow__registry_uri", "extra__mlflow__ui_url", "extra__mlflow__insecure_tls"} <= names
    assert {"field_behaviours": "mlflow"} in _airflow("providers", "behaviours")


def test_connection_form_is_relabelled_for_humans():
    from airflow.providers_manager import ProvidersManager

    behaviour = ProvidersManager().field_behaviours["mlflow"]
    assert behaviour["relabeling"]["host"] == "Tracking URI"
    assert "extra" in behaviour["hidden_fields"]


def test_plugins_lists_the_dataset_version_listeners():
    """Loaded from the airflow.plugins entry point, so every component (triggerer, scheduler) has it."""
    rows = _airflow("plugins")
    ours = [row for row in rows if row["name"] == "airflow_ml_provider_dataset_versions"]
    assert ours, [row["name"] for row in rows]
    assert "DatasetVersionListener" in str(ours[0].get("listeners"))
