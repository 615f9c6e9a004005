"""The fast engine against TFMA's own Beam pipeline: same numbers, same failures, same blessing.

Each Beam run costs about 15-30 s, so the threshold cases are packed into two runs: every case is
its own metric (TFMA metrics take a ``name``), and its bounds are placed between the values the
slices actually have, so that each case passes on some slices and fails on others (or passes or
fails everywhere, on purpose). The comparison is on the full set of (slice, metric, kind) failures
and on every metric value of every slice and model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_ml_provider.ml.evaluation.config import parse_eval_config, prepare_eval_config
from airflow_ml_provider.ml.evaluation.engines import evaluate_frame
from airflow_ml_provider.ml.evaluation.fast_engine import iter_slices, unsupported_reasons
from airflow_ml_provider.ml.evaluation.results import BASELINE, CANDIDATE, OVERALL, EvalOutput

pytestmark = pytest.mark.slow

ROWS = 2000
SLICING = [
    {},
    {"feature_keys": ["region"]},
    {"feature_keys": ["region", "tier"]},
    {"feature_values": {"tier": "1"}},
]
PLAIN_METRICS = [
    "ExampleCount",
    "WeightedExampleCount",
    "AUC",
    "AUCPrecisionRecall",
    "BinaryAccuracy",
    "Precision",
    "Recall",
    "F1Score",
    "FallOut",
    "Specificity",
    "MeanLabel",
    "MeanPrediction",
    "Calibration",
    "MeanSquaredError",
    "MeanAbsoluteError",
]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Two slicing features, weights, a candidate better than the baseline except in the south."""
    rng = np.random.default_rng(20261124)
    signal = rng.normal(size=ROWS)
    region = rng.choice(["north", "south", "east"], ROWS, p=[0.5, 0.3, 0.2])
    south = region == "south"
    return pd.DataFrame(
        {
            "label": (rng.random(ROWS) < _sigmoid(2 * signal)).astype("int64"),
            "candidate": _sigmoid(2 * signal + rng.normal(scale=np.where(south, 2.0, 0.6))),
            "baseline": _sigmoid(1.5 * signal + rng.normal(scale=1.0, size=ROWS)),
            "weight": rng.uniform(0.5, 2.0, ROWS),
            "region": region,
            "tier": rng.integers(0, 3, ROWS),
            "unused": pd.Timestamp("2026-01-01"),  # other columns are never read
        }
    )


def _prepare(raw: dict[str, Any], baseline: bool, weighted: bool = True) -> Any:
    return prepare_eval_config(
        parse_eval_config(raw),
        label_key="label",
        candidate_column="candidate",
        baseline_column="baseline" if baseline else None,
        example_weight_key="weight" if weighted else None,
    )


