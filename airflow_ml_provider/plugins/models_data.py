"""
The registered models the provider promoted, read from MLflow: what the Airflow UI's Models page
shows.

A version the provider registered carries its lineage as tags (``airflow_ml.dag_id``,
``airflow_ml.dag_run``, ``airflow_ml.dataset_version``, ``airflow_ml.metric.<name>``, the MLflow
runs of each stage, when it was promoted and what it replaced); the champion's moves are in the
alias history (:meth:`MlflowHook.alias_history`). This module reads both into plain dicts:

- :func:`list_models`: every registered model with a version the provider registered;
- :func:`model_detail`: one model's versions (dataset version, blessing, key metrics, freshness),
  its champion timeline, and its rollbacks and manual moves with their reasons.

A model is shown only to a viewer who may read every DAG that produced one of its versions or moved
its champion (``may_read_dag``). Nothing is copied; every call reads MLflow again. No Airflow or
FastAPI import here: the functions take a hook-like object.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_ml_provider.hooks.mlflow import redact_text
from airflow_ml_provider.plugins.models_charts import timeline_chart, trend_chart, when
from airflow_ml_provider.vocabulary import (
    ALIAS_CHAMPION,
    METRIC_FRESHNESS,
    MOVE_MANUAL,
    MOVE_ROLLBACK,
    TAG_BLESSED,
    TAG_EVALUATED_AGAINST,
    TAG_INFRA_BLESSED,
    TAG_PARENT_RUN,
    TAG_PROMOTED_AT,
    TAG_PROMOTION_REFUSED,
    TAG_REPLACED_VERSION,
    TAG_ROLLED_BACK_AT,
    TAG_VERSION_DAG_ID,
    TAG_VERSION_DAG_RUN,
    TAG_VERSION_DATASET_VERSION,
    TAG_VERSION_METRIC_PREFIX,
    TAG_VERSION_RUN_PREFIX,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from airflow_ml_provider.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)

MAX_VERSIONS = 100  # the newest ones are shown in full on a model's page
MAX_CHARTS = 8  # key metrics plotted (the others are in the versions table)
READERS = 8  # MLflow reads of a model's versions at once
# The freshness figures of a version's DAG run, in stage order (see airflow_ml_provider.freshness).
FRESHNESS = {"run_started": "run started", "trained": "trained", "promoted": "champion"}


class ModelsError(Exception):
    """MLflow could not be read; the message says which server and what it answered."""


class ModelNotFound(Exception):
    """No registered model of that name has a version the provider registered."""


class ModelHidden(Exception):
    """The viewer may not read a DAG that produced a version of the model or moved its champion."""


Reader = Callable[[str], bool]


def list_models(hook: MlflowHook, may_read_dag: Reader, alias: str = ALIAS_CHAMPION) -> dict[str, Any]:
    """
    The registered models with a version the provider registered, that the viewer may read.

    :return: ``{"models": [...], "mlflow_url"}``; a model is ``{"name", "url", "versions",
        "latest", "champion", "dataset_version", "metrics", "since", "last_move", "rollbacks",
        "dag_ids", "mlflow_url"}``.
    """
    by_name: dict[str, list[ModelVersion]] = defaultdict(list)
    for version in _search(hook, f"tags.`{TAG_VERSION_DAG_ID}` LIKE '%'"):
        by_name[version.name].append(version)
    models = []
    for name in sorted(by_name, key=lambda n: (n.lower(), n)):
        versions = sorted(by_name[name], key=_number)
        if not all(may_read_dag(d) for d in _dags(versions)):
            continue
        models.append(_summary(hook, name, versions, may_read_dag, alias))
    return {"models": [m for m in models if m is not None], "mlflow_url": _mlflow_models_url(hook)}


def model_detail(
    hook: MlflowHook, name: str, may_read_dag: Reader, alias: str = ALIAS_CHAMPION
) -> dict[str, Any]:
    """
    One model: its versions, champion timeline, rollbacks and key metrics across versions.

    :raises ModelNotFound: no version of ``name`` was registered by the provider.
    :raises ModelHidden: the viewer may not read a DAG that produced or moved one of its versions.
    :raises ModelsError: MLflow could not be read.
    """
    versions = sorted(_search(hook, f"name = '{_quote(name)}'"), key=_number)
    provider = [v for v in versions if (v.tags or {}).get(TAG_VERSION_DAG_ID)]
    if not provider:
        raise ModelNotFound(f"No registered model {name!r} with a version promoted by airflow-ml-provider")
    if not all(may_read_dag(d) for d in _dags(provider)):
        raise ModelHidden(name)
    history = _history(hook, name, alias)
    if not all(may_read_dag(e.dag_id) for e in history if e.dag_id):
        raise ModelHidden(name)
    aliases = _aliases(hook, name)
    shown = versions[-MAX_VERSIONS:]
    with ThreadPoolExecutor(READERS) as pool:
        rows = list(pool.map(lambda v: _version(hook, v, aliases), shown))
    now = datetime.now(timezone.utc)
    periods = _periods(history, now)
    served: dict[str, float] = defaultdict(float)
    for period in periods:
        served[period["version"]] += period["seconds"]
    for row in rows:
        row["champion_seconds"] = served.get(row["version"])
    moves = [_move(e) for e in history]
    champion = aliases.get(alias)
    return {
        "name": name,
        "alias": alias,
        "champion": champion,
        "champion_row": next((r for r in rows if r["version"] == champion), None),
        "aliases": aliases,
        "mlflow_url": _mlflow_model_url(hook, name),
        "versions": list(reversed(rows)),  # newest first
        "versions_truncated": len(versions) > len(shown),
        "history": list(reversed(moves)),  # newest first
        "rollbacks": [m for m in reversed(moves) if m["kind"] in (MOVE_ROLLBACK, MOVE_MANUAL)],
        "timeline": timeline_chart(periods, moves, now) if periods else None,
        "trends": _trends(rows, alias),
    }


# -- MLflow reads ---------------------------------------------------------------------------------


def _search(hook: MlflowHook, filter_string: str) -> list[ModelVersion]:
    from mlflow.exceptions import MlflowException

    found: list[ModelVersion] = []
    token = None
    try:
        while True:
            page = hook.client.search_model_versions(
                filter_string=filter_string, max_results=1000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                return found
    except (MlflowException, OSError) as err:
        raise ModelsError(_unreadable(hook, err)) from err


def _history(hook: MlflowHook, name: str, alias: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return list(hook.alias_history(name, alias))
    except (MlflowException, OSError) as err:
        raise ModelsError(_unreadable(hook, err)) from err


def _aliases(hook: MlflowHook, name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        model = hook.client.get_registered_model(name)
    except (MlflowException, OSError) as err:
        raise ModelsError(_unreadable(hook, err)) from err
    return {str(k): str(v) for k, v in (model.aliases or {}).items()}


def _get_run(hook: MlflowHook, run_id: str | None) -> Any:
    """The run, or None when it is not given or cannot be read (a page shows what it can)."""
    if not run_id:
        return None
    try:
        return hook.client.get_run(run_id)
    except Exception:
        log.debug("Models page: run %s could not be read", run_id, exc_info=True)
        return None


def _unreadable(hook: MlflowHook, err: Exception) -> str:
    return f"MLflow at {hook.describe()} could not be read: {redact_text(str(err))[:500]}"


# -- one model ------------------------------------------------------------------------------------


def _summary(
    hook: MlflowHook, name: str, versions: list[ModelVersion], may_read_dag: Reader, alias: str
) -> dict[str, Any] | None:
    history = _history(hook, name, alias)
    if not all(may_read_dag(e.dag_id) for e in history if e.dag_id):
        return None
    champion = _aliases(hook, name).get(alias)
    held = next((v for v in versions if str(v.version) == champion), None)
    tags = (held.tags or {}) if held is not None else {}
    last = history[-1] if history else None
    return {
        "name": name,
        "url": f"models/{quote(name, safe='')}",
        "versions": len(versions),
        "latest": str(versions[-1].version),
        "champion": champion,
        "dataset_version": tags.get(TAG_VERSION_DATASET_VERSION),
        "metrics": _metrics(tags),
        "since": when(last.at) if last is not None else None,
        "last_move": last.kind if last is not None else None,
        "rollbacks": sum(1 for e in history if e.kind == MOVE_ROLLBACK),
        "dag_ids": sorted(_dags(versions)),
        "mlflow_url": _mlflow_model_url(hook, name),
    }


def _version(hook: MlflowHook, version: ModelVersion, aliases: dict[str, str]) -> dict[str, Any]:
    """A version's row: lineage tags, blessing, freshness, links."""
    tags = version.tags or {}
    number = str(version.version)
    runs = {
        k[len(TAG_VERSION_RUN_PREFIX) :]: v for k, v in tags.items() if k.startswith(TAG_VERSION_RUN_PREFIX)
    }
    dag_id, run_id = tags.get(TAG_VERSION_DAG_ID), tags.get(TAG_VERSION_DAG_RUN)
    return {
        "version": number,
        "created_at": _from_millis(version.creation_timestamp),
        "provider": bool(dag_id),
        "dag_id": dag_id,
        "run_id": run_id,
        "dataset_version": tags.get(TAG_VERSION_DATASET_VERSION),
        "metrics": _metrics(tags),
        "promoted_at": _time_text(tags.get(TAG_PROMOTED_AT)),
        "replaced_version": _none(tags.get(TAG_REPLACED_VERSION)),
        "evaluated_against": _none(tags.get(TAG_EVALUATED_AGAINST)),
        "rolled_back_at": _time_text(tags.get(TAG_ROLLED_BACK_AT)),
        "refused": tags.get(TAG_PROMOTION_REFUSED),
        "aliases": sorted(a for a, v in aliases.items() if v == number),
        "blessing": _blessing(hook, runs) if dag_id else None,
        "freshness": _freshness(hook, runs.get("promotion")) if dag_id else None,
        "mlflow_url": _mlflow_version_url(hook, version.name, number),
        "champion_seconds": None,
    }


