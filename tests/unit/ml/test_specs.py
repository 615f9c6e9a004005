"""The step spec types: each built-in step's keys declared once, checked the same on both sides."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from typing import Any

import pytest

from airflow_ml_provider.ml.registry import BUILTIN_STEPS
from airflow_ml_provider.ml.specs import (
    SPEC_TYPES,
    VOLATILE_KEYS,
    EvaluateModelSpec,
    GenerateDatasetSpec,
    InfraValidateSpec,
    StepSpec,
    TrainModelSpec,
    TuneSpec,
    TuningSummarySpec,
    ValidateDataSpec,
    check_spec,
    spec_type,
)

pytestmark = pytest.mark.unit

RUN_FN = "airflow_ml_provider.ml.training.demo:run_fn"
VERSION = "/tmp/ml-specs/data/version=0001"
SPACE = {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
    "hidden_units": {"type": "int", "low": 8, "high": 64, "step": 8},
    "batch_size": [128, 256, 512],
}
EVAL_CONFIG = {
    "model_specs": [{"label_key": "label"}],
    "slicing_specs": [{}, {"feature_keys": ["region"]}],
    "metrics_specs": [
        {"metrics": [{"class_name": "AUC", "threshold": {"value_threshold": {"lower_bound": 0.6}}}]}
    ],
}
MLFLOW = {"run_id": "0a1b2c", "experiment_id": "7"}
DATASET_VERSION = {
    "version": "0003",
    "uri": "/lake/churn/version=0003",
    "fingerprint": "sha256:ab12",
    "previous_version": "0002",
    "completed_at": "2026-12-01T10:00:00+00:00",
    "discovered_at": "2026-12-01T10:00:02+00:00",
    "name": "churn_training_data_versions",
    "asset": "churn_training_data",
}
TUNE = {
    "study_name": "dag.tune.manual__1",
    "metric": "val_auc",
    "search_space": SPACE,
    "objective": {"kind": "function", "ref": "tuning_fns:quadratic"},
    "n_trials": 8,
}

# A valid spec of every step, with every key it declares.
VALID: dict[str, dict[str, Any]] = {
    "echo": {
        "payload": {"a": [1, 2]},
        "log_lines": ["x"],
        "sleep_seconds": 0,
        "fail_with": None,
        "metrics": {"m": 1},
    },
    "describe_dataset": {"uri": VERSION, "label": "label"},
    "generate_dataset": {
        "root": "/tmp/ml-specs/data",
        "versions": 2,
        "rows": 100,
        "seed": 1,
        "format": "parquet",
        "overwrite": True,
        "extra_features": 3,
        "drift": 0.5,
        "label_shift": 0.1,
        "new_category": "region",
        "missing_column": "balance",
        "type_change": "age",
        "null_spike": {"income": 0.2},
        "knobs_per_version": {"2": {"drift": 1.0, "new_category": None}},
    },
    "validate_data": {
        "data_uri": VERSION,
        "output_dir": "/tmp/ml-specs/out",
        "format": "csv",
        "schema_uri": "/tmp/ml-specs/schema.pbtxt",
        "previous_statistics_uri": "/tmp/ml-specs/previous.pb",
        "serving_statistics_uri": "/tmp/ml-specs/serving.pb",
        "data_role": "training",
        "drift": {"categorical_linf": 0.2, "numeric_jsd": 0.1, "features": {"income": 0.05}},
        "skew": {"numeric_jsd": 0.1},
        "label": "label",
        "engine": "beam",
        "beam_pipeline_args": ["--runner=DirectRunner"],
        "chunk_rows": 500,
    },
    "infer_schema": {
        "data_uri": VERSION,
        "schema_uri": "/tmp/ml-specs/schema.pbtxt",
        "format": "parquet",
        "overwrite": True,
        "chunk_rows": 1000,
        "output_dir": "/tmp/ml-specs/out",
    },
    "train_model": {
        "run_fn": RUN_FN,
        "train_uri": VERSION,
        "eval_uri": "/tmp/ml-specs/data/version=0002",
        "data_format": "csv",
        "schema_uri": "/tmp/ml-specs/schema.pbtxt",
        "dataset_version": DATASET_VERSION,
        "hyperparameters": {"epochs": 3},
        "custom_config": {"label": "label"},
        "strategy": "mirrored",
        "model_dir": "/tmp/ml-specs/model",
        "warm_start_from": "models:/churn@champion",
        "mlflow": {**MLFLOW, "tracking_uri": "http://mlflow:5000"},
        "seed": 7,
        "checkpoint": {"every": "epoch", "uri": "/tmp/ml-specs/checkpoints"},
    },
    "evaluate_model": {
        "candidate_model_uri": "models:/m-abc",
        "baseline_model_uri": "models:/churn/1",
        "baseline": {
            "model_name": "churn",
            "alias": "champion",
            "version": "1",
            "model_uri": "models:/churn/1",
        },
        "data_uri": VERSION,
        "format": "csv",
        "holdout_uri": "/tmp/ml-specs/holdout/version=0001",
        "holdout_format": "parquet",
        "evaluate_on": "both",
        "eval_config": EVAL_CONFIG,
        "label_key": "label",
        "example_weight_key": "weight",
        "feature_columns": ["age", "income"],
        "engine": "fast",
        "beam_pipeline_args": ["--runner=DirectRunner"],
        "tracking_uri": "http://mlflow:5000",
        "output_dir": "/tmp/ml-specs/evaluation",
        "title": "dag / evaluate",
        "context": {"DAG run": "manual__1"},
    },
    "infra_validate": {
        "model_uri": "models:/m-abc",
        "data_uri": VERSION,
        "format": "csv",
        "sample_rows": 10,
        "drop_columns": ["label"],
        "batch_size": 2,
        "requests": 5,
        "max_latency_ms": {"p50": 200, "p99": 1000},
        "load_timeout": 60,
        "timeout": 30.5,
        "tracking_uri": "http://mlflow:5000",
        "output_dir": "/tmp/ml-specs/infra",
    },
    "tune": {
        **TUNE,
        "direction": "maximize",
        "objective": {"kind": "run_fn", "ref": RUN_FN},
        "hyperparameters": {"epochs": 3},
        "sampler": {"type": "tpe", "n_startup_trials": 3},
        "pruner": "hyperband",
        "timeout": 600,
        "max_failed_trials": None,
        "seed": 7,
        "storage": "sqlite:////tmp/ml-specs/studies.db",
        "train_uri": VERSION,
        "eval_uri": "/tmp/ml-specs/data/version=0002",
        "data_format": "csv",
        "schema_uri": "/tmp/ml-specs/schema.pbtxt",
        "dataset_version": DATASET_VERSION,
        "custom_config": {"marker_dir": "/tmp"},
        "worker": 1,
        "parallel": True,
        "owner": {"key": "dag.tune.manual__1.-1", "try_number": 2},
        "mlflow": MLFLOW,
        "heartbeat_interval": 5,
        "grace_period": 30,
        "threads": 2,
    },
}
# The tune spec of the study (its other keys are ignored), plus where the summary's files go.
VALID["tuning_summary"] = {
    **{key: VALID["tune"][key] for key in TuningSummarySpec.keys() if key in VALID["tune"]},
    "output_dir": "/tmp/ml-specs/tuning",
}
# Keys that exclude one another: VALID gives the first.
EXCLUSIVE = {"infra_validate": {"rows"}, "validate_data": {"training_statistics_uri"}}

# The keys a spec must have, per step.
REQUIRED: dict[str, tuple[str, ...]] = {
    "echo": (),
    "describe_dataset": ("uri",),
    "generate_dataset": ("root",),
    "validate_data": ("data_uri", "output_dir"),
    "infer_schema": ("data_uri", "schema_uri"),
    "train_model": ("run_fn", "train_uri"),
    # data_uri too, unless evaluate_on is "holdout" (test_evaluate_model_reads_the_datasets_evaluate_on_names)
    "evaluate_model": ("candidate_model_uri", "output_dir", "eval_config"),
    "infra_validate": ("model_uri",),
    "tune": ("metric", "search_space", "study_name", "objective"),
    "tuning_summary": ("metric", "search_space", "study_name"),
}

# (step, key, bad value): each is a ValueError naming the key.
BAD: list[tuple[str, str, Any]] = [
    ("echo", "log_lines", "one line"),
    ("echo", "sleep_seconds", -1),
    ("echo", "sleep_seconds", "2"),
    ("echo", "fail_with", 3),
    ("echo", "metrics", {"m": "high"}),
    ("echo", "metrics", [1]),
    ("describe_dataset", "uri", ""),
    ("describe_dataset", "uri", 3),
    ("describe_dataset", "label", 1),
    ("generate_dataset", "root", "s3://bucket/data"),
    ("generate_dataset", "versions", [1, 1]),
    ("generate_dataset", "rows", 0),
    ("generate_dataset", "seed", -1),
    ("generate_dataset", "format", "json"),
    ("generate_dataset", "overwrite", "yes"),
    ("generate_dataset", "extra_features", 201),
    ("generate_dataset", "drift", "high"),
    ("generate_dataset", "label_shift", 0.6),
    ("generate_dataset", "new_category", "age"),
    ("generate_dataset", "missing_column", "label"),
    ("generate_dataset", "type_change", "region"),
    ("generate_dataset", "null_spike", {"age": 1.5}),
    ("generate_dataset", "knobs_per_version", {"7": {"drift": 1.0}}),
    ("generate_dataset", "knobs_per_version", {"1": {"rows": 5}}),
    ("validate_data", "data_uri", ""),
    ("validate_data", "output_dir", 3),
    ("validate_data", "format", "json"),
    ("validate_data", "schema_uri", 3),
    ("validate_data", "previous_statistics_uri", ["a.pb"]),
    ("validate_data", "serving_statistics_uri", 1),
    ("validate_data", "data_role", "production"),
    ("validate_data", "training_statistics_uri", 3),
    ("validate_data", "training_statistics_uri", "/tmp/ml-specs/training.pb"),  # with data_role training
    ("validate_data", "drift", {"nope": 1}),
    ("validate_data", "drift", {"numeric_jsd": -1}),
    ("validate_data", "skew", [0.1]),
    ("validate_data", "skew", {"features": [1]}),
    ("validate_data", "label", 3),
    ("validate_data", "engine", "spark"),
    ("validate_data", "beam_pipeline_args", "--runner=FlinkRunner"),
    ("validate_data", "chunk_rows", 0),
    ("validate_data", "chunk_rows", True),
    ("infer_schema", "data_uri", 3),
    ("infer_schema", "schema_uri", ""),
    ("infer_schema", "format", "avro"),
    ("infer_schema", "overwrite", "yes"),
    ("infer_schema", "chunk_rows", -5),
    ("train_model", "run_fn", "train.py"),
    ("train_model", "run_fn", "pkg.mod:"),
    ("train_model", "train_uri", ""),
    ("train_model", "eval_uri", 3),
    ("train_model", "data_format", "json"),
    ("train_model", "schema_uri", 1),
    ("train_model", "dataset_version", "0001"),
    ("train_model", "custom_config", [1]),
    ("train_model", "hyperparameters", "{'epochs': 3}"),
    ("train_model", "strategy", "tpu"),
    ("train_model", "model_dir", 1),
    ("train_model", "warm_start_from", 2),
    ("train_model", "mlflow", "0a1b2c"),
    ("train_model", "mlflow", {"run_id": 1}),
    ("train_model", "seed", 1.5),
    ("train_model", "checkpoint", {"every": 0}),
    ("train_model", "checkpoint", "epoch"),
    ("evaluate_model", "candidate_model_uri", ""),
    ("evaluate_model", "data_uri", 3),
    ("evaluate_model", "output_dir", None),
    ("evaluate_model", "eval_config", {}),
    ("evaluate_model", "eval_config", 3),
    ("evaluate_model", "baseline_model_uri", 3),
    ("evaluate_model", "baseline", "champion"),
    ("evaluate_model", "format", "json"),
    ("evaluate_model", "label_key", 3),
    ("evaluate_model", "example_weight_key", 1),
    ("evaluate_model", "feature_columns", "age"),
    ("evaluate_model", "feature_columns", [1]),
    ("evaluate_model", "engine", "spark"),
    ("evaluate_model", "beam_pipeline_args", "--runner=X"),
    ("evaluate_model", "tracking_uri", 1),
    ("evaluate_model", "title", 1),
    ("evaluate_model", "context", "x"),
    ("evaluate_model", "holdout_uri", 3),
    ("evaluate_model", "holdout_format", "json"),
    ("evaluate_model", "evaluate_on", "train"),
    ("infra_validate", "model_uri", ""),
    ("infra_validate", "data_uri", 3),
    ("infra_validate", "format", "json"),
    ("infra_validate", "sample_rows", 0),
    ("infra_validate", "sample_rows", 2.5),
    ("infra_validate", "batch_size", True),
    ("infra_validate", "requests", "50"),
    ("infra_validate", "load_timeout", 0),
    ("infra_validate", "timeout", -1),
    ("infra_validate", "max_latency_ms", {"p95": 3}),
    ("infra_validate", "max_latency_ms", {"p50": -1}),
    ("infra_validate", "drop_columns", "label"),
    ("infra_validate", "tracking_uri", 1),
    ("infra_validate", "output_dir", 1),
    ("tune", "metric", ""),
    ("tune", "direction", "up"),
    ("tune", "search_space", "{'lr': [1, 2]}"),
    ("tune", "search_space", {"lr": {"type": "float", "low": 0, "high": 1, "log": True}}),
    ("tune", "hyperparameters", [1]),
    ("tune", "hyperparameters", {"hidden_units": 8}),
    ("tune", "sampler", "bayes"),
    ("tune", "pruner", {"type": "median", "patience": 1}),
    ("tune", "n_trials", 0),
    ("tune", "timeout", -1),
    ("tune", "max_failed_trials", 0),
    ("tune", "seed", 1.5),
    ("tune", "study_name", ""),
    ("tune", "storage", 3),
    ("tune", "objective", {"kind": "script", "ref": RUN_FN}),
    ("tune", "objective", {"kind": "run_fn", "ref": "train.py"}),
    ("tune", "train_uri", 3),
    ("tune", "eval_uri", 3),
    ("tune", "data_format", "xml"),
    ("tune", "schema_uri", 1),
    ("tune", "dataset_version", "0003"),
    ("tune", "custom_config", 1),
    ("tune", "worker", -1),
    ("tune", "parallel", "yes"),
    ("tune", "owner", {"key": 1, "try_number": 1}),
    ("tune", "mlflow", ["run"]),
    ("tune", "heartbeat_interval", 0),
    ("tune", "grace_period", 1.5),
    ("tune", "threads", 0),
    ("tuning_summary", "metric", 3),
    ("tuning_summary", "sampler", {"type": "grid", "seed": 1}),
    ("tuning_summary", "study_name", "x" * 501),
    ("tuning_summary", "storage", 1),
    ("tuning_summary", "output_dir", 1),
]


def _parse(step: str, spec: dict[str, Any]) -> StepSpec:
    cls = spec_type(step)
    assert cls is not None
    return cls.parse(spec)


def test_every_builtin_step_has_a_spec_type_and_the_table_covers_them():
    assert set(SPEC_TYPES) == set(BUILTIN_STEPS) == set(VALID) == set(REQUIRED)
    for step, cls in SPEC_TYPES.items():
        assert cls.step == step and dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen, f"{cls.__name__} must be frozen"
    assert {step for step, _, _ in BAD} == set(SPEC_TYPES)


@pytest.mark.parametrize("step", sorted(VALID))
def test_a_valid_spec_parses_and_declares_every_key(step):
    parsed = _parse(step, VALID[step])
    assert isinstance(parsed, SPEC_TYPES[step])
    declared = type(parsed).keys()
    assert set(VALID[step]) | EXCLUSIVE.get(step, set()) == declared, (
        "VALID gives every key the type declares"
    )
    check_spec(step, VALID[step])  # the operator's side: the same check
    json.dumps(VALID[step])  # a spec is a plain JSON dict on the wire


@pytest.mark.parametrize("step", sorted(VALID))
def test_every_field_is_documented_in_the_types_docstring(step):
    cls = SPEC_TYPES[step]
    documented = "".join(c.__doc__ or "" for c in cls.__mro__)
    missing = [f.name for f in dataclasses.fields(cls) if f":param {f.name}:" not in documented]
    assert not missing, f"{cls.__name__} documents no {missing}"


@pytest.mark.parametrize(("step", "key"), [(step, key) for step, keys in REQUIRED.items() for key in keys])
def test_a_missing_required_key_is_named(step, key):
    spec = {k: v for k, v in VALID[step].items() if k != key}
    with pytest.raises(ValueError, match=key):
        _parse(step, spec)


@pytest.mark.parametrize("step", sorted(REQUIRED))
def test_the_required_keys_are_the_fields_without_a_default(step):
    cls = SPEC_TYPES[step]
    no_default = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    derived = no_default - cls.keys()  # computed by parse (a version's knobs, a sampler's options)
    told_from_metric = {"direction"} & no_default
    assert no_default - derived - told_from_metric == set(REQUIRED[step])


@pytest.mark.parametrize(("step", "key", "value"), BAD, ids=[f"{s}-{k}-{v!r:.30}" for s, k, v in BAD])
def test_a_bad_value_is_a_value_error_naming_the_key(step, key, value):
    with pytest.raises(ValueError, match=key):
        _parse(step, {**VALID[step], key: value})


@pytest.mark.parametrize("step", sorted(VALID))
def test_a_spec_that_is_not_a_dict_is_refused(step):
    with pytest.raises(ValueError, match=f"{step}: spec must be a dict, got list"):
        SPEC_TYPES[step].parse([VALID[step]])


@pytest.mark.parametrize("step", sorted(VALID))
def test_unknown_keys_as_before_strict_types_refuse_them(step):
    cls = SPEC_TYPES[step]
    spec = {**VALID[step], "colour": "blue"}
    if cls.strict:
        with pytest.raises(ValueError, match=r"unknown spec keys \['colour'\]; allowed: \["):
            cls.parse(spec)
    else:
        cls.parse(spec)  # ignored, as the step always did


def test_the_strict_types_are_those_that_refused_unknown_keys():
    strict = {step for step, cls in SPEC_TYPES.items() if cls.strict}
    assert strict == {"generate_dataset", "validate_data", "infer_schema", "evaluate_model", "infra_validate"}


@pytest.mark.parametrize("step", sorted(VALID))
def test_the_keys_operators_add_are_accepted_by_every_type(step):
    volatile = {
        "output_dir": "/tmp/ml-specs/out",
        "tracking_uri": "http://mlflow:5000",
        "mlflow": MLFLOW,
        "title": "dag / task",
        "context": {"DAG run": "manual__1"},
        "dataset_version": DATASET_VERSION,
        "baseline": {
            "model_name": "churn",
            "alias": "champion",
            "version": "1",
            "model_uri": "models:/churn/1",
        },
    }
    assert set(volatile) == VOLATILE_KEYS
    _parse(step, {**VALID[step], **volatile})


def test_check_spec_passes_the_users_own_steps_and_checks_the_builtin_ones():
    assert spec_type("my_pkg.steps:clean") is None
    check_spec("my_pkg.steps:clean", {"anything": object()})
    with pytest.raises(ValueError, match="validate_data: spec key 'data_uri' is required"):
        check_spec("validate_data", {"output_dir": "/tmp/o"})


def test_defaults_as_the_steps_always_had_them():
    validate = ValidateDataSpec.parse({"data_uri": VERSION, "output_dir": "/o"})
    assert (validate.engine, validate.chunk_rows, validate.label, validate.drift, validate.format) == (
        "in_memory", 200_000, "label", {}, None
    )  # fmt: skip
    infra = InfraValidateSpec.parse({"model_uri": "m", "rows": [{"a": 1}], "sample_rows": 5.0})
    assert (infra.sample_rows, infra.batch_size, infra.requests, infra.load_timeout, infra.timeout) == (
        5, 1, 50, 300.0, 300.0
    )  # fmt: skip
    assert isinstance(infra.sample_rows, int) and infra.drop_columns == () and infra.max_latency_ms == {}
    evaluate = EvaluateModelSpec.parse({**VALID["evaluate_model"], "label_key": None, "engine": None})
    assert evaluate.label_key is None, "an explicit null leaves the label to eval_config's model spec"
    assert evaluate.engine == "auto", "null takes the default"
    assert (
        EvaluateModelSpec.parse(
            {k: v for k, v in VALID["evaluate_model"].items() if k != "label_key"}
        ).label_key
        == "label"
    )
    train = TrainModelSpec.parse({"run_fn": RUN_FN, "train_uri": VERSION})
    assert (train.strategy, train.hyperparameters, train.mlflow.run_id, train.seed) == (
        "one_device",
        {},
        None,
        None,
    )


def test_generate_dataset_merges_the_knobs_of_each_version():
    parsed = GenerateDatasetSpec.parse(VALID["generate_dataset"])
    assert parsed.versions == (1, 2) and parsed.root.is_absolute()
    assert parsed.knobs[1]["drift"] == 0.5 and parsed.knobs[1]["new_category"] == "region"
    assert parsed.knobs[2]["drift"] == 1.0 and parsed.knobs[2]["new_category"] is None
    assert parsed.knobs[2]["null_spike"] == {"income": 0.2}
    assert parsed.knobs_per_version == {2: {"drift": 1.0, "new_category": None}}


def test_infra_validate_wants_exactly_one_source_of_rows():
    with pytest.raises(ValueError, match="exactly one of 'data_uri' .* or 'rows'"):
        InfraValidateSpec.parse({"model_uri": "m"})
    with pytest.raises(ValueError, match="exactly one of 'data_uri' .* or 'rows'"):
        InfraValidateSpec.parse({"model_uri": "m", "data_uri": VERSION, "rows": [{"a": 1}]})
    with pytest.raises(ValueError, match="'rows' must be a list of dicts"):
        InfraValidateSpec.parse({"model_uri": "m", "rows": ["a"]})


def test_tune_a_run_fn_objective_needs_train_uri_and_a_budget_is_required():
    run_fn = {**TUNE, "objective": {"kind": "run_fn", "ref": RUN_FN}}
    with pytest.raises(ValueError, match="a run_fn objective needs train_uri"):
        TuneSpec.parse(run_fn)
    assert TuneSpec.parse({**run_fn, "train_uri": VERSION}).objective.kind == "run_fn"
    with pytest.raises(ValueError, match="give a budget: n_trials, timeout"):
        TuneSpec.parse({**TUNE, "n_trials": None})
    grid = TuneSpec.parse({**TUNE, "search_space": {"units": [8, 16]}, "sampler": "grid", "n_trials": None})
    assert grid.sampler == "grid" and grid.n_trials is None


def test_tune_spec_holds_the_study_settings_the_worker_builds():
    from airflow_ml_provider.ml.tuning.config import StudySettings, study_settings

    parsed = TuneSpec.parse(VALID["tune"])
    settings = StudySettings.of(parsed)
    assert settings == study_settings(VALID["tune"])
    assert (settings.sampler, settings.sampler_options, settings.pruner) == (
        "tpe",
        {"n_startup_trials": 3},
        "hyperband",
    )
    assert settings.max_failed_trials is None and settings.timeout == 600.0
    assert TuneSpec.parse(TUNE).direction == "maximize", "told from the metric's name"
    assert parsed.grace_seconds == 30 and TuneSpec.parse(TUNE).grace_seconds == 60
    summary = TuningSummarySpec.parse({**VALID["tune"], "output_dir": "/tmp/o"})
    assert StudySettings.of(summary) == settings and summary.study_name == parsed.study_name


def test_the_training_context_takes_the_training_inputs_of_the_spec():
    from airflow_ml_provider.ml.training.cluster import WorkerRole
    from airflow_ml_provider.ml.training.context import TrainingContext

    parsed = TrainModelSpec.parse(VALID["train_model"])
    ctx = TrainingContext.from_spec(
        parsed,
        hyperparameters={"epochs": 3},
        model_dir="/tmp/m",
        strategy=None,
        strategy_name="mirrored",
        role=WorkerRole(0, 1),
    )
    assert (ctx.train_uri, ctx.eval_uri, ctx.data_format, ctx.schema_uri) == (
        VERSION, "/tmp/ml-specs/data/version=0002", "csv", "/tmp/ml-specs/schema.pbtxt"
    )  # fmt: skip
    assert ctx.dataset_version == DATASET_VERSION and ctx.custom_config == {"label": "label"}


def test_importing_the_specs_loads_nothing_but_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import airflow_ml_provider.ml.specs; "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    foreign = [m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names | {"airflow_ml_provider"}]
    assert not foreign, foreign


# What each operator builds today (build_spec) for the tasks of dags_examples/, templates rendered.
RUN = "manual__2026-12-01T10-00-00-00-00"
EXAMPLE_SPECS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "example_ml_tracking.generate_data",
        "generate_dataset",
        {
            "root": f"/tmp/airflow-ml-provider/demo-data/{RUN}",
            "versions": 2,
            "rows": 2000,
            "knobs_per_version": {"2": {"drift": 0.5}},
        },
    ),
    ("example_ml_tracking.describe_version", "describe_dataset", {"uri": VERSION}),
    (
        "example_data_validation.generate_data",
        "generate_dataset",
        {
            "root": f"/tmp/airflow-ml-provider/validation-demo/{RUN}/data",
            "versions": 2,
            "rows": 5000,
            "knobs_per_version": {"2": {"drift": 1.0, "new_category": "region"}},
        },
    ),
    (
        "example_data_validation.validate_v1",
        "validate_data",
        {
            "data_uri": VERSION,
            "schema_uri": f"/tmp/airflow-ml-provider/validation-demo/{RUN}/schema/schema.pbtxt",
            "output_dir": "/tmp/airflow-ml/ml-validation-x1/out",
            "engine": "in_memory",
        },
    ),
    (
        "example_data_validation.validate_v2_fail",
        "validate_data",
        {
            "data_uri": "/tmp/ml-specs/data/version=0002",
            "schema_uri": f"/tmp/airflow-ml-provider/validation-demo/{RUN}/schema/schema.pbtxt",
            # runs:/<run_id>/validation/statistics.pb, fetched into the task's scratch folder
            "previous_statistics_uri": "/tmp/airflow-ml/ml-validation-x2/validation/statistics.pb",
            "output_dir": "/tmp/airflow-ml/ml-validation-x2/out",
            "engine": "in_memory",
        },
    ),
    (
        "SchemaInferenceOperator",
        "infer_schema",
        {"data_uri": VERSION, "schema_uri": "/tmp/ml-specs/schema.pbtxt", "overwrite": False},
    ),
    (
        "example_distributed_training.train",
        "train_model",
        {
            "run_fn": RUN_FN,
            "train_uri": VERSION,
            "hyperparameters": {"epochs": 5, "batch_size": 256, "learning_rate": 0.01},
            "custom_config": {},
            "strategy": "multi_worker_mirrored",
            "seed": 7,
            "mlflow": MLFLOW,
        },
    ),
    (
        "example_distributed_training_kubernetes.train",
        "train_model",
        {
            "run_fn": RUN_FN,
            "train_uri": "s3://datasets/churn/version=0007",
            "hyperparameters": {"epochs": 20, "batch_size": 4096},
            "custom_config": {},
            "strategy": "multi_worker_mirrored",
            "warm_start_from": "models:/churn@champion",
            "mlflow": MLFLOW,
        },
    ),
    (
        "continuous_training.train",
        "train_model",
        {
            "run_fn": RUN_FN,
            "train_uri": DATASET_VERSION["uri"],
            "dataset_version": DATASET_VERSION,
            "hyperparameters": {"epochs": 3, "batch_size": 256, "learning_rate": 0.01},
            "custom_config": {},
            "strategy": "multi_worker_mirrored",
            "seed": 7,
            "mlflow": MLFLOW,
        },
    ),
    (
        "example_hyperparameter_tuning.tune",
        "tune",
        {
            "metric": "val_auc",
            "direction": None,
            "search_space": SPACE,
            "hyperparameters": {"epochs": 5},
            "sampler": "tpe",
            "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1},
            "n_trials": 20,
            "timeout": None,
            "max_failed_trials": 3,
            "seed": 7,
            "study_name": f"example_hyperparameter_tuning.tune.{RUN}",
            "objective": {"kind": "run_fn", "ref": RUN_FN},
            "train_uri": VERSION,
            "custom_config": {},
            "parallel": True,
            "mlflow": MLFLOW,
            "heartbeat_interval": 10,
            "owner": {"key": f"example_hyperparameter_tuning.tune.{RUN}.-1", "try_number": 1},
            "threads": 1,
        },
    ),
    (
        "continuous_training.tune",
        "tune",
        {
            "metric": "val_auc",
            "direction": None,
            "search_space": {k: SPACE[k] for k in ("learning_rate", "hidden_units")},
            "hyperparameters": {"epochs": 3, "batch_size": 256},
            "sampler": "tpe",
            "pruner": "median",
            "n_trials": 4,
            "timeout": None,
            "max_failed_trials": 3,
            "seed": 7,
            "study_name": f"continuous_training.tune.{RUN}",
            "objective": {"kind": "run_fn", "ref": RUN_FN},
            "train_uri": DATASET_VERSION["uri"],
            "dataset_version": DATASET_VERSION,
            "custom_config": {},
            "parallel": True,
            "mlflow": MLFLOW,
            "heartbeat_interval": 10,
            "owner": {"key": f"continuous_training.tune.{RUN}.-1", "try_number": 1},
            "threads": 1,
        },
    ),
    (
        "example_model_blessing.evaluate",
        "evaluate_model",
        {
            "candidate_model_uri": "models:/m-0123456789abcdef",
            "baseline_model_uri": "models:/churn_example/1",
            "baseline": {
                "model_name": "churn_example",
                "alias": "champion",
                "version": "1",
                "model_uri": "models:/churn_example/1",
            },
            "data_uri": "/tmp/ml-specs/data/version=0002",
            "holdout_uri": "/tmp/ml-specs/holdout/version=0001",
            "evaluate_on": "both",
            "eval_config": EVAL_CONFIG,
            "label_key": "label",
            "engine": "auto",
            "tracking_uri": "http://mlflow:5000",
            "output_dir": "/tmp/airflow-ml/ml-evaluation-x3/out",
            "title": "example_model_blessing / evaluate",
            "context": {
                "DAG run": RUN,
                "dataset version": "-",
                "data": "/tmp/ml-specs/data/version=0002",
                "holdout": "/tmp/ml-specs/holdout/version=0001 (version 0001)",
                "baseline": "churn_example@champion = version 1",
            },
        },
    ),
    (
        "continuous_training.evaluate (first model: no champion yet)",
        "evaluate_model",
        {
            "candidate_model_uri": "models:/m-0123456789abcdef",
            "data_uri": DATASET_VERSION["uri"],
            "eval_config": EVAL_CONFIG,
            "label_key": "label",
            "engine": "auto",
            "tracking_uri": "http://mlflow:5000",
            "output_dir": "/tmp/airflow-ml/ml-evaluation-x4/out",
            "title": "continuous_training / evaluate",
            "context": {
                "DAG run": RUN,
                "dataset version": "0003",
                "data": DATASET_VERSION["uri"],
                "baseline": "none (first model: value thresholds only)",
            },
        },
    ),
    (
        "example_model_blessing.infra_validate",
        "infra_validate",
        {
            "model_uri": "models:/m-0123456789abcdef",
            "data_uri": "/tmp/ml-specs/data/version=0002",
            "sample_rows": 100,
            "drop_columns": ["label"],
            "max_latency_ms": {"p50": 200, "p99": 1000},
            "batch_size": 1,
            "requests": 50,
            "load_timeout": 300.0,
            "timeout": 300.0,
            "tracking_uri": "http://mlflow:5000",
            "output_dir": "/tmp/airflow-ml/ml-infra-x5/out",
        },
    ),
]


@pytest.mark.parametrize(("task", "step", "spec"), EXAMPLE_SPECS, ids=[task for task, _, _ in EXAMPLE_SPECS])
def test_the_spec_each_operator_builds_for_the_examples_is_accepted(task, step, spec):
    check_spec(step, spec)
    if step == "tune":  # the summary task gets the same spec, plus where its files go
        check_spec("tuning_summary", {**spec, "output_dir": "/tmp/airflow-ml/ml-tuning-x6/out"})


def test_validate_data_takes_the_other_side_of_skew_that_its_data_role_needs():
    serving = {**VALID["validate_data"], "data_role": "serving"}
    with pytest.raises(
        ValueError, match="spec key 'serving_statistics_uri' does not go with data_role 'serving'"
    ):
        _parse("validate_data", serving)
    del serving["serving_statistics_uri"]
    parsed = _parse("validate_data", {**serving, "training_statistics_uri": "/tmp/ml-specs/training.pb"})
    assert (parsed.data_role, parsed.training_statistics_uri) == ("serving", "/tmp/ml-specs/training.pb")


def test_evaluate_model_reads_the_datasets_evaluate_on_names():
    base = {
        k: v
        for k, v in VALID["evaluate_model"].items()
        if k not in ("holdout_uri", "holdout_format", "evaluate_on")
    }
    holdout = VALID["evaluate_model"]["holdout_uri"]
    assert EvaluateModelSpec.parse(base).datasets() == (("data", VERSION, "csv"),)
    both = EvaluateModelSpec.parse({**base, "holdout_uri": holdout})  # a holdout: both, by default
    assert both.evaluate_on == "both"
    assert both.datasets() == (("data", VERSION, "csv"), ("holdout", holdout, "csv"))
    alone = EvaluateModelSpec.parse(
        {**base, "data_uri": None, "holdout_uri": holdout, "evaluate_on": "holdout"}
    )
    assert alone.datasets() == (("holdout", holdout, "csv"),) and alone.data_uri is None
    for evaluate_on in (None, "data", "both"):
        with pytest.raises(ValueError, match="evaluate_model: spec key 'data_uri' is required"):
            EvaluateModelSpec.parse(
                {**base, "data_uri": None, "holdout_uri": holdout, "evaluate_on": evaluate_on}
            )
    with pytest.raises(ValueError, match="spec key 'holdout_uri' is required with evaluate_on='holdout'"):
        EvaluateModelSpec.parse({**base, "evaluate_on": "holdout"})
