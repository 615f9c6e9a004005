"""One placement vocabulary for every step operator: arguments, defaults from the config, old names."""

from __future__ import annotations

from typing import Any

import pytest
from airflow.exceptions import AirflowProviderDeprecationWarning

from airflow_ml_provider.hooks.mlflow import MlflowSettings
from airflow_ml_provider.operators.evaluation import ModelEvaluationOperator
from airflow_ml_provider.operators.infra_validation import InfraValidationOperator
from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.operators.training import DistributedTrainingOperator
from airflow_ml_provider.operators.tuning import HyperparameterTuningOperator
from airflow_ml_provider.operators.validation import DataValidationOperator, SchemaInferenceOperator
from airflow_ml_provider.runners.kubernetes_objects import indexed_job

pytestmark = pytest.mark.unit

SETTINGS = MlflowSettings(
    tracking_uri="http://mlflow.ml:5000", registry_uri="http://mlflow.ml:5000", ui_url=None, username=None,
    password=None, token=None, insecure_tls=False, request_timeout=30.0, artifact_location=None,
)  # fmt: skip


def _operators(**kwargs: Any) -> list[MLStepOperator]:
    return [
        MLStepOperator(task_id="step", step="describe_dataset", spec={"data_uri": "/d"}, **kwargs),
        DataValidationOperator(task_id="validate", data_uri="/d", **kwargs),
        SchemaInferenceOperator(task_id="schema", data_uri="/d", schema_uri="/s.pbtxt", **kwargs),
        ModelEvaluationOperator(
            task_id="evaluate",
            candidate_model_uri="models:/m-1",
            eval_config={"x": 1},
            data_uri="/d",
            **kwargs,
        ),
        InfraValidationOperator(task_id="infra", model_uri="models:/m-1", data_uri="/d", **kwargs),
        DistributedTrainingOperator(task_id="train", run_fn="pkg.mod:run_fn", train_uri="/d", **kwargs),
        HyperparameterTuningOperator(
            task_id="tune", search_space={"lr": [0.1]}, objective_fn="pkg.mod:objective", **kwargs
        ),
    ]


@pytest.mark.parametrize("placement", ["worker", "interpreter", "pod"])
def test_every_operator_accepts_every_single_process_placement(placement: str) -> None:
    for operator in _operators(placement=placement, image="steps:1"):
        assert operator.placement_name == placement
        operator.check_placement()


def test_gangs_only_for_training_and_tuning_and_never_in_the_worker_process() -> None:
    for operator in _operators(placement="interpreter", workers=3):
        if operator.runs_as_gang:
            operator.check_placement()
        else:
            with pytest.raises(ValueError, match="this step runs in one process; leave workers=1"):
                operator.check_placement()
    train = DistributedTrainingOperator(
        task_id="train", run_fn="pkg.mod:run_fn", train_uri="/d", placement="worker", workers=2
    )
    with pytest.raises(ValueError, match="workers=2 needs placement='interpreter'"):
        train.check_placement()


def test_defaults_come_from_the_operator_then_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__ML_PROVIDER__STEP_PYTHON", raising=False)  # tests/conftest.py sets it
    validate = DataValidationOperator(task_id="v", data_uri="/d")
    train = DistributedTrainingOperator(task_id="t", run_fn="pkg.mod:run_fn", train_uri="/d")
    assert (validate.placement_name, train.placement_name) == ("worker", "interpreter")
    # The step environment alone: every step goes there (one setting).
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_PYTHON", "/opt/steps/bin/python")
    assert (validate.placement_name, train.placement_name) == ("interpreter", "interpreter")
    assert validate.resolved_python() == "/opt/steps/bin/python"
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__DEFAULT_PLACEMENT", "pod")
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_IMAGE", "registry/ml-steps:2")
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_NAMESPACE", "ml")
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_RESOURCES", '{"limits": {"memory": "1Gi"}}')
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_PYTHON", "/opt/steps/bin/python")
    assert (validate.placement_name, train.placement_name) == ("pod", "pod")
    validate.check_placement()  # the image comes from the config
    settings = validate.pod_settings(SETTINGS)
    assert (settings.image, settings.namespace) == ("registry/ml-steps:2", "ml")
    assert settings.resources == {"limits": {"memory": "1Gi"}}
    assert validate.resolved_python() == "/opt/steps/bin/python"
    # The DAG's own arguments win over the config.
    mine = DataValidationOperator(task_id="v", data_uri="/d", placement="worker", namespace="team")
    assert mine.placement_name == "worker" and mine.pod_settings(SETTINGS).namespace == "team"


