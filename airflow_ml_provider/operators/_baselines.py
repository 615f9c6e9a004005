"""
Baselines that travel with a model version: the statistics and schema of the data it was trained on.

The promotion attaches them (:func:`attach_baseline`): it finds the DAG run's validation of the
candidate's training data, copies that run's ``statistics.pb`` and ``schema.pbtxt`` into the
promotion run (``baseline/``) and tags the version with where they are. Data validation reads
them back through an alias (:func:`alias_baseline`), so that ``baseline="champion"`` compares new
or serving data with the champion's own training data without knowing which run produced it.

Why copies in the promotion run: the validation run is the DAG run's scratch. It may be a cache
hit whose files live in another DAG run's run, and either may be deleted or garbage-collected
while the version stays in production. The promotion run is the version's own record (the version
names it in ``airflow_ml.run.promotion``), and the files are small.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.ml.specs.validation import DATA_ROLE_TRAINING
from airflow_ml_provider.vocabulary import (
    ARTIFACT_BASELINE_SCHEMA,
    ARTIFACT_BASELINE_STATISTICS,
    ARTIFACT_TRAINING_SPEC,
    ARTIFACT_VALIDATION_SCHEMA,
    ARTIFACT_VALIDATION_STATISTICS,
    STEP_VALIDATE_DATA,
    TAG_BASELINE_ALIAS,
    TAG_BASELINE_DATA_URI,
    TAG_BASELINE_MODEL_NAME,
    TAG_BASELINE_SCHEMA_URI,
    TAG_BASELINE_SOURCE_RUN,
    TAG_BASELINE_STATISTICS_URI,
    TAG_BASELINE_VERSION,
    TAG_CACHE_SOURCE_RUN_ID,
    TAG_DAG_RUN_KEY,
    TAG_DATA_ROLE,
    TAG_DATA_URI,
    TAG_STEP,
)

if TYPE_CHECKING:
    from mlflow.entities import Run

    from airflow_ml_provider.hooks.mlflow import MlflowHook
    from airflow_ml_provider.tracking import TaskRun

log = logging.getLogger(__name__)

# -- at promotion --------------------------------------------------------------------------------


def attach_baseline(
    run: TaskRun, model_name: str, version: str, dag_run_key: str, training_run_id: str | None
) -> dict[str, str]:
    """
    Give a model version the statistics and schema of its training data, as copies of its own.

    The source is this DAG run's validation of the data the candidate was trained on (see
    :func:`find_training_validation`). Its files are copied into the promotion ``run`` under
    ``baseline/`` and the version is tagged ``airflow_ml.baseline.statistics_uri`` and
    ``airflow_ml.baseline.schema_uri`` (``runs:/<promotion run>/baseline/...``), plus the data
    and the validation run they describe. Without such a validation the version gets no baseline
    (logged); the promotion goes on. A retried promotion copies and tags again, to the same names.

    :param run: the promotion task's run.
    :param model_name: the registered model.
    :param version: the version just registered.
    :param dag_run_key: the DAG run's key (``airflow.dag_run_key``), to find its validations.
    :param training_run_id: the MLflow run that trained the candidate, if known.
    :return: the tags set on the version; ``{}`` when it got no baseline.
    """
    source = find_training_validation(run, dag_run_key, training_run_id)
    if source is None:
        return {}
    hook = run.hook
    # A cache hit's files are in the run that computed them.
    files_run = source.data.tags.get(TAG_CACHE_SOURCE_RUN_ID) or source.info.run_id
    present = {
        a.path
        for a in hook.client.list_artifacts(files_run, posixpath.dirname(ARTIFACT_VALIDATION_STATISTICS))
    }
    if ARTIFACT_VALIDATION_STATISTICS not in present:
        log.warning(
            "The validation run %s of the training data holds no %s (deleted, or the step failed before "
            "writing it): version %s of %s gets no baseline.",
            files_run,
            ARTIFACT_VALIDATION_STATISTICS,
            version,
            model_name,
        )
        return {}
    copies = {ARTIFACT_VALIDATION_STATISTICS: ARTIFACT_BASELINE_STATISTICS}
    if ARTIFACT_VALIDATION_SCHEMA in present:
        copies[ARTIFACT_VALIDATION_SCHEMA] = ARTIFACT_BASELINE_SCHEMA
    _copy_artifacts(run, files_run, copies)
    tags = {
        TAG_BASELINE_STATISTICS_URI: f"runs:/{run.run_id}/{ARTIFACT_BASELINE_STATISTICS}",
        TAG_BASELINE_SCHEMA_URI: f"runs:/{run.run_id}/{ARTIFACT_BASELINE_SCHEMA}"
        if ARTIFACT_BASELINE_SCHEMA in copies.values()
        else "",
        TAG_BASELINE_DATA_URI: source.data.tags.get(TAG_DATA_URI, ""),
        TAG_BASELINE_SOURCE_RUN: source.info.run_id,
    }
    tags = {key: value for key, value in tags.items() if value}
    for key, value in tags.items():
        hook.client.set_model_version_tag(model_name, version, key, value)
    log.info(
        "Version %s of %s carries the statistics and schema of its training data %s (validated in run %s): %s",
        version,
        model_name,
        tags.get(TAG_BASELINE_DATA_URI, "(not recorded)"),
        source.info.run_id,
        tags[TAG_BASELINE_STATISTICS_URI],
    )
    return tags


def _copy_artifacts(run: TaskRun, source_run: str, copies: dict[str, str]) -> None:
    """Copy artifacts of ``source_run`` into ``run``: source path -> destination path."""
    from airflow_ml_provider.ml.scratch import make_scratch_dir

    workdir = make_scratch_dir("ml-baseline")
    try:
        for source, target in copies.items():
            local = run.hook.client.download_artifacts(source_run, source, os.path.join(workdir, "in"))
            named = os.path.join(workdir, "out", posixpath.basename(target))
            os.makedirs(os.path.dirname(named), exist_ok=True)
            shutil.copyfile(local, named)
            run.log_artifact(named, posixpath.dirname(target))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def find_training_validation(run: TaskRun, dag_run_key: str, training_run_id: str | None) -> Run | None:
    """
    This DAG run's validation of the candidate's training data, or None (logged, with the reason).

    The validation runs of the DAG run (in the promotion's experiment) that checked training data
    are matched by their data (``airflow_ml.data_uri``) with the training run's ``train_uri``; the
    newest match wins. When the training data is not recorded (a candidate trained outside the DAG
    run), a DAG run that validated one dataset is taken to have validated the training data; one
    that validated several is ambiguous, and the version gets no baseline.
    """
    found = run.hook.find_runs(
        run.experiment_id, {TAG_DAG_RUN_KEY: dag_run_key, TAG_STEP: STEP_VALIDATE_DATA}
    )
    runs = [r for r in found if r.data.tags.get(TAG_DATA_ROLE, DATA_ROLE_TRAINING) == DATA_ROLE_TRAINING]
    if not runs:
        log.info("No validation of training data in this DAG run: the new version gets no baseline.")
        return None
    validated = {_same_uri(r.data.tags.get(TAG_DATA_URI)) for r in runs}
    train_uri = _training_data(run.hook, training_run_id)
    if train_uri is not None:
        matches = [r for r in runs if _same_uri(r.data.tags.get(TAG_DATA_URI)) == _same_uri(train_uri)]
        if matches:
            return matches[-1]
        log.warning(
            "This DAG run validated %s but not the candidate's training data %s: the new version gets "
            "no baseline. Validate the training data (the same data_uri as train_uri) in the DAG run.",
            ", ".join(sorted(str(uri) for uri in validated)),
            train_uri,
        )
        return None
    if len(validated) == 1:
        log.info(
            "The candidate's training data is not recorded (trained outside this DAG run); taking the one "
            "dataset this DAG run validated, %s, as its training data.",
            next(iter(validated)),
        )
        return runs[-1]
    log.warning(
        "The candidate's training data is not recorded and this DAG run validated several datasets (%s): "
        "the new version gets no baseline, rather than the wrong one.",
        ", ".join(sorted(str(uri) for uri in validated)),
    )
    return None


def _training_data(hook: MlflowHook, training_run_id: str | None) -> str | None:
    """The ``train_uri`` the training task's spec names, or None (no such run or spec)."""
    if not training_run_id:
        return None
    from mlflow.exceptions import MlflowException

    try:
        spec = hook.load_json_artifact(training_run_id, ARTIFACT_TRAINING_SPEC)
    except (MlflowException, OSError, ValueError) as err:
        log.debug("No training spec in run %s: %s", training_run_id, err)
        return None
    uri = spec.get("train_uri") if isinstance(spec, dict) else None
    return str(uri) if uri else None


def _same_uri(uri: str | None) -> str | None:
    """A data URI in the form two tasks that name the same data agree on."""
    if not uri:
        return None
    text = str(uri)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return text.rstrip("/") or text


# -- at validation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionBaseline:
    """
    The baseline a validation found through an alias: the version and where its files are.

    ``version`` is None when the alias is not set (no model yet); ``statistics_uri`` is None when
    the version carries no baseline; ``missing`` says why there is none.
    """

    model_name: str
    alias: str
    version: str | None
    statistics_uri: str | None = None
    schema_uri: str | None = None
    data_uri: str | None = None
    missing: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_tags(self) -> dict[str, str]:
        """What the validation task's run records about it."""
        return {
            TAG_BASELINE_MODEL_NAME: self.model_name,
            TAG_BASELINE_ALIAS: self.alias,
            TAG_BASELINE_VERSION: self.version if self.statistics_uri and self.version else "none",
            **({TAG_BASELINE_STATISTICS_URI: self.statistics_uri} if self.statistics_uri else {}),
        }


def alias_baseline(hook: MlflowHook, model_name: str, alias: str) -> VersionBaseline:
    """
    The baseline of the version ``alias`` of ``model_name`` points at, resolved now.

    No such alias (the first model has no champion): a baseline without files, logged at INFO. A
    version without baseline tags (promoted before baselines were recorded, or by a DAG run that
    validated no training data): likewise, with a WARNING naming the version and the fix. Either
    way the validation goes on without a baseline, as the evaluation goes on without a champion:
    failing would stop the very DAG run whose promotion gives the champion its baseline.
    """
    found = hook.get_alias_version(model_name, alias)
    if found is None:
        log.info(
            "%s has no alias %r yet (the first model): validating without a baseline.", model_name, alias
        )
        return VersionBaseline(model_name, alias, None, missing=f"{model_name} has no alias {alias!r} yet")
    version = str(found.version)
    tags = found.tags or {}
    statistics = tags.get(TAG_BASELINE_STATISTICS_URI)
    if not statistics:
        log.warning(
            "Version %s of %s (alias %r) carries no baseline (tag %s): it was promoted before baselines "
            "were recorded, or by a DAG run without a DataValidationOperator on its training data. "
            "Validating without a baseline. The next version promoted by a DAG run that validates its "
            "training data gets one; to give this version one now, tag it with the statistics of its "
            "training data: MlflowClient().set_model_version_tag(%r, %r, %r, "
            "'runs:/<validation run id>/%s').",
            version,
            model_name,
            alias,
            TAG_BASELINE_STATISTICS_URI,
            model_name,
            version,
            TAG_BASELINE_STATISTICS_URI,
            ARTIFACT_VALIDATION_STATISTICS,
        )
        return VersionBaseline(
            model_name, alias, version, missing=f"version {version} of {model_name} carries no baseline"
        )
    log.info(
        "Baseline: the training data of %s@%s = version %s (%s): %s",
        model_name,
        alias,
        version,
        tags.get(TAG_BASELINE_DATA_URI, "data not recorded"),
        statistics,
    )
    return VersionBaseline(
        model_name,
        alias,
        version,
        statistics_uri=statistics,
        schema_uri=tags.get(TAG_BASELINE_SCHEMA_URI) or None,
        data_uri=tags.get(TAG_BASELINE_DATA_URI) or None,
    )
