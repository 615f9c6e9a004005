"""The spec of ``train_model``, and the training inputs it shares with ``tune``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider.ml.registry import step_reference
from airflow_ml_provider.ml.specs._base import DATA_FORMATS, Reader, StepSpec, is_int

STRATEGIES = ("one_device", "mirrored", "multi_worker_mirrored")


def user_reference(read: Reader, key: str, value: Any) -> str:
    """A ``package.module:function`` reference to user code (not imported here)."""
    if not isinstance(value, str) or ":" not in value:
        raise read.error(key, f"must be 'package.module:function', got {value!r}.")
    try:
        step_reference(value)
    except ValueError as err:
        raise read.error(key, f"is not a 'package.module:function' reference: {err}") from None
    return value


def plain_dict(read: Reader, key: str) -> dict[str, Any]:
    """A dict (a copy), ``{}`` when missing or null; the error names the type it got."""
    value = read.get(key, {})
    if not isinstance(value, dict):
        # A dict from XCom or a template arrives as its text unless the DAG renders native objects.
        hint = (
            " (use render_template_as_native_obj=True when it comes from a template)"
            if isinstance(value, str)
            else ""
        )
        raise read.error(key, f"must be a dict, got {type(value).__name__}.{hint}")
    return dict(value)


@dataclass(frozen=True, kw_only=True)
class MlflowTarget:
    """
    The ``mlflow`` key of a spec: the task's MLflow run, which the step logs into.

    :param run_id: the task's run (training: the chief logs params, metrics and the model there;
        tuning: the parent of the trials' runs).
    :param experiment_id: its experiment.
    :param tracking_uri: the tracking server (default: ``MLFLOW_TRACKING_URI`` of the process).
    """

    run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None

    @classmethod
    def read(cls, read: Reader, key: str = "mlflow") -> MlflowTarget:
        given = plain_dict(read, key)
        values = {name: given.get(name) for name in ("run_id", "experiment_id", "tracking_uri")}
        bad = {
            name: value for name, value in values.items() if value is not None and not isinstance(value, str)
        }
        if bad:
            raise read.error(key, f"must hold strings (run_id, experiment_id, tracking_uri), got {bad!r}.")
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class TrainingInputs(StepSpec):
    """
    What a ``run_fn`` reads, in the specs of ``train_model`` and of ``tune`` (``ctx`` of
    :class:`~airflow_ml_provider.ml.training.context.TrainingContext` holds them).

    :param train_uri: the training data: a dataset version directory (csv/parquet) or one file.
    :param eval_uri: the evaluation data, or null (``run_fn`` splits the training data itself).
    :param data_format: ``"csv"``, ``"parquet"``, or null to tell by file extension.
    :param schema_uri: the curated TFDV schema (text proto), if any.
    :param dataset_version: the dataset version being trained on (``version``, ``uri`` ...), as
        the operator found it (see :func:`airflow_ml_provider.versions.triggering_version`).
    :param custom_config: anything else the DAG author passes through to ``run_fn``.
    """

    train_uri: str | None = None
    eval_uri: str | None = None
    data_format: str | None = None
    schema_uri: str | None = None
    dataset_version: dict[str, Any] = field(default_factory=dict)
    custom_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _input_values(cls, read: Reader) -> dict[str, Any]:
        fmt = read.get("data_format")
        if fmt is not None and fmt not in DATA_FORMATS:
            raise read.error("data_format", f"must be 'csv', 'parquet' or null, got {fmt!r}.")
        return {
            "eval_uri": read.text("eval_uri"),
            "data_format": fmt,
            "schema_uri": read.text("schema_uri"),
            "dataset_version": plain_dict(read, "dataset_version"),
            "custom_config": plain_dict(read, "custom_config"),
        }


@dataclass(frozen=True, kw_only=True)
class CheckpointSettings:
    """
    The ``checkpoint`` key of a ``train_model`` spec: where the gang keeps its training state.

    :param every: ``"epoch"`` (at the end of every epoch) or an int N > 0 (every N training steps;
        Keras then resumes mid-epoch at the checkpoint's step, reading that epoch's data from its
        start).
    :param uri: a directory shared by the workers (a local path or an fsspec URI) for this task
        instance's checkpoints; null keeps them in the task's MLflow run, under ``checkpoints/``.
    """

    every: str | int = "epoch"
    uri: str | None = None

    @classmethod
    def read(cls, read: Reader, key: str = "checkpoint") -> CheckpointSettings | None:
        """The settings, or None when the key is missing or null (no checkpoints)."""
        given = read.get(key)
        if given is None:
            return None
        if not isinstance(given, dict):
            raise read.error(
                key, f'must be a dict {{"every": "epoch" | int, "uri": str | null}}, got {given!r}.'
            )
        unknown = sorted(set(given) - {"every", "uri"})
        if unknown:
            raise read.error(key, f"has unknown keys {unknown}; allowed: ['every', 'uri'].")
        every = given.get("every", "epoch")
        if every != "epoch" and (not is_int(every) or every < 1):
            raise read.error(
                f"{key}.every", f"must be 'epoch' or an int > 0 (training steps), got {every!r}."
            )
        uri = given.get("uri")
        if uri is not None and (not isinstance(uri, str) or not uri.strip()):
            raise read.error(
                f"{key}.uri",
                f"must be a directory shared by the workers (path or fsspec URI), or null for the "
                f"task's MLflow run, got {uri!r}.",
            )
        return cls(every=every, uri=uri)


def optional_seed(read: Reader) -> int | None:
    seed = read.get("seed")
    if seed is not None and not is_int(seed):
        raise read.error("seed", f"must be an int or None, got {seed!r}.")
    return seed


@dataclass(frozen=True, kw_only=True)
class TrainModelSpec(TrainingInputs):
    """
    The spec of ``train_model``: one worker of a training gang runs the user's ``run_fn(ctx)``.
    Every worker gets the same spec; other keys are ignored. The data keys are those of
    :class:`TrainingInputs` (``train_uri`` is required here).

    :param run_fn: ``"package.module:function"``, the user's training function (required).
    :param hyperparameters: passed through to ``ctx.hyperparameters``.
    :param strategy: ``one_device`` (default), ``mirrored`` or ``multi_worker_mirrored`` (the
        only one for more than one worker).
    :param model_dir: where the chief writes the SavedModel and leaves it (default: a temporary
        directory).
    :param warm_start_from: a model URI (``models:/name@champion``, ``runs:/...``,
        ``models:/m-...``) or a local SavedModel directory to start from.
    :param mlflow: the task's MLflow run (:class:`MlflowTarget`); the chief logs into it.
    :param seed: random seed set in every worker before ``run_fn``.
    :param checkpoint: checkpoints and resume (:class:`CheckpointSettings`), or null for none:
        every worker restores the last complete checkpoint before ``run_fn``, and the backup
        callback of ``ctx.callbacks()`` saves one as often as it says.
    """

    step = "train_model"

    train_uri: str = field()  # required here (a bare annotation would inherit the default)
    run_fn: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    strategy: str = "one_device"
    model_dir: str | None = None
    warm_start_from: str | None = None
    mlflow: MlflowTarget = field(default_factory=MlflowTarget)
    seed: int | None = None
    checkpoint: CheckpointSettings | None = None

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        read = Reader(spec, cls.step, quoted=False)
        run_fn = user_reference(read, "run_fn", spec.get("run_fn"))
        train_uri = spec.get("train_uri")
        if not isinstance(train_uri, str) or not train_uri:
            raise read.error("train_uri", f"must name the training data, got {train_uri!r}.")
        strategy = read.get("strategy", "one_device")
        if strategy not in STRATEGIES:
            raise ValueError(f"{cls.step}: strategy {strategy!r} is not one of {', '.join(STRATEGIES)}.")
        mlflow = MlflowTarget.read(read)
        checkpoint = CheckpointSettings.read(read)
        if checkpoint is not None and checkpoint.uri is None and not mlflow.run_id:
            raise read.error(
                "checkpoint.uri",
                "is null, which keeps the checkpoints in the task's MLflow run, but the spec names no "
                "mlflow.run_id; give checkpoint.uri (a directory the workers share) or the run.",
            )
        return {
            **cls._input_values(read),
            "train_uri": train_uri,
            "run_fn": run_fn,
            "hyperparameters": plain_dict(read, "hyperparameters"),
            "strategy": strategy,
            "model_dir": read.text("model_dir"),
            "warm_start_from": read.text("warm_start_from"),
            "mlflow": mlflow,
            "seed": optional_seed(read),
            "checkpoint": checkpoint,
        }
