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


def _write_version(folder: Path, seed: int, flip_labels: bool = False) -> str:
    """A version whose label follows ``a + b`` (flipped, as by an encoding bug upstream, if asked)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 50, 400), rng.normal(0, 50, 400)
    region = rng.choice(["north", "south"], 400)
    label = ((a + b + rng.normal(0, 30, 400)) > 0).astype(int)
    frame = pd.DataFrame({"a": a, "b": b, "region": region, "label": 1 - label if flip_labels else label})
    folder.mkdir(parents=True)
    frame.to_csv(folder / "part-00000.csv", index=False)
    (folder / "_SUCCESS").touch()
    return str(folder)


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A version whose label follows ``a + b``, which the probe model scores."""
    return _write_version(tmp_path_factory.mktemp("eval_data") / "version=0002", seed=3)


def _save_model(root: Path, behaviour: str) -> str:
    import mlflow.pyfunc

    path = root / behaviour
    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(MODEL_CODE),
        model_config={"behaviour": behaviour},
        pip_requirements=["mlflow"],
    )
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _save_model(tmp_path_factory.mktemp("eval_model"), "good")


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
        (
            {"evaluate_on": "both"},
            "evaluate_model: spec key 'holdout_uri' is required with evaluate_on='both'",
        ),
        (
            {"evaluate_on": "data", "holdout_uri": "/h"},
            "'holdout_uri' is given but evaluate_on='data' does not",
        ),
    ],
)
def test_a_bad_spec_fails_before_any_model_loads(model, version, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        evaluate_model(_spec(model, version, tmp_path / "out", **extra))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """
    A new version whose labels were flipped upstream, the candidate that learned them (scores
    inverted), the champion (good), and a trusted holdout that the flip did not reach.
    """
    root = tmp_path_factory.mktemp("corrupted")
    return {
        "new": _write_version(root / "churn" / "version=0003", seed=5, flip_labels=True),
        "holdout": _write_version(root / "holdout" / "version=0001", seed=6),
        "candidate": _save_model(root, "inverted"),
        "champion": _save_model(root, "good"),
    }


def test_on_a_trusted_holdout_a_candidate_that_learned_flipped_labels_is_not_blessed(corrupted, tmp_path):
    baseline = {
        "model_name": "churn",
        "alias": "champion",
        "version": "1",
        "model_uri": corrupted["champion"],
    }
    spec = _spec(
        corrupted["candidate"],
        corrupted["new"],
        tmp_path / "out",
        baseline_model_uri=corrupted["champion"],
        baseline=baseline,
        holdout_uri=corrupted["holdout"],
        evaluate_on="both",
    )
    result = evaluate_model(spec)
    data, holdout = result["evaluations"]["data"], result["evaluations"]["holdout"]
    # On the new version the candidate beats the champion (which scores as badly on the flipped
    # labels): the change threshold alone would bless it. The holdout does not.
    assert data["blessed"] and data["metrics"]["auc"] > 0.8 > 0.2 > data["baseline_metrics"]["auc"]
    assert (
        not holdout["blessed"] and holdout["metrics"]["auc"] < 0.2 < 0.8 < holdout["baseline_metrics"]["auc"]
    )
    assert result["blessed"] is False and result["evaluated_on"] == ["data", "holdout"]
    assert (data["data_uri"], holdout["data_uri"]) == (corrupted["new"], corrupted["holdout"])
    # Which data each number comes from: the holdout's are named holdout/..., its failures say so.
    metrics = result["mlflow"]["metrics"]
    assert metrics["diff/auc"] > 0 > metrics["holdout/diff/auc"]
    assert metrics["holdout/auc"] == pytest.approx(holdout["metrics"]["auc"])
    assert metrics["holdout/baseline/auc/region:north"] > 0.8
    assert result["metrics"] == data["metrics"] and result["example_count"] == 400
    assert {f["dataset"] for f in result["failures"]} == {"holdout"}
    assert ("Overall", "auc", "change") in {(f["slice"], f["metric"], f["kind"]) for f in result["failures"]}
    assert result["failed_thresholds"] and all(
        line.startswith("holdout: ") for line in result["failed_thresholds"]
    )
    out = tmp_path / "out"
    blessing = json.loads((out / "blessing.json").read_text())
    assert blessing["blessed"] is False and blessing["failures"] == result["failures"]
    assert blessing["datasets"]["holdout"] == {
        "data_uri": corrupted["holdout"],
        "blessed": False,
        "failed_thresholds": len(result["failures"]),
        "example_count": 400,
        "engine": "fast",
        "metric_prefix": "holdout/",
        "metrics_file": "holdout/metrics.json",
    }
    assert json.loads((out / "holdout" / "metrics.json").read_text())["example_count"] == 400
    assert {"metrics.json", "holdout/metrics.json", "holdout/plots/auc.png"} <= set(result["artifacts"])
    report = (out / "report.html").read_text()
    assert (
        f"On the data: {corrupted['new']}" in report and f"On the holdout: {corrupted['holdout']}" in report
    )
    assert report.count("NOT BLESSED") == 2  # the verdict, and the holdout's


def test_on_the_holdout_alone_the_new_version_is_not_read(corrupted, tmp_path):
    spec = _spec(corrupted["champion"], corrupted["new"], tmp_path / "out", holdout_uri=corrupted["holdout"])
    del spec["data_uri"]
    result = evaluate_model({**spec, "evaluate_on": "holdout"})
    assert result["blessed"] and result["evaluated_on"] == ["holdout"]
    assert result["metrics"] == result["evaluations"]["holdout"]["metrics"] and result["metrics"]["auc"] > 0.8
    assert "holdout/auc" in result["mlflow"]["metrics"] and "auc" not in result["mlflow"]["metrics"]
    blessing = json.loads((tmp_path / "out" / "blessing.json").read_text())
    assert blessing["datasets"]["holdout"]["metrics_file"] == "metrics.json"  # the first one's at the top
    assert not (tmp_path / "out" / "holdout").exists()
