"""DataValidationOperator: argument checks and the failure it raises (no TFDV run here)."""

from __future__ import annotations

import pytest

from airflow_ml_provider.exceptions import DataValidationFailed
from airflow_ml_provider.operators.validation import DataValidationOperator, SchemaInferenceOperator

pytestmark = pytest.mark.unit


def test_template_fields_cover_the_inputs():
    fields = set(DataValidationOperator.template_fields)
    assert {"data_uri", "schema_uri", "previous_statistics_uri", "serving_statistics_uri", "drift"} <= fields
    assert {"data_uri", "schema_uri"} <= set(SchemaInferenceOperator.template_fields)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data_uri": "/d", "on_anomaly": "explode"}, "on_anomaly='explode' is not one of fail, skip, warn"),
        ({"data_uri": ""}, "data_uri is empty"),
        ({"data_uri": "/d", "runner": "cluster"}, "runner='cluster' is not one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    operator = DataValidationOperator(task_id="v", **kwargs)
    with pytest.raises(ValueError, match=message):
        operator._check_arguments()


def test_failure_lists_each_anomaly_and_the_report():
    anomalies = [
        {
            "feature": "income",
            "kind": "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH",
            "short_description": "High JSD",
        },
        {
            "feature": "region",
            "kind": "ENUM_TYPE_UNEXPECTED_STRING_VALUES",
            "short_description": "Unexpected values",
        },
    ]
    error = DataValidationFailed("/data/v2", anomalies, "runs:/abc/validation/report.html")
    text = str(error)
    assert "Data validation of /data/v2 found 2 anomalies" in text
    assert "income: COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH: High JSD" in text
    assert "region: ENUM_TYPE_UNEXPECTED_STRING_VALUES: Unexpected values" in text
    assert text.endswith("Full report: runs:/abc/validation/report.html")
    assert error.anomalies == anomalies
