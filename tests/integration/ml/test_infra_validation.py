"""The infra_validate step with real probe processes and real pyfunc models (no TensorFlow)."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from airflow_ml_provider.ml.evaluation.infra import infra_validate

pytestmark = pytest.mark.integration

MODEL_CODE = Path(__file__).parents[2] / "pyfunc_models" / "probe_model.py"
ROWS = [{"a": float(i), "b": float(2 * i), "label": i % 2} for i in range(40)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    import mlflow.pyfunc

    root = tmp_path_factory.mktemp("probe_models")
    paths = {}
    for behaviour in ("good", "fails_load", "hangs_load", "nan", "slow"):
        path = root / behaviour
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(MODEL_CODE),
            model_config={"behaviour": behaviour},
            pip_requirements=["mlflow"],
        )
        paths[behaviour] = str(path)
    return paths


def _run(uri: str, tmp_path: Path, **extra) -> dict:
    spec = {
        "model_uri": uri,
        "rows": ROWS,
        "drop_columns": ["label"],
        "requests": 20,
        "output_dir": str(tmp_path),
    }
    return infra_validate({**spec, **extra})


def _failed(result: dict) -> set[str]:
    return {c["name"] for c in result["checks"] if not c["ok"]}


def test_a_good_model_is_infra_blessed(models, tmp_path):
    result = _run(models["good"], tmp_path, max_latency_ms={"p50": 500, "p99": 2000})
    assert result["blessed"], result["failures"]
    assert [c["name"] for c in result["checks"]] == [
        "load",
        "predict",
        "output_shape",
        "finite",
        "latency_p50",
        "latency_p99",
    ]
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert (tmp_path / "infra_validation.json").exists()


@pytest.mark.parametrize(
    ("behaviour", "failed", "detail"),
    [
        ("fails_load", {"load"}, "weights file is corrupt"),
        ("nan", {"finite"}, "14 NaN/inf values"),
        ("slow", {"latency_p50"}, "bound 10 ms"),
    ],
)
def test_a_broken_model_is_not_infra_blessed(models, tmp_path, behaviour, failed, detail):
    result = _run(models[behaviour], tmp_path, max_latency_ms={"p50": 10})
    assert not result["blessed"]
    assert _failed(result) == failed
    assert any(detail in f for f in result["failures"]), result["failures"]


def test_a_model_that_hangs_on_load_is_killed(models, tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    result = _run(models["hangs_load"], tmp_path, load_timeout=3)
    assert time.monotonic() - started < 30
    assert _failed(result) == {"load"} and "load_timeout=3 s" in result["failures"][0]
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_bad_spec_is_rejected_before_any_process_starts(tmp_path):
    with pytest.raises(ValueError, match="exactly one of 'data_uri'"):
        infra_validate({"model_uri": "models:/m-1"})
    with pytest.raises(ValueError, match="max_latency_ms"):
        infra_validate({"model_uri": "models:/m-1", "rows": ROWS, "max_latency_ms": {"p95": 3}})
    with pytest.raises(ValueError, match="'requests' must be a positive int"):
        infra_validate({"model_uri": "models:/m-1", "rows": ROWS, "requests": 0})
