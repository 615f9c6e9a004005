"""
What TFMA does that surprises people (docs/evaluation.md), and the threshold pattern that copes.

With a weight column, ``example_count`` is the sum of the weights; a slice with one class only, or
with all weights zero, gets ``auc = 0``, so an AUC floor on every slice fails there. The pattern the
docs give (the floor on the overall slice, a change threshold per slice) blesses the same data.
Fast engine only: it computes TFMA's numbers (test_engines.py holds it equal to the Beam pipeline).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_ml_provider.ml.evaluation.config import parse_eval_config, prepare_eval_config
from airflow_ml_provider.ml.evaluation.engines import evaluate_frame
from airflow_ml_provider.ml.evaluation.results import BASELINE, CANDIDATE

pytestmark = pytest.mark.integration

FLOOR = {"value_threshold": {"lower_bound": 0.6}}
NO_WORSE = {"change_threshold": {"direction": "HIGHER_IS_BETTER", "absolute": -0.01}}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """``north``: both classes, weight 2; ``solo``: label 0 only; ``ghost``: weight 0 only."""
    rng = np.random.default_rng(7)
    region = np.array(["north"] * 500 + ["solo"] * 60 + ["ghost"] * 40)
    label = np.where(region == "solo", 0, (rng.random(len(region)) < 0.4).astype(int))
    return pd.DataFrame(
        {
            "label": label,
            "candidate": np.clip(0.35 * label + 0.65 * rng.random(len(region)), 0, 1),
            "baseline": np.clip(0.25 * label + 0.75 * rng.random(len(region)), 0, 1),
            "weight": np.where(region == "ghost", 0.0, 2.0),
            "region": region,
        }
    )


def _evaluate(frame: pd.DataFrame, auc: dict[str, Any], tmp_path: Any) -> Any:
    raw = {
        "slicing_specs": [{}, {"feature_keys": ["region"]}],
        "metrics_specs": [{"metrics": [{"class_name": "ExampleCount"}, {"class_name": "AUC", **auc}]}],
    }
    config = prepare_eval_config(
        parse_eval_config(raw),
        label_key="label",
        candidate_column="candidate",
        baseline_column="baseline",
        example_weight_key="weight",
    )
    return evaluate_frame(frame, config, engine="fast", workdir=str(tmp_path))


def test_weighted_example_count_and_auc_zero_fail_a_per_slice_floor(frame, tmp_path):
    output = _evaluate(frame, {"threshold": FLOOR}, tmp_path)
    candidate = {label: models[CANDIDATE] for label, models in output.metrics.items()}
    assert candidate["region=north"]["example_count"] == 1000.0  # 500 rows of weight 2
    assert candidate["region=ghost"]["example_count"] == 0.0
    assert candidate["region=solo"]["auc"] == 0.0 and candidate["region=ghost"]["auc"] == 0.0
    assert output.metrics["region=solo"][BASELINE]["auc"] == 0.0
    assert candidate["Overall"]["auc"] > 0.6 and candidate["region=north"]["auc"] > 0.6
    assert not output.validation_ok
    assert {(f.slice, f.metric, f.kind) for f in output.failures} == {
        ("region=solo", "auc", "value"),
        ("region=ghost", "auc", "value"),
    }


def test_floor_on_overall_and_change_per_slice_blesses_the_same_data(frame, tmp_path):
    per_slice = [
        {"slicing_specs": [{}], "threshold": FLOOR},
        {"slicing_specs": [{"feature_keys": ["region"]}], "threshold": NO_WORSE},
    ]
    output = _evaluate(frame, {"per_slice_thresholds": per_slice}, tmp_path)
    assert output.validation_ok, [f.describe() for f in output.failures]
    # Still a gate: a candidate worse than the baseline on a real slice fails it.
    north = frame["region"] == "north"
    worse = frame.assign(candidate=np.where(north, 1 - frame["candidate"], frame["candidate"]))
    output = _evaluate(worse, {"per_slice_thresholds": per_slice}, tmp_path)
    assert ("region=north", "auc", "change") in {(f.slice, f.metric, f.kind) for f in output.failures}
