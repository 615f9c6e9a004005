"""
The ``evaluate_model`` step end to end, as the operator's spec reaches it: pyfunc models (no
TensorFlow model), a csv dataset version, the fast engine, and the files it leaves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_ml_provider.ml.evaluation.step import evaluate_model

pytestmark = pytest.mark.integration

MODEL_CODE = Path(__file__).parents[3] / "pyfunc_models" / "probe_model.py"
EVAL_CONFIG = {
    "slicing_specs": [{}, {"feature_keys": ["region"]}],
    "metrics_specs": [
        {
            "metrics": [
                {"class_name": "ExampleCount"},
                {
                    "class_name": "AUC",
                    "threshold": {
                        "value_threshold": {"lower_bound": 0.5},
                        "change_threshold": {"direction": "HIGHER_IS_BETTER", "absolute": -0.5},
                    },
                },
            ]
        }
    ],
}


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A version whose label follows ``a + b``, which the probe model scores."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 50, 400), rng.normal(0, 50, 400)
    frame = pd.DataFrame(
        {
            "a": a,
            "b": b,
            "region": rng.choice(["north", "south"], 400),
            "label": ((a + b + rng.normal(0, 30, 400)) > 0).astype(int),
        }
    )
    folder = tmp_path_factory.mktemp("eval_data") / "version=0002"
    folder.mkdir()
    frame.to_csv(folder / "part-00000.csv", index=False)
    (folder / "_SUCCESS").touch()
    return str(folder)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    import mlflow.pyfunc

    path = tmp_path_factory.mktemp("eval_model") / "good"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(MODEL_CODE),
        model_config={"behaviour": "good"},
        pip_requirements=["mlflow"],
    )
    return str(path)


def _spec(model: str, version: str, out: Path, **extra: Any) -> dict[str, Any]:
    """What ModelEvaluationOperator builds (volatile keys included)."""
    return {
        "candidate_model_uri": model,
        "data_uri": version,
        "eval_config": EVAL_CONFIG,
        "label_key": "label",
        "engine": "fast",
        "output_dir": str(out),
        "title": "dag / evaluate",
        "context": {"DAG run": "manual__1", "dataset version": "0002"},
        **extra,
    }


def test_a_first_model_is_judged_by_value_thresholds_only(model, version, tmp_path):
    result = evaluate_model(_spec(model, version, tmp_path / "out"))
    assert result["blessed"], result["failed_thresholds"]
    assert result["baseline_model_uri"] is None and result["baseline_metrics"] == {}
    assert result["example_count"] == 400 and result["slice_count"] == 3 and result["engine"] == "fast"
    assert result["metrics"]["auc"] > 0.8
    assert result["mlflow"]["params"] == {"engine": "fast", "has_baseline": False}
    blessing = json.loads((tmp_path / "out" / "blessing.json").read_text())
    assert blessing["baseline"] is None and blessing["candidate_model_uri"] == model
    assert {"metrics.json", "blessing.json", "thresholds.json", "eval_config.pbtxt"} <= set(
        result["artifacts"]
    )
    assert "dag / evaluate" in (tmp_path / "out" / "report.html").read_text()


def test_against_a_baseline_with_the_features_named(model, version, tmp_path):
    baseline = {"model_name": "churn", "alias": "champion", "version": "1", "model_uri": model}
    spec = _spec(
        model,
        version,
        tmp_path / "out",
        baseline_model_uri=model,
        baseline=baseline,
        feature_columns=["a", "b"],
    )
    result = evaluate_model(spec)
    assert result["blessed"] and result["baseline_model_uri"] == model
    assert result["baseline_metrics"]["auc"] == pytest.approx(result["metrics"]["auc"])
    assert result["mlflow"]["metrics"]["diff/auc"] == pytest.approx(0.0)
    blessing = json.loads((tmp_path / "out" / "blessing.json").read_text())
    assert blessing["baseline"] == {
        "model_name": "churn",
        "alias": "champion",
        "version": "1",
        "model_uri": model,
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"eval_config": None}, "evaluate_model: spec key 'eval_config' is required"),
        ({"engine": "spark"}, r"evaluate_model: spec key 'engine' must be one of \['auto', 'fast', 'beam'\]"),
        ({"feature_columns": "a"}, "evaluate_model: spec key 'feature_columns' must be a list of str"),
        ({"colour": "blue"}, r"evaluate_model: unknown spec keys \['colour'\]"),
    ],
)
def test_a_bad_spec_fails_before_any_model_loads(model, version, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        evaluate_model(_spec(model, version, tmp_path / "out", **extra))
    assert not (tmp_path / "out").exists()
