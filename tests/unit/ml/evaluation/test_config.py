"""EvalConfig parsing and fitting to the candidate/baseline models (TFMA protos only, no pipeline)."""

from __future__ import annotations

import json

import pytest

from airflow_ml_provider.ml.evaluation.config import (
    check_against_frame,
    needed_columns,
    parse_eval_config,
    prepare_eval_config,
)

pytestmark = pytest.mark.unit

RAW = {
    "model_specs": [{"label_key": "churned"}],
    "slicing_specs": [{}, {"feature_keys": ["region"]}],
    "metrics_specs": [
        {
            "metrics": [
                {"class_name": "ExampleCount"},
                {
                    "class_name": "AUC",
                    "threshold": {
                        "value_threshold": {"lower_bound": 0.7},
                        "change_threshold": {"direction": "HIGHER_IS_BETTER", "absolute": -0.01},
                    },
                },
                {"class_name": "Precision", "config": {"thresholds": [0.3]}},
            ],
            "per_slice_thresholds": {
                "recall": {
                    "thresholds": [
                        {
                            "slicing_specs": [{"feature_values": {"region": "north"}}],
                            "threshold": {
                                "change_threshold": {"direction": "HIGHER_IS_BETTER", "relative": 0}
                            },
                        }
                    ]
                }
            },
        }
    ],
}
TEXT = """
model_specs { label_key: "churned" }
slicing_specs {}
slicing_specs { feature_keys: "region" }
metrics_specs {
  metrics { class_name: "ExampleCount" }
  metrics {
    class_name: "AUC"
    threshold {
      value_threshold { lower_bound { value: 0.7 } }
      change_threshold { direction: HIGHER_IS_BETTER absolute { value: -0.01 } }
    }
  }
  metrics { class_name: "Precision" config: '{"thresholds": [0.3]}' }
  per_slice_thresholds {
    key: "recall"
    value {
      thresholds {
        slicing_specs { feature_values { key: "region" value: "north" } }
        threshold { change_threshold { direction: HIGHER_IS_BETTER relative { value: 0 } } }
      }
    }
  }
}
"""


def _prepare(raw=RAW, baseline: str | None = "pred_b", **kwargs):
    return prepare_eval_config(
        parse_eval_config(raw),
        label_key=kwargs.pop("label_key", "label"),
        candidate_column="pred_c",
        baseline_column=baseline,
        **kwargs,
    )


@pytest.mark.parametrize("form", ["dict", "json", "text", "proto"])
def test_parse_eval_config_forms_agree(form):
    expected = parse_eval_config(RAW)
    value = {"dict": RAW, "json": json.dumps(RAW), "text": TEXT, "proto": expected}[form]
    assert parse_eval_config(value) == expected
    metric = expected.metrics_specs[0].metrics[2]
    assert json.loads(metric.config) == {"thresholds": [0.3]}  # a dict config becomes the JSON string


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ('{"metrics_specs": [', "looks like JSON but does not parse"),
        ("metrics_specs { metrics { clas_name: 'AUC' } }", "not a valid EvalConfig text proto"),
        ({"metric_specs": []}, "not a valid EvalConfig.*metric_specs"),
        ({"slicing_specs": {"feature_keys": "region"}}, "not a valid EvalConfig"),
        (["AUC"], "must be a dict, a JSON string or a text proto, got list"),
        (42, "got int"),
    ],
)
def test_parse_eval_config_errors_name_the_input(value, match):
    with pytest.raises(ValueError, match=match) as err:
        parse_eval_config(value)
    assert str(err.value).startswith("eval_config: ")


