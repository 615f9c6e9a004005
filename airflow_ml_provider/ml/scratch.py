"""
Scratch directories that a killed process does not leave behind for good.

A task process killed with SIGKILL (out of memory, a lost worker, a test) runs no ``finally``:
its temporary directories stay. Every scratch directory of the provider is created under one root
(``$AIRFLOW_ML_SCRATCH_DIR``, default ``<tmp>/airflow-ml-provider-scratch``) with the host name and the
pid of its creator in its name; creating a new one first removes those of this host whose creator
is dead, so a retry cleans up after the try that was killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)

SCRATCH_DIR_ENV = "AIRFLOW_ML_SCRATCH_DIR"


def scratch_root() -> str:
    """The folder that holds every scratch directory of the provider on this host."""
    return os.environ.get(SCRATCH_DIR_ENV) or os.path.join(
        tempfile.gettempdir(), "airflow-ml-provider-scratch"
    )


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:48] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep(root: str | None = None) -> list[str]:
    """
    Remove the scratch directories of this host whose creating process is gone.

    :param root: the scratch root (default :func:`scratch_root`).
    :return: the removed paths.
    """
    root = root or scratch_root()
    host = _host()
    removed: list[str] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as entries:
        for entry in entries:
            parts = entry.name.split(".")  # <prefix>.<host>.<pid>.<random>
            if len(parts) != 4 or parts[1] != host or not parts[2].isdigit():
                continue
            if _alive(int(parts[2])):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    if removed:
        log.info("Removed %d scratch directories left by killed processes: %s", len(removed), removed)
    return removed


def make_scratch_dir(prefix: str) -> str:
    """
    A new, empty scratch directory (the caller removes it when done); sweeps leftovers first.

    :param prefix: what it is for, e.g. ``"ml-validation"`` (no dots).
    """
    root = scratch_root()
    os.makedirs(root, exist_ok=True)
    sweep(root)
    name_prefix = f"{prefix.replace('.', '-')}.{_host()}.{os.getpid()}."
    return tempfile.mkdtemp(prefix=name_prefix, dir=root)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[str]:
    """:func:`make_scratch_dir` as a context manager that removes the directory on exit."""
    path = make_scratch_dir(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
