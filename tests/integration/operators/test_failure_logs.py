"""
What a failed task's log says: one readable error, said once.

- A ``run_fn`` (or tuning objective) that does not resolve fails the task before any worker starts,
  checked in the workers' interpreter without importing TensorFlow, with one error and one traceback.
- A step that raises in-process prints one traceback (the step's), not a chained second copy.
- A step that fails in another interpreter: its output (with its traceback) is in the log once,
  and the task's error names the failure in one line instead of repeating the output.

Real ``dag.test()`` runs (tests/dags/failing_step_dags.py) against the session's MLflow server;
``dag.test()`` writes the task logs to stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.harness import load_dag, run_dag
from support.step_env import has_tensorflow_stack, step_python

from airflow_ml_provider.exceptions import StepFailed
from airflow_ml_provider.runners.gang import GangRunner
from airflow_ml_provider.runners.kubernetes_objects import GangPodSettings, indexed_job

pytestmark = pytest.mark.integration

# Where the operators run their steps ([ml_provider] step_python, set by tests/conftest.py).
STEP_PYTHON = step_python()


def _task_log(capfd: pytest.CaptureFixture[str], dag_id: str, conf: dict | None = None) -> str:
    """Run the DAG, which must fail; its task's log."""
    capfd.readouterr()
    run_dag(load_dag(dag_id), conf=conf, expect="failed")
    return capfd.readouterr().out


@pytest.mark.parametrize(
    ("run_fn", "problem"),
    [
        ("training_fns:does_not_exist", "defines no 'does_not_exist' at its top level"),
        ("no_such_module_4711:run_fn", "no module named 'no_such_module_4711'"),
    ],
)
def test_a_run_fn_that_does_not_resolve_fails_before_any_worker_starts(
    airflow_db, mlflow_conn, capfd, run_fn, problem
):
    log = _task_log(capfd, "training_bad_run_fn", {"run_fn": run_fn, "workers": 2})
    said = [line for line in log.splitlines() if "does not resolve" in line]
    assert len(said) == 1, said  # said once
    assert f"Step 'train_model' cannot start: run_fn {run_fn!r} does not resolve in {STEP_PYTHON}" in said[0]
    assert problem in said[0]
    assert log.count("Traceback (most recent call last)") == 1
    assert "[worker" not in log and "[step train_model]" not in log  # no worker ever started


def test_a_tuning_objective_that_does_not_resolve_stops_the_gang_before_it_starts(tmp_path):
    spec = {"objective": {"kind": "function", "ref": "tuning_fns:no_such_objective"}}
    gang = GangRunner([{}, {}], env={"PYTHONPATH": str(Path(__file__).parents[2] / "dags")})
    with pytest.raises(StepFailed) as info:
        gang.run("tune", spec)
    assert str(info.value).startswith("Step 'tune' cannot start: objective 'tuning_fns:no_such_objective'")
    assert info.value.returncode == 2 and info.value.__cause__ is None


def test_the_pod_entrypoint_rejects_a_bad_run_fn_in_one_line_without_importing_tensorflow(tmp_path):
    """A Kubernetes pod runs the same entrypoint; it checks before TensorFlow, and the Job fails at once."""
    spec = {"run_fn": "no_such_module_4711:run_fn", "train_uri": "s3://lake/x", "strategy": "one_device"}
    job = indexed_job("gang-x", "train_model", spec, GangPodSettings(image="img", namespace="ml", workers=2))
    # A bad run_fn exits 2, an application error: the pod failure policy fails the Job at once.
    fail_job = job["spec"]["podFailurePolicy"]["rules"][1]
    assert fail_job["action"] == "FailJob" and 2 in fail_job["onExitCodes"]["values"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    spec_file, result_file = tmp_path / "spec.json", tmp_path / "result.json"
    spec_file.write_text(json.dumps(spec))
    # TensorFlow that cannot be imported: the check must not need it.
    (tmp_path / "tensorflow").mkdir()
    (tmp_path / "tensorflow" / "__init__.py").write_text("raise ImportError('TensorFlow was imported')\n")
    _python, *args = container["command"]
    args = [
        str(spec_file) if a.endswith("spec.json") else str(result_file) if a.endswith("result.json") else a
        for a in args
    ]
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}, check=False,
    )  # fmt: skip
    output = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2, output
    assert output == [
        f"error: run_fn 'no_such_module_4711:run_fn' does not resolve in {sys.executable}: no module named "
        "'no_such_module_4711': install the package that holds it in this interpreter's environment, or put "
        "its folder on PYTHONPATH (the local launcher adds the DAG file's folder; for Kubernetes the module "
        "must be in the image)."
    ]


def test_a_step_failing_in_process_logs_one_traceback(airflow_db, mlflow_conn, capfd):
    log = _task_log(capfd, "step_raises_in_process")
    assert log.count("Traceback (most recent call last)") == 1
    assert "direct cause" not in log
    assert [line for line in log.splitlines() if "the step broke: 4711" in line] == [
        "airflow_ml_provider.exceptions.StepFailed: Step 'echo' failed in-process: RuntimeError: the step broke: 4711"
    ]
    assert 'airflow_ml_provider/ml/basic.py", line' in log  # the frame where the step raised


def test_a_step_failing_in_another_interpreter_shows_its_output_once(airflow_db, mlflow_conn, capfd):
    log = _task_log(capfd, "step_raises_in_python")
    # The child's traceback, streamed as it was written, once; then the task's error, in one line.
    assert log.count('airflow_ml_provider/ml/basic.py", line') == 1
    assert "Last lines" not in log
    assert log.count("Traceback (most recent call last)") == 2  # the step's, and Airflow's for the task
    [error] = [
        line for line in log.splitlines() if line.startswith("airflow_ml_provider.exceptions.StepFailed")
    ]
    assert error == (
        f"airflow_ml_provider.exceptions.StepFailed: Step 'echo' failed in {STEP_PYTHON} (exit code 1): "
        "RuntimeError: the step broke: 4712 (its output is above)"
    )


@pytest.mark.skipif(has_tensorflow_stack(), reason="this interpreter has the TensorFlow stack")
def test_a_tensorflow_step_on_the_worker_of_airflows_environment_says_where_to_run_it(
    airflow_db, mlflow_conn, capfd, tmp_path
):
    data = tmp_path / "data.csv"
    data.write_text("age,income\n31,5.0\n47,7.5\n")
    conf = {"data_uri": str(data), "schema_uri": str(tmp_path / "schema.pbtxt")}
    log = _task_log(capfd, "tensorflow_step_on_the_worker", conf)
    said = [line for line in log.splitlines() if "(the TensorFlow stack)" in line]
    assert len(said) == 1, said  # said once
    assert said[0].startswith(
        "airflow_ml_provider.exceptions.StepEnvironmentError: Step 'infer_schema' needs "
    )
    assert f"{sys.executable} (Python {sys.version.split()[0]}) cannot import" in said[0]
    assert "make step-env" in said[0] and "[ml_provider] step_python" in said[0]
    assert log.count("Traceback (most recent call last)") == 1
    assert not (tmp_path / "schema.pbtxt").exists()