def _plain_config(extra: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    metrics = [{"class_name": name} for name in PLAIN_METRICS] + list(extra or [])
    return {"slicing_specs": SLICING, "metrics_specs": [{"metrics": metrics, **spec}]}


def _values(output: EvalOutput, metric: str, model: str = CANDIDATE) -> dict[str, float]:
    return {
        s: models[model][metric] for s, models in output.metrics.items() if metric in models.get(model, {})
    }


def _between(values: list[float]) -> float:
    """A bound in the middle gap of the values: some slices on each side, none close to it."""
    ordered = sorted(set(v for v in values if math.isfinite(v)))
    middle = len(ordered) // 2
    assert ordered[middle] - ordered[middle - 1] > 1e-6, ordered
    return (ordered[middle - 1] + ordered[middle]) / 2


def _diffs(output: EvalOutput, metric: str, relative: bool = False) -> list[float]:
    out = []
    for models in output.metrics.values():
        candidate, baseline = models[CANDIDATE][metric], models[BASELINE][metric]
        out.append((candidate - baseline) / baseline if relative else candidate - baseline)
    return out


def _case(class_name: str, name: str, **threshold: Any) -> dict[str, Any]:
    return {"class_name": class_name, "config": {"name": name}, **threshold}


def _threshold_cases(plain: EvalOutput) -> list[dict[str, Any]]:
    """One metric per case, its bounds derived from the values the slices have."""
    auc, mse = list(_values(plain, "auc").values()), list(_values(plain, "mean_squared_error").values())
    mean_prediction = list(_values(plain, "mean_prediction").values())
    region_recall = [
        v for s, v in _values(plain, "recall").items() if s.startswith("region=") and "," not in s
    ]
    north_recall = plain.metrics["region=north"][CANDIDATE]["recall"]
    higher, lower = "HIGHER_IS_BETTER", "LOWER_IS_BETTER"
    return [
        _case("AUC", "auc_value_passes", threshold={"value_threshold": {"lower_bound": min(auc) - 0.05}}),
        _case("AUC", "auc_value_lower", threshold={"value_threshold": {"lower_bound": _between(auc)}}),
        _case(
            "MeanPrediction",
            "mean_prediction_upper",
            threshold={"value_threshold": {"upper_bound": _between(mean_prediction)}},
        ),
        _case(
            "MeanSquaredError",
            "mse_both_bounds",
            threshold={"value_threshold": {"lower_bound": min(mse) - 1, "upper_bound": _between(mse)}},
        ),
        _case(
            "AUC",
            "auc_change_absolute_higher",
            threshold={"change_threshold": {"direction": higher, "absolute": _between(_diffs(plain, "auc"))}},
        ),
        _case(
            "MeanSquaredError",
            "mse_change_absolute_lower",
            threshold={
                "change_threshold": {
                    "direction": lower,
                    "absolute": _between(_diffs(plain, "mean_squared_error")),
                }
            },
        ),
        _case(
            "BinaryAccuracy",
            "accuracy_change_relative_higher",
            threshold={
                "change_threshold": {
                    "direction": higher,
                    "relative": _between(_diffs(plain, "binary_accuracy", relative=True)),
                }
            },
        ),
        _case(
            "MeanAbsoluteError",
            "mae_change_relative_lower",
            threshold={
                "change_threshold": {
                    "direction": lower,
                    "relative": _between(_diffs(plain, "mean_absolute_error", relative=True)),
                }
            },
        ),
        _case(
            "F1Score",
            "f1_value_and_change",
            threshold={
                "value_threshold": {"lower_bound": _between(list(_values(plain, "f1_score").values()))},
                "change_threshold": {"direction": higher, "absolute": _between(_diffs(plain, "f1_score"))},
            },
        ),
        _case(
            "Recall",
            "recall_per_region",
            per_slice_thresholds=[
                {
                    "slicing_specs": [{"feature_keys": ["region"]}],
                    "threshold": {"value_threshold": {"lower_bound": _between(region_recall)}},
                },
                {
                    "slicing_specs": [{"feature_values": {"region": "north"}}],
                    "threshold": {"value_threshold": {"lower_bound": north_recall + 0.01}},
                },
                {
                    "slicing_specs": [{"feature_values": {"tier": "1"}}],
                    "threshold": {"change_threshold": {"direction": higher, "absolute": 1.0}},
                },
            ],
        ),
        _case(
            "Recall",
            "recall_missing_slice",
            per_slice_thresholds=[
                {
                    "slicing_specs": [{"feature_values": {"region": "nowhere"}}],
                    "threshold": {"value_threshold": {"lower_bound": 0.0}},
                }
            ],
        ),
        # No example scores above 0.999 in some slices: precision is NaN there, and NaN fails.
        {
            "class_name": "Precision",
            "config": {"name": "precision_at_0_999", "thresholds": [0.999]},
            "threshold": {"value_threshold": {"lower_bound": 0.0}},
        },
    ]


def _failure_set(output: EvalOutput) -> set[tuple[str, str, str]]:
    return {(f.slice, f.metric, f.kind) for f in output.failures}


def _assert_same_metrics(fast: EvalOutput, beam: EvalOutput, skip: tuple[str, ...] = ()) -> None:
    assert sorted(fast.metrics) == sorted(beam.metrics)
    mismatched = []
    for slice_label, models in beam.metrics.items():
        for model, values in models.items():
            expected = {k: v for k, v in values.items() if k not in skip}
            got = fast.metrics[slice_label][model]
            assert sorted(got) == sorted(expected), (slice_label, model)
            for name, value in expected.items():
                if math.isnan(value) and math.isnan(got[name]):
                    continue
                if not math.isclose(got[name], value, rel_tol=1e-6, abs_tol=1e-12):
                    mismatched.append((slice_label, model, name, value, got[name]))
    assert not mismatched
    assert fast.slice_keys == beam.slice_keys


@pytest.fixture(scope="module")
def with_baseline(frame, tmp_path_factory) -> dict[str, Any]:
    plain = evaluate_frame(frame, _prepare(_plain_config(), baseline=True), engine="fast", workdir="unused")
    config = _prepare(
        _plain_config(
            _threshold_cases(plain),
            thresholds={"no_such_metric": {"value_threshold": {"lower_bound": 0.0}}},
        ),
        baseline=True,
    )
    return {
        "fast": evaluate_frame(frame, config, engine="fast", workdir="unused"),
        "beam": evaluate_frame(frame, config, engine="beam", workdir=str(tmp_path_factory.mktemp("beam"))),
    }


def test_fast_equals_beam_with_baseline_and_weights(with_baseline):
    fast, beam = with_baseline["fast"], with_baseline["beam"]
    assert (fast.engine, beam.engine) == ("fast", "beam")
    _assert_same_metrics(fast, beam)
    assert len(beam.metrics) == 14  # Overall, 3 regions, 9 region x tier, tier=1
    assert BASELINE in beam.metrics[OVERALL]


def test_same_failures_and_decision(with_baseline):
    fast, beam = with_baseline["fast"], with_baseline["beam"]
    assert _failure_set(fast) == _failure_set(beam)
    assert fast.validation_ok is beam.validation_ok is False
    by_fast = {(f.slice, f.metric, f.kind): f for f in fast.failures}
    for failure in beam.failures:
        twin = by_fast[(failure.slice, failure.metric, failure.kind)]
        assert twin.bound == failure.bound
        assert twin.threshold == failure.threshold
        for mine, theirs in ((twin.value, failure.value), (twin.baseline_value, failure.baseline_value)):
            assert (mine is None) == (theirs is None)
            if mine is not None and theirs is not None and not (math.isnan(mine) and math.isnan(theirs)):
                assert math.isclose(mine, theirs, rel_tol=1e-6)


def test_threshold_cases_cover_passes_and_failures(with_baseline):
    failures = _failure_set(with_baseline["beam"])
    failed = {metric for _, metric, _ in failures}
    slices_failing = {m: {s for s, metric, _ in failures if metric == m} for m in failed}
    all_slices = len(with_baseline["beam"].metrics)
    assert "auc_value_passes" not in failed
    for partial in (
        "auc_value_lower",
        "mean_prediction_upper",
        "mse_both_bounds",
        "auc_change_absolute_higher",
        "mse_change_absolute_lower",
        "accuracy_change_relative_higher",
        "mae_change_relative_lower",
        "precision_at_0_999",
    ):
        assert 0 < len(slices_failing[partial]) < all_slices, partial
    assert {k for s, m, k in failures if m == "f1_value_and_change"} == {"value", "change"}
    recall = slices_failing["recall_per_region"]
    assert recall and all(s.startswith("region=") and "," not in s or s == "tier=1" for s in recall)
    assert "region=north" in recall and "tier=1" in recall
    assert ("region=nowhere", "(slice)", "missing_slice") in failures
    assert len(slices_failing["no_such_metric"]) == all_slices
    missing = next(f for f in with_baseline["beam"].failures if f.metric == "no_such_metric")
    assert missing.value is None and "not found" in missing.message


@pytest.fixture(scope="module")
def first_run(frame, tmp_path_factory) -> dict[str, Any]:
    """No baseline, no weights: change thresholds go; an unsupported metric sends auto to Beam."""
    higher = "HIGHER_IS_BETTER"
    cases = [
        _case(
            "AUC",
            "auc_first",
            threshold={
                "value_threshold": {"lower_bound": 0.5},
                "change_threshold": {"direction": higher, "absolute": 1.0},
            },
        ),
        _case(
            "BinaryAccuracy",
            "accuracy_change_only",
            threshold={"change_threshold": {"direction": higher, "absolute": 1.0}},
        ),
        _case(
            "MeanSquaredError",
            "mse_first",
            per_slice_thresholds=[
                {
                    "slicing_specs": [{"feature_keys": ["region"]}],
                    "threshold": {
                        "value_threshold": {"upper_bound": 1.0},
                        "change_threshold": {"direction": "LOWER_IS_BETTER", "relative": -1.0},
                    },
                }
            ],
        ),
    ]
    supported = _prepare(_plain_config(cases), baseline=False, weighted=False)
    unsupported = _prepare(
        _plain_config([*cases, {"class_name": "BinaryCrossEntropy"}]), baseline=False, weighted=False
    )
    return {
        "fast": evaluate_frame(frame, supported, engine="fast", workdir="unused"),
        "auto": evaluate_frame(
            frame, unsupported, engine="auto", workdir=str(tmp_path_factory.mktemp("beam"))
        ),
        "unsupported": unsupported,
    }


def test_first_run_drops_change_thresholds_and_blesses(first_run):
    fast, beam = first_run["fast"], first_run["auto"]
    assert fast.validation_ok is beam.validation_ok is True
    assert fast.failures == beam.failures == []
    assert not fast.has_baseline and not beam.has_baseline
    _assert_same_metrics(fast, beam, skip=("binary_crossentropy",))
    assert set(beam.metrics[OVERALL]) == {CANDIDATE}


def test_auto_takes_beam_for_what_the_fast_path_does_not_support(frame, first_run):
    beam = first_run["auto"]
    assert beam.engine == "beam"
    assert "binary_crossentropy" in beam.metrics[OVERALL][CANDIDATE]
    assert any("binary_crossentropy" in note for note in beam.notes)
    with pytest.raises(ValueError, match="engine='fast' cannot evaluate.*binary_crossentropy"):
        evaluate_frame(frame, first_run["unsupported"], engine="fast", workdir="unused")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"options": {"compute_confidence_intervals": True}}, "confidence intervals"),
        ({"options": {"min_slice_size": 10}}, "min_slice_size"),
        ({"metrics": [{"class_name": "Precision", "config": {"top_k": 1}}]}, "sub keys"),
        (
            {"metrics": [{"class_name": "MeanAbsolutePercentageError"}]},
            "_MeanAbsolutePercentageErrorCombiner",
        ),
        ({"metrics": [{"class_name": "AUC"}], "binarize": {"class_ids": {"values": [0, 1]}}}, "multi-class"),
    ],
)
def test_unsupported_configs(change, reason):
    raw = _plain_config()
    spec = raw["metrics_specs"][0]
    for key in ("metrics", "binarize"):
        if key in change:
            spec[key] = change[key]
    if "options" in change:
        raw["options"] = change["options"]
    reasons = unsupported_reasons(_prepare(raw, baseline=True))
    assert any(reason in r for r in reasons), reasons


