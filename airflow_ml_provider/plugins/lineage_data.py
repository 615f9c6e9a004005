"""
The ML lineage of one DAG run, read from MLflow: what the Airflow UI's "ML lineage" view shows.

Every provider task logs a nested MLflow run tagged with the DAG run (``airflow.dag_id``,
``airflow.run_id``) and its step (``airflow_ml.step``). This module finds those runs and reads the
small JSON artifacts the steps wrote (anomalies, tuning summary, evaluation record, metrics per
slice, thresholds) into one plain dict, in the order of the loop:

    dataset version -> validation -> tuning -> training -> evaluation -> infra validation
    -> blessing -> promotion

Nothing is copied anywhere; every call reads MLflow (through :class:`MlflowHook`) again. No
Airflow, FastAPI or TensorFlow import here: the function takes a hook-like object, so it is tested
against a real MLflow server on its own.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_ml_provider.hooks.mlflow import redact_text
from airflow_ml_provider.plugins.lineage_artifacts import ArtifactRefused, ArtifactStoreError, RunArtifacts
from airflow_ml_provider.vocabulary import (
    ARTIFACT_EVALUATION_DIR,
    ARTIFACT_EVALUATION_METRICS,
    ARTIFACT_EVALUATION_RECORD,
    ARTIFACT_EVALUATION_REPORT,
    ARTIFACT_EVALUATION_THRESHOLDS,
    ARTIFACT_INFRA_VALIDATION_DIR,
    ARTIFACT_TRAINING_DIR,
    ARTIFACT_TUNING_DIR,
    ARTIFACT_TUNING_SUMMARY,
    ARTIFACT_VALIDATION_ANOMALIES,
    ARTIFACT_VALIDATION_DIR,
    ARTIFACT_VALIDATION_REPORT,
    METRIC_FRESHNESS,
    PROMOTION_PROMOTED,
    ROLE_DAG_RUN,
    ROLE_TASK,
    STEP_EVALUATE_MODEL,
    STEP_INFRA_VALIDATE,
    STEP_PROMOTE,
    STEP_TRAIN_MODEL,
    STEP_TUNE,
    STEP_VALIDATE_DATA,
    TAG_BLESSED,
    TAG_CACHE_HIT,
    TAG_CACHE_SOURCE_RUN_ID,
    TAG_DAG_ID,
    TAG_DATASET_PREFIX,
    TAG_FRESHNESS_DECISION,
    TAG_INFRA_BLESSED,
    TAG_MAP_INDEX,
    TAG_MODEL_VERSION,
    TAG_PROMOTION,
    TAG_PROMOTION_REFUSED,
    TAG_ROLE,
    TAG_RUN_ID,
    TAG_STEP,
    TAG_STUDY,
    TAG_TASK_ID,
    TAG_TRY_NUMBER,
    TAG_TUNING_ROLE,
    TUNING_ROLE_WORKER,
)

if TYPE_CHECKING:
    from mlflow.entities import Run

    from airflow_ml_provider.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)

# TAG_STEP value -> stage, in the order the view shows them.
STAGES = {
    STEP_VALIDATE_DATA: "validation",
    STEP_TUNE: "tuning",
    STEP_TRAIN_MODEL: "training",
    STEP_EVALUATE_MODEL: "evaluation",
    STEP_INFRA_VALIDATE: "infra_validation",
    STEP_PROMOTE: "promotion",
}
STAGE_TITLES = {
    "validation": "Data validation",
    "tuning": "Hyperparameter tuning",
    "training": "Training",
    "evaluation": "Evaluation",
    "infra_validation": "Infra validation",
    "promotion": "Promotion",
}
# Artifacts the view may serve (reports and plots the steps wrote), by top folder.
SERVED_FOLDERS = (
    ARTIFACT_VALIDATION_DIR,
    ARTIFACT_EVALUATION_DIR,
    ARTIFACT_TUNING_DIR,
    ARTIFACT_INFRA_VALIDATION_DIR,
    ARTIFACT_TRAINING_DIR,
)
SERVED_SUFFIXES = {".html": "text/html; charset=utf-8", ".png": "image/png", ".json": "application/json"}
MAX_ANOMALIES = 200
MAX_SLICES = 200


class LineageError(Exception):
    """MLflow could not be read; the message says which server and what it answered."""


def collect_lineage(
    hook: MlflowHook,
    dag_id: str,
    run_id: str,
    experiment_ids: Iterable[str],
    may_read_dag: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """
    The ML lineage of DAG run ``run_id`` of ``dag_id``, from the MLflow runs its tasks logged.

    :param hook: the MLflow hook to read with.
    :param dag_id: the DAG.
    :param run_id: the DAG run.
    :param experiment_ids: the MLflow experiments to search (those the run's tasks logged to).
    :param may_read_dag: whether the viewer may read a DAG's runs. A stage reused from the cache
        shows the records of the run it reused only when the viewer may read that run's DAG;
        otherwise it says that it was reused, with this DAG run's own records only. None: all.
    :return: ``{"dag_id", "run_id", "experiment_url", "parent", "dataset", "freshness", "stages",
        "blessing", "empty"}``; ``stages`` is a list of dicts with ``stage``, ``title``, ``task_id``, ``status``,
        ``run_url`` and a stage-specific ``details`` dict.
    """
    experiment_ids = sorted({str(e) for e in experiment_ids if e})
    lineage: dict[str, Any] = {
        "dag_id": dag_id,
        "run_id": run_id,
        "experiment_url": None,
        "parent": None,
        "dataset": [],
        "stages": [],
        "blessing": None,
        "freshness": None,
        "empty": True,
    }
    if not experiment_ids:
        return lineage
    runs = _search(hook, experiment_ids, dag_id, run_id)
    parent = next((r for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_DAG_RUN), None)
    tasks = [r for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_TASK]
    if parent is None and not tasks:
        return lineage
    lineage["empty"] = False
    base = hook.settings.ui_url
    any_run = parent or tasks[0]
    if base:
        lineage["experiment_url"] = f"{base}/#/experiments/{any_run.info.experiment_id}"
    if parent is not None:
        lineage["parent"] = _run_info(hook, parent)
        lineage["dataset"] = _dataset_versions(parent.data.tags)
        lineage["freshness"] = _freshness(parent)
    stages = []
    for run in tasks:
        stage = _stage_of(run)
        if stage is None:
            continue
        entry = {**_run_info(hook, run), "stage": stage, "title": STAGE_TITLES[stage]}
        source = _details_run(hook, run)
        if source is not run:
            source_dag = str(source.data.tags.get(TAG_DAG_ID) or "")
            if source_dag != dag_id and may_read_dag is not None and not may_read_dag(source_dag):
                entry["cache_source_hidden"] = True
                source = run  # say it was reused; show nothing of the other DAG's run
            else:
                entry["cache_source_url"] = hook.run_url(source.info.experiment_id, source.info.run_id)
        entry["details"] = _DETAILS[stage](hook, source)
        entry["ok"] = _ok(stage, entry)
        stages.append(entry)
    order = list(STAGES.values())
    stages.sort(key=lambda s: (order.index(s["stage"]), s["task_id"], s["map_index"]))
    lineage["stages"] = stages
    lineage["blessing"] = _blessing(stages)
    return lineage


def task_run_of(hook: MlflowHook, mlflow_run_id: str, dag_id: str, run_id: str) -> Run | None:
    """
    MLflow run ``mlflow_run_id`` when it is a task run of that DAG run (the only ones served).

    :raises LineageError: MLflow could not be asked (unreachable, credentials refused).
    """
    from mlflow.exceptions import MlflowException

    try:
        run = hook.client.get_run(mlflow_run_id)
    except (MlflowException, OSError) as err:
        if getattr(err, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        message = redact_text(str(err))[:300]
        raise LineageError(f"MLflow at {hook.describe()} could not be read: {message}") from err
    tags = run.data.tags
    return run if tags.get(TAG_DAG_ID) == dag_id and tags.get(TAG_RUN_ID) == run_id else None


def read_artifact(hook: MlflowHook, run: Run, path: str) -> tuple[bytes, str]:
    """
    One report or plot of a task run: ``(content, media type)``.

    Only files under the steps' own folders with a served suffix, at most 20 MB (the size MLflow
    lists is checked before anything is fetched), and only from where
    :mod:`~airflow_ml_provider.plugins.lineage_artifacts` allows.

    :raises FileNotFoundError: the path is not served or the run has no such artifact
        (:class:`ArtifactTooLarge`, :class:`ArtifactRefused` say why).
    :raises LineageError: MLflow could not be read.
    """
    media_type = _served_media_type(path)
    if media_type is None:
        raise FileNotFoundError(path)
    try:
        return RunArtifacts(hook, run.info.run_id, run.info.artifact_uri or "").read(path), media_type
    except ArtifactStoreError as err:
        raise LineageError(str(err)) from err


def _served_media_type(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) < 2 or parts[0] not in SERVED_FOLDERS or any(p in ("", ".", "..") for p in parts):
        return None
    return SERVED_SUFFIXES.get(os.path.splitext(path)[1].lower())


# -- MLflow reads ---------------------------------------------------------------------------------


def _search(hook: MlflowHook, experiment_ids: list[str], dag_id: str, run_id: str) -> list[Run]:
    from mlflow.exceptions import MlflowException

    flt = f"tags.`{TAG_DAG_ID}` = '{_quote(dag_id)}' and tags.`{TAG_RUN_ID}` = '{_quote(run_id)}'"
    runs: list[Run] = []
    token = None
    try:
        while True:
            page = hook.client.search_runs(
                experiment_ids=experiment_ids,
                filter_string=flt,
                order_by=["attributes.start_time ASC"],
                max_results=500,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs
    except (MlflowException, OSError) as err:
        raise LineageError(
            f"MLflow at {hook.describe()} could not be searched: {redact_text(str(err))[:500]}"
        ) from err


def _json_artifact(hook: MlflowHook, run: Run, path: str) -> Any:
    """A JSON artifact of the run, or None when it is missing or unreadable."""
    try:
        content, _ = read_artifact(hook, run, path)
        return json.loads(content)
    except ArtifactRefused as err:
        log.warning("Lineage: %s", err)
        return None
    except (FileNotFoundError, ValueError):
        log.debug("No readable %s in run %s", path, run.info.run_id)
        return None


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _run_info(hook: MlflowHook, run: Run) -> dict[str, Any]:
    tags = run.data.tags
    return {
        "mlflow_run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "run_url": hook.run_url(run.info.experiment_id, run.info.run_id),
        "task_id": tags.get(TAG_TASK_ID),
        "map_index": int(tags.get(TAG_MAP_INDEX) or -1),
        "try_number": tags.get(TAG_TRY_NUMBER),
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "cache_hit": tags.get(TAG_CACHE_HIT) == "true",
        "cache_source_run_id": tags.get(TAG_CACHE_SOURCE_RUN_ID),
        # Never the TAG_CACHE_SOURCE_URL tag: a link points at the configured MLflow UI.
        "cache_source_url": None,
        "cache_source_hidden": False,
    }


def _details_run(hook: MlflowHook, run: Run) -> Run:
    """The run that holds a stage's records: a cache hit's are in the run whose result it reused."""
    source = run.data.tags.get(TAG_CACHE_SOURCE_RUN_ID)
    if run.data.tags.get(TAG_CACHE_HIT) != "true" or not source:
        return run
    try:
        return hook.client.get_run(source)
    except Exception:
        log.warning("Lineage: the source run %s of cache hit %s is gone", source, run.info.run_id)
        return run


# Keyed by FRESHNESS_STAGES, in their order (tests/unit/test_vocabulary.py checks both).
FRESHNESS_LABELS = {
    "run_started": "DAG run started",
    "trained": "model trained",
    "promoted": "champion moved",
    "decided": "decision made",
}


def _freshness(parent: Run) -> dict[str, Any] | None:
    """The parent run's freshness figures (see airflow_ml_provider.freshness), in stage order."""
    metrics = parent.data.metrics
    stages = [
        {"stage": stage, "label": label, "seconds": float(metrics[METRIC_FRESHNESS.format(stage=stage)])}
        for stage, label in FRESHNESS_LABELS.items()
        if METRIC_FRESHNESS.format(stage=stage) in metrics
    ]
    if not stages:
        return None
    return {"stages": stages, "decision": parent.data.tags.get(TAG_FRESHNESS_DECISION)}


