"""
HyperparameterTuningOperator with plain objectives: real Optuna, real worker processes, a real MLflow
server, the study on PostgreSQL when the tests have it (CI does), else SQLite.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.harness import (
    load_dag,
    run_dag,
    task_states,
)

pytestmark = pytest.mark.integration

N_TRIALS = 12
STEPS = 5  # tuning_fns.STEPS


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    folder = tmp_path / "markers"
    folder.mkdir()
    return folder


def _run(dag_id: str, storage: str, markers: Path, expect: str | None = "success", **conf: Any) -> Any:
    return run_dag(
        load_dag(dag_id),
        conf={"storage": storage, "marker_dir": str(markers), "n_trials": N_TRIALS, **conf},
        expect=expect,
    )


def _study(storage: str, dag_run: Any, task_id: str = "tune") -> Any:
    import optuna

    return optuna.load_study(study_name=f"{dag_run.dag_id}.{task_id}.{dag_run.run_id}", storage=storage)


def _calls(markers: Path) -> Counter[int]:
    """How often each trial number really ran."""
    return Counter(json.loads(p.read_text())["number"] for p in markers.glob("trial-*.json"))


def _task_run(mlflow_client: Any, dag_run: Any, task_id: str = "tune") -> Any:
    experiment = mlflow_client.get_experiment_by_name(dag_run.dag_id)
    runs = mlflow_client.search_runs(
        [experiment.experiment_id],
        f"tags.`airflow.run_id` = '{dag_run.run_id}' and tags.`airflow.task_id` = '{task_id}' "
        "and tags.`airflow.role` = 'task'",
    )
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _trial_runs(mlflow_client: Any, parent: Any) -> dict[int, Any]:
    """The child runs of a tuning task's run, by trial number; each trial number once."""
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000
    )
    numbers = [int(r.data.tags["airflow_ml.trial_number"]) for r in children]
    assert len(numbers) == len(set(numbers)), sorted(numbers)
    return {int(r.data.tags["airflow_ml.trial_number"]): r for r in children}


def _assert_runs_match_trials(mlflow_client: Any, parent: Any, study: Any) -> dict[int, Any]:
    runs = _trial_runs(mlflow_client, parent)
    trials = {t.number: t for t in study.trials}
    assert sorted(runs) == sorted(trials)
    for number, trial in trials.items():
        run = runs[number]
        assert run.data.tags["airflow_ml.trial_state"] == trial.state.name
        assert run.info.status == ("FAILED" if trial.state.name == "FAIL" else "FINISHED")
        assert trial.system_attrs["mlflow_run_id"] == run.info.run_id
        if trial.params:
            assert {k: str(v) for k, v in trial.params.items()} == run.data.params
    return runs


def test_parallel_workers_share_one_study(airflow_db, mlflow_conn, mlflow_client, storage, markers):
    dag_run = _run("tuning_parallel", storage, markers)
    study = _study(storage, dag_run)
    trials = study.trials
    states = Counter(t.state.name for t in trials)
    # Exactly the budget, across two workers deciding under the study's lock.
    assert len(trials) == N_TRIALS and states["COMPLETE"] + states["PRUNED"] == N_TRIALS, states
    assert _calls(markers) == Counter(range(N_TRIALS))  # every trial ran once, none twice
    by_worker = Counter(t.system_attrs["airflow_ml.worker"] for t in trials)
    assert set(by_worker) == {0, 1}, by_worker
    spans = {
        w: [
            (t.datetime_start, t.datetime_complete)
            for t in trials
            if t.system_attrs["airflow_ml.worker"] == w
        ]
        for w in (0, 1)
    }
    assert any(a0 < b1 and a1 < b0 for a0, b0 in spans[0] for a1, b1 in spans[1]), (
        "the workers never overlapped"
    )

    ti = next(t for t in dag_run.get_task_instances() if t.task_id == "tune")
    best = ti.xcom_pull(task_ids="tune")
    summary = ti.xcom_pull(task_ids="tune", key="tuning_summary")
    assert best == study.best_params
    assert summary["best"]["value"] == pytest.approx(study.best_value)
    assert (
        summary["trials"]["complete"] == states["COMPLETE"]
        and summary["trials"]["pruned"] == states["PRUNED"]
    )

    parent = _task_run(mlflow_client, dag_run)
    runs = _assert_runs_match_trials(mlflow_client, parent, study)
    complete = next(t for t in trials if t.state.name == "COMPLETE")
    history = mlflow_client.get_metric_history(runs[complete.number].info.run_id, "loss")
    assert sorted(m.step for m in history if m.step < STEPS) == list(range(STEPS))
    assert parent.data.metrics["best_loss"] == pytest.approx(study.best_value)
    assert parent.data.params["best.kind"] == study.best_params["kind"]
    assert parent.data.tags["airflow_ml.best_trial_run_id"] == runs[study.best_trial.number].info.run_id
    artifacts = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "tuning")}
    assert {"tuning/summary.json", "tuning/trials.csv", "tuning/optimization_history.png"} <= artifacts


