"""Runners: where a step runs on this machine (this interpreter, another one, a gang of processes).

The spec and the result are the same everywhere. Nothing in this package imports Airflow:
operators create a runner and pass in their logger. The pods' manifests are in
:mod:`~airflow_ml_provider.runners.kubernetes_objects`; the Kubernetes calls are in the hooks.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from airflow_ml_provider.runners._logger import StepLogger
from airflow_ml_provider.runners.gang import GangRunner
from airflow_ml_provider.runners.in_process import InProcessRunner
from airflow_ml_provider.runners.python import PythonRunner

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


RUNNER_KINDS: dict[str, type[StepRunner]] = {"in_process": InProcessRunner, "python": PythonRunner}


def get_runner(kind: str, **kwargs: Any) -> StepRunner:
    """
    Create a runner by kind.

    :param kind: ``"in_process"`` or ``"python"``.
    :param kwargs: passed to the runner's constructor (for ``"python"``: ``python``, ``timeout``,
        ``env``, ``cwd``, ``kill_grace_seconds``).
    :raises ValueError: unknown kind.
    """
    try:
        cls = RUNNER_KINDS[kind]
    except KeyError:
        raise ValueError(
            f"Unknown runner {kind!r}: use one of {', '.join(repr(k) for k in RUNNER_KINDS)}."
        ) from None
    return cls(**kwargs)
