"""DataValidationOperator: argument checks and the failure it raises (no TFDV run here)."""

from __future__ import annotations

import pytest

from airflow_ml_provider.exceptions import DataValidationFailed
from airflow_ml_provider.operators.validation import DataValidationOperator, SchemaInferenceOperator

pytestmark = pytest.mark.unit


def test_template_fields_cover_the_inputs():
    fields = set(DataValidationOperator.template_fields)
    assert {"data_uri", "schema_uri", "previous_statistics_uri", "serving_statistics_uri", "drift"} <= fields
    assert {"registered_model_name", "baseline"} <= fields
    assert {"data_uri", "schema_uri"} <= set(SchemaInferenceOperator.template_fields)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data_uri": "/d", "on_anomaly": "explode"}, "on_anomaly='explode' is not one of fail, skip, warn"),
        ({"data_uri": ""}, "data_uri is empty"),
        ({"data_uri": "/d", "runner": "cluster"}, "runner='cluster' is not one of"),
        (
            {"data_uri": "/d", "data_role": "production"},
            "data_role='production' is not one of training, serving",
        ),
        (
            {"data_uri": "/d", "baseline": "champion"},
            "baseline='champion' and registered_model_name=None: give both",
        ),
        ({"data_uri": "/d", "registered_model_name": "churn"}, "give both"),
        (
            {
                "data_uri": "/d",
                "registered_model_name": "churn",
                "baseline": "champion",
                "previous_statistics_uri": "/p",
            },
            "previous_statistics_uri and baseline='champion' are both the drift baseline",
        ),
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


def test_serving_data_may_take_the_champion_as_the_training_side_next_to_previous_statistics():
    operator = DataValidationOperator(
        task_id="v",
        data_uri="/serving/v2",
        registered_model_name="churn",
        baseline="champion",
        data_role="serving",
        previous_statistics_uri="/serving/v1/statistics.pb",  # drift of serving data: allowed
    )
    operator._check_arguments()