def test_a_pod_needs_an_image_from_the_dag_or_the_config() -> None:
    operator = DataValidationOperator(task_id="v", data_uri="/d", placement="pod")
    with pytest.raises(ValueError, match=r"placement='pod' needs image=.*\[ml_provider\] step_image"):
        operator.check_placement()


@pytest.mark.parametrize(
    ("old", "placement"),
    [
        ({"runner": "in_process"}, "worker"),
        ({"runner": "python"}, "interpreter"),
        ({"launcher": "local"}, "interpreter"),
        ({"launcher": "kubernetes"}, "pod"),
    ],
)
def test_the_earlier_names_still_work_with_a_deprecation_warning(old: dict[str, str], placement: str) -> None:
    with pytest.warns(AirflowProviderDeprecationWarning, match=f"use placement='{placement}'"):
        operator = DistributedTrainingOperator(task_id="t", run_fn="pkg.mod:run_fn", train_uri="/d", **old)
    assert operator.placement_name == placement
    with pytest.warns(AirflowProviderDeprecationWarning, match="use step_env"):
        operator = DataValidationOperator(task_id="v", data_uri="/d", worker_env={"A": "1"})
    assert operator.step_env == {"A": "1"}


def test_placement_can_be_set_for_a_whole_dag_through_default_args() -> None:
    from airflow.sdk import DAG

    with DAG("placements", schedule=None, default_args={"placement": "pod", "image": "steps:1"}):
        operators = _operators()
    assert {op.placement_name for op in operators} == {"pod"}
    assert {op.image for op in operators} == {"steps:1"}


def test_a_single_step_pod_is_a_job_of_one_completion_without_a_gang_service() -> None:
    operator = DataValidationOperator(task_id="v", data_uri="s3://d/v1", placement="pod", image="steps:1")
    settings = operator.pod_settings(SETTINGS)
    assert settings.gang is False
    job = indexed_job(
        "v-1", "validate_data", {"data_uri": "s3://d/v1"}, settings, extra_args=["--mlflow-run", "r1"]
    )
    pod = job["spec"]["template"]["spec"]
    assert job["spec"]["completions"] == 1 and "subdomain" not in pod
    container = pod["containers"][0]
    assert "ports" not in container
    assert container["command"][-2:] == ["--mlflow-run", "r1"]
    gang = DistributedTrainingOperator(
        task_id="t", run_fn="pkg.mod:run_fn", train_uri="/d", placement="pod", image="steps:1", workers=2
    ).pod_settings(SETTINGS)
    assert gang.gang is True


def test_a_dag_file_importing_the_operators_loads_no_runner() -> None:
    """The runners load when a step runs, not when the DAG processor parses a DAG file."""
    import subprocess
    import sys

    code = (
        "import sys; import airflow_ml_provider.operators.training, airflow_ml_provider.operators.validation; "
        "print(sorted(m for m in sys.modules if m.startswith('airflow_ml_provider.runners')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# -- the pods' placement, Kueue, per-worker restarts ------------------------------------------

AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]}]}
            ]
        }
    }
}


def _train(**kwargs: Any) -> DistributedTrainingOperator:
    defaults: dict[str, Any] = {"placement": "pod", "image": "steps:1", "workers": 2, "deferrable": False}
    return DistributedTrainingOperator(
        task_id="train", run_fn="pkg.mod:run_fn", train_uri="/d", **{**defaults, **kwargs}
    )


def test_every_operator_takes_the_pod_arguments() -> None:
    given = {
        "gpus": 1, "gpu_resource": "amd.com/gpu", "affinity": AFFINITY, "priority_class_name": "ml-high",
        "queue_name": "team-a", "admission_timeout": 900.0, "worker_restarts": 2, "durable": False,
    }  # fmt: skip
    for operator in _operators(placement="pod", image="steps:1", **given):
        assert {name: getattr(operator, name) for name in given} == given
        operator.check_placement()
        settings = operator.pod_settings(SETTINGS)
        assert (settings.gpus, settings.gpu_resource, settings.affinity) == (1, "amd.com/gpu", AFFINITY)
        assert (settings.queue_name, settings.priority_class_name, settings.worker_restarts) == (
            "team-a", "ml-high", 2,
        )  # fmt: skip


