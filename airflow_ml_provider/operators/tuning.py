"""Hyperparameter tuning as an Airflow task: trials in parallel on local processes, mapped tasks or pods."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.scratch import make_scratch_dir
from airflow_ml_provider.operators._placement import POD_PLACEMENT_TEMPLATE_FIELDS, warm_settings
from airflow_ml_provider.operators.base import MLflowTrackedOperator
from airflow_ml_provider.operators.step import MLStepOperator
from airflow_ml_provider.vocabulary import (
    ARTIFACT_TUNING_DIR,
    ARTIFACT_TUNING_SPEC,
    STEP_TUNE,
    TAG_STUDY,
    TAG_TUNING_ROLE,
    TUNING_ROLE_STUDY,
    TUNING_ROLE_SUMMARY,
    TUNING_ROLE_WORKER,
    XCOM_TUNING_SUMMARY,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.hooks.tuning_storage import StudyStorageHook
    from airflow_ml_provider.tracking import TaskRun

WORKER_STEP = STEP_TUNE
SUMMARY_STEP = "tuning_summary"
ARTIFACT_DIR = ARTIFACT_TUNING_DIR
XCOM_SUMMARY = XCOM_TUNING_SUMMARY
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class HyperparameterTuningOperator(MLStepOperator):
    """
    Tune hyperparameters with Optuna: trials in parallel, early stopping, every trial in MLflow.

    The objective is the training ``run_fn(ctx)`` that :class:`DistributedTrainingOperator` runs
    (``ctx.hyperparameters`` holds the trial's values; ``ctx.callbacks()`` reports ``metric`` after
    every epoch, which feeds the pruner), or a plain ``objective_fn(ctx)`` returning a number (see
    :class:`~airflow_ml_provider.ml.tuning.objective.TrialContext`).

    The study lives in a relational database (``storage_conn_id``: a PostgreSQL connection in
    production; by default an SQLite file under ``AIRFLOW_HOME``) and every worker pulls trials
    from it until ``n_trials`` trials started (exactly, across workers) or ``timeout`` passed:

    - ``workers`` processes on this Airflow worker (``placement="interpreter"``, the default; or
      one worker in the Airflow worker's own process, ``placement="worker"``);
    - K mapped tasks, which the executor spreads over its workers: see :func:`parallel_tuning`;
    - ``workers`` pods of an Indexed Job (``placement="pod"``; the pods reach the database,
      its URL comes from ``storage_secret``).

    A retry continues the same study: finished trials are kept, and the trials the failed try was
    running are run again with the same values. A trial that raises is recorded as failed and the
    study goes on; ``max_failed_trials`` failures fail the task.

    This task's MLflow run is the parent of one child run per trial (params, every intermediate
    value, final value, state). It gets the best value and params, counts per state, the epochs
    pruning saved, ``trials.csv`` and plots (optimization history, learning curves, parameter
    importances). XCom: the return value is the fixed hyperparameters with the best values, as
    ``DistributedTrainingOperator(hyperparameters=tune.output)`` takes them; the key
    ``tuning_summary`` holds the whole summary.

    :param search_space: each tuned hyperparameter's range (templated), e.g.
        ``{"learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "hidden_units": {"type": "int", "low": 8, "high": 128, "step": 8}, "optimizer": ["adam", "sgd"]}``.
    :param metric: the value to optimize, e.g. ``"val_auc"`` (an epoch metric of ``run_fn``'s
        ``fit``) (templated). Default ``"objective"`` for ``objective_fn``.
    :param direction: ``"maximize"`` or ``"minimize"``; told from well-known metric names when None.
    :param run_fn: the training function, ``"package.module:function"`` (templated).
    :param objective_fn: a plain objective function instead, ``"package.module:function"`` (templated).
    :param hyperparameters: values passed as they are to every trial, e.g. ``{"epochs": 10}`` (templated).
    :param custom_config: anything else for the objective (templated).
    :param train_uri: the training data of ``run_fn`` (templated).
    :param eval_uri: its evaluation data (templated).
    :param data_format: ``"csv"``, ``"parquet"`` or None (templated).
    :param schema_uri: the curated TFDV schema (templated).
    :param n_trials: the study's budget of trials (templated); None for a time budget only.
    :param timeout: stop starting trials after this many seconds of this task (templated).
    :param max_failed_trials: failed trials that end the study (and fail the task); None for no limit.
    :param sampler: ``"tpe"`` (default), ``"random"``, ``"grid"``, or a dict with ``type`` and options.
    :param pruner: ``"median"`` (default), ``"hyperband"``, ``"none"``, or a dict with ``type`` and options.
    :param seed: seeds the samplers (worker i uses ``seed + i``) and every trial's TensorFlow.
    :param study_name: the study (templated); default ``<dag_id>.<task_id>.<run_id>``. Give one
        that stays the same to go on with a study across DAG runs.
    :param storage_conn_id: a ``postgres``, ``mysql`` or ``sqlite`` connection for the study.
    :param storage: a SQLAlchemy URL holding no secret, when there is no connection (templated).
    :param storage_secret: for ``placement="pod"``: a Secret whose key
        ``AIRFLOW_ML_TUNING_STORAGE`` holds the database URL the pods use.
    :param worker_slot: set by :func:`parallel_tuning` on mapped worker tasks: run trials only.
    :param summary_only: set by :func:`parallel_tuning` on its ``best`` task: summarize the study only.
    :param heartbeat_interval: seconds between a running trial's heartbeats; a trial silent for
        ``grace_period`` seconds (default 6 heartbeats, at least 60 s) is failed and run again.
    :param grace_period: see ``heartbeat_interval``.

    The placement arguments (``placement``, ``workers``, ``python``, ``step_env``, ``image``,
    ``namespace`` and the other pod settings) are those of every step operator: see
    :class:`~airflow_ml_provider.operators._placement.StepPlacement`.
    """

    template_fields: Sequence[str] = (
        "search_space",
        "metric",
        "direction",
        "run_fn",
        "objective_fn",
        "hyperparameters",
        "custom_config",
        "train_uri",
        "eval_uri",
        "data_format",
        "schema_uri",
        "n_trials",
        "timeout",
        "study_name",
        "storage",
        "workers",
        *POD_PLACEMENT_TEMPLATE_FIELDS,
        *MLflowTrackedOperator.template_fields,
    )
    template_fields_renderers = {"search_space": "json", "hyperparameters": "json", "custom_config": "json"}
    ui_color = "#efe3f6"
    runs_as_gang = True
    default_placement = "interpreter"
    gang_label = "Tuning gang"
    spec_artifact = ARTIFACT_TUNING_SPEC
    dataset_inputs = ("train_uri", "eval_uri")

    def __init__(
        self,
        *,
        search_space: dict[str, Any],
        metric: str | None = None,
        direction: str | None = None,
        run_fn: str | None = None,
        objective_fn: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        custom_config: dict[str, Any] | None = None,
        train_uri: str | None = None,
        eval_uri: str | None = None,
        data_format: str | None = None,
        schema_uri: str | None = None,
        n_trials: int | None = 20,
        timeout: float | None = None,
        max_failed_trials: int | None = 3,
        sampler: str | dict[str, Any] = "tpe",
        pruner: str | dict[str, Any] = "median",
        seed: int | None = None,
        study_name: str | None = None,
        storage_conn_id: str | None = None,
        storage: str | None = None,
        storage_secret: str | None = None,
        worker_slot: int | None = None,
        summary_only: bool = False,
        heartbeat_interval: int = 10,
        grace_period: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(step=WORKER_STEP, **kwargs)
        self.search_space = search_space
        self.metric = metric
        self.direction = direction
        self.run_fn = run_fn
        self.objective_fn = objective_fn
        self.hyperparameters = hyperparameters
        self.custom_config = custom_config
        self.train_uri = train_uri
        self.eval_uri = eval_uri
        self.data_format = data_format
        self.schema_uri = schema_uri
        self.n_trials = n_trials
        self.timeout = timeout
        self.max_failed_trials = max_failed_trials
        self.sampler = sampler
        self.pruner = pruner
        self.seed = seed
        self.study_name = study_name
        self.storage_conn_id = storage_conn_id
        self.storage = storage
        self.storage_secret = storage_secret
        self.worker_slot = worker_slot
        self.summary_only = summary_only
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self._storage_hook: StudyStorageHook | None = None

    # -- arguments and spec ---------------------------------------------------------------------

    @property
    def objective(self) -> dict[str, str]:
        if self.run_fn:
            return {"kind": "run_fn", "ref": str(self.run_fn)}
        return {"kind": "function", "ref": str(self.objective_fn)}

    @property
    def metric_name(self) -> str | None:
        return self.metric or (None if self.run_fn else "objective")

    def _check_arguments(self) -> None:
        """Everything is checked here, before a worker starts: a bad search space runs no trial."""
        from airflow_ml_provider.ml.tuning.config import study_settings
        from airflow_ml_provider.ml.tuning.objective import check_objective

        where = f"Task {self.task_id!r}"
        self.check_placement()
        if bool(self.run_fn) == bool(self.objective_fn):
            raise ValueError(f"{where}: give run_fn (the training function) or objective_fn, exactly one.")
        if self.run_fn and not self.metric:
            raise ValueError(
                f"{where}: with run_fn, metric must name the epoch metric to optimize, e.g. metric='val_auc'."
            )
        for name in ("hyperparameters", "custom_config", "search_space"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise TypeError(
                    f"{where}: {name} must be a dict (use render_template_as_native_obj=True when it comes "
                    f"from a template), got {type(value).__name__}: {str(value)[:100]!r}."
                )
        try:
            study_settings(self._settings_spec())
            check_objective({"objective": self.objective, "train_uri": self.train_uri})
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if self.worker_slot is not None and (
            isinstance(self.worker_slot, bool)
            or not isinstance(self.worker_slot, int)
            or self.worker_slot < 0
        ):
            raise ValueError(f"{where}: worker_slot must be an int >= 0, got {self.worker_slot!r}.")

    def _settings_spec(self) -> dict[str, Any]:
        return {
            "metric": self.metric_name,
            "direction": self.direction,
            "search_space": self.search_space,
            "hyperparameters": self.hyperparameters or {},
            "sampler": self.sampler,
            "pruner": self.pruner,
            "n_trials": self.n_trials,
            "timeout": self.timeout,
            "max_failed_trials": self.max_failed_trials,
            "seed": self.seed,
        }

    def storage_hook(self) -> StudyStorageHook:
        if self._storage_hook is None:
            from airflow_ml_provider.hooks.tuning_storage import StudyStorageHook

            self._storage_hook = StudyStorageHook(self.storage_conn_id, self.storage)
        return self._storage_hook

    def _check_storage(self) -> None:
        pods = self._placement_argument() if self.placement_name == "pod" else None
        self.storage_hook().check_shared(
            f"Task {self.task_id!r}", pods=pods, mapped=self.worker_slot is not None
        )

    def default_study_name(self, context: Context) -> str:
        ti = context["ti"]
        return f"{ti.dag_id}.{ti.task_id}.{ti.run_id}"

    def build_spec(self, context: Context, run: TaskRun) -> dict[str, Any]:
        """The ``tune`` spec every worker gets (no storage URL: that goes through the environment)."""
        from airflow_ml_provider.tracking import TaskIdentity
        from airflow_ml_provider.versions import triggering_version

        self._check_storage()
        identity = TaskIdentity.from_context(context)
        spec: dict[str, Any] = {
            **self._settings_spec(),
            "study_name": str(self.study_name or self.default_study_name(context)),
            "objective": self.objective,
            "train_uri": self.train_uri,
            "eval_uri": self.eval_uri,
            "data_format": self.data_format,
            "schema_uri": self.schema_uri,
            "dataset_version": triggering_version(context),
            "custom_config": self.custom_config or {},
            "parallel": self.workers > 1 or self.worker_slot is not None,
            "mlflow": {"run_id": run.run_id, "experiment_id": run.experiment_id},
            "heartbeat_interval": self.heartbeat_interval,
            "grace_period": self.grace_period,
        }
        if self.placement_name != "pod":
            # Pods reattach across tries (same spec); local workers of an earlier try are gone.
            spec["owner"] = {"key": identity.ti_key, "try_number": identity.try_number}
            if self.workers > 1:
                spec["threads"] = max(1, (os.cpu_count() or 1) // self.workers)
        settings = self._settings_spec()  # None means something there (no limit, no seed)
        return {k: v for k, v in spec.items() if v is not None or k in settings}

    def start_params(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "objective": spec["objective"]["ref"],
            "metric": self.metric_name,
            "direction": spec.get("direction") or "",
            "sampler": json.dumps(self.sampler, sort_keys=True),
            "pruner": json.dumps(self.pruner, sort_keys=True),
            "n_trials": self.n_trials,
            "timeout": self.timeout,
            "max_failed_trials": self.max_failed_trials,
            "study_name": spec["study_name"],
            "storage": self.storage_hook().display,
            "launcher": self.launcher,
            "placement": self.placement_name,
            "workers": self.workers,
        }

    def start_tags(self, spec: dict[str, Any]) -> dict[str, Any]:
        role = (
            TUNING_ROLE_SUMMARY
            if self.summary_only
            else TUNING_ROLE_WORKER
            if self.worker_slot is not None
            else TUNING_ROLE_STUDY
        )
        return {
            **super().start_tags(spec),
            TAG_TUNING_ROLE: role,
            TAG_STUDY: spec["study_name"],
        }

    def log_start(self, run: TaskRun, spec: dict[str, Any]) -> None:
        super().log_start(run, spec)
        self.log.info("Study %s in %s", spec["study_name"], self.storage_hook().display)

    # -- execution ------------------------------------------------------------------------------

    def run_step(self, context: Context, run: TaskRun, spec: dict[str, Any], cache_key: str | None) -> Any:
        if self.summary_only:  # the study's workers ran in other tasks
            return {}
        return super().run_step(context, run, spec, cache_key)

    def step_extras(self, run: TaskRun) -> dict[str, str]:
        from airflow_ml_provider.ml.tuning.storage import STORAGE_ENV

        env = {STORAGE_ENV: self.storage_hook().url}
        if self.workers > 1 and self.placement_name == "interpreter":
            threads = str(max(1, (os.cpu_count() or 1) // self.workers))
            for name in THREAD_ENV:  # numpy & co. in parallel trials: a share of the cores each
                env[name] = threads
        return env

    def gang_environments(self) -> list[dict[str, str]]:
        from airflow_ml_provider.ml.tuning.worker import WORKER_ENV

        first = (self.worker_slot or 0) * self.workers
        return [{WORKER_ENV: str(first + i)} for i in range(self.workers)]

    def gang_result(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        return {"worker_results": results}

    def handle_result(
        self, context: Context, run: TaskRun, spec: dict[str, Any], result: dict[str, Any]
    ) -> Any:
        """A mapped worker task's trials; else the study's summary (and the best hyperparameters)."""
        if self.worker_slot is not None and self.placement_name != "pod":
            return self._worker_result(result.get("worker_results") or [result])
        return self._summarize(context, run, spec)

    def _worker_result(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        trials = [t for result in results for t in result.get("trials", [])]
        states = [t["state"] for t in trials]
        summary = {
            "worker_slot": self.worker_slot,
            "trials": len(trials),
            "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL"),
            "stopped": sorted({str(r.get("stopped")) for r in results}),
        }
        self.log.info("This worker task ran %d trial(s): %s", len(trials), summary)
        return summary

    # -- Kubernetes -----------------------------------------------------------------------------

    def pod_extras(self) -> tuple[dict[str, str], list[str]]:
        from airflow_ml_provider.ml.tuning.storage import STORAGE_ENV

        if self.storage_secret:
            return {}, [str(self.storage_secret)]
        hook = self.storage_hook()
        if hook.display != hook.url:
            raise ValueError(
                f"Task {self.task_id!r}: the study's database URL holds a password, which must not go into the "
                f"pod spec; store the URL in a Secret under the key {STORAGE_ENV} and pass storage_secret=."
            )
        return {STORAGE_ENV: hook.url}, []

    def pod_result(self, run: TaskRun, spec: dict[str, Any]) -> dict[str, Any]:
        return {}  # the study holds what the pods did

    # -- summary --------------------------------------------------------------------------------

    def _summarize(self, context: Context, run: TaskRun, spec: dict[str, Any]) -> Any:
        """Summarize the study in the workers' interpreter, record it in MLflow, fail or return the best."""
        from airflow_ml_provider.ml.tuning.storage import STORAGE_ENV
        from airflow_ml_provider.runners import PythonRunner

        workdir = make_scratch_dir("ml-tuning")
        try:
            env = {**self.local_environment(run), STORAGE_ENV: self.storage_hook().url}
            runner = PythonRunner(python=self.resolved_python(), env=env, **warm_settings())
            summary = runner.run(SUMMARY_STEP, {**spec, "output_dir": f"{workdir}/out"}, logger=self.log)
            run.log_artifacts(f"{workdir}/out", ARTIFACT_DIR)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        self._close_left_open(run, summary.pop("ended_runs", {}))
        self._record(run, summary)
        context["ti"].xcom_push(key=XCOM_SUMMARY, value=summary)
        self._raise_if_failed(run, summary)
        best = summary["best"]
        self.log.info(
            "Best trial %s: %s=%s with %s (%s)",
            best["number"],
            summary["metric"],
            best["value"],
            best["params"],
            summary["trials"],
        )
        return summary["hyperparameters"]

    def _close_left_open(self, run: TaskRun, ended: dict[str, str]) -> None:
        """Close the trial runs a killed worker left RUNNING although their trial ended."""
        from airflow_ml_provider.ml.tuning.trial_runs import close_left_open

        close_left_open(run.hook.client, run.experiment_id, run.run_id, ended)

    def _record(self, run: TaskRun, summary: dict[str, Any]) -> None:
        from mlflow.exceptions import MlflowException

        from airflow_ml_provider.ml.tuning.summary import mlflow_records

        metrics, tags, params = mlflow_records(summary)
        run.log_metrics(metrics)
        run.set_tags(tags)
        run.flush()
        try:
            if params:
                run.hook.log_batch(run.run_id, params=params)
        except MlflowException as err:
            # A retry that found a better trial: MLflow keeps the first params; the tags and
            # summary.json say what is best now.
            self.log.warning("Could not log the best params as MLflow params: %s", err)

    def _raise_if_failed(self, run: TaskRun, summary: dict[str, Any]) -> None:
        from airflow_ml_provider.exceptions import TuningFailed

        failed = summary["failed_trials"]
        report = run.url or f"runs:/{run.run_id}/{ARTIFACT_DIR}"
        if self.max_failed_trials is not None and len(failed) >= self.max_failed_trials:
            raise TuningFailed(
                summary["study_name"],
                f"{len(failed)} trials failed (max_failed_trials={self.max_failed_trials}), so the study stopped",
                failed,
                report,
            )
        if summary["best"] is None:
            raise TuningFailed(
                summary["study_name"], f"no trial completed ({summary['trials']})", failed, report
            )


def parallel_tuning(
    *, group_id: str = "tune", worker_tasks: int, **kwargs: Any
) -> HyperparameterTuningOperator:
    """
    Tune with ``worker_tasks`` mapped tasks on one study, which the executor spreads over its
    workers (Celery, Kubernetes ...), then a ``best`` task that summarizes the study.

    Returns the ``best`` task, inside a task group ``group_id``: its XCom is the best
    hyperparameters, ``train.hyperparameters=best.output``; ``best >> train`` orders them. Every
    mapped task may itself run ``workers`` local processes. The study must live where every worker
    reaches it: give ``storage_conn_id`` (PostgreSQL) unless the executor is local.

    :param group_id: the task group's id.
    :param worker_tasks: how many mapped worker tasks to start.
    :param kwargs: the arguments of :class:`HyperparameterTuningOperator` (and of BaseOperator).
    """
    from airflow.sdk import TaskGroup

    if isinstance(worker_tasks, bool) or not isinstance(worker_tasks, int) or worker_tasks < 1:
        raise ValueError(f"parallel_tuning: worker_tasks must be an int >= 1, got {worker_tasks!r}.")
    kwargs.setdefault("study_name", "{{ dag.dag_id }}." + group_id + ".{{ run_id }}")
    with TaskGroup(group_id=group_id):
        workers = HyperparameterTuningOperator.partial(task_id="workers", **kwargs).expand(
            worker_slot=list(range(worker_tasks))
        )
        summary_kwargs = {k: v for k, v in kwargs.items() if k not in ("launcher", "placement", "workers")}
        best = HyperparameterTuningOperator(task_id="best", summary_only=True, **summary_kwargs)
        workers >> best
    return best