def test_a_failing_trial_is_recorded_and_the_study_goes_on(
    airflow_db, mlflow_conn, mlflow_client, storage, markers
):
    dag_run = _run("tuning_flaky", storage, markers)
    study = _study(storage, dag_run)
    states = Counter(t.state.name for t in study.trials)
    assert len(study.trials) == N_TRIALS and states["FAIL"] > 0 and states["COMPLETE"] > 0, states
    runs = _assert_runs_match_trials(mlflow_client, _task_run(mlflow_client, dag_run), study)
    for trial in study.trials:
        if trial.state.name == "FAIL":
            assert trial.params["x"] < 0
            assert "is below zero" in runs[trial.number].data.tags["airflow_ml.error"]
            assert "is below zero" in trial.user_attrs["error"]
    assert study.best_params["x"] >= 0


def test_too_many_failed_trials_fail_the_task(airflow_db, mlflow_conn, mlflow_client, storage, markers):
    dag_run = _run("tuning_broken", storage, markers, expect="failed")
    assert task_states(dag_run) == {"tune": "failed"}
    study = _study(storage, dag_run)
    # No trial starts once two failed; the other worker's trial that was running then may fail too.
    states = [t.state.name for t in study.trials]
    assert set(states) == {"FAIL"} and 2 <= len(states) <= 3, states
    parent = _task_run(mlflow_client, dag_run)
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["trials_failed"] == len(states)
    _assert_runs_match_trials(mlflow_client, parent, study)


def test_a_bad_search_space_is_refused_before_any_trial(
    airflow_db, mlflow_conn, mlflow_client, storage, markers
):
    import optuna

    dag_run = _run("tuning_bad_space", storage, markers, expect="failed")
    assert task_states(dag_run) == {"tune": "failed"}
    assert list(markers.iterdir()) == []
    try:
        names = optuna.get_all_study_names(storage)
    except Exception:  # no tables: nothing ever touched the database
        names = []
    assert names == []
    parent = _task_run(mlflow_client, dag_run)
    assert _trial_runs(mlflow_client, parent) == {}


