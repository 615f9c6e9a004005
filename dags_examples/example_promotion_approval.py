"""
Example: a person approves a promotion before the champion moves.

``evaluate`` compares a candidate model (any MLflow model URI: the ``train`` task of a training
DAG, a notebook's logged model) with the version holding alias ``champion`` of the registered
model; a candidate that is not blessed skips the rest. A blessed one waits in ``approve``
(Airflow's ``ApprovalOperator``, state ``awaiting_input``, no worker slot held) until someone
answers in the Airflow UI (Browse > Required Actions, or the task's Required Actions tab) or
through the REST API. The request shows the candidate, its metrics next to the champion's and
links to the evaluation report in MLflow. **Approve** runs ``promote``, which moves ``champion``
with compare-and-set; **Reject** skips ``promote`` and the champion stays. No answer within two
days counts as Reject.

Put the same ``approve`` task between ``evaluate`` and ``promote`` of a continuous-training DAG
to gate its promotions the same way.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Param

from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.promotion import PromoteModelOperator

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
                {"class_name": "Precision"},
                {"class_name": "Recall"},
            ]
        }
    ],
}


# [START howto_approval_body]
def approval_body(ti: Any, evaluate_task: str = "evaluate") -> str:
    """What the approver reads (Markdown): the candidate, its metrics against the champion's, links."""
    record = ti.xcom_pull(task_ids=evaluate_task) or {}
    # The evaluation's MLflow run (or, when it reused a cached result, the run that computed it).
    run_url = ti.xcom_pull(task_ids=evaluate_task, key="mlflow_cache_source_url") or ti.xcom_pull(
        task_ids=evaluate_task, key="mlflow_run_url"
    )
    baseline = record.get("baseline")
    champion = f"version {baseline['version']} (`{baseline['model_uri']}`)" if baseline else "none yet"
    ours, theirs = record.get("metrics") or {}, record.get("baseline_metrics") or {}
    rows = []
    for name in sorted(set(ours) - {"example_count"}):
        if name in theirs:
            rows.append(
                f"| {name} | {ours[name]:.4g} | {theirs[name]:.4g} | {ours[name] - theirs[name]:+.4g} |"
            )
        else:
            rows.append(f"| {name} | {ours[name]:.4g} | - | - |")
    links = (
        f"[Evaluation report]({run_url}/artifacts/evaluation/report.html) · [MLflow run]({run_url})"
        if run_url
        else f"Evaluation report: `{record.get('report')}`"
    )
    return "\n".join(
        [
            f"**Candidate:** `{record.get('candidate_model_uri')}`  ",
            f"**Champion of `{record.get('registered_model_name')}`:** {champion}  ",
            f"**Evaluated on:** dataset version {record.get('dataset_version') or '-'} "
            f"({record.get('example_count')} examples), blessed by every threshold.",
            "",
            "| metric | candidate | champion | change |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            links,
            "",
            "Approve: `champion` moves to the candidate (refused if the champion changes before then). "
            "Reject: nothing changes.",
        ]
    )


# [END howto_approval_body]

with DAG(
    dag_id="example_promotion_approval",
    schedule=None,
    catchup=False,
    render_template_as_native_obj=True,
    params={
        "candidate_model_uri": Param(type="string", minLength=1, description="e.g. models:/m-..."),
        "data_uri": Param(type="string", minLength=1, description="the evaluation dataset version"),
        "model_name": Param("churn_example", type="string"),
    },
    user_defined_macros={"approval_body": approval_body},
    tags=["example", "ml", "evaluation"],
) as dag:
    evaluate = ModelEvaluationOperator(
        task_id="evaluate",
        candidate_model_uri="{{ params.candidate_model_uri }}",
        data_uri="{{ params.data_uri }}",
        registered_model_name="{{ params.model_name }}",
        eval_config=EVAL_CONFIG,
        on_not_blessed="skip",  # not blessed: nobody is asked, nothing is promoted
    )

    # [START howto_promotion_approval]
    approve = ApprovalOperator(
        task_id="approve",
        subject="Promote the new {{ params.model_name }} model to champion?",
        body="{{ approval_body(ti) }}",
        response_timeout=timedelta(days=2),
        defaults="Reject",  # no answer in time: nothing changes
    )
    promote = PromoteModelOperator(
        task_id="promote",
        model_name="{{ params.model_name }}",
        evaluation=evaluate.output,
        approval=approve.output,  # who approved, and when, goes to the version and the history
    )
    evaluate >> approve >> promote
    # [END howto_promotion_approval]
