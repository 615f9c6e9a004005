"""A logging handler that keeps what was logged, with the time each record arrived."""

from __future__ import annotations

import logging
import time


class Collect(logging.Handler):
    """Keep each record with the time it arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record.getMessage()))

    @property
    def messages(self) -> list[str]:
        return [message for _, message in self.records]
