"""
The FastAPI app behind the Airflow UI's "ML lineage" views, served by the api-server under
``/ml-lineage``.

Routes (every one needs an Airflow user allowed to read the DAG's runs: the auth manager decides,
through Airflow's own ``requires_access_dag`` dependency; no token -> 401, not allowed -> 403):

- ``GET /ml-lineage/lineage?dag_id=..&run_id=..[&task_id=..]``: the HTML view shown in the DAG run
  tab (and, with ``task_id``, in the task instance tab);
- ``GET /ml-lineage/api/lineage?dag_id=..&run_id=..``: the same lineage as JSON;
- ``GET /ml-lineage/artifact?dag_id=..&run_id=..&mlflow_run_id=..&path=..``: a report or plot of a
  task run of that DAG run, read from MLflow's artifacts.

The page is rendered on the server with autoescaping (a feature name or an anomaly text with HTML
in it is shown, never run) and carries a Content-Security-Policy without scripts. Served reports
get a sandboxing policy as well.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run time.
import logging
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from airflow_ml_provider.plugins.ui_common import (
    OPEN_LINKS_SCRIPT,
    PAGE_CSP,
    PAGE_HEADERS,
    MlflowUnavailable,
    mlflow_hook,
    render,
    unreadable,
)
from airflow_ml_provider.plugins.ui_common import conn_id as _conn_id
from airflow_ml_provider.plugins.ui_common import dag_reader as _dag_reader
from airflow_ml_provider.plugins.ui_common import environment as _environment
from airflow_ml_provider.vocabulary import XCOM_EXPERIMENT_ID

log = logging.getLogger(__name__)

__all__ = ["OPEN_LINKS_SCRIPT", "PAGE_CSP", "_dag_reader", "_environment", "create_app"]

# A served report: no script at all, and sandboxed (an opaque origin that cannot reach Airflow).
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; sandbox"
# A small flow of three nodes, in the UI's icon size.
ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#4a90c2" '
    'stroke-width="2"><circle cx="5" cy="6" r="3"/><circle cx="19" cy="6" r="3"/><circle cx="12" cy="18" r="3"/>'
    '<path d="M8 6h8M6.5 8.5l4 7M17.5 8.5l-4 7"/></svg>'
)


DagId = Annotated[str, Query(min_length=1, max_length=250)]
RunId = Annotated[str, Query(min_length=1, max_length=250)]
MlflowRunId = Annotated[str, Query(pattern=r"^[0-9a-zA-Z_-]{1,64}$")]
ArtifactPath = Annotated[str, Query(min_length=1, max_length=500)]


def create_app() -> FastAPI:
    """The sub-application the plugin mounts (built on the api-server's first request to it)."""
    can_read_runs = [Depends(requires_access_dag("GET", DagAccessEntity.RUN))]
    app = FastAPI(title="ML lineage", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/icon.svg", include_in_schema=False)
    def icon() -> Response:  # the tab's icon: static, no data, so no login needed
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/lineage", response_class=HTMLResponse, dependencies=can_read_runs)
    def lineage_page(
        request: Request,
        session: SessionDep,
        user: GetUserDep,
        dag_id: DagId,
        run_id: RunId,
        task_id: str | None = None,
    ) -> HTMLResponse:
        try:
            lineage = _lineage(session, dag_id, run_id, user)
        except HTTPException as err:
            context = {"error": err.detail, "dag_id": dag_id, "run_id": run_id, "task_id": task_id}
            return _page(request, context, err.status_code)
        return _page(request, {"lineage": lineage, "task_id": task_id, "dag_id": dag_id, "run_id": run_id})

    @app.get("/api/lineage", dependencies=can_read_runs)
    def lineage_json(session: SessionDep, user: GetUserDep, dag_id: DagId, run_id: RunId) -> JSONResponse:
        return JSONResponse(_lineage(session, dag_id, run_id, user))

    @app.get("/artifact", dependencies=can_read_runs)
    def artifact(
        session: SessionDep,
        dag_id: DagId,
        run_id: RunId,
        mlflow_run_id: MlflowRunId,
        path: ArtifactPath,
    ) -> Response:
        return _serve_artifact(session, dag_id, run_id, mlflow_run_id, path)

    return app


def _serve_artifact(session: Any, dag_id: str, run_id: str, mlflow_run_id: str, path: str) -> Response:
    """A report or plot of a task run of the DAG run; 404 when not served, 502 when MLflow is down."""
    from airflow_ml_provider.plugins.lineage_artifacts import ArtifactRefused, ArtifactTooLarge
    from airflow_ml_provider.plugins.lineage_data import LineageError, read_artifact, task_run_of

    _require_dag_run(session, dag_id, run_id)
    hook = _hook()
    try:
        run = task_run_of(hook, mlflow_run_id, dag_id, run_id)
        if run is None:
            raise HTTPException(404, f"MLflow run {mlflow_run_id} is not a task run of DAG run {run_id}")
        content, media_type = read_artifact(hook, run, path)
    except LineageError as err:
        raise HTTPException(502, f"{err} (connection {_conn_id()!r})") from err
    except ArtifactTooLarge as err:
        raise HTTPException(413, f"Not served: {err}") from None
    except ArtifactRefused as err:
        raise HTTPException(404, f"Not served: {err}") from None
    except FileNotFoundError:
        raise HTTPException(404, f"No report or plot {path!r} in MLflow run {mlflow_run_id}") from None
    return Response(
        content,
        media_type=media_type,
        headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"},
    )


def _lineage(session: Any, dag_id: str, run_id: str, user: Any) -> dict[str, Any]:
    from airflow_ml_provider.hooks.mlflow import redact_text
    from airflow_ml_provider.plugins.lineage_data import LineageError, collect_lineage

    _require_dag_run(session, dag_id, run_id)
    hook = _hook()
    experiments = _experiment_ids(session, dag_id, run_id)
    try:
        return collect_lineage(hook, dag_id, run_id, experiments, may_read_dag=_dag_reader(user))
    except LineageError as err:
        raise HTTPException(502, redact_text(str(err))) from err
    except Exception as err:  # a connection that cannot be read, a server that does not answer
        raise HTTPException(502, unreadable(err, f"the ML lineage of {dag_id} / {run_id}")) from err


def _require_dag_run(session: Any, dag_id: str, run_id: str) -> None:
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    found = session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if found is None:
        raise HTTPException(404, f"DAG {dag_id!r} has no DAG run {run_id!r}")


def _experiment_ids(session: Any, dag_id: str, run_id: str) -> set[str]:
    """The MLflow experiments the run's tasks logged to (each task pushes its experiment's id)."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    values = session.scalars(
        select(XComModel.value).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.key == XCOM_EXPERIMENT_ID
        )
    )
    return {str(XComModel.deserialize_value(_Row(v))) for v in values if v is not None}


class _Row:
    """What ``XComModel.deserialize_value`` reads: an object with a ``value``."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _hook() -> Any:
    try:
        return mlflow_hook("ML lineage view")
    except MlflowUnavailable as err:
        raise HTTPException(502, str(err)) from err


def _page(request: Request, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    return HTMLResponse(render("ml_lineage.html", context), status_code=status, headers=PAGE_HEADERS)