def test_a_retry_resumes_the_study(airflow_db, mlflow_conn, mlflow_client, storage, markers):
    (markers / "armed").touch()
    dag_run = _run("tuning_retry", storage, markers)
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == "tune")
    assert ti.try_number == 2
    study = _study(storage, dag_run)
    trials = {t.number: t for t in study.trials}
    finished = [t for t in trials.values() if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == N_TRIALS
    # The trials the first try was running (the one whose worker died, and the other worker's)
    # failed and were queued again with the same params; nothing else ran twice.
    lost = [t for t in trials.values() if t.state.name == "FAIL"]
    assert 3 in {t.number for t in lost} and 1 <= len(lost) <= 2
    retries = {t.system_attrs["failed_trial"]: t for t in trials.values() if "failed_trial" in t.system_attrs}
    assert sorted(retries) == sorted(t.number for t in lost)
    assert trials[3].params  # the trial whose worker died had drawn its values ...
    for trial in lost:
        # ... and its retry runs with the same values. The other worker's trial may have been
        # killed before drawing all of them (CI hit both: none drawn, and x drawn but not kind):
        # its retry keeps the values drawn and draws the rest.
        retry = retries[trial.number]
        assert trial.params.items() <= retry.params.items()
        assert set(retry.params) == {"x", "kind"}  # tuning_dags.SPACE
        assert retry.state.name in ("COMPLETE", "PRUNED")
    assert set(_calls(markers).values()) == {1}  # one call per trial number: no trial repeated
    assert len(trials) == N_TRIALS + len(lost)
    runs = _assert_runs_match_trials(mlflow_client, _task_run(mlflow_client, dag_run), study)
    for trial in lost:
        # The other worker was killed by the gang while it ran a trial, or (CI hit this) between
        # asking for a trial and claiming it: no heartbeat nor owner yet, found as unclaimed.
        reasons = ("try 1 of its task ended while it ran",) + (
            ("its worker stopped while starting it",) if trial.number != 3 else ()
        )
        assert runs[trial.number].data.tags["airflow_ml.error"] in reasons
        assert runs[retries[trial.number].number].data.tags["airflow_ml.retry_of_trial"] == str(trial.number)


def test_mapped_worker_tasks_share_the_study_and_best_summarizes(
    airflow_db, mlflow_conn, mlflow_client, storage, markers
):
    import optuna

    dag_run = _run("tuning_mapped", storage, markers)
    assert task_states(dag_run) == {
        "tune.workers[0]": "success",
        "tune.workers[1]": "success",
        "tune.best": "success",
    }
    study = optuna.load_study(study_name=f"tuning_mapped.tune.{dag_run.run_id}", storage=storage)
    assert len(study.trials) == N_TRIALS
    best_ti = next(t for t in dag_run.get_task_instances() if t.task_id == "tune.best")
    assert best_ti.xcom_pull(task_ids="tune.best") == study.best_params
    worker_results = [
        t.xcom_pull(task_ids="tune.workers", map_indexes=t.map_index)
        for t in dag_run.get_task_instances()
        if t.task_id == "tune.workers"
    ]
    assert sum(r["trials"] for r in worker_results) == N_TRIALS


def test_trial_runs_a_killed_worker_left_open_are_closed(mlflow_conn, mlflow_client):
    """A worker SIGKILLed with its run's end still queued: the summary's pass closes the run."""
    from airflow_ml_provider.hooks.mlflow import MlflowHook
    from airflow_ml_provider.operators.tuning import HyperparameterTuningOperator
    from airflow_ml_provider.tracking import TaskRun

    experiment = mlflow_client.create_experiment("tuning-left-open")
    task_run = mlflow_client.create_run(experiment).info.run_id
    child = {
        name: mlflow_client.create_run(experiment, tags={"mlflow.parentRunId": task_run}).info.run_id
        for name in ("complete", "pruned", "still_running", "closed")
    }
    mlflow_client.set_terminated(child["closed"], status="FAILED")
    operator = HyperparameterTuningOperator(
        task_id="tune", objective_fn="tuning_fns:quadratic", metric="loss", search_space={"x": [1, 2]}
    )
    run = TaskRun(hook=MlflowHook(), experiment_id=experiment, parent_run_id=task_run, run_id=task_run)
    ended = {child["complete"]: "COMPLETE", child["pruned"]: "PRUNED", child["closed"]: "FAIL"}
    operator._close_left_open(run, ended)
    runs = {name: mlflow_client.get_run(run_id) for name, run_id in child.items()}
    assert runs["complete"].info.status == "FINISHED" and runs["pruned"].info.status == "FINISHED"
    assert runs["complete"].data.tags["airflow_ml.trial_state"] == "COMPLETE"
    assert runs["pruned"].data.tags["airflow_ml.trial_state"] == "PRUNED"
    assert runs["still_running"].info.status == "RUNNING"  # its trial has not ended
    assert runs["closed"].info.status == "FAILED" and "airflow_ml.trial_state" not in runs["closed"].data.tags
