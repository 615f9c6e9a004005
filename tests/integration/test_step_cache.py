"""
The step cache for real: DAG runs with ``dag.test()`` against a real mlflow server, real TFDV and
TFMA. A second run on the same inputs reuses the first run's result; any changed input, parameter
or code file, a deleted source artifact, ``cache=False`` or the DAG-level switch runs the step.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from support.harness import load_dag, run_dag, task_mlflow_run, task_xcom
from support.model_fixtures import churn_version, log_churn_model

from airflow_ml_provider.cache import TAG_CACHE_HIT, TAG_CACHE_KEY, TAG_CACHE_SOURCE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache-data")
    return Path(churn_version(root, rows=600, seed=5))


def _conf(data_uri: Path | str, **extra: Any) -> dict[str, Any]:
    return {"experiment": f"cache_{uuid.uuid4().hex[:8]}", "data_uri": str(data_uri), **extra}


def _task_run(client: Any, conf: dict[str, Any], dag_run: Any, task_id: str) -> Any:
    return task_mlflow_run(client, conf["experiment"], dag_run, task_id)


def _artifacts(client: Any, run: Any, path: str = "") -> set[str]:
    return {a.path for a in client.list_artifacts(run.info.run_id, path)}


def test_validation_hits_on_the_same_inputs_and_misses_on_any_change(
    airflow_db, mlflow_conn, mlflow_client, data, tmp_path, record_property
):
    dag = load_dag("cache_validation")
    conf = _conf(data, schema_uri=str(tmp_path / "schema.pbtxt"))
    first = run_dag(dag, conf=conf)  # infers and stores the schema
    second = run_dag(dag, conf=conf)  # validates against it: the schema file is an input
    third = run_dag(dag, conf=conf)  # nothing changed
    runs = [_task_run(mlflow_client, conf, r, "validate") for r in (first, second, third)]
    assert [r.data.tags.get(TAG_CACHE_HIT) for r in runs] == ["false", "false", "true"]
    assert runs[2].data.tags[TAG_CACHE_SOURCE] == runs[1].info.run_id
    assert task_xcom(third, "validate") == task_xcom(second, "validate")
    assert "validation" not in _artifacts(mlflow_client, runs[2])  # the step did not run
    assert runs[1].data.tags[TAG_CACHE_KEY] != runs[0].data.tags[TAG_CACHE_KEY]

    # A changed parameter misses.
    changed = run_dag(dag, conf={**conf, "drift_numeric": 0.25})
    assert _task_run(mlflow_client, conf, changed, "validate").data.tags[TAG_CACHE_HIT] == "false"

    # A changed data file misses (same size, new content and mtime).
    copy = tmp_path / "copy" / "version=0001"
    shutil.copytree(data, copy)
    conf_copy = {**conf, "data_uri": str(copy)}
    run_dag(dag, conf=conf_copy)
    assert (
        _task_run(mlflow_client, conf, run_dag(dag, conf=conf_copy), "validate").data.tags[TAG_CACHE_HIT]
        == "true"
    )
    csv = next(copy.glob("*.csv"))
    text = csv.read_text()
    time.sleep(0.01)
    csv.write_text(text.replace(",0\n", ",1\n", 1))
    edited = run_dag(dag, conf=conf_copy)
    assert _task_run(mlflow_client, conf, edited, "validate").data.tags[TAG_CACHE_HIT] == "false"
    record_property(
        "measured", "3 runs on the same inputs: miss (schema created), miss (schema now an input), hit"
    )


def test_a_failed_gate_is_reused_and_fails_the_same_way_until_an_input_changes(
    airflow_db, mlflow_conn, mlflow_client, data, tmp_path
):
    schema = tmp_path / "schema.pbtxt"
    conf = _conf(data, schema_uri=str(schema))
    run_dag(load_dag("cache_validation"), conf=conf)  # infers the schema from the clean version
    bad = tmp_path / "bad" / "version=0001"
    shutil.copytree(data, bad)
    csv = next(bad.glob("*.csv"))
    csv.write_text(csv.read_text().replace(",west,", ",atlantis,"))  # a region the schema does not know
    gate = load_dag("cache_validation_gate")
    conf_bad = {**conf, "data_uri": str(bad)}
    runs = [_task_run(mlflow_client, conf, run_dag(gate, conf=conf_bad, expect="failed"), "validate")]
    runs.append(_task_run(mlflow_client, conf, run_dag(gate, conf=conf_bad, expect="failed"), "validate"))
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert [r.data.tags.get(TAG_CACHE_HIT) for r in runs] == ["false", "true"]
    assert runs[1].data.tags[TAG_CACHE_SOURCE] == runs[0].info.run_id
    assert "validation" in _artifacts(mlflow_client, runs[0]) and "validation" not in _artifacts(
        mlflow_client, runs[1]
    )
    assert runs[1].data.metrics["anomaly_count"] == runs[0].data.metrics["anomaly_count"] > 0
    # The team curates the schema (accepts the new region): the schema file changed, so it runs again.
    text = schema.read_text()
    assert '"west"' in text
    schema.write_text(text.replace('value: "west"', 'value: "west"\n  value: "atlantis"', 1))
    curated = _task_run(mlflow_client, conf, run_dag(gate, conf=conf_bad), "validate")
    assert curated.info.status == "FINISHED" and curated.data.tags[TAG_CACHE_HIT] == "false"


def test_deleted_source_artifacts_miss_instead_of_a_broken_hit(
    airflow_db, mlflow_conn, mlflow_client, mlflow_server, data, tmp_path
):
    dag = load_dag("cache_validation")
    conf = _conf(data, schema_uri=str(tmp_path / "schema.pbtxt"))
    run_dag(dag, conf=conf)
    source = _task_run(mlflow_client, conf, run_dag(dag, conf=conf), "validate")
    (folder,) = mlflow_server.artifacts.glob(f"*/{source.info.run_id}/artifacts/validation")
    shutil.rmtree(folder)
    again = run_dag(dag, conf=conf)
    rerun = _task_run(mlflow_client, conf, again, "validate")
    assert rerun.data.tags[TAG_CACHE_HIT] == "false"
    assert any(p.startswith("validation") for p in _artifacts(mlflow_client, rerun))
    # The fresh run is now the source of the next hit.
    hit = _task_run(mlflow_client, conf, run_dag(dag, conf=conf), "validate")
    assert hit.data.tags[TAG_CACHE_SOURCE] == rerun.info.run_id


def test_a_training_source_whose_model_is_gone_is_a_miss(mlflow_conn, mlflow_client, mlflow_server, data):
    """Training's hit hands a model URI on: a source whose logged model lost its files is passed over."""
    from airflow_ml_provider.cache import record
    from airflow_ml_provider.hooks.mlflow import MlflowHook
    from airflow_ml_provider.operators.training import DistributedTrainingOperator
    from airflow_ml_provider.tracking import TaskRun

    experiment = f"cache_train_{uuid.uuid4().hex[:8]}"
    model_uri = log_churn_model(mlflow_server.url, experiment, str(data), "weak")
    experiment_id = mlflow_client.get_experiment_by_name(experiment).experiment_id
    hook = MlflowHook()
    operator = DistributedTrainingOperator(
        task_id="train", run_fn="airflow_ml_provider.ml.training.demo:run_fn", train_uri=str(data), cache=True
    )
    key = operator.step_cache_key("train_model", {"train_uri": str(data), "epochs": 1})
    assert key is not None
    source_id = mlflow_client.create_run(experiment_id).info.run_id
    source = TaskRun(hook, experiment_id, "", source_id)
    mlflow_client.log_text(source_id, "{}", "training/spec.json")  # as a training run logs its spec
    record(source, key, "train_model", {"model_uri": model_uri, "mlflow_run_id": source_id})
    source.flush()
    mlflow_client.set_terminated(source_id)
    current = TaskRun(hook, experiment_id, "", mlflow_client.create_run(experiment_id).info.run_id)

    hit = operator.find_cached(current, key)
    assert hit is not None and hit.run_id == source_id and hit.result["model_uri"] == model_uri

    model_id = model_uri.removeprefix("models:/")
    (folder,) = [p for p in mlflow_server.artifacts.glob(f"**/{model_id}") if p.is_dir()]
    shutil.rmtree(folder)
    assert operator.find_cached(current, key) is None