def _blessing(hook: MlflowHook, runs: dict[str, str]) -> dict[str, Any]:
    """The evaluation's and infra validation's verdicts, from their runs' tags."""
    evaluation = _get_run(hook, runs.get("evaluation"))
    infra = _get_run(hook, runs.get("infra_validation"))
    blessed = _flag((evaluation.data.tags if evaluation else {}).get(TAG_BLESSED))
    return {
        # The provider registers only a blessed candidate: a missing verdict means its run is gone.
        "blessed": True if blessed is None else blessed,
        "recorded": blessed is not None,
        "infra_blessed": _flag((infra.data.tags if infra else {}).get(TAG_INFRA_BLESSED)),
    }


def _freshness(hook: MlflowHook, promotion_run_id: str | None) -> dict[str, Any] | None:
    """Seconds from the dataset version's landing to each stage, from the DAG run's parent run."""
    promotion = _get_run(hook, promotion_run_id)
    parent = _get_run(hook, promotion.data.tags.get(TAG_PARENT_RUN) if promotion else None)
    if parent is None:
        return None
    metrics = parent.data.metrics
    stages = {
        stage: float(metrics[METRIC_FRESHNESS.format(stage=stage)])
        for stage in FRESHNESS
        if METRIC_FRESHNESS.format(stage=stage) in metrics
    }
    return stages or None


