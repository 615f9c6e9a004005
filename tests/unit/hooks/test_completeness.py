"""The completeness check every dataset-reading task makes, on real folders and fsspec stores."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support.dataset_fixtures import land, register_flaky

from airflow_ml_provider.exceptions import DatasetVersionIncomplete
from airflow_ml_provider.hooks.completeness import (
    check_inputs,
    check_version_complete,
    completion_rule,
    inspect_version,
    source_completed_at,
)
from airflow_ml_provider.hooks.datasets import PartitionedSource
from airflow_ml_provider.triggers.dataset import payload_of

pytestmark = pytest.mark.unit


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def test_a_folder_with_its_marker_is_complete_since_the_marker_was_written(tmp_path: Path):
    folder = land(tmp_path, "0001")
    os.utime(folder / "_SUCCESS", (1_700_000_000, 1_700_000_000))
    state = check_version_complete(str(folder))
    assert state is not None and state.complete and state.folder == str(folder)
    assert state.completed_at == _iso(1_700_000_000)


@pytest.mark.parametrize("name", ["version=0001", "plain-folder"])
def test_a_folder_without_its_marker_is_refused_naming_folder_and_marker(tmp_path: Path, name: str):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "part-00000.csv").write_text("a\n1\n")
    with pytest.raises(DatasetVersionIncomplete) as caught:
        check_version_complete(str(folder), what="Task 'validate': data_uri")
    message = str(caught.value)
    assert message.startswith(
        f"Task 'validate': data_uri {folder}: dataset version folder {folder} is incomplete"
    )
    assert f"its completion marker '_SUCCESS' ({folder}/_SUCCESS) is missing" in message
    assert "completion_marker=None" in message
    assert caught.value.folder == str(folder) and caught.value.marker == "_SUCCESS"


def test_a_file_inside_a_version_folder_is_as_complete_as_its_folder(tmp_path: Path):
    folder = land(tmp_path, "0001", marker=False)
    data = folder / "part-00000.csv"
    with pytest.raises(DatasetVersionIncomplete, match=f"dataset version folder {folder} is incomplete"):
        check_version_complete(str(data))
    (folder / "_SUCCESS").touch()
    state = check_version_complete(f"file://{data}")
    assert state is not None and state.complete and state.folder == f"file://{folder}"


def test_a_lone_file_is_one_object_complete_once_written(tmp_path: Path):
    data = tmp_path / "holdout.csv"
    data.write_text("a\n1\n")
    state = check_version_complete(str(data))
    assert state is not None and state.complete and state.folder is None
    assert state.completed_at == _iso(data.stat().st_mtime)


def test_a_custom_marker_and_pattern(tmp_path: Path):
    folder = land(tmp_path, "2026-12-01", pattern="dt={}")  # writes _SUCCESS, not the source's _DONE
    with pytest.raises(DatasetVersionIncomplete, match=r"its completion marker '_DONE' .* is missing"):
        check_version_complete(str(folder / "part-00000.csv"), marker="_DONE", pattern="dt=*")
    (folder / "_DONE").touch()
    assert check_version_complete(str(folder / "part-00000.csv"), marker="_DONE", pattern="dt=*")


def test_no_marker_checks_nothing_and_models_are_not_dataset_versions(tmp_path: Path):
    folder = tmp_path / "v"
    folder.mkdir()
    assert check_version_complete(str(folder), marker=None) is None
    assert check_version_complete("models:/churn@champion") is None
    assert check_version_complete("runs:/abc/validation/statistics.pb") is None


def test_a_missing_uri_is_left_to_the_step(tmp_path: Path):
    state = check_version_complete(str(tmp_path / "nowhere"))
    assert state is not None and not state.exists


def test_object_storage_through_object_storage_path():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/lake/completeness/version=0001/part-0.csv", b"a\n1\n")
    with pytest.raises(
        DatasetVersionIncomplete, match="memory://lake/completeness/version=0001 is incomplete"
    ):
        check_version_complete("memory://lake/completeness/version=0001")
    fs.pipe("/lake/completeness/version=0001/_SUCCESS", b"")
    assert inspect_version("memory://lake/completeness/version=0001/part-0.csv").complete


def test_a_storage_error_refuses_and_says_why():
    flaky = register_flaky()
    flaky.error = PermissionError("access denied to bucket")
    with pytest.raises(
        DatasetVersionIncomplete, match="cannot tell whether .* PermissionError: access denied"
    ):
        check_version_complete("flaky://bucket/data/version=0001")


def test_the_delivered_version_is_checked_with_its_source_rule(tmp_path: Path):
    source = PartitionedSource(str(tmp_path), pattern="dt=*", marker="_DONE", conn_id="lake")
    folder = land(tmp_path, "2026-12-01", pattern="dt={}")
    (folder / "_DONE").touch()
    (version,) = source.list_versions()
    payload = payload_of(version, None, source)
    assert completion_rule(str(folder / "part-00000.csv"), payload, "_SUCCESS") == ("_DONE", "dt=*", "lake")
    assert completion_rule("/elsewhere/v", payload, "_SUCCESS") == ("_SUCCESS", "version=*", None)
    # A conf payload names no rule: the task's marker applies.
    assert completion_rule(str(folder), {"version": "1", "uri": str(folder)}, "_OK")[0] == "_OK"


def test_check_inputs_names_the_argument_and_refuses_a_bad_marker(tmp_path: Path):
    folder = land(tmp_path, "0001", marker=False)
    inputs: dict[str, Any] = {"train_uri": str(folder), "eval_uri": None}
    with pytest.raises(DatasetVersionIncomplete, match="Task 'train': train_uri"):
        check_inputs("train", inputs, "_SUCCESS", None)
    check_inputs("train", inputs, None, None)
    with pytest.raises(ValueError, match="completion_marker must be a file name"):
        check_inputs("train", inputs, "a/b", None)


def test_the_completion_time_of_a_conf_version_comes_from_its_marker(tmp_path: Path):
    folder = land(tmp_path, "0001")
    os.utime(folder / "_SUCCESS", (1_700_000_000, 1_700_000_000))
    assert source_completed_at({"version": "0001", "uri": str(folder)}) == (_iso(1_700_000_000), "")
    (folder / "_SUCCESS").unlink()
    assert source_completed_at({"version": "0001", "uri": str(folder)}) == (
        None,
        f"{folder} has no completion marker '_SUCCESS'",
    )
    assert source_completed_at({"version": "0001"})[0] is None


def test_freshness_says_once_why_it_is_not_recorded(caplog: pytest.LogCaptureFixture):
    from airflow_ml_provider import freshness

    context = {"dag_run": SimpleNamespace(run_id="manual__1", conf={"dataset_version": {"version": "0009"}})}
    with caplog.at_level(logging.INFO, logger="airflow_ml_provider.freshness"):
        assert freshness.version_completed_at(context) is None
        assert freshness.version_completed_at(context) is None
    lines = [r.getMessage() for r in caplog.records if "Freshness is not recorded" in r.getMessage()]
    assert lines == [
        "Freshness is not recorded for dataset version 0009: it has no completed_at and the version has "
        "no 'uri' to read its completion marker from."
    ]
