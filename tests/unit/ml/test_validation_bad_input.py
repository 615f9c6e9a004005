"""validate_data on bad input: each case ends in a clear exception or a reported anomaly."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_ml_provider.ml.datagen import generate_dataset
from airflow_ml_provider.ml.validation import validate_data

pytestmark = pytest.mark.unit

ROWS = 2000


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A clean version, its stored schema and statistics, plus versions with injected problems."""
    root = tmp_path_factory.mktemp("bad")
    generate_dataset(
        {
            "root": str(root / "data"),
            "versions": 5,
            "rows": ROWS,
            "knobs_per_version": {
                "2": {"missing_column": "balance"},
                "3": {"type_change": "age"},
                "4": {"null_spike": {"income": 0.3, "region": 0.3}},
                "5": {"null_spike": {"tenure_months": 0.05}},
            },
        }
    )
    schema = str(root / "schema.pbtxt")
    first = validate_data(
        {
            "data_uri": str(root / "data" / "version=0001"),
            "output_dir": str(root / "o1"),
            "schema_uri": schema,
        }
    )
    return {"root": root, "schema_uri": schema, "first": first}


def run(base: dict[str, Any], data_uri: str | Path, **extra: Any) -> dict[str, Any]:
    out = base["root"] / f"out-{abs(hash((str(data_uri), repr(extra))))}"
    return validate_data(
        {"data_uri": str(data_uri), "output_dir": str(out), "schema_uri": base["schema_uri"], **extra}
    )


def kinds(result: dict[str, Any]) -> set[tuple[str, str]]:
    return {(a["feature"], a["kind"]) for a in result["anomalies"]}


def clean_csv(base: dict[str, Any]) -> bytes:
    return (base["root"] / "data" / "version=0001" / "part-00000.csv").read_bytes()


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "version=0001"
    with pytest.raises(FileNotFoundError, match=r"data_uri '.*nope/version=0001' does not exist"):
        validate_data({"data_uri": str(missing), "output_dir": str(tmp_path / "out")})
    assert not any((tmp_path / "out").iterdir())


def test_directory_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "_SUCCESS").touch()
    (tmp_path / "v" / ".hidden.csv").write_text("a\n1\n")
    with pytest.raises(FileNotFoundError, match=r"without any \*\.csv or \*\.parquet file"):
        validate_data({"data_uri": str(tmp_path / "v"), "output_dir": str(tmp_path / "out")})


def test_hidden_files_and_success_marker_are_ignored(base: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "part-00000.csv").write_bytes(clean_csv(base))
    (tmp_path / "v" / ".part-00001.csv.tmp").write_bytes(os.urandom(100))
    (tmp_path / "v" / "_SUCCESS").touch()
    assert run(base, tmp_path / "v")["example_count"] == ROWS


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "part-00000.csv").write_bytes(b"")
    with pytest.raises(ValueError, match=r"part-00000.csv' .* is empty \(0 bytes\)"):
        validate_data({"data_uri": str(tmp_path), "output_dir": str(tmp_path / "out")})


def test_header_only(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "part-00000.csv").write_text("age,income,label\n")
    file = str(tmp_path / "v" / "part-00000.csv")
    # The message names the file, not only the folder.
    expected = f"data file '{file}' of '{tmp_path / 'v'}' holds a header but no rows"
    with pytest.raises(ValueError, match=re.escape(expected)):
        validate_data({"data_uri": str(tmp_path / "v"), "output_dir": str(tmp_path / "out")})
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ValueError, match=re.escape(f"data file '{file}' holds a header but no rows")):
        validate_data({"data_uri": file, "output_dir": str(tmp_path / "out")})
    (tmp_path / "v" / "part-00001.csv").write_text("age,income,label\n")
    with pytest.raises(ValueError, match=r"data files '.*part-00000.csv', '.*part-00001.csv' of .* hold a"):
        validate_data({"data_uri": str(tmp_path / "v"), "output_dir": str(tmp_path / "out")})


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "part-00000.parquet").write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=r"cannot read '.*part-00000.parquet' as parquet.*corrupt"):
        validate_data({"data_uri": str(tmp_path), "output_dir": str(tmp_path / "out")})


def test_csv_named_parquet(base: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "part-00000.parquet").write_bytes(clean_csv(base))
    with pytest.raises(ValueError, match="as parquet"):
        validate_data({"data_uri": str(tmp_path), "output_dir": str(tmp_path / "out")})


def test_format_parquet_on_csv(base: dict[str, Any], tmp_path: Path) -> None:
    version = base["root"] / "data" / "version=0001"
    with pytest.raises(FileNotFoundError, match=r"no \*\.parquet file"):
        validate_data({"data_uri": str(version), "format": "parquet", "output_dir": str(tmp_path / "a")})
    with pytest.raises(ValueError, match="as parquet"):
        validate_data(
            {
                "data_uri": str(version / "part-00000.csv"),
                "format": "parquet",
                "output_dir": str(tmp_path / "b"),
            }
        )