def _stage_of(run: Run) -> str | None:
    tags = run.data.tags
    step = tags.get(TAG_STEP)
    if step == STEP_TUNE and tags.get(TAG_TUNING_ROLE) == TUNING_ROLE_WORKER:
        return None  # a mapped worker slot: the summary task carries the study's result
    if step in STAGES:
        return STAGES[step]
    if TAG_PROMOTION in tags:  # promotion runs logged before the step tag existed
        return "promotion"
    return None


def _dataset_versions(tags: dict[str, str]) -> list[dict[str, str]]:
    """``dataset.<asset>.<field>`` (or ``dataset.<field>`` for a version given in conf) tags."""
    found: dict[str, dict[str, str]] = {}
    for key, value in tags.items():
        if not key.startswith(TAG_DATASET_PREFIX):
            continue
        name, _, field = key[len(TAG_DATASET_PREFIX) :].rpartition(".")
        found.setdefault(name, {"asset": name})[field] = value
    return [found[name] for name in sorted(found)]


# -- stage details --------------------------------------------------------------------------------


def _validation(hook: MlflowHook, run: Run) -> dict[str, Any]:
    metrics = run.data.metrics
    anomalies: list[dict[str, str]] = []
    drift: list[dict[str, Any]] = []
    data = _json_artifact(hook, run, ARTIFACT_VALIDATION_ANOMALIES) or {}
    for path, info in sorted((data.get("anomalyInfo") or {}).items()):
        reasons = info.get("reason") or [{}]
        for reason in reasons:
            anomalies.append(
                {
                    "feature": feature_name(path),
                    "kind": str(reason.get("type") or info.get("severity") or ""),
                    "description": str(
                        reason.get("description")
                        or info.get("description")
                        or info.get("shortDescription")
                        or ""
                    ),
                }
            )
    dataset_info = data.get("datasetAnomalyInfo") or {}
    for reason in dataset_info.get("reason") or []:
        anomalies.append(
            {
                "feature": "(dataset)",
                "kind": str(reason.get("type") or ""),
                "description": str(reason.get("description") or ""),
            }
        )
    for entry in data.get("driftSkewInfo") or []:
        path = "/".join((entry.get("path") or {}).get("step") or [])
        for m in entry.get("driftMeasurements") or []:
            drift.append(
                {
                    "feature": path,
                    "kind": m.get("type"),
                    "value": m.get("value"),
                    "threshold": m.get("threshold"),
                }
            )
    return {
        "example_count": _int(metrics.get("example_count")),
        "feature_count": _int(metrics.get("feature_count")),
        "anomaly_count": _int(metrics.get("anomaly_count", len(anomalies))),
        "anomalies": anomalies[:MAX_ANOMALIES],
        "anomalies_truncated": len(anomalies) > MAX_ANOMALIES,
        "drift": drift[:MAX_ANOMALIES],
        "report": _existing_ref(hook, run, ARTIFACT_VALIDATION_REPORT),
    }