def test_cache_off_per_task_and_per_dag(airflow_db, mlflow_conn, mlflow_client, data, tmp_path):
    for dag_id in ("cache_validation_off", "cache_validation_dag_off"):
        dag = load_dag(dag_id)
        conf = _conf(data, schema_uri=str(tmp_path / f"{dag_id}.pbtxt"))
        # Three runs: the first stores the schema, which the second reads; the third would hit.
        runs = [_task_run(mlflow_client, conf, run_dag(dag, conf=conf), "validate") for _ in range(3)]
        assert [TAG_CACHE_HIT in r.data.tags for r in runs] == [False] * 3, dag_id
        assert all("validation" in _artifacts(mlflow_client, r) for r in runs)


@pytest.fixture(scope="module")
def models(mlflow_server: Any, data: Path) -> dict[str, str]:
    return {q: log_churn_model(mlflow_server.url, "cache_models", str(data), q) for q in ("weak", "good")}


def test_evaluation_hits_for_the_same_candidate_and_data_and_misses_for_another(
    airflow_db, mlflow_conn, mlflow_client, data, models
):
    dag = load_dag("cache_evaluation")
    conf = _conf(data, candidate_uri=models["weak"])
    first, second = run_dag(dag, conf=conf), run_dag(dag, conf=conf)
    other = run_dag(dag, conf={**conf, "candidate_uri": models["good"]})
    tags = [_task_run(mlflow_client, conf, r, "evaluate").data.tags for r in (first, second, other)]
    assert [t.get(TAG_CACHE_HIT) for t in tags] == ["false", "true", "false"]
    assert task_xcom(second, "evaluate") == task_xcom(first, "evaluate")
    assert task_xcom(other, "evaluate")["candidate_model_uri"] == models["good"]


