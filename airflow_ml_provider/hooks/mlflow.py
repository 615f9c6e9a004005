"""Hook for MLflow: tracking and model registry behind one Airflow connection."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from airflow.sdk import BaseHook

from airflow_ml_provider.exceptions import MlflowConnectionError
from airflow_ml_provider.hooks._registry import ModelRegistryMixin
from airflow_ml_provider.vocabulary import EXPERIMENT_CLAIMS_PREFIX, TAG_CLAIM_KEY, TAG_CLAIM_VALUE, TAG_NOTE

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# MLflow's own per-request limits for log_batch (see mlflow.utils.validation).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def redact_uri(uri: str) -> str:
    """Return ``uri`` with any user:password part removed, for messages and logs."""
    return split_userinfo(uri)[0]


def split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """
    ``uri`` without its ``user:password@`` part, and that user and password (percent-decoded).

    ``http://user:secret@mlflow:5000`` is a common way to write a tracking URI; what is before the
    ``@`` is a credential, never part of an address that is shown, logged, stored or linked.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return _USERINFO_IN_TEXT.sub("", uri), None, None
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return clean, unquote(user), unquote(password) if colon else None


# "scheme://user:password@" anywhere in a text (an exception message that quotes a URL).
_USERINFO_IN_TEXT = re.compile(r"(?<=://)[^/?#@\s'\"]*@")


