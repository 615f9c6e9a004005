"""
What a user's ``run_fn(ctx)`` gets: the training contract, in the spirit of TFX's ``FnArgs``.

The DAG author writes, in a module of their own::

    def run_fn(ctx: TrainingContext):
        keras = ctx.keras                       # tf_keras: Keras 2, which multi-worker strategies support
        train = ctx.read_train()                # pandas DataFrame of the dataset version
        with ctx.strategy.scope():
            model = build_model(ctx.hyperparameters)
            ctx.load_warm_start(model)          # when the task asked for a warm start
        model.fit(make_dataset(train), epochs=ctx.hyperparameters["epochs"], callbacks=ctx.callbacks())
        return model                            # the step exports it (chief only) and logs it to MLflow

The same function runs in every worker of the gang; ``ctx.role`` says which one this is. Only the
chief logs to MLflow (``ctx.log_metrics`` and the callbacks do nothing elsewhere), so workers never
open runs of their own.

When the task checkpoints (``checkpoint_every``), ``ctx.callbacks()`` also holds the backup
callback: ``fit`` resumes at the epoch of the last complete checkpoint (``ctx.resumed_from``) after
a restart or a retry. A loop of your own restores from ``ctx.checkpoint_dir`` (the checkpoint is
there before ``run_fn`` starts) and, after writing a checkpoint there, calls
``ctx.commit_checkpoint(epoch=...)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.training.cluster import WorkerRole

if TYPE_CHECKING:
    import pandas as pd

    from airflow_ml_provider.ml.specs.training import TrainingInputs
    from airflow_ml_provider.ml.training.checkpoint import TrainingCheckpoints

log = logging.getLogger(__name__)


class ChiefTracker:
    """
    Logs into the task's MLflow run from the chief; a no-op on other workers or without a run.

    Credentials come from the process environment (``MLFLOW_TRACKING_*``), which the launcher sets
    for the worker processes (a pod gets them from a Secret).

    :param run_id: the task's MLflow run, or None to log nothing.
    :param enabled: True on the chief.
    :param tracking_uri: the tracking server (default: ``MLFLOW_TRACKING_URI``).
    """

    def __init__(self, run_id: str | None, *, enabled: bool, tracking_uri: str | None = None) -> None:
        self.run_id = run_id
        self.enabled = bool(enabled and run_id)
        self.tracking_uri = tracking_uri
        self._client: Any = None

    def connect(self) -> None:
        """Build the MLflow client (and import MLflow) ahead of the first log call."""
        _ = self.client

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if not self.enabled or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(str(k), float(v), now, int(step)) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled or not params:
            return
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        batch = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(batch), 100):
            try:
                self.client.log_batch(self.run_id, params=batch[start : start + 100], synchronous=True)
            except MlflowException as err:
                # A retry resumes the run: MLflow refuses a param whose value changed since the
                # earlier try. The model is worth more than that record.
                log.warning("Could not log params to MLflow run %s: %s", self.run_id, err)


EpochHook = Callable[[int, dict[str, float]], None]


def _epoch_logger(tracker: ChiefTracker, prefix: str, hooks: list[EpochHook]) -> Any:
    """
    A tf_keras callback that logs every epoch's metrics (``<prefix><name>``, step = epoch).

    ``hooks`` see every epoch's metrics after they are logged (a tuning trial reports its metric
    and may stop training there by raising).
    """
    import tf_keras

    class MlflowEpochLogger(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            numbers = {str(k): float(v) for k, v in (logs or {}).items() if _is_number(v)}
            tracker.log_metrics({f"{prefix}{k}": v for k, v in numbers.items()}, step=epoch)
            for hook in hooks:
                hook(epoch, numbers)

    return MlflowEpochLogger()


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


@dataclass
class TrainingContext:
    """
    Everything ``run_fn`` needs, built by the training step in each worker.

    :param train_uri: the training data: a dataset version directory (csv/parquet) or one file.
    :param eval_uri: the evaluation data, or None (``run_fn`` splits the training data itself).
    :param data_format: ``"csv"``, ``"parquet"``, or None to tell by file extension.
    :param dataset_version: the dataset version being trained on (name, version, uri ...), if known.
    :param schema_uri: the curated TFDV schema (text proto), if any.
    :param hyperparameters: the hyperparameters (for example the tuning task's best values).
    :param custom_config: anything else the DAG author passes through.
    :param model_dir: where this worker's SavedModel goes; only the chief's is kept.
    :param strategy: the ``tf.distribute.Strategy`` to build and compile the model under.
    :param strategy_name: its name as given to the operator.
    :param role: this worker's place in the gang (``role.is_chief``, ``role.index``, ``role.workers``).
    :param warm_start_path: a local SavedModel to start from, or None.
    :param mlflow_run_id: the task's MLflow run (the chief logs into it).
    :param seed: the random seed set before ``run_fn`` ran, if any.
    :param trial_number: the tuning trial this run is, or None in a training task.
    :param epoch_hooks: called with ``(epoch, metrics)`` after every epoch by :meth:`callbacks`.
    :param checkpoints: this worker's side of the task's checkpoints, or None when it takes none.
    """

    train_uri: str
    eval_uri: str | None
    data_format: str | None
    dataset_version: dict[str, Any]
    schema_uri: str | None
    hyperparameters: dict[str, Any]
    custom_config: dict[str, Any]
    model_dir: str
    strategy: Any
    strategy_name: str
    role: WorkerRole
    warm_start_path: str | None = None
    mlflow_run_id: str | None = None
    seed: int | None = None
    tracker: ChiefTracker = field(default_factory=lambda: ChiefTracker(None, enabled=False), repr=False)
    trial_number: int | None = None
    epoch_hooks: list[EpochHook] = field(default_factory=list, repr=False)
    checkpoints: TrainingCheckpoints | None = field(default=None, repr=False)

    @classmethod
    def from_spec(cls, spec: TrainingInputs, **worker: Any) -> TrainingContext:
        """
        The context of a parsed ``train_model`` or ``tune`` spec: its training inputs, and ``worker``.

        :param spec: the parsed spec (its ``train_uri``, ``eval_uri``, ``data_format``,
            ``dataset_version``, ``schema_uri`` and ``custom_config``).
        :param worker: the other fields, which this worker sets (``hyperparameters``, ``model_dir``,
            ``strategy``, ``role`` ...).
        """
        return cls(
            train_uri=str(spec.train_uri),
            eval_uri=spec.eval_uri,
            data_format=spec.data_format,
            dataset_version=dict(spec.dataset_version),
            schema_uri=spec.schema_uri,
            custom_config=dict(spec.custom_config),
            **worker,
        )

    @property
    def is_chief(self) -> bool:
        """True in the worker that exports the model and logs to MLflow."""
        return self.role.is_chief

    @property
    def keras(self) -> Any:
        """The ``tf_keras`` module (Keras 2): the Keras that TensorFlow 2.16's multi-worker strategies support."""
        import tf_keras

        return tf_keras

    def read_train(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The training data as a pandas DataFrame (every file of the version, in name order)."""
        return read_table(self.train_uri, self.data_format, columns)

    def read_eval(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The evaluation data; ValueError when the task gave none."""
        if not self.eval_uri:
            raise ValueError(
                "read_eval(): the training task has no eval_uri; pass eval_uri to the operator or split "
                "the training data in run_fn."
            )
        return read_table(self.eval_uri, self.data_format, columns)

    def read_schema(self) -> Any:
        """The TFDV schema proto at ``schema_uri``, or None when the task gave none."""
        if not self.schema_uri:
            return None
        from airflow_ml_provider.ml.validation.schema import load_schema

        return load_schema(self.schema_uri)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """Log metrics to the task's MLflow run (chief only; a no-op on other workers)."""
        self.tracker.log_metrics(metrics, step)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params to the task's MLflow run (chief only)."""
        self.tracker.log_params(params)

    def callbacks(self, prefix: str = "") -> list[Any]:
        """
        tf_keras callbacks for ``fit``: every epoch's metrics go to MLflow (chief only).

        In a tuning trial they also report the tuned metric after every epoch, which is what lets
        the pruner stop an unpromising trial early. When the task checkpoints, a
        ``BackupAndRestore`` saves the training state as often as it asks and uploads it; ``fit``
        then starts at the epoch of the checkpoint it resumed from (one ``fit`` per ``run_fn``).
        """
        callbacks = [_epoch_logger(self.tracker, prefix, self.epoch_hooks)]
        if self.checkpoints is not None:
            # After the logger: an epoch's metrics are logged before its checkpoint makes it final.
            callbacks.append(self.checkpoints.keras_callback())
        return callbacks

    @property
    def checkpoint_dir(self) -> str | None:
        """
        This worker's local checkpoint directory, or None when the task takes no checkpoints.

        It holds the checkpoint training resumes from when ``run_fn`` starts (see
        :attr:`resumed_from`); the backup callback of :meth:`callbacks` writes its checkpoints there.
        """
        return str(self.checkpoints.checkpoint_dir) if self.checkpoints is not None else None

    @property
    def resumed_from(self) -> dict[str, int] | None:
        """
        Where training resumes: ``{"epoch": e, "step": s}`` (start at epoch ``e``, 0-based, after
        ``s`` training steps), or None when it starts from scratch.
        """
        checkpoints = self.checkpoints
        return dict(checkpoints.resumed_from) if checkpoints and checkpoints.resumed_from else None

    def commit_checkpoint(self, epoch: int, step: int = 0) -> None:
        """
        For a training loop of your own: the checkpoint now in :attr:`checkpoint_dir` is complete.

        Call it in every worker after each save; the chief uploads it (the last complete upload is
        what a restarted gang resumes from). Without ``checkpoint_every`` it does nothing.

        :param epoch: the epoch a resumed run starts at (after the end of epoch 2: 3).
        :param step: the training steps done so far.
        """
        if self.checkpoints is not None:
            self.checkpoints.commit(epoch=epoch, step=step)

    def load_warm_start(self, model: Any) -> bool:
        """
        Copy the warm-start model's weights into ``model`` (call it under ``strategy.scope()``).

        Returns False when the task asked for no warm start. The two models must have the same
        architecture; a mismatch raises ValueError naming both.
        """
        if not self.warm_start_path:
            return False
        loaded = self.keras.models.load_model(self.warm_start_path, compile=False)
        source, target = loaded.get_weights(), model.get_weights()
        shapes = [w.shape for w in source], [w.shape for w in target]
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"Warm start: the model at {self.warm_start_path} has weights of shapes {shapes[0]}, the "
                f"model built by run_fn {shapes[1]}; they must have the same architecture."
            )
        model.set_weights(source)
        log.info("Warm start: weights loaded from %s", self.warm_start_path)
        return True


def read_table(uri: str, fmt: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """
    Read a dataset version (a directory of csv/parquet files, or one file) into one DataFrame.

    :param uri: a local path or an fsspec URI.
    :param fmt: ``"csv"``, ``"parquet"``, or None to tell by file extension.
    :param columns: only these columns.
    """
    import pandas as pd

    from airflow_ml_provider.ml.validation.io import find_data_files

    try:
        files = find_data_files(uri, fmt)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Training data {uri!r} does not exist: give train_uri / eval_uri as a dataset version "
            "directory or a single .csv/.parquet file."
        ) from None
    frames = []
    for path in files.paths:
        with files.fs.open(path, "rb") as handle:
            if files.format == "csv":
                frames.append(pd.read_csv(handle, usecols=columns))
            else:
                frames.append(pd.read_parquet(handle, columns=columns))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
