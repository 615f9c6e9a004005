"""DistributedTrainingOperator's checkpoint arguments: checks, the per task-instance location, the spec, XCom."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from airflow_ml_provider.ml.specs.training import TrainModelSpec
from airflow_ml_provider.operators.training import DistributedTrainingOperator

pytestmark = pytest.mark.unit

RUN = SimpleNamespace(run_id="mlflow-run-1", experiment_id="7")


def _operator(**kwargs: Any) -> DistributedTrainingOperator:
    base: dict[str, Any] = {"task_id": "train", "run_fn": "pkg.mod:run_fn", "train_uri": "/data/v1"}
    return DistributedTrainingOperator(**{**base, **kwargs})


def _context(map_index: int = -1) -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id="churn", run_id="scheduled__2026-12-01T00:00:00+00:00", task_id="train", map_index=map_index
    )
    return {"ti": ti, "dag_run": SimpleNamespace(conf={}), "triggering_asset_events": {}}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"checkpoint_every": 0}, "checkpoint_every must be 'epoch', an int > 0 .* got 0"),
        ({"checkpoint_every": "step"}, "checkpoint_every must be 'epoch', an int > 0 .* got 'step'"),
        ({"checkpoint_every": True}, "checkpoint_every must be 'epoch', an int > 0 .* got True"),
        (
            {"checkpoint_every": "epoch", "checkpoint_uri": " "},
            "checkpoint_uri must be a directory the workers share",
        ),
        (
            {"checkpoint_uri": "s3://b/ckpt"},
            "checkpoint_uri='s3://b/ckpt' is set but checkpoint_every is None",
        ),
    ],
)
def test_bad_checkpoint_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _operator(**kwargs)._check_arguments()


def test_checkpoint_uri_is_templated():
    assert "checkpoint_uri" in DistributedTrainingOperator.template_fields


def test_no_checkpoint_arguments_no_checkpoint_key():
    spec = _operator().build_spec(_context(), RUN)  # type: ignore[arg-type]
    assert "checkpoint" not in spec


def test_without_a_uri_the_checkpoints_go_to_the_mlflow_run():
    spec = _operator(checkpoint_every="epoch").build_spec(_context(), RUN)  # type: ignore[arg-type]
    assert spec["checkpoint"] == {"every": "epoch", "uri": None}
    assert TrainModelSpec.parse(spec).checkpoint is not None  # the step accepts it


@pytest.mark.parametrize(
    ("base", "map_index", "expected"),
    [
        ("s3://ml/ckpt/", -1, "s3://ml/ckpt/churn/scheduled__2026-12-01T00_00_00_00_00/train"),
        ("/shared/ckpt", 3, "/shared/ckpt/churn/scheduled__2026-12-01T00_00_00_00_00/train/3"),
    ],
)
def test_the_location_is_per_task_instance_and_safe(base, map_index, expected):
    op = _operator(checkpoint_every=200, checkpoint_uri=base)
    spec = op.build_spec(_context(map_index), RUN)  # type: ignore[arg-type]
    assert spec["checkpoint"] == {"every": 200, "uri": expected}


def test_the_configured_base_is_the_default(monkeypatch):
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__CHECKPOINT_URI", "gs://team/checkpoints")
    assert _operator(checkpoint_every="epoch").checkpoint_location(_context()) == (  # type: ignore[arg-type]
        "gs://team/checkpoints/churn/scheduled__2026-12-01T00_00_00_00_00/train"
    )
    given = _operator(checkpoint_every="epoch", checkpoint_uri="/mine")
    assert given.checkpoint_location(_context()).startswith("/mine/churn/")  # type: ignore[arg-type,union-attr]


def test_xcom_says_where_training_resumed():
    op = _operator(checkpoint_every="epoch")
    result = {"model_uri": "models:/m-1", "resumed_from": {"epoch": 3, "step": 78}, "workers": 2}
    summary = op.handle_result(_context(), RUN, {}, result)  # type: ignore[arg-type]
    assert summary["resumed_from"] == {"epoch": 3, "step": 78}
    assert op.handle_result(_context(), RUN, {}, {"model_uri": "m"})["resumed_from"] is None  # type: ignore[arg-type]
