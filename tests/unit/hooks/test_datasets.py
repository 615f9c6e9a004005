"""Dataset version sources on a real local folder and on fsspec stores through ObjectStoragePath."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from support.dataset_fixtures import complete, land, register_flaky

from airflow_ml_provider.hooks.datasets import (
    DatasetVersion,
    ObjectSource,
    PartitionedSource,
    check_version_name,
    order_key,
    source_from_spec,
)

pytestmark = pytest.mark.unit


def versions(source: PartitionedSource | ObjectSource) -> list[str]:
    return [v.version for v in source.list_versions()]


def test_only_complete_versions_count(tmp_path: Path):
    land(tmp_path, "0001")
    half = land(tmp_path, "0002", marker=False)  # data written, marker not yet
    (tmp_path / ".version=0003.tmp").mkdir()  # a writer's hidden temporary folder
    (tmp_path / "unrelated").mkdir()
    source = PartitionedSource(str(tmp_path))
    assert versions(source) == ["0001"]
    complete(half)
    found = source.list_versions()
    assert [v.version for v in found] == ["0001", "0002"]
    assert found[1].uri == f"{tmp_path}/version=0002"
    assert found[1].extra == {"files": 1, "bytes": len("a,b\n0,0\n1,2\n2,4\n")}
    assert found[1].completed_at is not None and found[1].name == tmp_path.name


def test_fingerprint_follows_content(tmp_path: Path):
    a = PartitionedSource(str(tmp_path / "a"))
    b = PartitionedSource(str(tmp_path / "b"))
    land(tmp_path / "a", "1", rows=3)
    land(tmp_path / "b", "1", rows=4)
    assert a.list_versions()[0].fingerprint != b.list_versions()[0].fingerprint
    land(tmp_path / "c", "1", rows=3)
    assert (
        a.list_versions()[0].fingerprint
        == PartitionedSource(str(tmp_path / "c")).list_versions()[0].fingerprint
    )


@pytest.mark.parametrize(
    ("ordering", "names", "expected"),
    [
        ("lexical", ["b", "a", "c"], ["a", "b", "c"]),
        ("numeric", ["10", "9", "100"], ["9", "10", "100"]),
        (
            "timestamp",
            ["2026-11-23T10-00-00", "20261122", "2026-11-23T09:30:00Z"],
            ["20261122", "2026-11-23T09:30:00Z", "2026-11-23T10-00-00"],
        ),
    ],
)
def test_ordering(tmp_path: Path, ordering: str, names: list[str], expected: list[str]):
    for name in names:
        land(tmp_path, name, pattern="dt={}")
    assert versions(PartitionedSource(str(tmp_path), pattern="dt=*", ordering=ordering)) == expected


def test_names_that_do_not_fit_the_ordering_are_refused_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    land(tmp_path, "7")
    land(tmp_path, "latest")
    source = PartitionedSource(str(tmp_path), ordering="numeric")
    with caplog.at_level(logging.WARNING):
        assert versions(source) == ["7"]
        assert versions(source) == ["7"]
    refusals = [r for r in caplog.records if "version=latest" in r.getMessage()]
    assert len(refusals) == 1 and "not a number" in refusals[0].getMessage()


@pytest.mark.parametrize("name", ["..", "a..b", "a/b", "a\\b", "", "x" * 201, "a b", "über"])
def test_unsafe_version_names_are_refused(name: str):
    assert check_version_name(name) is not None


@pytest.mark.parametrize("name", ["0007", "2026-11-23T10:00:00Z", "v1.2.3", "a_b-c+d"])
def test_ordinary_version_names_pass(name: str):
    assert check_version_name(name) is None


def test_traversal_folder_is_skipped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    land(tmp_path, "0001")
    land(tmp_path, "..evil")
    with caplog.at_level(logging.WARNING):
        assert versions(PartitionedSource(str(tmp_path))) == ["0001"]
    assert any("version=..evil" in r.getMessage() and "'..'" in r.getMessage() for r in caplog.records)


def test_deleted_version_disappears(tmp_path: Path):
    land(tmp_path, "1")
    second = land(tmp_path, "2")
    source = PartitionedSource(str(tmp_path))
    assert versions(source) == ["1", "2"]
    shutil.rmtree(second)
    assert versions(source) == ["1"]


def test_no_marker_takes_every_matching_folder(tmp_path: Path):
    land(tmp_path, "1", marker=False)
    assert versions(PartitionedSource(str(tmp_path), marker=None)) == ["1"]


def test_missing_root_raises_file_not_found(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        PartitionedSource(str(tmp_path / "absent")).list_versions()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uri": ""}, "uri must be a non-empty"),
        ({"uri": "/d", "pattern": "version="}, "exactly one '*'"),
        ({"uri": "/d", "pattern": "a/*"}, "exactly one '*'"),
        ({"uri": "/d", "ordering": "newest"}, "ordering must be one of"),
        ({"uri": "/d", "marker": "../x"}, "marker must be a file name"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        PartitionedSource(**kwargs)


def test_source_from_spec_builtin_and_custom_and_unknown():
    assert isinstance(source_from_spec({"kind": "partitioned", "uri": "/d"}), PartitionedSource)
    assert isinstance(source_from_spec({"kind": "object", "uri": "/d/f.csv"}), ObjectSource)
    custom = source_from_spec({"kind": "airflow_ml_provider.hooks.datasets:ObjectSource", "uri": "/x"})
    assert isinstance(custom, ObjectSource)
    with pytest.raises(ValueError, match="Unknown dataset source 'delta'"):
        source_from_spec({"kind": "delta", "uri": "/d"})
    with pytest.raises(ValueError, match="cannot be imported"):
        source_from_spec({"kind": "nowhere.module:Source", "uri": "/d"})


def test_spec_round_trip(tmp_path: Path):
    source = PartitionedSource(
        str(tmp_path), pattern="dt=*", ordering="timestamp", marker="_DONE", name="sales"
    )
    again = source_from_spec(source.to_spec())
    assert again.to_spec() == source.to_spec() and again.identity() == source.identity()


def test_order_key_rejects_unknown_ordering():
    with pytest.raises(ValueError, match="ordering must be one of"):
        order_key("random", "1")


def test_object_source_new_version_per_change(tmp_path: Path):
    target = tmp_path / "customers.csv"
    source = ObjectSource(str(target))
    assert source.list_versions() == []
    target.write_text("a\n1\n")
    (first,) = source.list_versions()
    assert source.list_versions()[0] == DatasetVersion(
        **{**first.to_dict(), "discovered_at": first.discovered_at}
    )
    time.sleep(0.01)
    target.write_text("a\n1\n2\n")
    os.utime(target, (time.time() + 1, time.time() + 1))
    (second,) = source.list_versions()
    assert second.version != first.version and second.fingerprint != first.fingerprint
    assert second.name == "customers.csv"


def test_partitioned_source_on_object_storage_path():
    """The non-local branch: listing through ObjectStoragePath on fsspec's memory store."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/lake/sales/version=0001/part-0.csv", b"a\n1\n")
    fs.pipe("/lake/sales/version=0001/_SUCCESS", b"")
    fs.pipe("/lake/sales/version=0002/part-0.csv", b"a\n1\n2\n")  # no marker yet
    source = PartitionedSource("memory://lake/sales")
    found = source.list_versions()
    assert [v.version for v in found] == ["0001"]
    assert found[0].uri == "memory://lake/sales/version=0001"
    fs.pipe("/lake/sales/version=0002/_SUCCESS", b"")
    assert versions(source) == ["0001", "0002"]
    obj = ObjectSource("memory://lake/sales/version=0002/part-0.csv")
    assert obj.list_versions()[0].extra == {"bytes": 6}


