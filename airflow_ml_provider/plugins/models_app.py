"""
The FastAPI app behind the Airflow UI's "Models" page, served by the api-server under
``/ml-models``.

Routes (every one needs a logged-in Airflow user: no token -> 401):

- ``GET /ml-models/models``: the registered models the provider promoted, each with its champion,
  the champion's dataset version and key metrics, and its last move; only the models whose DAGs
  the user may read are listed;
- ``GET /ml-models/models/{name}``: one model: the champion timeline, its rollbacks and why, the key
  metrics across versions, and each version's dataset version, blessing, freshness and links to
  its DAG run's ML lineage tab and to MLflow. A user the auth manager does not allow to read the
  runs of every DAG that produced (or moved) one of its versions gets 403;
- ``GET /ml-models/api/models`` and ``GET /ml-models/api/models/{name}``: the same as JSON.

Access is decided per DAG by the configured auth manager, as for the ML lineage view
(:func:`~airflow_ml_provider.plugins.ui_common.dag_reader`). The page is rendered on the server
with autoescaping (a model name, a reason or a metric name with HTML in it is shown, never run),
its charts are inline SVG, and it carries a Content-Security-Policy without scripts but its own
link opener.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at run time.
from typing import Annotated, Any
from urllib.parse import quote

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, Response

from airflow_ml_provider.plugins.lineage import LINEAGE_RUN_ROUTE, MODELS_URL_PREFIX
from airflow_ml_provider.plugins.ui_common import (
    PAGE_HEADERS,
    MlflowUnavailable,
    dag_reader,
    mlflow_hook,
    render,
    unreadable,
)

VIEW = "Models page"
# Stacked layers (a model's versions), in the UI's icon size.
ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#4a90c2" '
    'stroke-width="2" stroke-linejoin="round"><path d="M12 3 3 7.5l9 4.5 9-4.5z"/>'
    '<path d="m3 12 9 4.5 9-4.5"/><path d="m3 16.5 9 4.5 9-4.5"/></svg>'
)

ModelName = Annotated[str, Path(min_length=1, max_length=256)]


def create_app() -> FastAPI:
    """The sub-application the plugin mounts (built on the api-server's first request to it)."""
    app = FastAPI(title="ML models", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/icon.svg", include_in_schema=False)
    def icon() -> Response:  # the menu entry's icon: static, no data, so no login needed
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/models", response_class=HTMLResponse)
    def models_page(request: Request, user: GetUserDep) -> HTMLResponse:
        base = _airflow_base(request)
        try:
            listing = _listing(user)
        except HTTPException as err:
            return _page("ml_models.html", {"error": err.detail, "airflow_base": base}, err.status_code)
        return _page("ml_models.html", {"listing": listing, "airflow_base": base})

    @app.get("/models/{name}", response_class=HTMLResponse)
    def model_page(request: Request, user: GetUserDep, name: ModelName) -> HTMLResponse:
        base = _airflow_base(request)
        try:
            model = _model(user, name, base)
        except HTTPException as err:
            context = {"error": err.detail, "name": name, "airflow_base": base}
            return _page("ml_model.html", context, err.status_code)
        return _page("ml_model.html", {"model": model, "name": name, "airflow_base": base})

    @app.get("/api/models")
    def models_json(user: GetUserDep) -> JSONResponse:
        return JSONResponse(jsonable_encoder(_listing(user)))

    @app.get("/api/models/{name}")
    def model_json(request: Request, user: GetUserDep, name: ModelName) -> JSONResponse:
        return JSONResponse(jsonable_encoder(_model(user, name, _airflow_base(request))))

    return app


def _listing(user: Any) -> dict[str, Any]:
    from airflow_ml_provider.plugins.models_data import ModelsError, list_models

    hook = _hook()
    try:
        return list_models(hook, dag_reader(user))
    except ModelsError as err:
        raise HTTPException(502, str(err)) from err
    except Exception as err:  # a server that does not answer, credentials refused
        raise HTTPException(502, unreadable(err, "the registered models")) from err


def _model(user: Any, name: str, airflow_base: str) -> dict[str, Any]:
    from airflow_ml_provider.plugins.models_data import ModelHidden, ModelNotFound, ModelsError, model_detail

    hook = _hook()
    try:
        model = model_detail(hook, name, dag_reader(user))
    except ModelNotFound as err:
        raise HTTPException(404, str(err)) from None
    except ModelHidden:
        raise HTTPException(
            403,
            "You may not read the runs of every DAG that produced a version of this model or moved its "
            "champion; ask for access to those DAGs.",
        ) from None
    except ModelsError as err:
        raise HTTPException(502, str(err)) from err
    except Exception as err:
        raise HTTPException(502, unreadable(err, f"registered model {name!r}")) from err
    for row in (*model["versions"], *model["history"]):
        row["lineage_url"] = _lineage_url(airflow_base, row.get("dag_id"), row.get("run_id"))
    return model


def _lineage_url(airflow_base: str, dag_id: str | None, run_id: str | None) -> str | None:
    """The DAG run's "ML lineage" tab in the Airflow UI."""
    if not dag_id or not run_id:
        return None
    return f"{airflow_base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/plugin/{LINEAGE_RUN_ROUTE}"


def _airflow_base(request: Request) -> str:
    """Where the Airflow UI is: the api-server's root path (this app is mounted under it)."""
    root = str(request.scope.get("root_path") or "")
    return root[: -len(MODELS_URL_PREFIX)] if root.endswith(MODELS_URL_PREFIX) else root


def _hook() -> Any:
    try:
        return mlflow_hook(VIEW)
    except MlflowUnavailable as err:
        raise HTTPException(502, str(err)) from err


def _page(template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    return HTMLResponse(render(template, context), status_code=status, headers=PAGE_HEADERS)
