"""Runners: where a step runs on this machine (this interpreter, another one, a gang of processes).

The spec and the result are the same everywhere. Nothing in this package imports Airflow:
operators create a runner and pass in their logger. The pods' manifests are in
:mod:`~airflow_ml_provider.runners.kubernetes_objects`; the Kubernetes calls are in the hooks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from airflow_ml_provider.runners._logger import StepLogger
    from airflow_ml_provider.runners.gang import GangRunner
    from airflow_ml_provider.runners.in_process import InProcessRunner
    from airflow_ml_provider.runners.python import PythonRunner

# The runners load when first used, not when a DAG file imports an operator (parse time).
_LAZY = {
    "GangRunner": "airflow_ml_provider.runners.gang",
    "InProcessRunner": "airflow_ml_provider.runners.in_process",
    "PythonRunner": "airflow_ml_provider.runners.python",
}
_KINDS = {"in_process": "InProcessRunner", "python": "PythonRunner"}

__all__ = ["RUNNER_KINDS", "GangRunner", "InProcessRunner", "PythonRunner", "StepRunner", "get_runner"]


@runtime_checkable
class StepRunner(Protocol):
    """Runs a step (a function from a JSON-able spec to a JSON-able result) somewhere."""

    def run(self, step: str, spec: dict[str, Any], *, logger: StepLogger | None = None) -> dict[str, Any]:
        """
        Run the step and return its result.

        :param step: a built-in step name or a ``package.module:function`` reference.
        :param spec: the step's input (JSON-serializable).
        :param logger: where the step's log lines go.
        """
        ...


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "RUNNER_KINDS":
        return {kind: __getattr__(cls) for kind, cls in _KINDS.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_runner(kind: str, **kwargs: Any) -> StepRunner:
    """
    Create a runner by kind.

    :param kind: ``"in_process"`` or ``"python"``.
    :param kwargs: passed to the runner's constructor (for ``"python"``: ``python``, ``timeout``,
        ``env``, ``cwd``, ``kill_grace_seconds``).
    :raises ValueError: unknown kind.
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown runner {kind!r}: use one of {', '.join(repr(k) for k in _KINDS)}.")
    cls: type[StepRunner] = __getattr__(_KINDS[kind])
    return cls(**kwargs)