def _periods(history: list[Any], now: datetime) -> list[dict[str, Any]]:
    """Who held the alias from when to when (the newest holder: until now)."""
    periods = []
    for i, entry in enumerate(history):
        if entry.to_version is None:
            continue
        end = history[i + 1].at if i + 1 < len(history) else None
        periods.append(
            {
                "version": str(entry.to_version),
                "start": entry.at,
                "end": end,
                "kind": entry.kind,
                "seconds": max(0.0, ((end or now) - entry.at).total_seconds()),
            }
        )
    return periods


def _move(entry: Any) -> dict[str, Any]:
    return {
        "epoch": entry.epoch,
        "at": entry.at,
        "at_text": when(entry.at),
        "kind": entry.kind,
        "from_version": entry.from_version,
        "to_version": entry.to_version,
        "reason": entry.reason,
        "actor": entry.actor,
        "dag_id": entry.dag_id,
        "run_id": entry.run_id,
        "task_id": entry.task_id,
        "dataset_version": entry.dataset_version,
        "evaluation_run_id": entry.evaluation_run_id,
    }


def _trends(rows: list[dict[str, Any]], alias: str) -> list[dict[str, Any]]:
    """One chart per key metric, across the provider's versions in version order."""
    ordered = sorted((r for r in rows if r["provider"]), key=lambda r: int(r["version"]))
    names = sorted({m for r in ordered for m in r["metrics"]})
    charts = []
    for metric in names[:MAX_CHARTS]:
        points = [
            (r["version"], r["metrics"][metric], _status(r, alias)) for r in ordered if metric in r["metrics"]
        ]
        charts.append(trend_chart(metric, points))
    return charts


def _status(row: dict[str, Any], alias: str) -> str:
    """How a point is drawn: the champion, rolled back, once champion, or never champion."""
    if alias in row["aliases"]:
        return "champion"
    if row["rolled_back_at"]:
        return "rolled_back"
    if row["champion_seconds"] is not None:  # it held the alias (for less than a second, maybe)
        return "was_champion"
    return "candidate"


# -- small helpers --------------------------------------------------------------------------------


def _dags(versions: Iterable[ModelVersion]) -> set[str]:
    return {
        str((v.tags or {}).get(TAG_VERSION_DAG_ID))
        for v in versions
        if (v.tags or {}).get(TAG_VERSION_DAG_ID)
    }


def _metrics(tags: dict[str, str]) -> dict[str, float]:
    found = {}
    for key, value in tags.items():
        if key.startswith(TAG_VERSION_METRIC_PREFIX):
            try:
                found[key[len(TAG_VERSION_METRIC_PREFIX) :]] = float(value)
            except ValueError:
                continue
    return dict(sorted(found.items()))


def _number(version: ModelVersion) -> int:
    return int(version.version)


def _flag(value: str | None) -> bool | None:
    return None if value is None else value == "true"


def _none(value: str | None) -> str | None:
    return None if value in (None, "", "none") else value


def _from_millis(millis: int | None) -> str | None:
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _time_text(value: str | None) -> str | None:
    """An ISO 8601 tag as the page writes times (kept as it is when it is not one)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    return when(parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc))


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _mlflow_models_url(hook: MlflowHook) -> str | None:
    base = hook.settings.ui_url
    return f"{base}/#/models" if base else None


def _mlflow_model_url(hook: MlflowHook, name: str) -> str | None:
    base = hook.settings.ui_url
    return f"{base}/#/models/{quote(name, safe='')}" if base else None


def _mlflow_version_url(hook: MlflowHook, name: str, version: str) -> str | None:
    base = hook.settings.ui_url
    return f"{base}/#/models/{quote(name, safe='')}/versions/{version}" if base else None