def feature_name(path: str) -> str:
    """
    A TFDV feature path as people write it. TFDV serializes a path as its steps joined by ``.``,
    quoting a step with special characters (``'a.b'``, ``'<x y>'``) and doubling a quote inside.
    """
    steps: list[str] = []
    step, quoted, i = "", False, 0
    while i < len(path):
        char = path[i]
        if quoted and char == "'" and path[i + 1 : i + 2] == "'":
            step, i = step + "'", i + 2
            continue
        if char == "'" and (quoted or not step):
            quoted = not quoted
        elif char == "." and not quoted:
            steps.append(step)
            step = ""
        else:
            step += char
        i += 1
    steps.append(step)
    return ".".join(steps)


def _tuning(hook: MlflowHook, run: Run) -> dict[str, Any]:
    summary = _json_artifact(hook, run, ARTIFACT_TUNING_SUMMARY) or {}
    best = summary.get("best") or None
    if best and best.get("mlflow_run_id"):
        best = {**best, "run_url": hook.run_url(run.info.experiment_id, str(best["mlflow_run_id"]))}
    plots = [_artifact_ref(run, f"{ARTIFACT_TUNING_DIR}/{name}") for name in summary.get("plots") or []]
    return {
        "study": summary.get("study_name") or run.data.tags.get(TAG_STUDY),
        "metric": summary.get("metric"),
        "direction": summary.get("direction"),
        "trials": summary.get("trials") or {},
        "pruning": summary.get("pruning") or {},
        "best": best,
        "hyperparameters": summary.get("hyperparameters"),
        "failed_trials": len(summary.get("failed_trials") or []),
        "plots": plots,
    }


