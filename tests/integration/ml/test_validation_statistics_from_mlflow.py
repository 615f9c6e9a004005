"""validate_data reads an earlier run's statistics from MLflow (``runs:/``) itself, as a step in a pod must."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_ml_provider.ml.datagen import generate_dataset
from airflow_ml_provider.ml.validation import validate_data

pytestmark = pytest.mark.integration


def test_previous_statistics_come_from_an_mlflow_run(
    tmp_path: Path, mlflow_server, mlflow_client, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    generate_dataset(
        {
            "root": str(tmp_path / "data"),
            "versions": 2,
            "rows": 500,
            "knobs_per_version": {"2": {"drift": 1.0}},
        }
    )
    schema = str(tmp_path / "schema.pbtxt")
    first = validate_data(
        {
            "data_uri": str(tmp_path / "data" / "version=0001"),
            "output_dir": str(tmp_path / "out1"),
            "schema_uri": schema,
        }
    )
    experiment = mlflow_client.create_experiment(f"stats-{tmp_path.name}")
    run_id = mlflow_client.create_run(experiment).info.run_id
    mlflow_client.log_artifact(run_id, first["artifacts"]["statistics"], "validation")

    second = validate_data(
        {
            "data_uri": str(tmp_path / "data" / "version=0002"),
            "output_dir": str(tmp_path / "out2"),
            "schema_uri": schema,
            "previous_statistics_uri": f"runs:/{run_id}/validation/statistics.pb",
            "drift": {"numeric_jsd": 0.05},
        }
    )
    assert {a["kind"] for a in second["anomalies"]} & {"drift", "DRIFT"} or second["drift"], second

    # A version's baseline schema in MLflow (runs:/, as a step in a pod gets it) is read, not bootstrapped.
    mlflow_client.log_artifact(run_id, first["artifacts"]["schema"], "validation")
    from_mlflow = validate_data(
        {
            "data_uri": str(tmp_path / "data" / "version=0002"),
            "output_dir": str(tmp_path / "out-schema"),
            "schema_uri": f"runs:/{run_id}/validation/schema.pbtxt",
        }
    )
    assert from_mlflow["schema_created"] is False and from_mlflow["anomalies"] == []

    with pytest.raises(
        ValueError, match=r"spec key 'previous_statistics_uri': cannot read 'runs:/.*/nothing.pb' from MLflow"
    ):
        validate_data(
            {
                "data_uri": str(tmp_path / "data" / "version=0002"),
                "output_dir": str(tmp_path / "out3"),
                "schema_uri": schema,
                "previous_statistics_uri": f"runs:/{run_id}/nothing.pb",
            }
        )