def test_prepare_names_the_models_and_reads_the_prediction_columns():
    config = _prepare(example_weight_key="w")
    specs = {spec.name: spec for spec in config.model_specs}
    assert set(specs) == {"candidate", "baseline"}
    assert specs["candidate"].prediction_key == "pred_c" and not specs["candidate"].is_baseline
    assert specs["baseline"].prediction_key == "pred_b" and specs["baseline"].is_baseline
    assert {s.label_key for s in specs.values()} == {"churned"}  # the user's spec wins over label_key
    assert {s.example_weight_key for s in specs.values()} == {"w"}
    auc = config.metrics_specs[0].metrics[1]
    assert auc.threshold.HasField("change_threshold")
    assert needed_columns(config) == ["churned", "pred_c", "w", "pred_b", "region"]


def test_prepare_without_baseline_drops_change_thresholds_only():
    config = _prepare(baseline=None, label_key="label")
    assert len(config.model_specs) == 1
    assert config.model_specs[0].prediction_key == "pred_c"
    assert not config.model_specs[0].is_baseline
    auc = config.metrics_specs[0].metrics[1]
    assert not auc.threshold.HasField("change_threshold")
    assert auc.threshold.value_threshold.lower_bound.value == 0.7
    per_slice = config.metrics_specs[0].per_slice_thresholds["recall"].thresholds[0]
    assert not per_slice.threshold.HasField("change_threshold")


def test_prepare_defaults_label_and_overall_slice():
    raw = {"metrics_specs": [{"metrics": [{"class_name": "MeanSquaredError"}]}]}
    config = _prepare(raw, label_key="y")
    assert {s.label_key for s in config.model_specs} == {"y"}
    assert len(config.slicing_specs) == 1 and config.slicing_specs[0].ByteSize() == 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"class_name": "AUCC"}, r"unknown metric class_name 'AUCC'.*Did you mean AUC"),
        ({"class_name": "auc"}, r"unknown metric class_name 'auc'.*Did you mean AUC"),
        ({"class_name": "FalsePositiveRate"}, r"unknown metric class_name 'FalsePositiveRate'"),
        ({"class_name": "Zzzz"}, r"Common ones: ExampleCount, WeightedExampleCount, AUC"),
        ({"class_name": "MyMetric", "module": "no_such_module_xyz"}, "does not import"),
        ({"class_name": "NoSuchThing", "module": "json"}, "is not defined in module 'json'"),
        ({"class_name": "AUC", "config": {"num_thresholds": 1}}, "TFMA cannot build the metrics"),
        (
            {"class_name": "AUC", "threshold": {"change_threshold": {"absolute": 0.1}}},
            "change_threshold of metric 'auc' has no direction",
        ),
    ],
)
def test_prepare_rejects_metric_mistakes(change, match):
    raw = {"metrics_specs": [{"metrics": [{"class_name": "ExampleCount"}, change]}]}
    with pytest.raises(ValueError, match=match):
        _prepare(raw)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"model_specs": [{}, {}], "metrics_specs": [{"metrics": [{"class_name": "AUC"}]}]}, "2 model_specs"),
        ({"slicing_specs": [{}]}, "no metrics_specs"),
        (
            {
                "metrics_specs": [
                    {
                        "metrics": [{"class_name": "AUC"}],
                        "per_slice_thresholds": {"auc": {"thresholds": [{"threshold": {}}]}},
                    }
                ]
            },
            "slicing_specs must be set on per_slice_thresholds",
        ),
    ],
)
def test_prepare_rejects_config_mistakes(raw, match):
    with pytest.raises(ValueError, match=match):
        _prepare(raw)


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        (["pred_c", "pred_b", "region", "w"], "label_key 'churned' is not a column"),
        (["churned", "pred_c", "pred_b", "region"], "example_weight_key 'w' is not a column"),
        (["churned", "pred_c", "pred_b", "w"], "slicing_specs name feature 'region'"),
    ],
)
def test_check_against_frame_names_the_missing_column(columns, match):
    config = _prepare(example_weight_key="w")
    with pytest.raises(ValueError, match=match) as err:
        check_against_frame(config, columns)
    assert "columns: " in str(err.value)


def test_check_against_frame_accepts_complete_data():
    check_against_frame(_prepare(example_weight_key="w"), ["churned", "pred_c", "pred_b", "region", "w", "x"])
