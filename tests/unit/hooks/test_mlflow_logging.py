"""MLflow's log records go to the process's logging (Airflow's task log), not to MLflow's stderr handler."""

from __future__ import annotations

import logging

import pytest

from airflow_ml_provider.hooks._mlflow_client import route_mlflow_logging

pytestmark = pytest.mark.unit


def test_mlflow_records_propagate_at_their_level_instead_of_going_to_stderr(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    logger = logging.getLogger("mlflow")
    own = logging.StreamHandler(MLFLOW_LOGGING_STREAM)  # what `import mlflow` installs
    other = logging.NullHandler()  # a user's handler stays
    saved = (logger.handlers[:], logger.propagate, logger.level)
    logger.handlers = [own, other]
    logger.propagate = False
    try:
        route_mlflow_logging()
        route_mlflow_logging()  # idempotent
        assert logger.handlers == [other] and logger.propagate
        caplog.set_level(logging.INFO, logger="mlflow")
        logging.getLogger("mlflow.store.model_registry").info("Waiting up to 300 seconds")
    finally:
        logger.handlers, logger.propagate, logger.level = saved
    assert [
        (r.name, r.levelname) for r in caplog.records if r.getMessage() == "Waiting up to 300 seconds"
    ] == [("mlflow.store.model_registry", "INFO")]
    assert "Waiting up to" not in capsys.readouterr().err


def test_without_configured_logging_mlflow_keeps_its_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    logger = logging.getLogger("mlflow")
    own = logging.StreamHandler(MLFLOW_LOGGING_STREAM)
    saved = (logger.handlers[:], logger.propagate)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    logger.handlers = [own]
    logger.propagate = False
    try:
        route_mlflow_logging()
        assert logger.handlers == [own] and not logger.propagate  # else nothing would print them
    finally:
        logger.handlers, logger.propagate = saved