def test_storage_errors_reach_the_caller():
    flaky = register_flaky()
    flaky.error = PermissionError("access denied to bucket")
    with pytest.raises(PermissionError, match="access denied"):
        PartitionedSource("flaky://bucket/data").list_versions()


def test_unchanged_local_root_is_not_listed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The cheap path for idle watches: one stat of the root, unless something may have changed."""
    source = PartitionedSource(str(tmp_path))
    listings: list[int] = []
    real = source._candidates
    monkeypatch.setattr(source, "_candidates", lambda: listings.append(1) or real())

    def age_root() -> None:
        past = time.time() - 60
        os.utime(tmp_path, (past, past))

    land(tmp_path, "1")
    age_root()
    assert versions(source) == ["1"] and len(listings) == 1
    assert versions(source) == ["1"] and len(listings) == 1  # settled, unchanged: no listing
    half = land(tmp_path, "2", marker=False)
    assert versions(source) == ["1"] and len(listings) == 2  # the root changed
    age_root()
    assert versions(source) == ["1"] and len(listings) == 3  # an incomplete version is pending
    complete(half)
    age_root()
    assert versions(source) == ["1", "2"] and len(listings) == 4
    assert versions(source) == ["1", "2"] and len(listings) == 4
    shutil.rmtree(half)
    assert versions(source) == ["1"] and len(listings) == 5