def redact_text(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it removed."""
    return _USERINFO_IN_TEXT.sub("", text)


def _mask(*secrets: str | None) -> None:
    """Register ``secrets`` with Airflow's secrets masker (task logs print ``***`` instead)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - the provider needs the Task SDK
        return
    for secret in secrets:
        if secret:
            mask_secret(secret)


@dataclass(frozen=True)
class MlflowSettings:
    """What the hook read from its connection (secrets stay out of ``repr``)."""

    tracking_uri: str
    registry_uri: str
    ui_url: str | None
    username: str | None
    password: str | None
    token: str | None
    insecure_tls: bool
    request_timeout: float
    artifact_location: str | None

    def __repr__(self) -> str:
        return (
            f"MlflowSettings(tracking_uri={redact_uri(self.tracking_uri)!r}, "
            f"registry_uri={redact_uri(self.registry_uri)!r}, "
            f"ui_url={redact_uri(self.ui_url) if self.ui_url else None!r}, "
            f"auth={'basic' if self.username else 'bearer' if self.token else 'none'})"
        )

    @property
    def is_http(self) -> bool:
        return urlsplit(self.tracking_uri).scheme in {"http", "https"}

    def host_creds(self, uri: str) -> Any:
        from mlflow.utils.rest_utils import MlflowHostCreds

        return MlflowHostCreds(
            host=uri,
            username=self.username,
            password=self.password,
            token=self.token,
            ignore_tls_verification=self.insecure_tls,
        )

    def child_environment(self) -> dict[str, str]:
        """
        Environment for a *child* process (another interpreter or a pod) that logs to MLflow.

        The hook never writes these into this process's ``os.environ``; runners pass them to the
        child they start, as a pod would get them from a Secret.
        """
        from airflow_ml_provider.hooks._mlflow_client import bounded_retries

        env = {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_REGISTRY_URI": self.registry_uri}
        if self.is_http:
            env.update(bounded_retries())  # a step or a pod gives up on a dead server in seconds too
        if self.username:
            env["MLFLOW_TRACKING_USERNAME"] = self.username
            env["MLFLOW_TRACKING_PASSWORD"] = self.password or ""
        elif self.token:
            env["MLFLOW_TRACKING_TOKEN"] = self.token
        if self.insecure_tls:
            env["MLFLOW_TRACKING_INSECURE_TLS"] = "true"
        return env


def _credentials_out_of_uris(
    uri: str, extra: dict[str, Any], login: str | None, password: str | None
) -> tuple[str, str | None, str | None]:
    """
    Move ``user:password@`` out of the connection's HTTP URIs into the connection's auth.

    Returns the tracking URI without it, and the login and password to use: the connection's own
    Username and Password when set, else those written in the tracking (or registry) URI. The
    ``ui_url`` and ``registry_uri`` extras lose theirs too (``extra`` is changed in place). Every
    password found is registered with Airflow's secrets masker. A database store URI
    (``postgresql://user:pw@...``) keeps its credentials, which its driver needs; its password
    is masked and :func:`redact_uri` removes it wherever the URI is shown.
    """
    found: list[tuple[str | None, str | None]] = []
    for key in ("tracking", "registry_uri", "ui_url"):
        value = uri if key == "tracking" else extra.get(key)
        if not isinstance(value, str):
            continue
        clean, user, secret = split_userinfo(value)
        _mask(secret)  # a user name alone is not masked: it would hide that word everywhere
        if urlsplit(value).scheme not in {"http", "https"} or clean == value:
            continue
        found.append((user, secret))
        if key == "tracking":
            uri = clean
        else:
            extra[key] = clean
    _mask(password)
    if (login or password) or not found:
        return uri, login, password
    user, secret = found[0]
    return uri, user or None, secret


def default_embedded_tracking_uri() -> str:
    """The embedded first-run store: a SQLite file in AIRFLOW_HOME (MLflow refuses ``file:``)."""
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return f"sqlite:///{os.path.join(os.path.abspath(home), 'mlflow', 'mlflow.db')}"


class MlflowHook(ModelRegistryMixin, BaseHook):
    """
    Talk to an MLflow tracking server and model registry through an Airflow connection.

    Connection fields: *Tracking URI* (host; ``http(s)://...`` or a database URI such as
    ``sqlite:///...``), *Username* and *Password* for basic auth, or the password alone as a bearer
    token. Extras, read by name only: ``registry_uri``, ``ui_url``, ``insecure_tls``,
    ``request_timeout`` (seconds, default 10) and ``artifact_location`` (root for experiments the
    provider creates).

    When the default connection ``mlflow_default`` does not exist, the hook falls back to
    ``MLFLOW_TRACKING_URI`` if set, else to an embedded SQLite store under ``AIRFLOW_HOME``.

    :param mlflow_conn_id: the Airflow connection id of type ``mlflow``.
    """

    conn_name_attr = "mlflow_conn_id"
    default_conn_name = "mlflow_default"
    conn_type = "mlflow"
    hook_name = "MLflow"

    EXTRA_KEYS: ClassVar[tuple[str, ...]] = (
        "registry_uri",
        "ui_url",
        "insecure_tls",
        "request_timeout",
        "artifact_location",
    )

    def __init__(self, mlflow_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.mlflow_conn_id = mlflow_conn_id

    # -- connection ---------------------------------------------------------------------------

    @cached_property
    def settings(self) -> MlflowSettings:
        """Read the connection once; secrets are kept in memory only."""
        from airflow.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.mlflow_conn_id)
        except AirflowNotFoundException:
            if self.mlflow_conn_id != self.default_conn_name:
                raise
            uri = os.environ.get("MLFLOW_TRACKING_URI") or default_embedded_tracking_uri()
            log.warning(
                "No connection %r: using the embedded MLflow store %s. Define the connection to "
                "use a shared tracking server.",
                self.mlflow_conn_id,
                redact_uri(uri),
            )
            return self._settings_from_fields(uri, None, None, {})
        return self._settings_from_fields(
            self._tracking_uri_of(conn), conn.login, conn.password, conn.extra_dejson or {}
        )

    @staticmethod
    def _tracking_uri_of(conn: Any) -> str:
        host = (conn.host or "").strip()
        if not host:
            raise ValueError(
                f"Connection {conn.conn_id!r}: the Tracking URI (host) is empty. Set it to the "
                "MLflow server address, for example http://mlflow.example.com:5000."
            )
        if "://" in host:
            uri = host
            if conn.port and not urlsplit(host).port and urlsplit(host).scheme in {"http", "https"}:
                parts = urlsplit(host)
                uri = urlunsplit((parts.scheme, f"{parts.netloc}:{conn.port}", parts.path, parts.query, ""))
        else:
            scheme = conn.schema or "http"
            port = f":{conn.port}" if conn.port else ""
            uri = f"{scheme}://{host}{port}"
        return uri.rstrip("/")

    def _settings_from_fields(
        self, uri: str, login: str | None, password: str | None, extras: Mapping[str, Any]
    ) -> MlflowSettings:
        extra = {key: extras[key] for key in self.EXTRA_KEYS if extras.get(key) not in (None, "")}
        if uri.startswith("file:"):
            raise ValueError(
                f"Connection {self.mlflow_conn_id!r}: MLflow 3 refuses the file store {uri!r}. Use "
                "a tracking server (http://...) or a database URI such as sqlite:////path/mlflow.db."
            )
        try:
            timeout = float(extra.get("request_timeout", 10))
        except (TypeError, ValueError):
            raise ValueError(
                f"Connection {self.mlflow_conn_id!r}: extra 'request_timeout' must be a number of "
                f"seconds, got {extra['request_timeout']!r}."
            ) from None
        uri, login, password = _credentials_out_of_uris(uri, extra, login, password)
        username = login or None
        token = password if password and not username else None
        ui_url = extra.get("ui_url") or (uri if urlsplit(uri).scheme in {"http", "https"} else None)
        return MlflowSettings(
            tracking_uri=uri,
            registry_uri=str(extra.get("registry_uri") or uri),
            ui_url=str(ui_url).rstrip("/") if ui_url else None,
            username=username,
            password=(password or "") if username else None,
            token=token,
            insecure_tls=_truthy(extra.get("insecure_tls", False)),
            request_timeout=timeout,
            artifact_location=extra.get("artifact_location"),
        )

    @cached_property
    def client(self) -> MlflowClient:
        """An ``MlflowClient`` for this connection; credentials never touch ``os.environ``."""
        from airflow_ml_provider.hooks._mlflow_client import build_client

        return build_client(self.settings)

    def describe(self) -> str:
        """The tracking URI, safe for messages and logs."""
        return redact_uri(self.settings.tracking_uri)

    def check_server(self) -> None:
        """
        Fail fast, with the URI and the cause, when the server is unreachable or refuses us.

        MLflow's own client retries for minutes before it gives up; a task should not.
        """
        ok, message = self.test_connection()
        if not ok:
            raise MlflowConnectionError(message)

    def test_connection(self) -> tuple[bool, str]:
        """Call the server for real: reachability, then an authenticated API call."""
        try:
            settings = self.settings
        except Exception as err:
            return False, f"MLflow connection {self.mlflow_conn_id!r} is invalid: {err}"
        uri = redact_uri(settings.tracking_uri)
        if not settings.is_http:
            return self._test_database_store(uri)
        import requests

        headers = {}
        auth = None
        if settings.username:
            auth = (settings.username, settings.password or "")
        elif settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        url = f"{settings.tracking_uri}/api/2.0/mlflow/experiments/search"
        try:
            response = requests.get(
                url,
                params={"max_results": 1},
                headers=headers,
                auth=auth,
                timeout=settings.request_timeout,
                verify=not settings.insecure_tls,
            )
        except requests.RequestException as err:
            return (
                False,
                f"MLflow tracking server {uri} is unreachable: {type(err).__name__}: {_first_line(err)}",
            )
        if response.status_code in (401, 403):
            return False, (
                f"MLflow tracking server {uri} refused the credentials of connection "
                f"{self.mlflow_conn_id!r} (HTTP {response.status_code}). Check the username/password "
                "or token."
            )
        if response.status_code != 200:
            return False, (
                f"MLflow tracking server {uri} answered HTTP {response.status_code} to "
                f"{url.replace(settings.tracking_uri, '')}: {response.text[:200]}"
            )
        return True, f"Connected to MLflow tracking server {uri}."

    def _test_database_store(self, uri: str) -> tuple[bool, str]:
        try:
            self.client.search_experiments(max_results=1)
        except Exception as err:
            return False, f"MLflow store {uri} is not usable: {type(err).__name__}: {_first_line(err)}"
        return True, f"Connected to MLflow store {uri}."

    # -- experiments and claims ---------------------------------------------------------------

    def get_or_create_experiment(self, name: str) -> str:
        """Return the id of the experiment ``name``, creating it (race-safe) when missing."""
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = None
            if self.settings.artifact_location:
                location = f"{self.settings.artifact_location.rstrip('/')}/{quote(name, safe='')}"
            try:
                return str(self.client.create_experiment(name, artifact_location=location))
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            raise MlflowConnectionError(f"Experiment {name!r} vanished on {self.describe()}.")
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(
                f"MLflow experiment {name!r} on {self.describe()} is deleted. Restore it "
                "(mlflow experiments restore) or choose another experiment name."
            )
        return str(experiment.experiment_id)

    def claim(
        self, key: str, value: str, *, description: str = "", tags: Mapping[str, str] | None = None
    ) -> str:
        """
        Bind ``value`` to ``key`` once; return the value that won.

        MLflow has no transactions, but experiment names are unique in its store, and an
        experiment is created together with its tags in one database transaction. The first
        caller's experiment holds the value; every later (or concurrent) caller reads it back.
        The claim experiment is soft-deleted right away so that it stays out of the UI; its name
        stays reserved. ``tags`` ride on the claim (written in the same create, never changed).
        """
        from mlflow.exceptions import MlflowException

        name = self.claim_name(key)
        tags = {**(tags or {}), TAG_CLAIM_VALUE: value, TAG_CLAIM_KEY: key[:5000]}
        if description:
            tags[TAG_NOTE] = description
        try:
            claim_id = self.client.create_experiment(name, tags=tags)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            winner = self.read_claim(key)
            if winner is None:
                raise MlflowConnectionError(
                    f"Claim {key!r} exists on {self.describe()} but holds no value."
                ) from err
            return winner
        self._hide_experiment(claim_id)
        return value

    def read_claim(self, key: str) -> str | None:
        """The value bound to ``key`` by :meth:`claim`, or None when nobody has claimed it."""
        experiment = self.client.get_experiment_by_name(self.claim_name(key))
        if experiment is None:
            return None
        return experiment.tags.get(TAG_CLAIM_VALUE)

    @staticmethod
    def claim_name(key: str) -> str:
        return EXPERIMENT_CLAIMS_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:40]

    def _hide_experiment(self, experiment_id: str) -> None:
        try:
            self.client.delete_experiment(experiment_id)
        except Exception:
            log.debug("Could not hide claim experiment %s", experiment_id, exc_info=True)

    # -- runs -----------------------------------------------------------------------------------

    def find_runs(self, experiment_id: str, tags: Mapping[str, str]) -> list[Run]:
        """Active runs of the experiment carrying all of ``tags``, oldest first."""
        clauses = [f"tags.`{key}` = '{_quote_filter(value)}'" for key, value in tags.items()]
        runs = self.client.search_runs(
            experiment_ids=[experiment_id],
            filter_string=" and ".join(clauses),
            order_by=["attributes.start_time ASC"],
            max_results=50,
        )
        return list(runs)

    def log_batch(
        self,
        run_id: str,
        metrics: Mapping[str, float] | Iterable[tuple[str, float, int]] | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> int:
        """
        Log metrics, params and tags in as few requests as MLflow's batch limits allow.

        ``metrics`` is a mapping name -> value (step 0) or an iterable of (name, value, step).
        Returns the number of requests made.
        """
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        items = metrics.items() if isinstance(metrics, Mapping) else (metrics or [])
        metric_list = []
        for entry in items:
            name, value, step = entry if len(entry) == 3 else (entry[0], entry[1], 0)
            metric_list.append(Metric(str(name), float(value), now, int(step)))
        param_list = [Param(str(k), _param_value(v)) for k, v in (params or {}).items()]
        tag_list = [RunTag(str(k), str(v)) for k, v in (tags or {}).items()]
        requests_made = 0
        while metric_list or param_list or tag_list:
            p_chunk, param_list = param_list[:MAX_PARAMS_PER_BATCH], param_list[MAX_PARAMS_PER_BATCH:]
            t_chunk, tag_list = tag_list[:MAX_TAGS_PER_BATCH], tag_list[MAX_TAGS_PER_BATCH:]
            room = MAX_ENTITIES_PER_BATCH - len(p_chunk) - len(t_chunk)
            m_chunk, metric_list = metric_list[:room], metric_list[room:]
            self.client.log_batch(run_id, metrics=m_chunk, params=p_chunk, tags=t_chunk)
            requests_made += 1
        return requests_made

    def load_json_artifact(self, run_id: str, path: str) -> Any:
        """A JSON artifact of a run, read through a scratch copy that is removed after."""
        import shutil

        from airflow_ml_provider.ml.scratch import make_scratch_dir

        workdir = make_scratch_dir("ml-json-artifact")
        try:
            local = self.client.download_artifacts(run_id, path, workdir)
            with open(local, encoding="utf-8") as handle:
                return json.load(handle)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        """Link to a run in the MLflow UI, when the connection has a UI address."""
        base = self.settings.ui_url
        if not base:
            return None
        return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"

    # -- model registry -------------------------------------------------------------------------

    def get_alias_version(self, model_name: str, alias: str) -> ModelVersion | None:
        """
        The model version that ``alias`` of registered model ``model_name`` points to.

        Returns None when the model is not registered or the alias is not set; raises on any other
        error (server unreachable, credentials refused, ...). MLflow answers a missing alias with
        INVALID_PARAMETER_VALUE, the code it also uses for malformed requests, so a missing alias is
        confirmed against the registered model's aliases before None is returned.

        :param model_name: the registered model's name.
        :param alias: the alias, for example ``champion``.
        """
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(model_name, alias)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            if err.error_code != "INVALID_PARAMETER_VALUE":
                raise
        try:
            model = self.client.get_registered_model(model_name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        version = (model.aliases or {}).get(alias)
        if version is None:
            return None
        # The alias was set between the two calls.
        return self.client.get_model_version(model_name, str(version))


def _param_value(value: Any) -> str:
    """MLflow params are strings of at most 6000 characters; containers are logged as JSON."""
    is_container = isinstance(value, dict | list | tuple)
    text = json.dumps(value, sort_keys=True, default=str) if is_container else str(value)
    return text[:6000]


def _quote_filter(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""
