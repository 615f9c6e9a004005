"""
The provider's pages in the Airflow UI: the "ML lineage" tab on DAG run and task instance pages,
and the "Models" page in the navigation bar.

An Airflow plugin with two FastAPI apps the api-server mounts: ``/ml-lineage`` (see
:mod:`airflow_ml_provider.plugins.lineage_app`), shown as tabs: on a DAG run, the run's whole ML
lineage; on a task instance, that task's part of it; and ``/ml-models`` (see
:mod:`airflow_ml_provider.plugins.models_app`), the registered models the provider promoted, with
each one's champion timeline, shown as an entry of the navigation bar.

Every Airflow component loads plugins, so this module stays light: the FastAPI apps (and MLflow)
are imported on the api-server's first request to them, not when the plugin loads.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/ml-lineage"
VIEW_NAME = "ML lineage"
ICON = f"{URL_PREFIX}/icon.svg"
LINEAGE_RUN_ROUTE = "ml-lineage"  # the DAG run tab: <airflow>/dags/<dag>/runs/<run>/plugin/ml-lineage
MODELS_URL_PREFIX = "/ml-models"
MODELS_VIEW_NAME = "Models"


class LazyASGIApp:
    """An ASGI app that builds the real one (``factory()``) on its first request."""

    def __init__(self, factory: str) -> None:
        self.factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    def _build(self) -> Any:
        with self._lock:
            if self._app is None:
                module, _, name = self.factory.rpartition(".")
                self._app = getattr(importlib.import_module(module), name)()
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        app = self._app if self._app is not None else self._build()
        await app(scope, receive, send)

    def __repr__(self) -> str:
        return f"LazyASGIApp({self.factory!r})"


class MLLineagePlugin(AirflowPlugin):
    """
    The ML lineage views (dataset version -> validation -> ... -> promotion) and the Models page
    (each registered model's champion timeline), read from MLflow.
    """

    name = "ml_lineage"
    fastapi_apps = [
        {
            "app": LazyASGIApp("airflow_ml_provider.plugins.lineage_app.create_app"),
            "url_prefix": URL_PREFIX,
            "name": VIEW_NAME,
        },
        {
            "app": LazyASGIApp("airflow_ml_provider.plugins.models_app.create_app"),
            "url_prefix": MODELS_URL_PREFIX,
            "name": MODELS_VIEW_NAME,
        },
    ]
    external_views = [
        {
            "name": VIEW_NAME,
            "href": f"{URL_PREFIX}/lineage?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
            "destination": "dag_run",
            "url_route": LINEAGE_RUN_ROUTE,
            "icon": ICON,
        },
        {
            "name": VIEW_NAME,
            "href": f"{URL_PREFIX}/lineage?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}",
            "destination": "task_instance",
            "url_route": "ml-lineage-task",
            "icon": ICON,
        },
        {
            "name": MODELS_VIEW_NAME,
            "href": f"{MODELS_URL_PREFIX}/models",
            "destination": "nav",
            "url_route": "ml-models",
            "icon": f"{MODELS_URL_PREFIX}/icon.svg",
            "nav_top_level": True,
        },
    ]