@pytest.mark.parametrize(
    ("column", "values", "reason"),
    [
        ("label", [0, 2], "values other than 0 and 1"),
        ("candidate", [0.5, float("nan")], "NaN"),
        ("weight", [1.0, float("inf")], "infinite"),
        ("region", ["a", 3], "mixed-integer"),
    ],
)
def test_unsupported_data(frame, column, values, reason):
    data = frame.head(len(values)).copy()
    data[column] = pd.Series(values, dtype=object if column == "region" else None)
    reasons = unsupported_reasons(_prepare(_plain_config(), baseline=True), data)
    assert any(reason in r for r in reasons), reasons


def test_slicing_follows_tfma_quirks():
    data = pd.DataFrame(
        {
            "code": ["1", "1", "a", None],
            "level": [1.0, 0.1, float("nan"), 1.0],
            "flag": [1, 0, 1, 1],  # a boolean column arrives as 0/1, as TFMA reads booleans
        }
    )
    raw = {
        "slicing_specs": [
            {"feature_values": {"code": "1"}},  # typed to the int 1: never matches the string "1"
            {"feature_values": {"code": "a"}},
            {"feature_values": {"level": "1"}},  # the int 1 matches the float 1.0
            {"feature_keys": ["level"]},  # (level, 1) above wins over (level, 1.0): equal keys
            {"feature_keys": ["code", "flag"]},
        ],
        "metrics_specs": [{"metrics": [{"class_name": "ExampleCount"}]}],
    }
    config = prepare_eval_config(
        parse_eval_config(raw), label_key="flag", candidate_column="flag", baseline_column=None
    )
    slices = {key: list(rows) for key, rows in iter_slices(data, config)}
    assert slices == {
        (("code", "a"),): [2],
        (("level", 1),): [0, 3],
        (("level", 0.1),): [1],
        (("code", "1"), ("flag", 0)): [1],
        (("code", "1"), ("flag", 1)): [0],
        (("code", "a"), ("flag", 1)): [2],
    }


