"""Evaluate a candidate model against the champion with TFMA semantics, and bless it or not."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.dataset_version import version_in_uri
from airflow_ml_provider.links.mlflow import EvaluationReportLink
from airflow_ml_provider.ml.specs.evaluation import DATA, EVALUATE_ON, HOLDOUT, evaluated_datasets
from airflow_ml_provider.operators._placement import POD_PLACEMENT_TEMPLATE_FIELDS
from airflow_ml_provider.operators.base import MLflowTrackedOperator
from airflow_ml_provider.operators.step import ON_PROBLEM, MLStepOperator
from airflow_ml_provider.vocabulary import (
    ARTIFACT_EVALUATION_DIR,
    ARTIFACT_EVALUATION_RECORD,
    STEP_EVALUATE_MODEL,
    TAG_EVALUATED_ON,
    TAG_EVALUATION_DATASET_PREFIX,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.tracking import TaskRun

ON_NOT_BLESSED = ON_PROBLEM
ENGINES = ("auto", "fast", "beam")
ARTIFACT_DIR = ARTIFACT_EVALUATION_DIR


class ModelEvaluationOperator(MLStepOperator):
    """
    Compare a candidate model with the production model per slice and decide its blessing.

    Both models are loaded with ``mlflow.pyfunc`` and predict the evaluation dataset version; the
    metrics, slices and thresholds are a TFMA ``EvalConfig`` (value thresholds, and change
    thresholds against the baseline). The baseline defaults to the version holding alias
    ``champion`` of ``registered_model_name``; with no champion yet (first run) only the value
    thresholds decide. Data that fits in memory takes an in-memory path that computes TFMA's own
    numbers; other configs (or ``engine="beam"``) run TFMA's Beam pipeline, on any Beam runner.

    The task's MLflow run gets the metrics of every slice (``auc``, ``auc/sex:F``,
    ``baseline/auc``, ``diff/auc`` ...), ``evaluation/metrics.json``, ``blessing.json``, the
    effective ``eval_config.pbtxt``, an HTML report and PNG plots. XCom gets the blessing record
    that :class:`PromoteModelOperator` reads: ``blessed``, ``candidate_model_uri``, ``baseline``
    (alias and version evaluated against), ``failures`` (slice, metric, value, bound, baseline
    value), overall ``metrics``, ``dataset_version`` and the MLflow run ids.

    **A trusted holdout.** A change threshold compares the candidate with the champion on the data
    given, so it cannot see labels corrupted in the new version itself (the champion scores as badly
    on them). ``holdout_uri`` names a fixed, versioned holdout (``.../holdout/version=0001``) that
    both models are evaluated on as well (``evaluate_on="both"``, the default with a holdout) or
    instead (``"holdout"``); the candidate is blessed only when it meets the thresholds on every
    dataset evaluated. The holdout's metrics are named ``holdout/auc``, ``holdout/diff/auc`` ...;
    the record's ``evaluations`` gives each dataset's URI, dataset version, verdict and overall
    metrics, ``metrics`` are those of the first one (``metrics_dataset``).

    :param candidate_model_uri: the candidate (templated), e.g. ``"{{ ti.xcom_pull('train')['model_uri'] }}"``.
    :param eval_config: a TFMA EvalConfig: dict, JSON or text proto (templated).
    :param data_uri: the evaluation dataset version (templated); with ``evaluate_on="holdout"``
        optional, and only recorded.
    :param holdout_uri: a fixed, versioned holdout both models are evaluated on (templated), e.g.
        ``"s3://data/churn/holdout/version=0001"``; its version (``0001``) is read from the path.
    :param evaluate_on: ``"data"``, ``"holdout"`` or ``"both"`` (templated); default: ``"both"``
        with a ``holdout_uri``, else ``"data"``.
    :param holdout_format: the holdout's ``"csv"`` or ``"parquet"`` (templated; default: ``data_format``).
    :param registered_model_name: registered model whose ``baseline_alias`` is the baseline
        (templated).
    :param baseline_alias: the alias holding the production model (default ``champion``).
    :param baseline_model_uri: an explicit baseline instead of the alias (templated); such an
        evaluation cannot be promoted with compare-and-set.
    :param data_format: ``"csv"``, ``"parquet"`` or None (by extension) (templated).
    :param label_key: the label column (templated).
    :param example_weight_key: a weight column, or None (templated).
    :param feature_columns: columns given to the models (default: all but label and weight).
    :param dataset_version: recorded in the blessing (templated; default: the version that
        started the DAG run, see :func:`~airflow_ml_provider.versions.dataset_version`).
    :param on_not_blessed: ``"fail"`` raises :class:`ModelNotBlessed`; ``"skip"`` skips this
        task and the tasks downstream; ``"warn"`` logs and returns the record (blessed=False).
        Whatever it says, the record goes to XCom (``return_value``) and to the MLflow run.
    :param engine: ``"auto"``, ``"fast"`` or ``"beam"``.
    :param beam_pipeline_args: Beam options for the Beam engine, e.g. ``["--runner=FlinkRunner"]``.
    :param cache: reuse the result of an earlier run on the same inputs (see the "Step cache" page); on by
        default, ``cache=False`` or ``default_args={"cache": False}`` runs it every time.
    """

    cache_by_default = True
    dataset_inputs = ("data_uri", "holdout_uri")
    cache_inputs = ("data_uri", "holdout_uri")
    cache_artifacts = (ARTIFACT_DIR,)
    artifact_dir = ARTIFACT_DIR
    # The baseline's name and version, for blessing.json: baseline_model_uri (in the key) names it.
    cache_volatile = (*MLStepOperator.cache_volatile, "baseline")

    template_fields: Sequence[str] = (
        "candidate_model_uri",
        "eval_config",
        "data_uri",
        "holdout_uri",
        "evaluate_on",
        "holdout_format",
        "registered_model_name",
        "baseline_alias",
        "baseline_model_uri",
        "data_format",
        "label_key",
        "example_weight_key",
        "dataset_version",
        *POD_PLACEMENT_TEMPLATE_FIELDS,
        *MLflowTrackedOperator.template_fields,
    )
    template_fields_renderers = {"eval_config": "json"}
    ui_color = "#e6dff2"
    operator_extra_links = (*MLflowTrackedOperator.operator_extra_links, EvaluationReportLink())

    def __init__(
        self,
        *,
        candidate_model_uri: Any,
        eval_config: Any,
        data_uri: str | None = None,
        holdout_uri: str | None = None,
        evaluate_on: str | None = None,
        holdout_format: str | None = None,
        registered_model_name: str | None = None,
        baseline_alias: str = "champion",
        baseline_model_uri: str | None = None,
        data_format: str | None = None,
        label_key: str = "label",
        example_weight_key: str | None = None,
        feature_columns: list[str] | None = None,
        dataset_version: Any = None,
        on_not_blessed: str = "fail",
        engine: str = "auto",
        beam_pipeline_args: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(step=STEP_EVALUATE_MODEL, **kwargs)
        self.candidate_model_uri = candidate_model_uri
        self.eval_config = eval_config
        self.data_uri = data_uri
        self.holdout_uri = holdout_uri
        self.evaluate_on = evaluate_on
        self.holdout_format = holdout_format
        self.registered_model_name = registered_model_name
        self.baseline_alias = baseline_alias
        self.baseline_model_uri = baseline_model_uri
        self.data_format = data_format
        self.label_key = label_key
        self.example_weight_key = example_weight_key
        self.feature_columns = feature_columns
        self.dataset_version = dataset_version
        self.on_not_blessed = on_not_blessed
        self.engine = engine
        self.beam_pipeline_args = beam_pipeline_args
        self._baseline: dict[str, Any] | None = None
        self._replaced_by_candidate: str | None = None

    def _check_arguments(self) -> None:
        super()._check_arguments()
        where = f"Task {self.task_id!r}"
        self.check_policy("on_not_blessed")
        if self.engine not in ENGINES:
            raise ValueError(f"{where}: engine={self.engine!r} is not one of {', '.join(ENGINES)}.")
        if not self.candidate_model_uri or not isinstance(self.candidate_model_uri, str):
            raise ValueError(
                f"{where}: candidate_model_uri must be a model URI (e.g. train.output['model_uri']), "
                f"got {self.candidate_model_uri!r}."
            )
        self._check_datasets(where)
        if not self.eval_config:
            raise ValueError(
                f"{where}: eval_config is empty; give a TFMA EvalConfig (dict, JSON or text proto)."
            )

    def _check_datasets(self, where: str) -> None:
        if self.evaluate_on not in (None, *EVALUATE_ON):
            raise ValueError(
                f"{where}: evaluate_on={self.evaluate_on!r} is not one of {', '.join(EVALUATE_ON)}."
            )
        datasets = self._datasets()
        if DATA in datasets and not self.data_uri:
            raise ValueError(f"{where}: data_uri is empty (after rendering the template).")
        if HOLDOUT in datasets and not self.holdout_uri:
            raise ValueError(
                f"{where}: evaluate_on={self.evaluate_on!r} needs holdout_uri, a fixed, versioned holdout "
                "(e.g. '.../holdout/version=0001'); it is empty."
            )
        if self.holdout_uri and HOLDOUT not in datasets:
            raise ValueError(
                f"{where}: holdout_uri is given but evaluate_on='data' does not read it; use 'both' or "
                "'holdout', or drop holdout_uri."
            )

    def _datasets(self) -> tuple[str, ...]:
        """The datasets evaluated, in order (the spec's rule, read by the step too)."""
        return evaluated_datasets(self.evaluate_on, self.holdout_uri)

    def _versions(self) -> dict[str, str | None]:
        """Each dataset's version: the data's is the run's (or its folder's), the holdout's its folder's."""
        data_version = self.dataset_version or version_in_uri(self.data_uri)
        return {
            DATA: None if data_version is None else str(data_version),
            HOLDOUT: version_in_uri(self.holdout_uri),
        }

    def _resolve_baseline(self, run: TaskRun) -> dict[str, Any] | None:
        """The baseline: an explicit URI, else the alias holder, else None (first run)."""
        if self.baseline_model_uri:
            return {"model_uri": str(self.baseline_model_uri), "alias": None, "version": None}
        if not self.registered_model_name:
            self.log.info("No registered_model_name and no baseline_model_uri: value thresholds only.")
            return None
        baseline = run.hook.alias_baseline(self.registered_model_name, self.baseline_alias)
        if baseline is None:
            self.log.info(
                "%s has no alias %r yet (first model): value thresholds only, change thresholds dropped.",
                self.registered_model_name,
                self.baseline_alias,
            )
            return None
        self.log.info(
            "Baseline: %s@%s = version %s",
            self.registered_model_name,
            self.baseline_alias,
            baseline["version"],
        )
        return baseline

    def build_spec(self, context: Context, run: TaskRun) -> dict[str, Any]:
        from airflow_ml_provider.versions import triggering_version

        self._baseline = self._resolve_baseline(run)
        self._replaced_by_candidate = self._champion_replaced(run)
        config = self.eval_config
        if self.dataset_version is None:
            self.dataset_version = (triggering_version(context) or {}).get("version")
        spec: dict[str, Any] = {
            "candidate_model_uri": str(self.candidate_model_uri),
            "baseline_model_uri": (self._baseline or {}).get("model_uri"),
            "baseline": self._baseline_summary(),
            "data_uri": str(self.data_uri) if DATA in self._datasets() else None,
            "holdout_uri": str(self.holdout_uri) if self.holdout_uri else None,
            "evaluate_on": self.evaluate_on,
            "format": self.data_format,
            "holdout_format": self.holdout_format,
            "eval_config": config if isinstance(config, dict | str) else str(config),
            "label_key": self.label_key,
            "example_weight_key": self.example_weight_key,
            "feature_columns": self.feature_columns,
            "engine": self.engine,
            "beam_pipeline_args": self.beam_pipeline_args,
            "tracking_uri": run.hook.settings.tracking_uri,
            "output_dir": self.output_dir(),
            "title": f"{context['ti'].dag_id} / {context['ti'].task_id}",
            "context": {
                "DAG run": str(context["ti"].run_id),
                "dataset version": str(self.dataset_version or "-"),
                **self._describe_datasets(),
                "baseline": self._describe_baseline(),
            },
        }
        return {key: value for key, value in spec.items() if value is not None}

    def resume_state(self) -> dict[str, Any]:
        return {"baseline": self._baseline, "dataset_version": self.dataset_version}

    def restore_state(self, state: dict[str, Any]) -> None:
        self._baseline = state.get("baseline")
        if state.get("dataset_version") is not None:
            self.dataset_version = state["dataset_version"]

    def _baseline_summary(self) -> dict[str, Any] | None:
        """The baseline as the blessing records it: model name, alias, version and URI."""
        baseline = self._baseline
        if baseline is None:
            return None
        return {k: baseline.get(k) for k in ("model_name", "alias", "version", "model_uri")}

    def _describe_datasets(self) -> dict[str, str]:
        """The report's lines naming the data: ``data`` (as before holdouts) and ``holdout``."""
        datasets, versions = self._datasets(), self._versions()
        lines = {}
        if self.data_uri:
            lines[DATA] = str(self.data_uri) + (
                "" if DATA in datasets else " (not evaluated: evaluate_on='holdout')"
            )
        if self.holdout_uri:
            lines[HOLDOUT] = f"{self.holdout_uri} (version {versions[HOLDOUT] or 'unknown'})"
        return lines

    def _describe_baseline(self) -> str:
        if self._baseline is None:
            return "none (first model: value thresholds only)"
        if self._baseline.get("version"):
            return f"{self._baseline['model_name']}@{self._baseline['alias']} = version {self._baseline['version']}"
        return str(self._baseline["model_uri"])

    def handle_result(
        self, context: Context, run: TaskRun, spec: dict[str, Any], result: dict[str, Any]
    ) -> Any:
        evaluations = self._evaluations(result)
        tags = {TAG_EVALUATED_ON: ",".join(evaluations)}
        for name, evaluation in evaluations.items():
            prefix = f"{TAG_EVALUATION_DATASET_PREFIX}{name}."
            tags.update(
                {
                    f"{prefix}uri": evaluation["data_uri"],
                    f"{prefix}blessed": str(evaluation["blessed"]).lower(),
                }
            )
            if evaluation["dataset_version"] is not None:
                tags[f"{prefix}version"] = evaluation["dataset_version"]
        tracked = result.get("mlflow") or {}
        result = {**result, "mlflow": {**tracked, "tags": {**(tracked.get("tags") or {}), **tags}}}
        super().handle_result(context, run, spec, result)
        record = self._blessing_record(run, result, evaluations)
        run.hook.client.log_text(
            run.run_id, json.dumps(record, indent=1, default=str), ARTIFACT_EVALUATION_RECORD
        )
        return record

    def step_cache_key(self, step: str, spec: dict[str, Any]) -> str | None:
        mutable = [
            u for u in (spec.get("candidate_model_uri"), spec.get("baseline_model_uri")) if u and "@" in u
        ]
        if mutable and self.cache_enabled():
            self.log.info(
                "Cache: %s names an alias, which can move; not caching this evaluation.", mutable[0]
            )
            return None
        replaced = self._replaced_by_candidate
        if replaced is not None and self.cache_enabled():
            # Comparing the champion with itself says nothing: the evaluation that promoted it
            # (against the version it replaced) stands, and is what the cache looks up.
            self.log.info(
                "The candidate already is %s@%s (version %s, which replaced %s): looking up the evaluation "
                "that promoted it.",
                self.registered_model_name,
                self.baseline_alias,
                (self._baseline or {}).get("version"),
                replaced,
            )
            spec = {k: v for k, v in spec.items() if k != "baseline_model_uri"}
            if replaced != "none":
                spec["baseline_model_uri"] = f"models:/{self.registered_model_name}/{replaced}"
        return super().step_cache_key(step, spec)

    def _champion_replaced(self, run: TaskRun) -> str | None:
        """
        When the candidate already is the baseline alias's model (a re-run on the same data that
        made the same model): the version that model replaced (``"none"`` for the first); else None.
        """
        baseline = self._baseline or {}
        if not baseline.get("version") or not self.cache_enabled():
            return None
        return run.hook.version_replaced_by(
            baseline["model_name"], baseline["version"], str(self.candidate_model_uri)
        )

    def cache_extra(self) -> dict[str, Any]:
        return {"registered_model_name": self.registered_model_name, "dataset_version": self.dataset_version}

    def apply_policy(self, context: Context, run: TaskRun, record: dict[str, Any]) -> dict[str, Any]:
        """Return a blessed record; else fail, skip or warn as ``on_not_blessed`` says."""
        if record["blessed"]:
            return record
        if self.on_not_blessed in ("fail", "skip"):
            from airflow.sdk.bases.xcom import BaseXCom

            from airflow_ml_provider import freshness

            freshness.record(context, run, "decided", decision="not promoted: the candidate is not blessed")
            # A failed or skipped task returns nothing: push the record as the value it would have
            # returned, so xcom_pull('evaluate') and the UI show why it was not blessed.
            context["ti"].xcom_push(key=BaseXCom.XCOM_RETURN_KEY, value=record)
        from airflow_ml_provider.exceptions import ModelNotBlessed

        error = ModelNotBlessed(
            record["candidate_model_uri"], record["failed_thresholds"], report=record["report"]
        )
        self.gate(self.on_not_blessed, error, argument="on_not_blessed")
        return record

    def _evaluations(self, result: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Each dataset's URI, version, verdict and overall metrics, in the order evaluated."""
        versions = self._versions()
        evaluations = result.get("evaluations") or {
            DATA: {
                "data_uri": str(self.data_uri),
                "blessed": bool(result["blessed"]),
                "metrics": result["metrics"],
            }
        }
        return {
            name: {
                **evaluation,
                "data_uri": str(evaluation["data_uri"]),
                "dataset_version": versions.get(name),
                # Where its files are in the task's run: the first dataset's at the top.
                "artifact_dir": "/".join(filter(None, (ARTIFACT_DIR, evaluation.get("artifact_dir")))),
            }
            for name, evaluation in evaluations.items()
        }

    def _blessing_record(
        self, run: TaskRun, result: dict[str, Any], evaluations: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        base = f"runs:/{run.run_id}/{ARTIFACT_DIR}"
        return {
            "blessed": bool(result["blessed"]),
            "candidate_model_uri": result["candidate_model_uri"],
            "registered_model_name": self.registered_model_name,
            "baseline": self._baseline_summary(),
            "failed_thresholds": result["failed_thresholds"],
            "failures": result["failures"],
            "metrics": result["metrics"],
            "baseline_metrics": result["baseline_metrics"],
            "example_count": result["example_count"],
            "engine": result["engine"],
            "dataset_version": self.dataset_version,
            "data_uri": str(self.data_uri) if self.data_uri else None,
            # Which data each number comes from: `metrics` are those of the first dataset evaluated.
            "evaluated_on": list(evaluations),
            "metrics_dataset": next(iter(evaluations)),
            "evaluations": evaluations,
            "training_run_id": run.hook.training_run_id(result["candidate_model_uri"]),
            "mlflow_run_id": run.run_id,
            "report": f"{base}/report.html" + (f" ({run.url})" if run.url else ""),
        }