def _training(hook: MlflowHook, run: Run) -> dict[str, Any]:
    metrics = run.data.metrics
    params = run.data.params
    final = {k[len("final_") :]: v for k, v in sorted(metrics.items()) if k.startswith("final_")}
    return {
        "launcher": params.get("launcher"),
        "workers": params.get("workers"),
        "strategy": params.get("strategy"),
        "hyperparameters": {k[3:]: v for k, v in sorted(params.items()) if k.startswith("hp.")},
        "final_metrics": final,
        "train_seconds": metrics.get("train_seconds"),
    }


def _evaluation(hook: MlflowHook, run: Run) -> dict[str, Any]:
    record = _json_artifact(hook, run, ARTIFACT_EVALUATION_RECORD) or {}
    per_slice = (_json_artifact(hook, run, ARTIFACT_EVALUATION_METRICS) or {}).get("metrics") or {}
    thresholds = _json_artifact(hook, run, ARTIFACT_EVALUATION_THRESHOLDS) or []
    # The per-slice table is the first dataset evaluated's (the new version, or the holdout alone).
    shown = record.get("metrics_dataset")
    failed = {
        (f.get("slice"), f.get("metric"))
        for f in record.get("failures") or []
        if f.get("dataset") in (None, shown)
    }
    slices = []
    for name, models in list(per_slice.items())[:MAX_SLICES]:
        candidate = models.get("candidate") or {}
        baseline = models.get("baseline") or {}
        slices.append(
            {
                "slice": name,
                "metrics": [
                    {
                        "metric": metric,
                        "candidate": value,
                        "baseline": baseline.get(metric),
                        "failed": (name, metric) in failed,
                    }
                    for metric, value in candidate.items()
                ],
            }
        )
    blessed = record.get("blessed")
    if blessed is None and TAG_BLESSED in run.data.tags:
        blessed = run.data.tags[TAG_BLESSED] == "true"
    return {
        "blessed": blessed,
        "candidate_model_uri": record.get("candidate_model_uri"),
        "baseline": record.get("baseline"),
        "registered_model_name": record.get("registered_model_name"),
        "failed_thresholds": record.get("failed_thresholds") or [],
        "thresholds": thresholds,
        "slices": slices,
        "slices_truncated": len(per_slice) > MAX_SLICES,
        "example_count": record.get("example_count"),
        "engine": record.get("engine"),
        "report": _existing_ref(hook, run, ARTIFACT_EVALUATION_REPORT),
    }


