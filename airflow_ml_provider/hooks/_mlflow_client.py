"""Build an ``MlflowClient`` whose REST stores carry the connection's credentials.

MLflow's client reads credentials from environment variables. A hook in a shared Airflow worker
must not write secrets into ``os.environ`` (every other task in the process would see them), so
the REST stores are built here with a credentials callable instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


class MlflowSettings(Protocol):
    """What a client is built from: ``hooks.mlflow.MlflowSettings`` (whose module imports this one)."""

    @property
    def tracking_uri(self) -> str: ...

    @property
    def registry_uri(self) -> str: ...

    @property
    def username(self) -> str | None: ...

    @property
    def token(self) -> str | None: ...

    @property
    def is_http(self) -> bool: ...

    def host_creds(self, uri: str) -> Any: ...


# MLflow's client retries a failed request 7 times with a backoff factor of 2: about 4 minutes
# before a task hears that the server is down. A task retried by Airflow should fail in seconds
# instead, naming the server: 4 retries after 1, 2, 4 and 8 s (plus up to 1 s of jitter each).
# These are process-wide MLflow settings, not secrets; a value already in the environment wins.
BOUNDED_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def bounded_retries() -> dict[str, str]:
    """The retry settings in force: the environment's, else :data:`BOUNDED_RETRIES`."""
    return {key: os.environ.get(key) or value for key, value in BOUNDED_RETRIES.items()}


def route_mlflow_logging() -> None:
    """
    Send MLflow's log records to the process's own logging, not to MLflow's stderr handler.

    ``import mlflow`` gives the ``mlflow`` logger (and ``sqlalchemy.engine``, ``alembic``, ``huey``)
    its own handler on stderr, not propagating. In an Airflow task that is Airflow's stderr,
    logged at ERROR: MLflow's INFO line "Waiting up to 300 seconds for model version to finish
    creation" would be an error. When the process has configured logging (the root logger has a
    handler, as in every Airflow task), that handler is removed and the records propagate, at
    their own level. Without logging configured, MLflow's handler stays (nothing would print
    them). Idempotent; nothing else is changed.
    """
    import mlflow  # noqa: F401 - configures MLflow's loggers on first import
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    if not logging.getLogger().handlers:
        return
    for name in ("mlflow", "sqlalchemy.engine", "alembic", "huey"):
        logger = logging.getLogger(name)
        own = [h for h in logger.handlers if getattr(h, "stream", None) is MLFLOW_LOGGING_STREAM]
        if own:
            for handler in own:
                logger.removeHandler(handler)
            logger.propagate = True


PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def build_client(settings: MlflowSettings) -> MlflowClient:
    """Return a client for ``settings``; plain for database stores, credentialed for HTTP."""
    route_mlflow_logging()
    from mlflow.store.model_registry.rest_store import RestStore as RegistryRestStore
    from mlflow.store.tracking.rest_store import RestStore as TrackingRestStore
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._model_registry.client import ModelRegistryClient
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    # MLflow draws a tqdm bar on stderr for every artifact download (the promotion copying a
    # baseline, a pod's result read back), which a task log records at level ERROR: no bars in the
    # processes the hook serves, unless the user asked for them.
    os.environ.setdefault(PROGRESS_BAR_ENV, "false")
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.registry_uri)
    if not settings.is_http:
        return client
    for key, value in BOUNDED_RETRIES.items():
        os.environ.setdefault(key, value)

    tracking_client = _with_store(
        TrackingServiceClient, lambda: TrackingRestStore(partial(settings.host_creds, settings.tracking_uri))
    )
    registry_client = _with_store(
        ModelRegistryClient, lambda: RegistryRestStore(partial(settings.host_creds, settings.registry_uri))
    )
    client._tracking_client = tracking_client(settings.tracking_uri)
    if settings.username or settings.token:
        _lend_credentials_to_artifact_requests(settings)
    if settings.registry_uri.startswith(("http://", "https://")):
        client._registry_client_lazy = registry_client(settings.registry_uri, settings.tracking_uri)  # type: ignore[attr-defined]
    return client


# Clean tracking URI -> the settings whose credentials artifact requests to that server carry.
_ARTIFACT_CREDENTIALS: dict[str, MlflowSettings] = {}


def _lend_credentials_to_artifact_requests(settings: MlflowSettings) -> None:
    """
    Give MLflow's artifact repositories this connection's credentials for its own server.

    MLflow's HTTP artifact repositories (``mlflow-artifacts:`` through the tracking server's proxy)
    read credentials from environment variables only (``get_default_host_creds``). The lookup is
    wrapped, in memory: a request to this connection's server (its tracking URI, to the path
    boundary) gets the connection's credentials; any other address, MLflow's default. Nothing is
    written into ``os.environ``.
    """
    import mlflow.store.artifact.http_artifact_repo as http_repo
    import mlflow.store.artifact.mlflow_artifacts_repo as proxy_repo

    _ARTIFACT_CREDENTIALS[settings.tracking_uri.rstrip("/")] = settings
    for module in (http_repo, proxy_repo):
        default = module.get_default_host_creds
        if getattr(default, "_airflow_ml_provider", False):
            continue

        def host_creds(uri: str, _default: Callable[[str], Any] = default) -> Any:
            for base, known in _ARTIFACT_CREDENTIALS.items():
                if uri == base or uri.startswith(base + "/"):
                    return known.host_creds(uri)
            return _default(uri)

        host_creds._airflow_ml_provider = True  # type: ignore[attr-defined]
        module.get_default_host_creds = host_creds  # type: ignore[attr-defined]


def _with_store(base: type, make_store: Callable[[], Any]) -> Any:
    """A subclass of MLflow's service client ``base`` whose ``store`` is ``make_store()``, built once."""

    class _Client(base):
        _credentialed_store: Any = None

        @property
        def store(self) -> Any:
            if self._credentialed_store is None:
                self._credentialed_store = make_store()
            return self._credentialed_store

    return _Client