def test_parquet_read_as_csv(tmp_path: Path) -> None:
    generate_dataset({"root": str(tmp_path / "pq"), "rows": 200, "format": "parquet"})
    data_file = tmp_path / "pq" / "version=0001" / "part-00000.parquet"
    with pytest.raises(ValueError, match="as csv"):
        validate_data({"data_uri": str(data_file), "format": "csv", "output_dir": str(tmp_path / "o")})


def test_mixed_formats(base: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "part-00000.csv").write_bytes(clean_csv(base))
    (tmp_path / "part-00001.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match="mixes csv and parquet"):
        validate_data({"data_uri": str(tmp_path), "output_dir": str(tmp_path / "out")})


def test_missing_column(base: dict[str, Any]) -> None:
    result = run(base, base["root"] / "data" / "version=0002")
    assert ("balance", "SCHEMA_MISSING_COLUMN") in kinds(result)


def test_new_column(base: dict[str, Any], tmp_path: Path) -> None:
    lines = clean_csv(base).decode().splitlines()
    text = "\n".join([lines[0] + ",coupon"] + [f"{line},c{i % 4}" for i, line in enumerate(lines[1:])]) + "\n"
    (tmp_path / "part-00000.csv").write_text(text)
    result = run(base, tmp_path)
    assert ("coupon", "SCHEMA_NEW_COLUMN") in kinds(result)


def test_type_change(base: dict[str, Any]) -> None:
    result = run(base, base["root"] / "data" / "version=0003")
    assert ("age", "UNEXPECTED_DATA_TYPE") in kinds(result)
    assert all(a["severity"] == "ERROR" for a in result["anomalies"] if a["feature"] == "age")


def test_text_in_a_later_chunk_of_a_numeric_column(
    base: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = clean_csv(base).decode().splitlines()
    age = lines[0].split(",").index("age")
    rows = [line.split(",") for line in lines[1:]]
    rows[-1][age] = "n/a"  # only the last chunk: pyarrow guessed int64 from the first one
    rows[-2][age] = "41.5"
    (tmp_path / "part-00000.csv").write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    with caplog.at_level(logging.WARNING, logger="airflow_ml_provider.ml.validation"):
        result = run(base, tmp_path, chunk_rows=100)
    assert result["example_count"] == ROWS
    assert ("age", "UNEXPECTED_DATA_TYPE") in kinds(result)
    retyped = [r.getMessage() for r in caplog.records if "re-reading the file" in r.getMessage()]
    assert len(retyped) == 2, retyped  # int64 -> float64 ("41.5"), then -> string ("n/a")
    assert "'age'" in retyped[0] and "float64" in retyped[0] and "string" in retyped[1]


def test_later_chunks_widen_column_types(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """int -> float for "2.5"; an all-empty column in the first chunk -> float -> string."""
    text = "n,e,c\n" + "".join(f"{i},,a\n" for i in range(3000)) + "2.5,1.5,b\n2,text,b\n"
    (tmp_path / "part-00000.csv").write_text(text)
    with caplog.at_level(logging.WARNING, logger="airflow_ml_provider.ml.validation"):
        result = validate_data(
            {"data_uri": str(tmp_path), "output_dir": str(tmp_path / "out"), "chunk_rows": 200}
        )
    assert result["example_count"] == 3002
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = text_format.Parse(Path(result["artifacts"]["schema"]).read_text(), schema_pb2.Schema())
    types = {f.name: schema_pb2.FeatureType.Name(f.type) for f in schema.feature}
    assert types == {"n": "FLOAT", "e": "BYTES", "c": "BYTES"}
    assert sum("re-reading the file" in r.getMessage() for r in caplog.records) == 3


def test_null_spike(base: dict[str, Any]) -> None:
    result = run(base, base["root"] / "data" / "version=0004")
    found = kinds(result)
    assert ("income", "FEATURE_TYPE_LOW_FRACTION_PRESENT") in found
    assert ("region", "FEATURE_TYPE_LOW_FRACTION_PRESENT") in found


def test_null_spike_against_a_schema_inferred_with_some_nulls(base: dict[str, Any], tmp_path: Path) -> None:
    """TFDV leaves presence unpinned when the data had nulls; we pin it to the seen fraction - 0.1."""
    schema = tmp_path / "schema.pbtxt"
    version5 = base["root"] / "data" / "version=0005"
    validate_data({"data_uri": str(version5), "output_dir": str(tmp_path / "a"), "schema_uri": str(schema)})
    text = schema.read_text()
    block = text[text.index('name: "tenure_months"') :].split("feature {")[0]
    assert "min_fraction: 0.8" in block
    assert run({**base, "schema_uri": str(schema)}, version5)["anomalies"] == []
    csv = (version5 / "part-00000.csv").read_text().splitlines()
    tenure = csv[0].split(",").index("tenure_months")
    rows = [line.split(",") for line in csv[1:]]
    for row in rows[: ROWS // 2]:
        row[tenure] = ""
    (tmp_path / "spike.csv").write_text("\n".join([csv[0]] + [",".join(r) for r in rows]) + "\n")
    result = run({**base, "schema_uri": str(schema)}, tmp_path / "spike.csv")
    assert ("tenure_months", "FEATURE_TYPE_LOW_FRACTION_PRESENT") in kinds(result)


def test_nan_and_inf(tmp_path: Path) -> None:
    values = ["1.5", "nan", "inf", "-inf", "NaN", "2.0", "", "3.25"] * 100
    (tmp_path / "part-00000.csv").write_text(
        "x,y\n" + "".join(f"{v},{i % 3}\n" for i, v in enumerate(values))
    )
    first = validate_data({"data_uri": str(tmp_path), "output_dir": str(tmp_path / "a")})
    again = validate_data(
        {
            "data_uri": str(tmp_path),
            "output_dir": str(tmp_path / "b"),
            "previous_statistics_uri": first["artifacts"]["statistics"],
        }
    )
    assert first["example_count"] == again["example_count"] == 800
    assert Path(again["artifacts"]["report_html"]).is_file()


def test_million_distinct_categories(tmp_path: Path) -> None:
    import pyarrow as pa
    from pyarrow import csv as pcsv

    n = 1_000_000
    table = pa.table({"uid": [f"user-{i}" for i in range(n)], "x": pa.array(range(n), pa.int64())})
    pcsv.write_csv(table, tmp_path / "part-00000.csv")
    del table
    start = time.monotonic()
    result = validate_data({"data_uri": str(tmp_path), "output_dir": str(tmp_path / "out")})
    elapsed = time.monotonic() - start
    assert result["example_count"] == n
    assert elapsed < 20, elapsed
    from tensorflow_metadata.proto.v0 import statistics_pb2

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.ParseFromString(Path(result["artifacts"]["statistics"]).read_bytes())
    uid = next(f for f in stats.datasets[0].features if f.path.step[0] == "uid")
    assert uid.string_stats.unique > 0.95 * n  # a sketch estimate
    schema = Path(result["artifacts"]["schema"]).read_text()
    assert "string_domain" not in schema  # too many values for a domain


def test_schema_that_does_not_parse(base: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "schema.pbtxt"
    bad.write_text("feature { name: 'x' type: NOT_A_TYPE }\n")
    with pytest.raises(
        ValueError, match=r"schema file '.*schema.pbtxt' is not a valid TFDV schema text proto"
    ):
        run({**base, "schema_uri": str(bad)}, base["root"] / "data" / "version=0001")


def test_missing_previous_statistics(base: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "stats.pb"
    with pytest.raises(FileNotFoundError, match=r"previous_statistics_uri.*stats.pb' does not exist"):
        run(base, base["root"] / "data" / "version=0001", previous_statistics_uri=str(missing))
    with pytest.raises(FileNotFoundError, match=r"serving_statistics_uri"):
        run(base, base["root"] / "data" / "version=0001", serving_statistics_uri=str(missing))


def test_corrupt_previous_statistics(base: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "stats.pb"
    bad.write_bytes(b"\xff\xfe not a proto")
    with pytest.raises(ValueError, match="not a binary DatasetFeatureStatisticsList"):
        run(base, base["root"] / "data" / "version=0001", previous_statistics_uri=str(bad))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"data_uri": "x", "output_dir": "y", "bogus": 1}, r"unknown spec keys \['bogus'\]"),
        ({"output_dir": "y"}, "'data_uri' is required"),
        ({"data_uri": "x"}, "'output_dir' is required"),
        ({"data_uri": "x", "output_dir": "y", "format": "json"}, "'format' must be"),
        ({"data_uri": "x", "output_dir": "y", "engine": "spark"}, "'engine' must be one of"),
        ({"data_uri": "x", "output_dir": "y", "chunk_rows": 0}, "'chunk_rows' must be an int"),
        ({"data_uri": "x", "output_dir": "y", "drift": {"linf": 1}}, "'drift' must be a dict with keys"),
        ({"data_uri": "x", "output_dir": "y", "skew": {"numeric_jsd": -1}}, "thresholds must be numbers"),
    ],
)
def test_bad_spec(spec: dict[str, Any], match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        validate_data(spec)