def test_the_pod_arguments_default_to_no_accelerator_no_queue_three_restarts_and_durable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ("STEP_QUEUE_NAME", "STEP_PRIORITY_CLASS_NAME"):
        monkeypatch.delenv(f"AIRFLOW__ML_PROVIDER__{key}", raising=False)
    train = _train()
    assert (train.gpus, train.admission_timeout, train.worker_restarts, train.durable) == (0, None, 3, True)
    settings = train.pod_settings(SETTINGS)
    assert (settings.gpus, settings.gpu_resource, settings.queue_name, settings.priority_class_name) == (
        0, "nvidia.com/gpu", None, None,
    )  # fmt: skip
    job = indexed_job("t-1", "train_model", {}, settings)
    assert job["spec"]["backoffLimitPerIndex"] == 3 and "suspend" not in job["spec"]


def test_queue_and_priority_class_come_from_the_config_unless_the_dag_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_QUEUE_NAME", "team-ml")
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_PRIORITY_CLASS_NAME", "ml-low")
    configured = _train().pod_settings(SETTINGS)
    assert (configured.queue_name, configured.priority_class_name) == ("team-ml", "ml-low")
    job = indexed_job("t-1", "train_model", {}, configured)
    assert (
        job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-ml" and job["spec"]["suspend"] is True
    )
    mine = _train(queue_name="urgent", priority_class_name="ml-high").pod_settings(SETTINGS)
    assert (mine.queue_name, mine.priority_class_name) == ("urgent", "ml-high")
    # "" opts a task out of the configured queue and class.
    none = _train(queue_name="", priority_class_name="").pod_settings(SETTINGS)
    assert (none.queue_name, none.priority_class_name) == (None, None)
    # A bad configured queue is named before anything starts.
    monkeypatch.setenv("AIRFLOW__ML_PROVIDER__STEP_QUEUE_NAME", "Team ML")
    with pytest.raises(ValueError, match="queue_name must name a Kueue LocalQueue"):
        _train().check_placement()


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"gpus": -1}, "gpus must be an int >= 0"),
        ({"gpus": "1"}, "gpus must be an int >= 0"),
        ({"gpu_resource": "gpu"}, "gpu_resource must name an extended resource"),
        (
            {"gpus": 2, "container_resources": {"limits": {"nvidia.com/gpu": 1}}},
            "the container resources ask for nvidia.com/gpu .* give the count once",
        ),
        ({"affinity": "zone-a"}, "affinity must be a dict in Kubernetes' form"),
        ({"priority_class_name": "High"}, "priority_class_name must name a PriorityClass"),
        ({"queue_name": "team_a"}, "queue_name must name a Kueue LocalQueue"),
        ({"worker_restarts": 21}, r"worker_restarts must be an int in 0\.\.20"),
        ({"worker_restarts": 1.0}, r"worker_restarts must be an int in 0\.\.20"),
        ({"admission_timeout": 0}, "admission_timeout must be a number of seconds > 0"),
        ({"admission_timeout": "10m"}, "admission_timeout must be a number of seconds > 0"),
        ({"admission_timeout": True}, "admission_timeout must be a number of seconds > 0"),
        ({"durable": "yes"}, "durable must be True or False"),
        ({"node_selector": {"pool": None}}, "node_selector must be a dict"),
        ({"tolerations": "gpu"}, "tolerations must be a list of dicts"),
    ],
)
def test_bad_pod_arguments_are_named_before_anything_runs(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^Task 'train': {message}"):
        _train(**given).check_placement()


def test_worker_restarts_is_checked_for_a_local_gang_too() -> None:
    with pytest.raises(ValueError, match="worker_restarts must be an int"):
        _train(placement="interpreter", worker_restarts=-1).check_placement()
    _train(placement="interpreter", worker_restarts=0).check_placement()


def test_the_pod_arguments_can_be_set_for_a_whole_dag_through_default_args() -> None:
    from airflow.sdk import DAG

    with DAG("kueue", schedule=None, default_args={"queue_name": "team-a", "worker_restarts": 1, "gpus": 1}):
        operators = _operators()
    assert {(op.queue_name, op.worker_restarts, op.gpus) for op in operators} == {("team-a", 1, 1)}


def test_a_local_gang_restarts_at_most_worker_restarts_times_and_a_single_process_never() -> None:
    from airflow_ml_provider.runners import GangRunner, PythonRunner
    from airflow_ml_provider.runners.placement import local_runner

    common: dict[str, Any] = {"python": None, "timeout": None, "env": {}, "in_process_env": {}}
    gang = local_runner("interpreter", gang=True, worker_envs=[{}, {}], restarts=4, **common)
    assert isinstance(gang, GangRunner) and gang.restarts == 4
    single = local_runner("interpreter", gang=False, worker_envs=[{}], restarts=4, **common)
    assert isinstance(single, PythonRunner)


def test_run_locally_gives_the_gang_worker_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from airflow_ml_provider.runners import placement

    asked: dict[str, Any] = {}

    class Runner:
        def run(self, step: str, spec: dict[str, Any], *, logger: Any) -> dict[str, Any]:
            return {"ran": step}

    def fake_local_runner(where: str, **kwargs: Any) -> Runner:
        asked.update(kwargs, where=where)
        return Runner()

    from airflow.sdk import DAG

    monkeypatch.setattr(placement, "local_runner", fake_local_runner)
    run = SimpleNamespace(hook=SimpleNamespace(settings=SimpleNamespace(child_environment=dict)))
    with DAG("local", schedule=None):
        train = _train(placement="interpreter", worker_restarts=5)
    assert train.run_locally(run, {}) == {"ran": "train_model"}  # type: ignore[arg-type]
    assert (asked["where"], asked["gang"], asked["restarts"]) == ("interpreter", True, 5)


# -- durable: the task state store's record of the Job (Airflow 3.3) ----------------------------


class FakeStore:
    """Airflow's task state store as a task sees it (get/set), optionally broken."""

    def __init__(self, values: dict[str, Any] | None = None, broken: str = "") -> None:
        self.values, self.broken, self.calls = dict(values or {}), broken, []  # type: list[str]

    def get(self, key: str, default: Any = None) -> Any:
        self.calls.append(f"get {key}")
        if "get" in self.broken:
            raise ConnectionError("state store unreachable")
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.calls.append(f"set {key}")
        if "set" in self.broken:
            raise ConnectionError("state store unreachable")
        self.values[key] = value


class StubGangHook:
    """TrainingGangHook's calls as run_in_pods makes them; ``outcome`` is the earlier Job's."""

    def __init__(self, outcome: str = "gone", annotation: str | None = None, broken: bool = False) -> None:
        self.outcome, self.annotation, self.broken = outcome, annotation, broken
        self.calls: list[tuple[Any, ...]] = []

    def earlier_outcome(self, ref: dict[str, Any]) -> str:
        self.calls.append(("earlier_outcome", ref["uid"]))
        if self.broken:
            raise RuntimeError("403 Forbidden")
        return self.outcome

    def pod_template_annotation(self, name: str, namespace: str, key: str) -> str | None:
        return self.annotation

    def job_ref(self, name: str, namespace: str) -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "uid": "uid-new"}

    def start_or_reattach(self, job: dict[str, Any], service: Any, *, log: Any = None) -> bool:
        self.calls.append(("start_or_reattach", job["metadata"]["name"]))
        return False

    def wait(self, name: str, namespace: str, workers: int, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("wait", kwargs["admission_timeout"]))
        return {"status": "success", "name": name, "namespace": namespace, "message": "done"}

    def conclude(self, event: dict[str, Any], **kwargs: Any) -> None:
        self.calls.append(("conclude", event["status"], event["name"]))