STEP_SOURCE = """
def count_rows(spec):
    import glob
    rows = sum(sum(1 for _ in open(f)) - 1 for f in glob.glob(spec["data_uri"] + "/*.csv"))
    return {"rows": rows, "version": VERSION, "mlflow": {"metrics": {"rows": rows}}}

VERSION = "%s"
"""


def test_a_changed_user_code_file_misses(airflow_db, mlflow_conn, mlflow_client, data, tmp_path, monkeypatch):
    module = f"cache_user_step_{uuid.uuid4().hex[:8]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    # The step runs in the step environment ([ml_provider] step_python): the module must resolve there too.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    )
    source = tmp_path / f"{module}.py"
    source.write_text(STEP_SOURCE % "one")
    dag = load_dag("cache_custom_step")
    conf = _conf(data, step=f"{module}:count_rows")
    first, second = run_dag(dag, conf=conf), run_dag(dag, conf=conf)
    source.write_text(STEP_SOURCE % "two")
    sys.modules.pop(module, None)
    os.utime(source)
    third = run_dag(dag, conf=conf)
    tags = [_task_run(mlflow_client, conf, r, "step").data.tags for r in (first, second, third)]
    assert [t.get(TAG_CACHE_HIT) for t in tags] == ["false", "true", "false"]
    assert task_xcom(third, "step")["version"] == "two"


def test_a_rerun_with_the_champion_as_candidate_reuses_its_evaluation_and_promotes_nothing(
    airflow_db, mlflow_conn, mlflow_client, data, models
):
    dag = load_dag("cache_promote")
    name = f"cache_{uuid.uuid4().hex[:6]}"
    conf = _conf(data, candidate_uri=models["good"], model_name=name)
    first = run_dag(dag, conf=conf)
    assert task_xcom(first, "promote")["version"] == "1"
    second = run_dag(dag, conf=conf)  # the same model again: now the champion
    evaluation = _task_run(mlflow_client, conf, second, "evaluate")
    assert evaluation.data.tags[TAG_CACHE_HIT] == "true"  # the evaluation that promoted it
    assert (
        evaluation.data.tags[TAG_CACHE_SOURCE]
        == _task_run(mlflow_client, conf, first, "evaluate").info.run_id
    )
    promotion = task_xcom(second, "promote")
    assert promotion["already_champion"] is True and promotion["version"] == "1"
    assert [v.version for v in mlflow_client.search_model_versions(f"name = '{name}'")] == ["1"]
    model = mlflow_client.get_registered_model(name)
    assert model.aliases == {"champion": "1"} and model.tags["airflow_ml.alias_epoch.champion"] == "1"
