"""The little a runner needs of a logger: stdlib loggers and Airflow's task logger both fit."""

from __future__ import annotations

from typing import Any, Protocol


class StepLogger(Protocol):
    def info(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any: ...

    def warning(self, msg: Any, /, *args: Any, **kwargs: Any) -> Any: ...
