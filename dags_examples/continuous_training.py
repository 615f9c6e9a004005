"""
Example: the whole continuous-training loop, started by new data.

``continuous_training`` is scheduled on the asset ``churn_training_data``, whose watcher
(``DatasetVersionTrigger``) starts one DAG run per complete dataset version landing under
``$AIRFLOW_ML_EXAMPLE_LANDING/churn_training_data`` (``version=NNNN/`` with ``_SUCCESS``, as
``generate_dataset`` writes them). Each run:

1. **validates** the version with TFDV against the curated schema (the first version bootstraps
   it); anomalies such as a schema break skip everything downstream: no model is trained;
2. optionally **tunes** it (``tune_trials`` > 0: an Optuna study on 2 local workers), then
   **trains** the demo classifier with ``MultiWorkerMirroredStrategy`` on 2 local worker processes,
   with the tuned hyperparameters or the fixed ones;
3. **evaluates** the candidate against the registry's ``champion`` per region with TFMA
   thresholds (the first model has no champion: value thresholds alone decide); a candidate that
   is not blessed skips promotion;
4. **infra-validates** it: loaded in a separate process, predictions timed;
5. **promotes** it: registered, and ``champion`` moved to it with compare-and-set.

Every task is a nested MLflow run under the DAG run's run, tagged with the dataset version.
Evaluation reads the new version itself, of which the candidate trained on 80 % (the demo
``run_fn`` holds out the rest); in production point ``data_uri`` at held-out data.

``continuous_training_kubernetes`` runs the same loop on versions landing in object storage
(``$AIRFLOW_ML_EXAMPLE_LAKE``) with the training gang as Kubernetes pods.

``continuous_training_scheduled`` is the fallback for clusters without the watcher: an hourly run
whose ``DatasetVersionSensor`` waits (deferred) for a version newer than the last one it
delivered, then runs the same tasks. ``deploy_champion`` starts when a promotion moves
``champion`` (the promote task's outlet asset), records what it would deploy, and guards it: if
the version's live AUC, as serving logs it to MLflow, stays below 0.7 for 3 checks, ``champion``
goes back to the previous version (and ``deploy_champion`` runs again, for it).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, Param, task

from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.guard import ChampionGuardOperator
from airflow_ml_provider.operators.infra_validation import InfraValidationOperator
from airflow_ml_provider.operators.promotion import PromoteModelOperator
from airflow_ml_provider.operators.training import DistributedTrainingOperator
from airflow_ml_provider.operators.tuning import HyperparameterTuningOperator
from airflow_ml_provider.operators.validation import DataValidationOperator
from airflow_ml_provider.sensors.dataset import DatasetVersionSensor
from airflow_ml_provider.triggers.dataset import DatasetVersionTrigger
from airflow_ml_provider.versions import dataset_version

LANDING = os.environ.get("AIRFLOW_ML_EXAMPLE_LANDING", "/tmp/airflow-ml-provider/landing")
STATE = os.environ.get("AIRFLOW_ML_EXAMPLE_STATE", "/tmp/airflow-ml-provider/continuous")
DATA_ROOT = f"{LANDING}/churn_training_data"
MODEL_URI = "{{ ti.xcom_pull('train')['model_uri'] }}"
RUN_FN = "airflow_ml_provider.ml.training.demo:run_fn"
# The tuned values when the run tuned, else the fixed ones.
HYPERPARAMETERS = "{{ ti.xcom_pull(task_ids='tune') or {'epochs': params.epochs, 'batch_size': 256, 'learning_rate': 0.01} }}"
PARAMS = {
    # Where the curated schema lives between runs (the first version bootstraps it).
    "state_root": Param(STATE, type="string"),
    "model_name": Param("churn", type="string"),
    "epochs": Param(3, type="integer", minimum=1),
    "workers": Param(2, type="integer", minimum=1, maximum=8),
    # 0: train with the fixed hyperparameters; N: tune first (N trials on 2 local workers).
    "tune_trials": Param(0, type="integer", minimum=0),
}
EVAL_CONFIG = {
    "model_specs": [{"label_key": "label"}],
    "slicing_specs": [{}, {"feature_keys": ["region"]}],
    "metrics_specs": [
        {
            "metrics": [
                {"class_name": "ExampleCount"},
                {
                    "class_name": "AUC",
                    "threshold": {
                        "value_threshold": {"lower_bound": 0.6},
                        "change_threshold": {"direction": "HIGHER_IS_BETTER", "absolute": -0.01},
                    },
                },
                {"class_name": "BinaryAccuracy"},
            ]
        }
    ],
}

# [START howto_asset_continuous_training]
churn_data = Asset(
    "churn_training_data",
    uri=f"file://{DATA_ROOT}",
    watchers=[
        AssetWatcher(
            name="churn_training_data_versions",
            trigger=DatasetVersionTrigger(DATA_ROOT, pattern="version=*", poll_interval=2.0),
        )
    ],
)
# The promote task's outlet: an event each time a promotion moves the champion.
churn_champion = Asset("churn_champion")
# [END howto_asset_continuous_training]


# Where the training gang runs: 2 worker processes on the Airflow worker, in the step environment
# ([ml_provider] step_python; without it, the worker's own interpreter, which then needs TensorFlow).
LOCAL_WORKERS: dict[str, Any] = {"placement": "interpreter"}


def training_pipeline(version_uri: Any, train_on: dict[str, Any] = LOCAL_WORKERS) -> tuple[Any, Any]:
    """validate -> (tune) -> train -> [evaluate, infra_validate] -> promote on ``version_uri``."""
    # [START howto_continuous_training_pipeline]
    validate = DataValidationOperator(
        task_id="validate",
        data_uri=version_uri,
        schema_uri="{{ params.state_root }}/schema/schema.pbtxt",
        on_anomaly="skip",  # a bad version stops here: nothing is trained on it
    )

    @task.branch
    def tune_or_train(params: dict[str, Any] | None = None) -> list[str]:
        # train follows both ways; with tuning it waits for tune (its other upstream).
        return ["tune", "train"] if (params or {}).get("tune_trials") else ["train"]

    tune = HyperparameterTuningOperator(  # optional: runs when params.tune_trials > 0
        task_id="tune",
        run_fn=RUN_FN,
        train_uri=version_uri,
        metric="val_auc",
        search_space={
            "learning_rate": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
            "hidden_units": {"type": "int", "low": 8, "high": 64, "step": 8},
        },
        hyperparameters={"epochs": "{{ params.epochs }}", "batch_size": 256},
        n_trials="{{ params.tune_trials }}",
        workers=2,
        seed=7,
    )
    train = DistributedTrainingOperator(
        task_id="train",
        run_fn=RUN_FN,
        train_uri=version_uri,
        hyperparameters=HYPERPARAMETERS,
        trigger_rule="none_failed_min_one_success",  # after tune, or straight after the branch
        strategy="multi_worker_mirrored",
        workers="{{ params.workers }}",
        seed=7,
        **train_on,  # the placement and its settings
    )
    evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri=MODEL_URI,
        data_uri=version_uri,
        registered_model_name="{{ params.model_name }}",  # baseline: its "champion"
        eval_config=EVAL_CONFIG,
        on_not_blessed="skip",  # not better than the champion: keep the champion
    )
    infra_validate = InfraValidationOperator(
        task_id="infra_validate",
        model_uri=MODEL_URI,
        data_uri=version_uri,
        drop_columns=["label"],
        max_latency_ms={"p50": 200, "p99": 1000},
    )
    promote = PromoteModelOperator(
        task_id="promote",
        model_name="{{ params.model_name }}",
        evaluation=evaluate.output,
        infra_validation=infra_validate.output,
        outlets=[churn_champion],
    )
    branch = tune_or_train()
    validate >> branch >> [tune, train]
    tune >> train >> [evaluate, infra_validate] >> promote
    # [END howto_continuous_training_pipeline]
    return validate, promote


with DAG(
    dag_id="continuous_training",
    schedule=[churn_data],
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    params=PARAMS,
    default_args={"mlflow_experiment": "continuous_training"},
    tags=["example", "ml", "continuous-training"],
) as dag:
    training_pipeline(dataset_version(churn_data, field="uri"))

# [START howto_continuous_training_scheduled]
with DAG(
    dag_id="continuous_training_scheduled",
    schedule=timedelta(hours=1),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    params=PARAMS,
    default_args={"mlflow_experiment": "continuous_training"},
    tags=["example", "ml", "continuous-training"],
) as scheduled_dag:
    wait = DatasetVersionSensor(
        task_id="wait_for_version",
        uri=DATA_ROOT,
        deferrable=True,
        poke_interval=30,
        timeout=3000,
        soft_fail=True,  # no new version this hour: the run is skipped, not failed
    )
    first, _ = training_pipeline("{{ ti.xcom_pull('wait_for_version')['uri'] }}")
    wait >> first
# [END howto_continuous_training_scheduled]


# [START howto_continuous_training_kubernetes]
# The same loop with the training gang as pods: an Indexed Job of ``workers`` pods from the step
# image (docker/Dockerfile.steps), waited for in the triggerer. The pods read the data, so it lives
# in object storage. Only training is placed here; validation and evaluation run on the Airflow
# worker (passing them placement="pod" too keeps TensorFlow off the workers: see docs/placements.md).
LAKE = os.environ.get("AIRFLOW_ML_EXAMPLE_LAKE", "s3://ml-lake/churn_training_data")
churn_lake = Asset(
    "churn_training_data_lake",
    uri=LAKE,
    watchers=[
        AssetWatcher(
            name="churn_training_data_lake_versions",
            trigger=DatasetVersionTrigger(
                LAKE, pattern="version=*", conn_id="aws_default", poll_interval=60.0
            ),
        )
    ],
)
ON_KUBERNETES: dict[str, Any] = {
    "placement": "pod",
    "kubernetes_conn_id": "kubernetes_default",
    "image": "registry.example.com/ml/airflow-ml-steps:0.1.0",
    "namespace": "ml-training",
    "container_resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
    "service_account": "ml-training",
    "mlflow_secret": "mlflow-credentials",  # MLFLOW_TRACKING_TOKEN (or username/password) for the pods
    "start_timeout": 900,
    "deferrable": True,
}

with DAG(
    dag_id="continuous_training_kubernetes",
    schedule=[churn_lake],
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    params=PARAMS,
    default_args={"mlflow_experiment": "continuous_training", "retries": 1},
    tags=["example", "ml", "continuous-training", "kubernetes"],
) as kubernetes_dag:
    training_pipeline(dataset_version(churn_lake, field="uri"), train_on=ON_KUBERNETES)
# [END howto_continuous_training_kubernetes]


# [START howto_deploy_on_champion]
# The guard's window and check interval: a real guard watches for a while (15 minutes here); the
# demo (scripts/demo.py) shortens them through these variables, read when the file is parsed.
GUARD_WINDOW = float(os.environ.get("AIRFLOW_ML_EXAMPLE_GUARD_WINDOW", "900"))
GUARD_INTERVAL = float(os.environ.get("AIRFLOW_ML_EXAMPLE_GUARD_INTERVAL", "30"))

with DAG(
    dag_id="deploy_champion",
    schedule=[churn_champion],
    catchup=False,
    params={
        "model_name": Param("churn", type="string"),
        "guard_window": Param(GUARD_WINDOW, type="number", exclusiveMinimum=0),
        "guard_interval": Param(GUARD_INTERVAL, type="number", exclusiveMinimum=0),
    },
    default_args={"mlflow_experiment": "deploy_champion"},
    tags=["example", "ml", "deployment"],
) as deploy_dag:

    @task
    def deploy(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Look up the version now holding ``champion``; a real DAG would roll it out here."""
        from airflow_ml_provider.hooks.mlflow import MlflowHook

        name = (params or {})["model_name"]
        version = MlflowHook().get_alias_version(name, "champion")
        if version is None:
            raise ValueError(f"Registered model {name!r} has no 'champion' alias: nothing to deploy.")
        return {"model_name": name, "version": str(version.version), "source": str(version.source)}

    # [START howto_champion_guard]
    # Serving logs the AUC it measures on labelled live traffic to the MLflow experiment
    # "<model>_serving", one run per version tagged model_name and model_version:
    #     mlflow.set_experiment("churn_serving")
    #     with mlflow.start_run(tags={"model_name": "churn", "model_version": "2"}):
    #         mlflow.log_metric("live_auc", 0.81, step=n)
    # The guard watches the deployed version's live_auc: 3 checks in a row below 0.7 roll
    # "champion" back to "previous_champion" (never over a newer promotion), and the rollback's
    # asset event (churn_champion) runs this DAG again, which deploys the restored version.
    guard = ChampionGuardOperator(
        task_id="guard",
        model_name="{{ params.model_name }}",
        version="{{ ti.xcom_pull('deploy')['version'] }}",
        metric="live_auc",
        serving_experiment="{{ params.model_name }}_serving",
        lower_bound=0.7,
        window="{{ params.guard_window }}",
        check_interval="{{ params.guard_interval }}",
        consecutive_breaches=3,
        rollback_assets=[churn_champion],
        deferrable=True,  # waits in the triggerer, not in a worker slot
    )
    deploy() >> guard
    # [END howto_champion_guard]
# [END howto_deploy_on_champion]
