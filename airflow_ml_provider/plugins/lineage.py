"""
The "ML lineage" tab on Airflow's DAG run and task instance pages.

An Airflow plugin with a FastAPI app the api-server mounts under ``/ml-lineage`` (see
:mod:`airflow_ml_provider.plugins.lineage_app`) and two external views that the Airflow UI shows
as tabs: on a DAG run, the run's whole ML lineage; on a task instance, that task's part of it.

Every Airflow component loads plugins, so this module stays light: the FastAPI app (and MLflow)
are imported on the api-server's first request to ``/ml-lineage``, not when the plugin loads.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/ml-lineage"
VIEW_NAME = "ML lineage"
ICON = f"{URL_PREFIX}/icon.svg"


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
    """The ML lineage views: dataset version -> validation -> ... -> promotion, read from MLflow."""

    name = "ml_lineage"
    fastapi_apps = [
        {
            "app": LazyASGIApp("airflow_ml_provider.plugins.lineage_app.create_app"),
            "url_prefix": URL_PREFIX,
            "name": VIEW_NAME,
        }
    ]
    external_views = [
        {
            "name": VIEW_NAME,
            "href": f"{URL_PREFIX}/lineage?dag_id={{DAG_ID}}&run_id={{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "ml-lineage",
            "icon": ICON,
        },
        {
            "name": VIEW_NAME,
            "href": f"{URL_PREFIX}/lineage?dag_id={{DAG_ID}}&run_id={{RUN_ID}}&task_id={{TASK_ID}}",
            "destination": "task_instance",
            "url_route": "ml-lineage-task",
            "icon": ICON,
        },
    ]
