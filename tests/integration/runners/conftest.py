"""Shared by the runner tests: a logger that keeps what a step's runner logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from support.log_capture import Collect


@pytest.fixture
def collected() -> Iterator[tuple[logging.Logger, Collect]]:
    logger = logging.getLogger(f"test_python_runner.{id(object())}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = Collect()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)
