"""
The ``tune`` step's workers without Airflow: real processes on one study (PostgreSQL when the tests
have it, else SQLite), an exact budget under contention, a dead worker's trial found by its missing
heartbeat and run again.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from airflow_ml_provider.exceptions import StepFailed
from airflow_ml_provider.ml.tuning.storage import STORAGE_ENV
from airflow_ml_provider.ml.tuning.worker import WORKER_ENV
from airflow_ml_provider.runners.gang import GangRunner

pytestmark = pytest.mark.integration

DAGS = str(Path(__file__).parents[2] / "dags")  # tuning_fns.py


def _spec(markers: Path, **kwargs: Any) -> dict[str, Any]:
    return {
        "study_name": "workers",
        "metric": "loss",
        "search_space": {"x": {"type": "float", "low": -4.0, "high": 6.0}, "kind": ["a", "b"]},
        "objective": {"kind": "function", "ref": "tuning_fns:quadratic"},
        "custom_config": {"marker_dir": str(markers), "step_seconds": 0.0, "die_at": 0},
        "parallel": True,
        "seed": 3,
        **kwargs,
    }


def _gang(storage: str, workers: int, first: int = 0) -> GangRunner:
    envs = [{WORKER_ENV: str(first + i)} for i in range(workers)]
    return GangRunner(envs, env={STORAGE_ENV: storage, "PYTHONPATH": DAGS})


def test_four_workers_start_exactly_the_budget(storage, tmp_path):
    import optuna

    markers = tmp_path / "markers"
    markers.mkdir()
    results = _gang(storage, 4).run_all("tune", _spec(markers, n_trials=20, pruner="none"))
    study = optuna.load_study(study_name="workers", storage=storage)
    assert len(study.trials) == 20 and {t.state.name for t in study.trials} == {"COMPLETE"}
    assert sorted(t["number"] for r in results for t in r["trials"]) == list(range(20))
    assert all(r["trials"] for r in results), [len(r["trials"]) for r in results]
    calls = Counter(json.loads(p.read_text())["number"] for p in markers.glob("trial-*.json"))
    assert calls == Counter(range(20))


def test_a_dead_workers_trial_is_found_by_its_heartbeat_and_run_again(
    storage, tmp_path, mlflow_server, mlflow_client
):
    import optuna

    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "armed").touch()
    experiment = mlflow_client.create_experiment("tuning-heartbeat")
    parent = mlflow_client.create_run(experiment).info.run_id
    spec = _spec(
        markers,
        n_trials=4,
        objective={"kind": "function", "ref": "tuning_fns:dies_once"},
        heartbeat_interval=1,
        grace_period=2,
        mlflow={"run_id": parent, "experiment_id": experiment},
    )
    env_mlflow = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    first = GangRunner([{WORKER_ENV: "0", **env_mlflow}], env={STORAGE_ENV: storage, "PYTHONPATH": DAGS})
    with pytest.raises(StepFailed, match="SIGKILL"):
        first.run("tune", spec)  # trial 0 kills its worker: no owner, so only its heartbeat can tell
    study = optuna.load_study(study_name="workers", storage=storage)
    assert [t.state.name for t in study.trials] == ["RUNNING"]
    # A worker of another task (no owner in common) fails it once its heartbeat is 2 s old. Its
    # workers start in well under 2 s when warm, so wait for that state before it starts.
    import time

    heartbeats = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=2)
    deadline = time.monotonic() + 60
    while not heartbeats._get_stale_trial_ids(study._study_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    second = GangRunner([{WORKER_ENV: "1", **env_mlflow}], env={STORAGE_ENV: storage, "PYTHONPATH": DAGS})
    [result] = second.run_all("tune", spec)
    assert result["recovered"] == [0]
    trials = optuna.load_study(study_name="workers", storage=storage).trials
    assert trials[0].state.name == "FAIL"
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.params == trials[0].params and retry.state.name == "COMPLETE"
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 4
    runs = mlflow_client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    by_number = {int(r.data.tags["airflow_ml.trial_number"]): r for r in runs}
    assert sorted(by_number) == [t.number for t in trials]
    assert by_number[0].info.status == "FAILED"
    assert "stopped sending heartbeats" in by_number[0].data.tags["airflow_ml.error"]


def test_a_trial_whose_worker_died_before_claiming_it_is_run_again(storage, tmp_path):
    """Killed between asking Optuna for a trial and claiming it: no heartbeat, no worker attribute;
    only the lock says that nobody alive is in that window (CI hit this: the budget came up short)."""
    import optuna

    markers = tmp_path / "markers"
    markers.mkdir()
    study = optuna.create_study(study_name="workers", storage=storage)
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(-4.0, 6.0)})
    [result] = _gang(storage, 1).run_all("tune", _spec(markers, n_trials=4, pruner="none"))
    assert result["recovered"] == [orphan.number]
    trials = optuna.load_study(study_name="workers", storage=storage).trials
    assert trials[orphan.number].state.name == "FAIL"
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == orphan.number)
    assert retry.params["x"] == orphan.params["x"] and retry.state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4 and len(trials) == 5


def test_a_grid_runs_each_point_once_across_workers(storage, tmp_path):
    import optuna

    markers = tmp_path / "markers"
    markers.mkdir()
    grid = {"x": {"type": "float", "low": 0.0, "high": 2.0, "step": 1.0}, "kind": ["a", "b"]}
    spec = {**_spec(markers, search_space=grid, sampler="grid", pruner="none"), "seed": None}
    results = _gang(storage, 2).run_all("tune", spec)
    study = optuna.load_study(study_name="workers", storage=storage)
    points = sorted((t.params["x"], t.params["kind"]) for t in study.trials)
    assert points == [(x, k) for x in (0.0, 1.0, 2.0) for k in ("a", "b")]
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    assert {r["stopped"] for r in results} == {"grid_done"}


def test_an_mlflow_error_fails_the_worker_instead_of_losing_records(storage, tmp_path, mlflow_server):
    """Child runs are written in the background; the first error reaches the trial loop, named."""
    from airflow_ml_provider.ml.tuning.trial_runs import TrialRuns

    markers = tmp_path / "markers"
    markers.mkdir()
    spec = _spec(markers, n_trials=3, mlflow={"run_id": "0" * 32, "experiment_id": "987654"})
    gang = GangRunner(
        [{WORKER_ENV: "0"}],
        env={STORAGE_ENV: storage, "PYTHONPATH": DAGS, "MLFLOW_TRACKING_URI": mlflow_server.url},
    )
    with pytest.raises(StepFailed, match="Recording the trials in MLflow failed: .*987654"):
        gang.run("tune", spec)
    runs = TrialRuns(None, None, "s")
    assert not runs.enabled and runs.start(object(), 0) is None  # no parent run: nothing to record