def test_threshold_table_lists_every_threshold_for_people():
    """thresholds.json, which the Airflow UI's lineage view shows (TFMA's own threshold lookup)."""
    from support.model_fixtures import EVAL_CONFIG

    from airflow_ml_provider.ml.evaluation.beam_engine import threshold_table

    per_slice = {
        "recall": {
            "thresholds": [
                {
                    "slicing_specs": [{"feature_values": {"region": "north"}}],
                    "threshold": {"change_threshold": {"direction": "HIGHER_IS_BETTER", "relative": 0}},
                }
            ]
        }
    }
    raw = {
        **EVAL_CONFIG,
        "metrics_specs": [{**EVAL_CONFIG["metrics_specs"][0], "per_slice_thresholds": per_slice}],
    }

    def _prepare(baseline: str | None = "pred_b") -> Any:
        return prepare_eval_config(
            parse_eval_config(raw), label_key="label", candidate_column="pred_c", baseline_column=baseline
        )

    assert threshold_table(_prepare()) == [
        {
            "metric": "auc",
            "slice": "every slice",
            "kind": "change",
            "bound": "candidate - baseline >= -0.002 (higher is better)",
        },
        {"metric": "auc", "slice": "every slice", "kind": "value", "bound": ">= 0.55"},
        {
            "metric": "recall",
            "slice": "region=north",
            "kind": "change",
            "bound": "(candidate - baseline) / baseline >= 0 (higher is better)",
        },
    ]
    # No baseline: the change thresholds are gone from the config, and from the table.
    assert [row["kind"] for row in threshold_table(_prepare(baseline=None))] == ["value"]
