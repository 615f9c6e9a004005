"""Validate a dataset version with TensorFlow Data Validation, as a gate in front of training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.links.mlflow import ValidationReportLink
from airflow_ml_provider.ml.specs.validation import DATA_ROLE_SERVING, DATA_ROLE_TRAINING, DATA_ROLES
from airflow_ml_provider.operators._placement import POD_PLACEMENT_TEMPLATE_FIELDS
from airflow_ml_provider.operators.base import MLflowTrackedOperator
from airflow_ml_provider.operators.step import ON_PROBLEM, MLStepOperator
from airflow_ml_provider.vocabulary import (
    ARTIFACT_VALIDATION_DIR,
    ARTIFACT_VALIDATION_REPORT,
    ARTIFACT_VALIDATION_STATISTICS,
    STEP_VALIDATE_DATA,
    TAG_DATA_ROLE,
    TAG_DATA_URI,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.operators._baselines import VersionBaseline
    from airflow_ml_provider.tracking import TaskRun

ON_ANOMALY = ON_PROBLEM
ARTIFACT_DIR = ARTIFACT_VALIDATION_DIR


class DataValidationOperator(MLStepOperator):
    """
    Compute a dataset version's statistics, validate them, and gate what runs downstream.

    The statistics are TFDV's, computed in bounded chunks (or with TFDV's Beam pipeline for data
    beyond one machine). They are checked against the curated schema at ``schema_uri``; when no
    schema exists there yet, one is inferred from this version and stored (the first run
    bootstraps, later runs validate). With ``previous_statistics_uri`` the version is compared
    with the previous one (drift), with ``serving_statistics_uri`` with serving data (skew).

    With ``baseline="champion"`` and ``registered_model_name``, the baseline is the training data
    of the version the alias points at when the task runs (the statistics and schema its promotion
    attached): new training data is checked for drift against it, serving data
    (``data_role="serving"``) for skew. No champion yet, or a champion without a baseline: the
    data is validated without one (logged), as the evaluation goes on without a champion.

    Everything goes to the task's MLflow run under ``validation/``: statistics (binary proto),
    anomalies (text proto and JSON), the schema used, an offline HTML report and PNG plots. XCom
    gets a compact summary whose ``statistics_uri`` the next run can pass as
    ``previous_statistics_uri``.

    :param data_uri: the dataset version: a directory of csv/parquet files, or one file (templated).
    :param schema_uri: the curated schema (TFDV text proto) (templated).
    :param previous_statistics_uri: statistics of the previous version, a path or ``runs:/<run_id>/<path>``
        (templated).
    :param serving_statistics_uri: statistics of serving data, likewise (templated).
    :param registered_model_name: the registered model whose ``baseline`` alias gives the baseline
        (templated).
    :param baseline: an alias of ``registered_model_name``, e.g. ``"champion"`` (templated): compare
        with the training data of the version it points at. Takes the place of
        ``previous_statistics_uri`` (training data) or of the training side of skew (serving data);
        with no ``schema_uri``, that version's schema is used too.
    :param data_role: what ``data_uri`` holds: ``"training"`` (default; the data a model is trained
        on) or ``"serving"`` (requests a model served: checked in the schema's ``SERVING``
        environment, where the label may be missing, and against the baseline for skew).
    :param data_format: ``"csv"``, ``"parquet"``, or None to tell by file extension (templated).
    :param on_anomaly: ``"fail"`` raises :class:`DataValidationFailed`; ``"skip"`` skips this task
        and so the tasks downstream of it; ``"warn"`` logs and records the anomalies and goes on.
    :param drift: thresholds, e.g. ``{"categorical_linf": 0.2, "numeric_jsd": 0.1,
        "features": {"income": 0.05}}`` (templated).
    :param skew: the same for train/serving skew (templated).
    :param engine: ``"in_memory"`` (chunked, default) or ``"beam"``.
    :param beam_pipeline_args: Beam pipeline options for ``engine="beam"``, e.g. ``["--runner=FlinkRunner"]``.
    :param chunk_rows: rows per chunk of the in-memory engine.
    :param cache: reuse the result of an earlier run on the same inputs (see the "Step cache" page); on by
        default, ``cache=False`` or ``default_args={"cache": False}`` runs it every time.
    """

    cache_by_default = True
    dataset_inputs = ("data_uri",)
    cache_inputs = (
        "data_uri",
        "schema_uri",
        "previous_statistics_uri",
        "serving_statistics_uri",
        "training_statistics_uri",
    )
    # fetched copies
    cache_content_inputs = ("previous_statistics_uri", "serving_statistics_uri", "training_statistics_uri")
    cache_artifacts = (ARTIFACT_DIR,)
    artifact_dir = ARTIFACT_DIR

    template_fields: Sequence[str] = (
        "data_uri",
        "schema_uri",
        "previous_statistics_uri",
        "serving_statistics_uri",
        "registered_model_name",
        "baseline",
        "data_format",
        "drift",
        "skew",
        *POD_PLACEMENT_TEMPLATE_FIELDS,
        *MLflowTrackedOperator.template_fields,
    )
    template_fields_renderers = {"drift": "json", "skew": "json"}
    ui_color = "#e8f4d9"
    operator_extra_links = (*MLflowTrackedOperator.operator_extra_links, ValidationReportLink())

    def __init__(
        self,
        *,
        data_uri: str,
        schema_uri: str | None = None,
        previous_statistics_uri: str | None = None,
        serving_statistics_uri: str | None = None,
        registered_model_name: str | None = None,
        baseline: str | None = None,
        data_role: str = DATA_ROLE_TRAINING,
        data_format: str | None = None,
        on_anomaly: str = "fail",
        drift: dict[str, Any] | None = None,
        skew: dict[str, Any] | None = None,
        engine: str = "in_memory",
        beam_pipeline_args: list[str] | None = None,
        chunk_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(step=STEP_VALIDATE_DATA, **kwargs)
        self.data_uri = data_uri
        self.schema_uri = schema_uri
        self.previous_statistics_uri = previous_statistics_uri
        self.serving_statistics_uri = serving_statistics_uri
        self.registered_model_name = registered_model_name
        self.baseline = baseline
        self.data_role = data_role
        self.data_format = data_format
        self.on_anomaly = on_anomaly
        self.drift = drift
        self.skew = skew
        self.engine = engine
        self.beam_pipeline_args = beam_pipeline_args
        self.chunk_rows = chunk_rows
        self._baseline: VersionBaseline | None = None
        self._baseline_schema = False

    def _check_arguments(self) -> None:
        super()._check_arguments()
        where = f"Task {self.task_id!r}"
        self.check_policy("on_anomaly")
        if not self.data_uri:
            raise ValueError(f"{where}: data_uri is empty (after rendering the template).")
        if self.data_role not in DATA_ROLES:
            raise ValueError(f"{where}: data_role={self.data_role!r} is not one of {', '.join(DATA_ROLES)}.")
        if bool(self.baseline) != bool(self.registered_model_name):
            raise ValueError(
                f"{where}: baseline={self.baseline!r} and registered_model_name={self.registered_model_name!r}: "
                "give both (the alias, e.g. 'champion', and the registered model) or neither."
            )
        if self.baseline and self.data_role == DATA_ROLE_TRAINING and self.previous_statistics_uri:
            raise ValueError(
                f"{where}: previous_statistics_uri and baseline={self.baseline!r} are both the drift "
                "baseline; give one of them."
            )

    def build_spec(self, context: Context, run: TaskRun) -> dict[str, Any]:
        previous, training, schema = self.previous_statistics_uri, None, self.schema_uri
        self._baseline = self._version_baseline(run)
        if self._baseline and self._baseline.statistics_uri:
            statistics = self._baseline_file(run, self._baseline.statistics_uri)
            if self.data_role == DATA_ROLE_SERVING:
                training = statistics
            else:
                previous = statistics
            if not schema and self._baseline.schema_uri:
                schema = self._baseline_file(run, self._baseline.schema_uri)
                self._baseline_schema = True
        spec: dict[str, Any] = {
            "data_uri": str(self.data_uri),
            "format": self.data_format,
            "schema_uri": schema,
            "data_role": self.data_role,
            "previous_statistics_uri": self._fetched(run, previous),
            "serving_statistics_uri": self._fetched(run, self.serving_statistics_uri),
            "training_statistics_uri": self._fetched(run, training),
            "output_dir": self.output_dir(),
            "drift": self.drift,
            "skew": self.skew,
            "engine": self.engine,
            "beam_pipeline_args": self.beam_pipeline_args,
            "chunk_rows": self.chunk_rows,
        }
        return {key: value for key, value in spec.items() if value is not None}

    def _fetched(self, run: TaskRun, uri: str | None) -> str | None:
        """Statistics (or a schema) in MLflow (``runs:/``) fetched to this worker; a pod fetches them itself."""
        if self.placement_name == "pod":
            return uri
        return fetch_statistics(run, uri, self.scratch_path(""))

    def _baseline_file(self, run: TaskRun, uri: str) -> str | None:
        """A file of the baseline version, fetched like the statistics; an error names the version."""
        from mlflow.exceptions import MlflowException

        try:
            return self._fetched(run, uri)
        except (MlflowException, OSError) as err:
            baseline = self._baseline
            version = f"version {baseline.version} of {baseline.model_name}" if baseline else "the baseline"
            raise FileNotFoundError(
                f"Task {self.task_id!r}: cannot read {uri!r}, the baseline that {version} carries ({err}). "
                "Its promotion run may have been deleted: tag the version with the statistics of its "
                "training data again (see 'Baselines from the champion' in the docs), or remove the tag."
            ) from err

    def _version_baseline(self, run: TaskRun) -> VersionBaseline | None:
        """The baseline of the version ``baseline`` points at now, or None when none was asked for."""
        if not self.baseline or not self.registered_model_name:
            return None
        from airflow_ml_provider.operators._baselines import alias_baseline

        return alias_baseline(run.hook, str(self.registered_model_name), str(self.baseline))

    def start_tags(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The data and its role (the promotion finds the training data's validation by them), and the baseline."""
        tags = {
            **super().start_tags(spec),
            TAG_DATA_URI: spec["data_uri"][:5000],
            TAG_DATA_ROLE: self.data_role,
        }
        return {**tags, **(self._baseline.run_tags() if self._baseline else {})}

    def step_cache_key(self, step: str, spec: dict[str, Any]) -> str | None:
        if self._baseline_schema and spec.get("schema_uri"):
            from airflow_ml_provider.cache import fingerprint

            # A copy of the champion's schema, fetched to a new scratch path each run: keyed by content.
            spec = {**spec, "schema_uri": None, "baseline_schema": fingerprint(spec["schema_uri"])}
        return super().step_cache_key(step, spec)

    def handle_result(
        self, context: Context, run: TaskRun, spec: dict[str, Any], result: dict[str, Any]
    ) -> Any:
        super().handle_result(context, run, spec, result)
        summary = {**summarize(result, run), "baseline": self._baseline_record()}
        if self._baseline_schema and self._baseline:
            summary["schema_uri"] = self._baseline.schema_uri  # not the scratch copy the step read
        anomalies = summary["anomalies"]
        if result.get("schema_created"):
            self.log.warning(
                "No schema at %s: inferred one from this version and stored it.", self.schema_uri
            )
        if not anomalies:
            self.log.info("%s: %d examples, no anomalies.", self.data_uri, summary["example_count"])
        return summary

    def _baseline_record(self) -> dict[str, Any] | None:
        return self._baseline.as_dict() if self._baseline else None

    def after_cache_hit(self, context: Context, run: TaskRun, result: Any) -> Any:
        """A cached result with the baseline this run resolved (the same files may be another version's)."""
        return super().after_cache_hit(context, run, {**result, "baseline": self._baseline_record()})

    def apply_policy(self, context: Context, run: TaskRun, result: Any) -> Any:
        if result.get("anomalies"):
            self._report_anomalies(context, run, result)
        return result

    def _report_anomalies(self, context: Context, run: TaskRun, summary: dict[str, Any]) -> None:
        from airflow_ml_provider.exceptions import DataValidationFailed

        error = DataValidationFailed(str(self.data_uri), summary["anomalies"], summary["report"])
        if self.on_anomaly in ("fail", "skip"):
            from airflow_ml_provider import freshness

            freshness.record(context, run, "decided", decision="not promoted: anomalies in the data")
        self.gate(self.on_anomaly, error, argument="on_anomaly")


