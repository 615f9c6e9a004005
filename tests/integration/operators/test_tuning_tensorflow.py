"""
The tuning example end to end: real TensorFlow trials of the demo run_fn on two worker processes,
pruned by their per-epoch val_auc, every trial a child MLflow run, the best values trained with.
The study is in the default SQLite file under AIRFLOW_HOME.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.harness import load_dag, run_dag, task_states, task_xcom

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).parents[3] / "dags_examples"
EPOCHS = 3
N_TRIALS = 4


def test_example_tunes_then_trains_with_the_best_values(airflow_db, mlflow_conn, mlflow_client, tmp_path):
    import optuna

    from airflow_ml_provider.hooks.tuning_storage import default_storage_url

    dag_run = run_dag(
        load_dag("example_hyperparameter_tuning", EXAMPLES),
        conf={"data_root": str(tmp_path), "rows": 1500, "epochs": EPOCHS, "n_trials": N_TRIALS, "workers": 2},
    )
    assert task_states(dag_run) == {"generate_data": "success", "tune": "success", "train": "success"}
    study = optuna.load_study(
        study_name=f"example_hyperparameter_tuning.tune.{dag_run.run_id}", storage=default_storage_url()
    )
    assert len(study.trials) == N_TRIALS
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    best = task_xcom(dag_run, "tune")
    assert best == {"epochs": EPOCHS, **study.best_params}
    assert 0.5 < study.best_value <= 1.0

    # Every trial is a child run of the tuning task's run, with its epochs' val_auc; a pruned
    # trial stopped before the last epoch. Trials log no model.
    summary = next(t for t in dag_run.get_task_instances() if t.task_id == "tune").xcom_pull(
        task_ids="tune", key="tuning_summary"
    )
    parent_id = mlflow_client.get_run(summary["best"]["mlflow_run_id"]).data.tags["mlflow.parentRunId"]
    children = mlflow_client.search_runs(
        [mlflow_client.get_run(parent_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    assert len(children) == N_TRIALS
    for trial in study.trials:
        run = next(r for r in children if r.data.tags["airflow_ml.trial_number"] == str(trial.number))
        steps = sorted(m.step for m in mlflow_client.get_metric_history(run.info.run_id, "val_auc"))
        assert steps == sorted(trial.intermediate_values)
        assert len(steps) == EPOCHS if trial.state.name == "COMPLETE" else len(steps) <= EPOCHS
        assert not mlflow_client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
    parent = mlflow_client.get_run(parent_id)
    assert parent.data.metrics["best_val_auc"] == pytest.approx(study.best_value)

    # The training task got exactly the tuned values.
    train = task_xcom(dag_run, "train")
    params = mlflow_client.get_run(train["mlflow_run_id"]).data.params
    assert {k[3:]: v for k, v in params.items() if k.startswith("hp.")} == {
        k: str(v) for k, v in best.items()
    }