def _infra_validation(hook: MlflowHook, run: Run) -> dict[str, Any]:
    tags, metrics = run.data.tags, run.data.metrics
    blessed = tags.get(TAG_INFRA_BLESSED)
    return {
        "blessed": None if blessed is None else blessed == "true",
        "metrics": {k: v for k, v in sorted(metrics.items()) if k.startswith("infra.")},
    }


def _promotion(hook: MlflowHook, run: Run) -> dict[str, Any]:
    tags, params = run.data.tags, run.data.params
    outcome = tags.get(TAG_PROMOTION)
    model, alias = params.get("model_name"), params.get("alias")
    before = params.get("previous_version")
    version = tags.get(TAG_MODEL_VERSION) or params.get("version")
    after = version if outcome == PROMOTION_PROMOTED else before
    current = None
    if model and alias:
        from mlflow.exceptions import MlflowException

        try:
            found = hook.get_alias_version(model, alias)
            current = found.version if found is not None else None
        except (MlflowException, OSError):
            log.warning("Could not read %s@%s from the registry", model, alias, exc_info=True)
    base = hook.settings.ui_url
    return {
        "outcome": outcome,
        "refused": tags.get(TAG_PROMOTION_REFUSED),
        "model_name": model,
        "alias": alias,
        "champion_before": None if before in (None, "none") else before,
        "champion_after": None if after in (None, "none") else after,
        "champion_now": current,
        "version_url": f"{base}/#/models/{quote(model, safe='')}/versions/{version}"
        if base and model and version and outcome == PROMOTION_PROMOTED
        else None,
    }


