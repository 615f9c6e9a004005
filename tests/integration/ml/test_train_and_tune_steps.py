"""
The ``train_model``, ``tune`` (a ``run_fn`` objective) and ``tuning_summary`` steps with the demo
``run_fn`` on a tiny version, in one fresh interpreter (TensorFlow is imported once), no MLflow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_ml_provider.ml.datagen import generate_dataset
from airflow_ml_provider.ml.training.step import train

pytestmark = pytest.mark.integration

RUN_FN = "airflow_ml_provider.ml.training.demo:run_fn"
HYPERPARAMETERS = {"epochs": 1, "batch_size": 128, "hidden_units": 4}
# Runs each (step, spec) of argv[1] in turn; one result line per step.
STEPS = """
import json, sys
from airflow_ml_provider.ml.registry import resolve_step
for step, spec in json.loads(sys.argv[1]):
    print("RESULT " + json.dumps(resolve_step(step)(spec)), flush=True)
"""


def _run(steps: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", STEPS, json.dumps(steps)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return [json.loads(line[len("RESULT ") :]) for line in lines]


def test_train_warm_start_and_tune_through_the_spec_types(tmp_path: Path) -> None:
    generated = generate_dataset({"root": str(tmp_path / "data"), "rows": 600, "seed": 5})
    version = generated["versions"][0]["uri"]
    first, second = str(tmp_path / "model-1"), str(tmp_path / "model-2")
    train_spec = {
        "run_fn": RUN_FN,
        "train_uri": version,
        "hyperparameters": HYPERPARAMETERS,
        "custom_config": {},
        "dataset_version": {"version": "0001", "uri": version},
        "model_dir": first,
        "seed": 7,
    }
    tune_spec = {
        "study_name": "steps",
        "metric": "val_auc",
        "direction": None,
        "search_space": {"hidden_units": [4, 8]},
        "hyperparameters": {"epochs": 1, "batch_size": 128},
        "sampler": "grid",
        "pruner": "none",
        "n_trials": None,
        "timeout": None,
        "seed": 1,
        "objective": {"kind": "run_fn", "ref": RUN_FN},
        "train_uri": version,
        "custom_config": {},
        "storage": f"sqlite:///{tmp_path / 'studies.db'}",
        "heartbeat_interval": 10,
    }
    trained, warm, tuned, summary = _run(
        [
            ("train_model", train_spec),
            ("train_model", {**train_spec, "model_dir": second, "warm_start_from": first}),
            ("tune", tune_spec),
            ("tuning_summary", {**tune_spec, "output_dir": str(tmp_path / "summary")}),
        ]
    )

    assert (trained["role"], trained["workers"], trained["strategy"], trained["epochs"]) == (
        "chief", 1, "one_device", 1
    )  # fmt: skip
    assert trained["saved_model_dir"] == first and trained["warm_started_from"] is None
    assert {"loss", "auc", "val_auc"} <= set(trained["final_metrics"])
    assert (Path(first) / "saved_model.pb").is_file() and "model_uri" not in trained  # no MLflow run
    assert warm["warm_started_from"] == first and (Path(second) / "saved_model.pb").is_file()
    assert sorted(t["state"] for t in tuned["trials"]) == ["COMPLETE", "COMPLETE"]
    assert tuned["stopped"] == "grid_done"
    assert summary["trials"]["complete"] == 2 and summary["direction"] == "maximize"
    assert summary["hyperparameters"]["epochs"] == 1 and summary["hyperparameters"]["hidden_units"] in (4, 8)
    assert (tmp_path / "summary" / "summary.json").is_file()


def test_a_bad_training_spec_fails_before_tensorflow(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="train_model: run_fn must be 'package.module:function', got 'train.py'"
    ):
        train({"run_fn": "train.py", "train_uri": str(tmp_path)})
    with pytest.raises(ValueError, match="train_model: strategy 'tpu' is not one of"):
        train({"run_fn": RUN_FN, "train_uri": str(tmp_path), "strategy": "tpu"})