class SchemaInferenceOperator(MLStepOperator):
    """
    Infer a TFDV schema from a dataset version and store it, for teams that curate it by hand.

    :param data_uri: the dataset version (templated).
    :param schema_uri: where to write the schema text proto (templated).
    :param data_format: ``"csv"``, ``"parquet"`` or None (templated).
    :param overwrite: replace an existing schema file.
    """

    dataset_inputs = ("data_uri",)
    artifact_dir = ARTIFACT_DIR

    template_fields: Sequence[str] = (
        "data_uri",
        "schema_uri",
        "data_format",
        *POD_PLACEMENT_TEMPLATE_FIELDS,
        *MLflowTrackedOperator.template_fields,
    )

    def __init__(
        self,
        *,
        data_uri: str,
        schema_uri: str,
        data_format: str | None = None,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(step="infer_schema", **kwargs)
        self.data_uri = data_uri
        self.schema_uri = schema_uri
        self.data_format = data_format
        self.overwrite = overwrite

    def build_spec(self, context: Context, run: TaskRun) -> dict[str, Any]:
        spec = {
            "data_uri": self.data_uri,
            "schema_uri": self.schema_uri,
            "overwrite": self.overwrite,
            "output_dir": self.output_dir(),
        }
        if self.data_format:
            spec["format"] = self.data_format
        return spec


def fetch_statistics(run: TaskRun, uri: str | None, workdir: str) -> str | None:
    """Resolve ``runs:/<run_id>/<path>`` statistics to a local file; other URIs pass through."""
    if not uri or not uri.startswith("runs:/"):
        return uri
    run_id, _, path = uri[len("runs:/") :].partition("/")
    if not run_id or not path:
        raise ValueError(f"Statistics URI {uri!r} is not of the form runs:/<run_id>/<artifact path>.")
    return str(run.hook.client.download_artifacts(run_id, path, workdir))


def summarize(result: dict[str, Any], run: TaskRun) -> dict[str, Any]:
    """The compact XCom summary: counts, anomalies, and where the artifacts are in MLflow."""
    base = f"runs:/{run.run_id}"
    return {
        "data_uri": result.get("data_uri"),
        "example_count": result.get("example_count", 0),
        "anomaly_count": result.get("anomaly_count", len(result.get("anomalies", []))),
        "anomalies": [
            {k: a.get(k, "") for k in ("feature", "kind", "short_description")}
            for a in result.get("anomalies", [])
        ],
        "drift": result.get("drift", {}),
        "skew": result.get("skew", {}),
        "schema_uri": result.get("schema_uri"),
        "schema_created": bool(result.get("schema_created")),
        "data_role": result.get("data_role", DATA_ROLE_TRAINING),
        "statistics_uri": f"{base}/{ARTIFACT_VALIDATION_STATISTICS}",
        "report": f"{base}/{ARTIFACT_VALIDATION_REPORT}" + (f" ({run.url})" if run.url else ""),
        "mlflow_run_id": run.run_id,
    }
