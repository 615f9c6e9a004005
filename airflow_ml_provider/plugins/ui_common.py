"""
What the provider's pages in the Airflow UI share: the ML lineage view
(:mod:`~airflow_ml_provider.plugins.lineage_app`) and the Models page
(:mod:`~airflow_ml_provider.plugins.models_app`).

- the MLflow connection they read with (``[ml_provider] lineage_mlflow_conn_id``);
- the access check per DAG: the configured auth manager's answer for reading a DAG's runs;
- the HTML: one Jinja environment with autoescaping (a name or a text from the data is shown,
  never run), a Content-Security-Policy without any script but the page's own link opener, and
  the opener itself.

Imported on the api-server's first request to one of the pages, never when the plugin loads.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_ml_provider.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)

CONFIG_SECTION = "ml_provider"
CONN_OPTION = "lineage_mlflow_conn_id"
DEFAULT_CONN_ID = "mlflow_default"
TEMPLATES = Path(__file__).parent / "templates"

# The Airflow UI shows a plugin's page in a frame sandboxed without "allow-popups" and without
# "allow-top-navigation", where a plain target="_blank" or target="_top" link is blocked. This
# script (a page's only one) acts from the Airflow page that holds the frame, which is of the same
# origin: a link of class "ext" (MLflow) opens in a new tab; a link of class "top" (another page of
# the Airflow UI, such as a DAG run's ML lineage tab) opens in the Airflow page itself, through its
# router (a history entry and a popstate event), so the Airflow UI is not loaded again in the frame.
OPEN_LINKS_SCRIPT = (
    'document.addEventListener("click",function(e){'
    'var a=e.target.closest("a.ext,a.top");if(!a||window.top===window)return;'
    "try{var t=window.top;"
    'if(a.classList.contains("top")){var u=new URL(a.href);if(u.origin!==t.location.origin)return;'
    't.history.pushState(null,"",u.pathname+u.search+u.hash);t.dispatchEvent(new PopStateEvent("popstate"));}'
    'else{t.open(a.href,"_blank","noopener,noreferrer");}'
    "e.preventDefault();}catch(err){}"
    "});"
)
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(OPEN_LINKS_SCRIPT.encode()).digest()).decode()
# A page: its own inline styles, images from this server and the one script above; no frame, no
# form, nothing from elsewhere.
PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    f"script-src 'sha256-{_SCRIPT_HASH}'; base-uri 'none'; form-action 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"}


class MlflowUnavailable(Exception):
    """The connection could not be read, or MLflow did not answer; the message says which."""


def conn_id() -> str:
    """The connection the pages read MLflow with."""
    from airflow.configuration import conf

    return conf.get(CONFIG_SECTION, CONN_OPTION, fallback=DEFAULT_CONN_ID) or DEFAULT_CONN_ID


def mlflow_hook(view: str) -> MlflowHook:
    """
    A hook on the configured connection, read now.

    :param view: the page's name, for the message.
    :raises MlflowUnavailable: the connection is missing or cannot be read.
    """
    from airflow_ml_provider.hooks.mlflow import MlflowHook, redact_text

    try:
        hook = MlflowHook(conn_id())
        hook.settings  # noqa: B018 - read the connection now, to answer with a clear error
    except Exception as err:
        raise MlflowUnavailable(
            f"The {view} reads MLflow through connection {conn_id()!r}, which could not be "
            f"read: {redact_text(str(err))}. Create it, or name another one in [{CONFIG_SECTION}] {CONN_OPTION}."
        ) from err
    return hook


def unreadable(err: Exception, what: str) -> str:
    """The message of a 502 for ``err`` while reading ``what`` (credentials never in it)."""
    from airflow_ml_provider.hooks.mlflow import redact_text

    log.warning("Reading %s failed: %s", what, redact_text(repr(err)))
    return f"MLflow could not be read through connection {conn_id()!r}: {redact_text(str(err))[:500]}"


def dag_reader(user: Any) -> Callable[[str], bool]:
    """``may_read_dag(dag_id)`` for ``user``: the auth manager's answer for reading the DAG's runs."""
    from functools import cache

    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.models.dag import DagModel

    @cache
    def may_read_dag(dag_id: str) -> bool:
        if not dag_id:
            return False
        try:
            return bool(
                get_auth_manager().is_authorized_dag(
                    method="GET",
                    access_entity=DagAccessEntity.RUN,
                    details=DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id)),
                    user=user,
                )
            )
        except Exception:
            log.warning("Could not ask the auth manager about DAG %s; hiding it", dag_id, exc_info=True)
            return False

    return may_read_dag


def render(template: str, context: dict[str, Any]) -> str:
    """A page of ``templates/``, with the link opener."""
    return environment().get_template(template).render(**context, open_links_script=OPEN_LINKS_SCRIPT)


_ENV: Any = None


def environment() -> Any:
    """The Jinja environment of the pages: autoescaping, strict, with the pages' filters."""
    global _ENV
    if _ENV is None:
        from urllib.parse import urlencode

        import jinja2

        _ENV = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _ENV.filters["num"] = num
        _ENV.filters["http_url"] = http_url
        _ENV.filters["duration"] = duration
        _ENV.globals["urlencode"] = urlencode
    return _ENV


def http_url(value: Any) -> str | None:
    """Only http(s) addresses become links (a ``javascript:`` one from a bad connection does not)."""
    return value if isinstance(value, str) and value.lower().startswith(("http://", "https://")) else None


def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def duration(seconds: Any) -> str:
    """``95.0`` -> ``1 min 35 s``; ``None`` -> ``–``."""
    if seconds is None:
        return "–"
    total = round(float(seconds))
    if total < 60:
        return f"{float(seconds):.1f} s" if float(seconds) < 10 else f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"