SPEC = {"run_fn": "pkg.mod:run_fn", "train_uri": "/d"}


def _run_in_pods(
    store: FakeStore | None, hook: StubGangHook, **kwargs: Any
) -> tuple[DistributedTrainingOperator, Any, str]:
    from types import SimpleNamespace

    from airflow_ml_provider.runners.kubernetes_objects import gang_name

    train = _train(**kwargs)
    train.job_hook = lambda: hook  # type: ignore[method-assign]
    train.pod_result = lambda run, spec: {"accuracy": 0.9}  # type: ignore[method-assign]
    ti = SimpleNamespace(dag_id="d", run_id="manual__1", task_id="train", map_index=-1)
    context = {"ti": ti, **({"task_state_store": store} if store is not None else {})}
    run = SimpleNamespace(
        hook=SimpleNamespace(settings=SETTINGS), run_id="run-1", url="http://mlflow/#/runs/1"
    )
    result = train.run_in_pods(context, run, SPEC, None)  # type: ignore[arg-type]
    return train, result, gang_name("d", "manual__1", "train", -1)


def _annotation() -> str:
    import json

    return json.dumps(SPEC, sort_keys=True)


def test_a_new_job_is_recorded_in_the_task_state_store() -> None:
    store, hook = FakeStore(), StubGangHook()
    _train_op, result, name = _run_in_pods(store, hook, admission_timeout=120.0)
    assert result == {"accuracy": 0.9}
    assert store.values["training_gang"] == {"name": name, "namespace": "default", "uid": "uid-new"}
    assert [c[0] for c in hook.calls] == ["start_or_reattach", "wait", "conclude"]
    assert ("wait", 120.0) in hook.calls  # the admission timeout reaches the wait