_DETAILS = {
    "validation": _validation,
    "tuning": _tuning,
    "training": _training,
    "evaluation": _evaluation,
    "infra_validation": _infra_validation,
    "promotion": _promotion,
}


def _ok(stage: str, entry: dict[str, Any]) -> bool | None:
    """Did the stage let the loop go on (None: still running, or not known)?"""
    if entry["status"] in ("FAILED", "KILLED"):
        return False
    if entry["status"] != "FINISHED":
        return None
    details = entry["details"]
    if stage == "validation":
        return not details.get("anomaly_count")
    if stage in ("evaluation", "infra_validation"):
        return details.get("blessed")
    if stage == "promotion":
        return details.get("outcome") == PROMOTION_PROMOTED
    return True


def _blessing(stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's verdict: evaluation's blessing, and infra validation's when it ran."""
    evaluation = [s["details"] for s in stages if s["stage"] == "evaluation"]
    if not evaluation:
        return None
    infra = [s["details"]["blessed"] for s in stages if s["stage"] == "infra_validation"]
    model_ok = all(e.get("blessed") for e in evaluation)
    infra_ok = all(b is True for b in infra) if infra else None
    return {
        "blessed": model_ok and infra_ok is not False,
        "model_blessed": model_ok,
        "infra_blessed": infra_ok,
        "failed_thresholds": [t for e in evaluation for t in e.get("failed_thresholds") or []],
    }


def _artifact_ref(run: Run, path: str) -> dict[str, str]:
    return {"mlflow_run_id": run.info.run_id, "path": path}


def _existing_ref(hook: MlflowHook, run: Run, path: str) -> dict[str, str] | None:
    """The artifact's reference when the run has it (a step that failed may have written none)."""
    try:
        listed = RunArtifacts(hook, run.info.run_id, run.info.artifact_uri or "").sizes(os.path.dirname(path))
    except (FileNotFoundError, ArtifactStoreError):
        return None
    return _artifact_ref(run, path) if path in listed else None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
