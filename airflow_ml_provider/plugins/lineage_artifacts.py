"""
The reports and plots the ML lineage view serves, read from a task run's MLflow artifacts.

The api-server reads them, so where it reads from is checked first: a run's ``artifact_uri`` is
data (an experiment's artifact location is chosen by whoever creates it), not an address to
fetch blindly. Artifacts are read

- through the MLflow tracking server's artifact proxy (``mlflow-artifacts:/...``, the default of
  ``mlflow server``), with the connection's credentials, never from another host;
- or, for a run whose artifacts live elsewhere, only under a root listed in
  ``[ml_provider] lineage_artifact_roots`` (or the connection's ``artifact_location`` extra),
  through MLflow's own artifact repositories.

Anything else (``http://``, a ``file:`` path outside those roots, ...) is refused. A file's size
is read from MLflow's listing before any byte of it is fetched, and the download is capped.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from airflow_ml_provider.hooks.mlflow import redact_text, redact_uri

if TYPE_CHECKING:
    from airflow_ml_provider.hooks.mlflow import MlflowHook

MAX_ARTIFACT_BYTES = 20 * 1024 * 1024
PROXY_ENDPOINT = "/api/2.0/mlflow-artifacts/artifacts"
CONFIG_SECTION = "ml_provider"
ROOTS_OPTION = "lineage_artifact_roots"
# The view is interactive: a dead server is reported in seconds, not after the tasks' retries.
PROXY_RETRIES = {"max_retries": 1, "backoff_factor": 0.5}
CHUNK = 1024 * 1024


class ArtifactRefused(FileNotFoundError):
    """The run's artifacts are somewhere the view does not read from."""


class ArtifactTooLarge(FileNotFoundError):
    """The file is larger than :data:`MAX_ARTIFACT_BYTES`."""


class ArtifactStoreError(Exception):
    """MLflow could not be read (unreachable, or it refused the connection's credentials)."""


def configured_roots(hook: MlflowHook) -> list[str]:
    """Artifact roots outside MLflow's proxy that the view may read: the option and the extra."""
    roots: list[str] = []
    try:
        from airflow.configuration import conf

        roots = [r.strip() for r in (conf.get(CONFIG_SECTION, ROOTS_OPTION, fallback="") or "").split(",")]
    except Exception:  # outside Airflow (a script): no configured roots
        roots = []
    if hook.settings.artifact_location:
        roots.append(hook.settings.artifact_location)
    return [r for r in roots if r]


def _local_path(uri: str) -> str | None:
    """The local path of a ``file:`` URI or a plain path, else None."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return None if parts.netloc not in ("", "localhost") else unquote(parts.path)
    if parts.scheme == "" and uri.startswith("/"):
        return uri
    return None


def is_under(uri: str, root: str) -> bool:
    """Whether ``uri`` is ``root`` or inside it (paths normalized, no ``..`` escapes)."""
    local, local_root = _local_path(uri), _local_path(root)
    if local is not None or local_root is not None:
        if local is None or local_root is None:
            return False
        local, local_root = os.path.normpath(local), os.path.normpath(local_root)
        return local == local_root or local.startswith(local_root.rstrip(os.sep) + os.sep)
    if ".." in uri.split("/"):
        return False
    base = root.rstrip("/")
    return uri == base or uri.startswith(base + "/")


class RunArtifacts:
    """The artifacts of one MLflow run, where the view may read them."""

    def __init__(self, hook: MlflowHook, run_id: str, artifact_uri: str) -> None:
        self.hook = hook
        self.run_id = run_id
        parts = urlsplit(artifact_uri)
        self.proxy_root: str | None = None
        if parts.scheme == "mlflow-artifacts" and not parts.netloc and hook.settings.is_http:
            root = posixpath.normpath("/" + parts.path).lstrip("/")
            if root and root != ".":
                self.proxy_root = root
                return
        if not any(is_under(artifact_uri, r) for r in configured_roots(hook)):
            raise ArtifactRefused(
                f"MLflow run {run_id} keeps its artifacts at {redact_uri(artifact_uri)!r}, which the "
                "ML lineage view does not read: it reads through the MLflow server's artifact proxy "
                f"(mlflow-artifacts:) and under the roots of [{CONFIG_SECTION}] {ROOTS_OPTION} only."
            )

    def sizes(self, folder: str) -> dict[str, int | None]:
        """``{path: size in bytes}`` of the files directly in ``folder``."""
        if self.proxy_root is None:
            from mlflow.exceptions import MlflowException

            try:
                listed = self.hook.client.list_artifacts(self.run_id, folder)
            except (MlflowException, OSError) as err:
                raise ArtifactStoreError(redact_text(f"{type(err).__name__}: {err}")) from err
            return {f.path: f.file_size for f in listed if not f.is_dir}
        answer = self._proxy("", params={"path": f"{self.proxy_root}/{folder}"})
        try:
            files = answer.json().get("files") or []
        finally:
            answer.close()
        return {
            f"{folder}/{f['path']}": int(f["file_size"]) if "file_size" in f else None
            for f in files
            if not f.get("is_dir") and "/" not in f.get("path", "/")
        }

    def read(self, path: str) -> bytes:
        """The content of file ``path``: its listed size is checked first, the download capped."""
        sizes = self.sizes(posixpath.dirname(path))
        if path not in sizes:
            raise FileNotFoundError(path)
        size = sizes[path]
        if size is not None and size > MAX_ARTIFACT_BYTES:
            raise ArtifactTooLarge(f"{path} is {size:,} bytes, more than the {MAX_ARTIFACT_BYTES:,} served")
        if self.proxy_root is None:
            return self._read_from_repository(path)
        answer = self._proxy(f"/{quote(self.proxy_root)}/{quote(path)}", stream=True)
        try:
            content = bytearray()
            for chunk in answer.iter_content(chunk_size=CHUNK):
                content += chunk
                if len(content) > MAX_ARTIFACT_BYTES:
                    raise ArtifactTooLarge(f"{path} is larger than the {MAX_ARTIFACT_BYTES:,} bytes served")
            return bytes(content)
        finally:
            answer.close()

    def _read_from_repository(self, path: str) -> bytes:
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory(prefix="ml-lineage-") as tmp:
            try:
                local = self.hook.client.download_artifacts(self.run_id, path, tmp)
            except (MlflowException, OSError) as err:
                raise FileNotFoundError(path) from err
            if not os.path.isfile(local) or os.path.getsize(local) > MAX_ARTIFACT_BYTES:
                raise ArtifactTooLarge(path)
            with open(local, "rb") as handle:
                return handle.read()

    def _proxy(self, tail: str, **kwargs: Any) -> Any:
        """GET the tracking server's artifact proxy with the connection's credentials."""
        from mlflow.exceptions import MlflowException
        from mlflow.utils.rest_utils import http_request

        settings = self.hook.settings
        try:
            answer = http_request(
                settings.host_creds(settings.tracking_uri),
                PROXY_ENDPOINT + tail,
                "GET",
                timeout=settings.request_timeout,
                raise_on_status=False,
                **PROXY_RETRIES,
                **kwargs,
            )
        except (MlflowException, OSError) as err:
            raise ArtifactStoreError(
                f"MLflow at {self.hook.describe()} could not be read: {redact_text(str(err))[:300]}"
            ) from err
        if answer.status_code == 404:
            answer.close()
            raise FileNotFoundError(tail or kwargs.get("params", {}).get("path", ""))
        if answer.status_code != 200:
            answer.close()
            raise ArtifactStoreError(
                f"MLflow at {self.hook.describe()} answered HTTP {answer.status_code} to an artifact request"
            )
        return answer
