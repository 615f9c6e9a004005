"""The step entrypoint records its result in MLflow (a pod shares no file with its task).

``python -m airflow_ml_provider.ml <step> ... --mlflow-run RUN_ID`` runs as a real subprocess with
only MLflow's own variables to find the real test server, as in a pod; the artifacts are read back
from that server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.harness import MlflowServer, free_port

from airflow_ml_provider.ml.__main__ import STEP_RESULT_ARTIFACT

pytestmark = pytest.mark.integration


def _step(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "JOB_COMPLETION_INDEX"
    }
    # A dead server fails at once, not after MLflow's 4 minutes of retries.
    clean["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    return subprocess.run(
        [sys.executable, "-m", "airflow_ml_provider.ml", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )


@pytest.fixture
def run_id(mlflow_client: Any) -> str:
    experiment = mlflow_client.create_experiment(f"step-entrypoint-{uuid.uuid4().hex[:8]}")
    return str(mlflow_client.create_run(experiment).info.run_id)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    outputs = tmp_path / "outputs"
    (outputs / "model").mkdir(parents=True)
    (outputs / "model" / "weights.txt").write_text("0.5 0.25\n")
    (outputs / "report.html").write_text("<p>ok</p>")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"payload": {"accuracy": 0.9}, "output_dir": str(outputs)}))
    return {"spec": spec, "result": tmp_path / "result.json", "outputs": outputs}


def _artifact_json(client: Any, run_id: str, path: str, dst: Path) -> Any:
    dst.mkdir(exist_ok=True)
    return json.loads(Path(client.download_artifacts(run_id, path, str(dst))).read_text())


def _artifact_paths(client: Any, run_id: str, path: str | None = None) -> list[str]:
    found: list[str] = []
    for info in client.list_artifacts(run_id, path):
        found += _artifact_paths(client, run_id, info.path) if info.is_dir else [info.path]
    return sorted(found)


@pytest.mark.parametrize("completion_index", [None, "0"])
def test_the_result_and_the_outputs_are_recorded_in_the_run(
    mlflow_server: MlflowServer,
    mlflow_client: Any,
    run_id: str,
    files: dict[str, Path],
    tmp_path: Path,
    completion_index: str | None,
) -> None:
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url}
    if completion_index is not None:
        env["JOB_COMPLETION_INDEX"] = completion_index
    done = _step(
        "echo",
        *("--spec", str(files["spec"]), "--result", str(files["result"])),
        *("--mlflow-run", run_id, "--outputs-artifact-path", "training/outputs"),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    written = json.loads(files["result"].read_text())
    assert written == {"payload": {"accuracy": 0.9}}
    assert _artifact_json(mlflow_client, run_id, STEP_RESULT_ARTIFACT, tmp_path / "dl") == written
    assert _artifact_paths(mlflow_client, run_id) == [
        STEP_RESULT_ARTIFACT,
        "training/outputs/model/weights.txt",
        "training/outputs/report.html",
    ]
    weights = mlflow_client.download_artifacts(
        run_id, "training/outputs/model/weights.txt", str(tmp_path / "dl")
    )
    assert Path(weights).read_text() == "0.5 0.25\n"
    assert f"result recorded in MLflow run {run_id} as {STEP_RESULT_ARTIFACT}" in done.stderr


def test_without_outputs_path_only_the_result_is_recorded(
    mlflow_server: MlflowServer, mlflow_client: Any, run_id: str, files: dict[str, Path]
) -> None:
    done = _step(
        "echo",
        *("--spec", str(files["spec"]), "--result", str(files["result"]), "--mlflow-run", run_id),
        env={"MLFLOW_TRACKING_URI": mlflow_server.url},
    )
    assert done.returncode == 0, done.stderr
    assert _artifact_paths(mlflow_client, run_id) == [STEP_RESULT_ARTIFACT]


def test_a_worker_that_is_not_the_chief_records_nothing(
    mlflow_server: MlflowServer, mlflow_client: Any, run_id: str, files: dict[str, Path]
) -> None:
    done = _step(
        "echo",
        *("--spec", str(files["spec"]), "--result", str(files["result"])),
        *("--mlflow-run", run_id, "--outputs-artifact-path", "outputs"),
        env={"MLFLOW_TRACKING_URI": mlflow_server.url, "JOB_COMPLETION_INDEX": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(files["result"].read_text()) == {"payload": {"accuracy": 0.9}}
    assert _artifact_paths(mlflow_client, run_id) == []


def test_a_missing_output_dir_is_a_warning_and_the_result_is_still_recorded(
    mlflow_server: MlflowServer, mlflow_client: Any, run_id: str, tmp_path: Path
) -> None:
    spec, result = tmp_path / "spec.json", tmp_path / "result.json"
    spec.write_text(json.dumps({"payload": 1, "output_dir": str(tmp_path / "never-written")}))
    done = _step(
        "echo",
        *("--spec", str(spec), "--result", str(result), "--mlflow-run", run_id),
        *("--outputs-artifact-path", "outputs"),
        env={"MLFLOW_TRACKING_URI": mlflow_server.url},
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING airflow_ml_provider.ml: Step echo: the spec's output_dir" in done.stderr
    assert _artifact_paths(mlflow_client, run_id) == [STEP_RESULT_ARTIFACT]


@pytest.mark.parametrize("failure", ["no such run", "server down"])
def test_an_upload_failure_exits_1_with_one_line_and_keeps_the_result(
    mlflow_server: MlflowServer, files: dict[str, Path], failure: str
) -> None:
    if failure == "no such run":
        run, tracking_uri, shown = uuid.uuid4().hex, mlflow_server.url, mlflow_server.url
    else:
        port = free_port()
        run, tracking_uri = uuid.uuid4().hex, f"http://ci:s3cret-pw@127.0.0.1:{port}"
        shown = f"http://127.0.0.1:{port}"
    done = _step(
        "echo",
        *("--spec", str(files["spec"]), "--result", str(files["result"]), "--mlflow-run", run),
        env={"MLFLOW_TRACKING_URI": tracking_uri},
    )
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    assert f"recording the result in MLflow run {run} at {shown} failed" in errors[0]
    assert "check that the tracking server is reachable from here, that the run exists" in errors[0]
    assert "Traceback" not in done.stderr
    assert "s3cret-pw" not in done.stderr
    assert json.loads(files["result"].read_text()) == {"payload": {"accuracy": 0.9}}


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["--outputs-artifact-path", "outputs"],
            {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"},
            "needs --mlflow-run",
        ),
        (["--mlflow-run", "abc"], {}, "--mlflow-run abc needs MLFLOW_TRACKING_URI"),
    ],
)
def test_mlflow_options_are_checked_before_the_step_runs(
    files: dict[str, Path], args: list[str], env: dict[str, str], expected: str
) -> None:
    done = _step("echo", "--spec", str(files["spec"]), "--result", str(files["result"]), *args, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and expected in done.stderr
    assert "Running step" not in done.stderr
    assert not files["result"].exists()
