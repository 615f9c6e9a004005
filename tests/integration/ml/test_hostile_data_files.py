"""
Hostile data files through validation's reader (real TFDV, real pyarrow): any bytes, in a CSV or
a Parquet file, give statistics or a ValueError that names the file. Never a crash with a stack
trace from pyarrow or TFDV, never a silent pass over an unreadable file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

CSV_HEADER = b"age,income,region,label\n"
csv_bodies = st.one_of(
    st.binary(max_size=400),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=400).map(str.encode),
    st.lists(
        st.tuples(
            st.integers(-5, 200),
            st.floats(allow_nan=True),
            st.text(max_size=5),
            st.sampled_from(["0", "1", "x", ""]),
        ),
        max_size=20,
    ).map(lambda rows: CSV_HEADER + "".join(f"{a},{b},{c!r},{d}\n" for a, b, c, d in rows).encode()),
)


def _read(folder: Path, name: str, content: bytes, fmt: str) -> Any:
    from airflow_ml_provider.ml.validation.io import find_data_files
    from airflow_ml_provider.ml.validation.statistics import compute_statistics

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    try:
        stats = compute_statistics(find_data_files(str(folder), fmt), chunk_rows=8)
    except ValueError as err:
        assert str(path) in str(err) or str(folder) in str(err), str(err)
        return None
    return stats


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=csv_bodies)
@example(body=CSV_HEADER + b"41,50000.5,west,1\n29,,east,0\n")
@example(body=CSV_HEADER + b"41,50000.5,west,1\n29,abc,east,0\n")  # a later row of another type
@example(body=b"\xff\xfe\x00garbage")
@example(body=b"")
def test_a_csv_file_gives_statistics_or_an_error_naming_it(body: bytes, tmp_path_factory: Any) -> None:
    folder = tmp_path_factory.mktemp("csv") / "version=0001"
    stats = _read(folder, "part-0.csv", body, "csv")
    if stats is not None:
        assert len(stats.datasets) == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=400))
@example(body=b"PAR1" + b"\x00" * 64 + b"PAR1")  # the magic bytes around nothing valid
def test_a_corrupt_parquet_file_is_refused_naming_it(body: bytes, tmp_path_factory: Any) -> None:
    folder = tmp_path_factory.mktemp("parquet") / "version=0001"
    assert _read(folder, "part-0.parquet", body, "parquet") is None
