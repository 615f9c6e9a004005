"""
Example: train, evaluate against the champion, infra-validate, and promote.

``train`` fits the demo classifier on one dataset version; ``evaluate`` compares it with the
version holding alias ``champion`` of the registered model, per region and channel, with TFMA
metrics and thresholds (the first run has no champion: value thresholds alone decide), on the
next dataset version and on a trusted holdout, and blesses it only if it passes on both (labels
corrupted in the new version fool a comparison on that version alone, not one on the holdout);
``infra_validate`` loads the candidate in a separate process and times predictions; ``promote``
registers the candidate and moves ``champion`` to it only if it is blessed by both and the
champion is still the one it was compared with. Each task's MLflow run holds its report.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.infra_validation import InfraValidationOperator
from airflow_ml_provider.operators.promotion import PromoteModelOperator
from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.training import DistributedTrainingOperator

RUN_DIR = "{{ params.data_root }}/{{ run_id | replace(':', '-') | replace('+', '-') }}"
VERSIONS = "ti.xcom_pull('generate_data')['versions']"
# [START howto_trusted_holdout]
# A fixed, versioned holdout: curated once, checked by people, never written by the pipeline that
# lands new versions (e.g. "s3://data/churn/holdout/version=0001"). A new holdout is a new version.
HOLDOUT_URI = f"{RUN_DIR}/holdout/version=0001"
# [END howto_trusted_holdout]
# The training task returns a dict; a key of it is read with a template (``train.output["model_uri"]``
# would look for an XCom *named* model_uri).
MODEL_URI = "{{ ti.xcom_pull('train')['model_uri'] }}"

# [START howto_eval_config]
EVAL_CONFIG = {
    "model_specs": [{"label_key": "label"}],
    "slicing_specs": [{}, {"feature_keys": ["region"]}, {"feature_keys": ["channel"]}],
    "metrics_specs": [
        {
            "metrics": [
                {"class_name": "ExampleCount"},
                {
                    "class_name": "AUC",
                    "threshold": {
                        # Absolute floor, checked on every run (also the first).
                        "value_threshold": {"lower_bound": 0.6},
                        # Against the champion: at most 0.01 worse on every slice.
                        "change_threshold": {"direction": "HIGHER_IS_BETTER", "absolute": -0.01},
                    },
                },
                {"class_name": "BinaryAccuracy"},
                {"class_name": "Precision"},
                {"class_name": "Recall"},
                {"class_name": "Calibration"},
            ]
        }
    ],
}
# [END howto_eval_config]

with DAG(
    dag_id="example_model_blessing",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "data_root": Param("/tmp/airflow-ml-provider/blessing-demo", type="string"),
        "rows": Param(8000, type="integer", minimum=500),
        "epochs": Param(3, type="integer", minimum=1),
        "model_name": Param("churn_example", type="string"),
    },
    tags=["example", "ml", "evaluation"],
) as dag:
    generate = MLStepOperator(
        task_id="generate_data",
        step="generate_dataset",
        spec={"root": f"{RUN_DIR}/data", "versions": 2, "rows": "{{ params.rows }}"},
    )
    # Stands in for the curated holdout: the same rows on every run (a fixed seed, its own folder).
    generate_holdout = MLStepOperator(
        task_id="generate_holdout",
        step="generate_dataset",
        spec={"root": f"{RUN_DIR}/holdout", "versions": [1], "rows": "{{ params.rows }}", "seed": 99},
    )
    train = DistributedTrainingOperator(
        task_id="train",
        run_fn="airflow_ml_provider.ml.training.demo:run_fn",
        train_uri="{{ " + VERSIONS + "[0]['uri'] }}",
        hyperparameters={"epochs": "{{ params.epochs }}", "batch_size": 256, "learning_rate": 0.01},
        workers=1,
        seed=7,
    )

    # [START howto_operator_model_evaluation]
    evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri=MODEL_URI,
        data_uri="{{ " + VERSIONS + "[1]['uri'] }}",
        registered_model_name="{{ params.model_name }}",  # baseline: its alias "champion"
        eval_config=EVAL_CONFIG,
        holdout_uri=HOLDOUT_URI,  # its version, 0001, goes into the record
        evaluate_on="both",  # blessed only if the thresholds hold on the new version and the holdout
        on_not_blessed="fail",
    )
    # [END howto_operator_model_evaluation]

    # [START howto_operator_infra_validation]
    infra_validate = InfraValidationOperator(
        task_id="infra_validate",
        model_uri=MODEL_URI,
        data_uri="{{ " + VERSIONS + "[1]['uri'] }}",
        drop_columns=["label"],
        max_latency_ms={"p50": 200, "p99": 1000},
    )
    # [END howto_operator_infra_validation]

    # [START howto_operator_promote_model]
    promote = PromoteModelOperator(
        task_id="promote",
        model_name="{{ params.model_name }}",
        evaluation=evaluate.output,
        infra_validation=infra_validate.output,
    )
    # [END howto_operator_promote_model]

    generate >> train >> [evaluate, infra_validate] >> promote
    generate_holdout >> evaluate