def test_a_job_that_succeeded_in_an_earlier_try_is_read_not_run_again() -> None:
    """The worker was lost after the gang finished: the next try reads the result."""
    from airflow_ml_provider.runners.kubernetes_objects import gang_name

    name = gang_name("d", "manual__1", "train", -1)
    store = FakeStore({"training_gang": {"name": name, "namespace": "default", "uid": "uid-old"}})
    hook = StubGangHook("succeeded", annotation=_annotation())
    _train_op, result, _ = _run_in_pods(store, hook)
    assert result == {"accuracy": 0.9}
    assert hook.calls == [("earlier_outcome", "uid-old"), ("conclude", "success", name)]
    assert store.calls == ["get training_gang"]  # nothing new to record


@pytest.mark.parametrize(
    ("ref", "hook"),
    [
        ({"uid": "uid-old"}, StubGangHook("active", annotation=_annotation())),  # reattached by name
        ({"uid": "uid-old"}, StubGangHook("failed", annotation=_annotation())),
        ({"uid": "uid-old"}, StubGangHook("gone")),
        ({"uid": "uid-old"}, StubGangHook("succeeded", annotation='{"other": "spec"}')),
        ({"uid": "uid-old", "namespace": "elsewhere"}, StubGangHook("succeeded", annotation=_annotation())),
    ],
)
def test_any_other_earlier_job_goes_the_usual_way_and_the_new_one_is_recorded(
    ref: dict[str, Any], hook: StubGangHook
) -> None:
    from airflow_ml_provider.runners.kubernetes_objects import gang_name

    name = gang_name("d", "manual__1", "train", -1)
    store = FakeStore({"training_gang": {"name": name, "namespace": "default", **ref}})
    _run_in_pods(store, hook)
    assert [c[0] for c in hook.calls if c[0] != "earlier_outcome"] == [
        "start_or_reattach",
        "wait",
        "conclude",
    ]
    assert store.values["training_gang"]["uid"] == "uid-new"


@pytest.mark.parametrize(
    ("store", "hook"),
    [
        (None, StubGangHook()),  # Airflow before 3.3: no store in the context
        (FakeStore(broken="get"), StubGangHook()),
        (FakeStore(broken="set"), StubGangHook()),
        (FakeStore({"training_gang": {"uid": "u", "name": "x", "namespace": "default"}}), StubGangHook()),
        (FakeStore({"training_gang": "not a ref"}), StubGangHook()),
    ],
)
def test_the_store_never_fails_the_task(store: FakeStore | None, hook: StubGangHook) -> None:
    _train_op, result, _ = _run_in_pods(store, hook)
    assert result == {"accuracy": 0.9}
    assert [c[0] for c in hook.calls] == ["start_or_reattach", "wait", "conclude"]
    if store is not None and store.broken == "get":
        assert store.calls == ["get training_gang"]  # once broken, left alone


def test_durable_false_leaves_the_store_alone() -> None:
    store = FakeStore({"training_gang": {"uid": "uid-old"}})
    _run_in_pods(store, StubGangHook("succeeded"), durable=False)
    assert store.calls == []


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda msg, *args: self.lines.append((level, msg % args))


def test_the_record_says_what_it_did_and_warns_once_when_the_store_breaks() -> None:
    from airflow_ml_provider.runners.placement import GangRecord

    job = indexed_job("t-1", "train_model", SPEC, _train().pod_settings(SETTINGS))
    log = RecordingLog()
    GangRecord(None, log=log)
    assert [level for level, _ in log.lines] == ["debug"]
    log = RecordingLog()
    record = GangRecord(FakeStore(broken="get set"), log=log)
    assert record.earlier_success(StubGangHook(), job) is None
    record.remember(StubGangHook(), "t-1", "default")
    ((level, line),) = log.lines
    assert level == "warning" and "could not read the earlier try's Job (ConnectionError" in line
    log = RecordingLog()
    ref = {"name": "t-1", "namespace": "default", "uid": "uid-old"}
    event = GangRecord(FakeStore({"training_gang": ref}), log=log).earlier_success(
        StubGangHook("succeeded", annotation=_annotation()), job
    )
    assert event is not None and event["status"] == "success"
    assert "has already succeeded" in log.lines[-1][1] and "uid-old" in log.lines[-1][1]
    log = RecordingLog()
    record = GangRecord(FakeStore({"training_gang": ref}), log=log)
    assert record.earlier_success(StubGangHook(broken=True), job) is None
    assert log.lines[0][0] == "warning" and "403 Forbidden" in log.lines[0][1]
