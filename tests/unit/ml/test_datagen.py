"""The demo data generator: layout, atomic writes, determinism, knobs and signal."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from airflow_ml_provider.ml.datagen import (
    COLUMNS,
    FEATURES,
    LABEL,
    NEW_CATEGORY,
    generate_dataset,
    read_version,
)

pytestmark = pytest.mark.unit


def _generate(root: Path, **spec: Any) -> dict[str, Any]:
    return generate_dataset({"root": str(root), **spec})


def _frames(result: dict[str, Any]) -> list[pd.DataFrame]:
    return [read_version(v["uri"]) for v in result["versions"]]


def _hidden_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_layout_success_marker_and_result_shape(tmp_path):
    result = _generate(tmp_path / "data", versions=[1, 3], rows=100)
    assert json.loads(json.dumps(result)) == result, "the result is JSON-able"

    root = tmp_path / "data"
    assert result["root"] == str(root)
    assert result["label"] == LABEL == "label"
    assert result["columns"] == COLUMNS == [*FEATURES, LABEL]
    assert sorted(p.name for p in root.iterdir()) == ["version=0001", "version=0003"]
    assert [v["version"] for v in result["versions"]] == ["0001", "0003"]
    for entry in result["versions"]:
        version_dir = Path(entry["uri"])
        assert version_dir.is_absolute() and version_dir.parent == root
        assert entry["rows"] == 100
        assert entry["files"] == ["part-00000.csv", "_SUCCESS"]
        assert sorted(p.name for p in version_dir.iterdir()) == ["_SUCCESS", "part-00000.csv"]
        assert (version_dir / "_SUCCESS").stat().st_size == 0
        assert entry["knobs"]["drift"] == 0.0 and entry["knobs"]["null_spike"] is None
    df = read_version(result["versions"][0]["uri"])
    assert list(df.columns) == COLUMNS
    assert len(df) == 100
    assert set(df[LABEL]) <= {0, 1} and set(df["is_active"]) <= {0, 1}
    assert df["age"].dtype.kind == "i" and df["income"].dtype.kind == "f"


def test_int_versions_and_file_uri_root(tmp_path):
    result = generate_dataset({"root": (tmp_path / "d").as_uri(), "versions": 3, "rows": 20})
    assert [v["version"] for v in result["versions"]] == ["0001", "0002", "0003"]
    assert all(Path(v["uri"]).is_dir() for v in result["versions"])
    assert len(read_version((tmp_path / "d" / "version=0002").as_uri())) == 20


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _generate(tmp_path / "a", versions=2, rows=300, seed=7, drift=0.5, null_spike={"age": 0.1})
    b = _generate(tmp_path / "b", versions=2, rows=300, seed=7, drift=0.5, null_spike={"age": 0.1})
    c = _generate(tmp_path / "c", versions=2, rows=300, seed=8, drift=0.5, null_spike={"age": 0.1})
    only_v2 = _generate(tmp_path / "d", versions=[2], rows=300, seed=7, drift=0.5, null_spike={"age": 0.1})

    def data(result: dict[str, Any], i: int) -> bytes:
        return (Path(result["versions"][i]["uri"]) / "part-00000.csv").read_bytes()

    assert data(a, 0) == data(b, 0) and data(a, 1) == data(b, 1)
    assert data(a, 0) != data(a, 1), "each version is a different sample"
    assert data(a, 0) != data(c, 0)
    assert data(only_v2, 0) == data(a, 1), "a version depends only on (seed, version)"


def test_existing_version_refused_without_overwrite(tmp_path):
    _generate(tmp_path, versions=[1], rows=50, seed=1)
    before = (tmp_path / "version=0001" / "part-00000.csv").read_bytes()

    with pytest.raises(ValueError, match=r"version=0001.*overwrite"):
        _generate(tmp_path, versions=[1, 2], rows=50, seed=2)
    assert not (tmp_path / "version=0002").exists(), "nothing is written when a version exists"
    assert (tmp_path / "version=0001" / "part-00000.csv").read_bytes() == before

    _generate(tmp_path, versions=[1], rows=50, seed=2, overwrite=True)
    assert (tmp_path / "version=0001" / "part-00000.csv").read_bytes() != before
    assert (tmp_path / "version=0001" / "_SUCCESS").exists()
    assert _hidden_entries(tmp_path) == [], "no temporary or old directories left behind"


def test_failed_write_leaves_no_version_and_no_temp_dir(tmp_path, monkeypatch):
    def broken_to_csv(self: pd.DataFrame, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        _generate(tmp_path, rows=10)
    assert list(tmp_path.iterdir()) == []


def test_read_version_refuses_incomplete_dir(tmp_path):
    result = _generate(tmp_path, rows=10)
    version_dir = Path(result["versions"][0]["uri"])
    (version_dir / "_SUCCESS").unlink()
    with pytest.raises(FileNotFoundError, match="_SUCCESS"):
        read_version(version_dir)
    assert len(read_version(version_dir, require_success=False)) == 10


def test_drift_moves_numeric_means_and_zero_drift_does_not(tmp_path):
    clean = _frames(_generate(tmp_path / "clean", versions=2, rows=4000))
    drifted = _frames(
        _generate(tmp_path / "drift", versions=2, rows=4000, knobs_per_version={"2": {"drift": 1.0}})
    )

    assert not clean[0].equals(clean[1]), "drift=0 still draws a fresh sample"
    assert abs(clean[1]["income"].mean() / clean[0]["income"].mean() - 1) < 0.05
    assert abs(clean[1]["age"].mean() - clean[0]["age"].mean()) < 1.0
    assert abs(clean[1]["balance"].mean() / clean[0]["balance"].mean() - 1) < 0.05

    assert drifted[1]["income"].mean() / drifted[0]["income"].mean() > 1.25
    assert drifted[1]["age"].mean() - drifted[0]["age"].mean() > 4
    assert list(drifted[1].columns) == COLUMNS, "drift keeps the schema"


def test_label_shift_changes_positive_rate(tmp_path):
    result = _generate(
        tmp_path,
        versions=3,
        rows=3000,
        knobs_per_version={"2": {"label_shift": 0.3}, "3": {"label_shift": -0.2}},
    )
    base, up, down = (df[LABEL].mean() for df in _frames(result))
    assert 0.2 < base < 0.4
    assert up - base > 0.22
    assert base - down > 0.14
    assert [v["positive_rate"] for v in result["versions"]] == pytest.approx([base, up, down], abs=1e-4)


@pytest.mark.parametrize("column", ["region", "channel"])
def test_new_category_adds_unseen_value(tmp_path, column):
    clean, broken = _frames(
        _generate(tmp_path, versions=2, rows=2000, knobs_per_version={"2": {"new_category": column}})
    )
    new_values = set(broken[column]) - set(clean[column])
    assert new_values == {NEW_CATEGORY[column]}
    assert 0.18 < (broken[column] == NEW_CATEGORY[column]).mean() < 0.32


def test_missing_column_drops_it(tmp_path):
    result = _generate(tmp_path, rows=50, missing_column="tenure_months")
    df = read_version(result["versions"][0]["uri"])
    assert "tenure_months" not in df.columns
    assert result["versions"][0]["columns"] == [c for c in COLUMNS if c != "tenure_months"]
    assert result["columns"] == COLUMNS


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
@pytest.mark.parametrize(("column", "pattern"), [("income", r"^\d+\.\dk$"), ("age", r"^\d+y$")])
def test_type_change_makes_column_text(tmp_path, fmt, column, pattern):
    clean, changed = _frames(
        _generate(
            tmp_path, versions=2, rows=1000, format=fmt, knobs_per_version={"2": {"type_change": column}}
        )
    )
    assert pd.api.types.is_numeric_dtype(clean[column])
    assert not pd.api.types.is_numeric_dtype(changed[column])
    with pytest.raises((ValueError, TypeError)):
        pd.to_numeric(changed[column])
    values = changed[column]
    assert 0.02 < (values == "n/a").mean() < 0.09
    assert values[values != "n/a"].str.match(pattern).all()


def test_null_spike_fraction(tmp_path):
    spike = {"balance": 0.3, "region": 0.1, "num_products": 0.5}
    df = read_version(_generate(tmp_path, rows=4000, null_spike=spike)["versions"][0]["uri"])
    for column, fraction in spike.items():
        assert df[column].isna().mean() == pytest.approx(fraction, abs=0.03), column
    assert df["age"].notna().all() and df[LABEL].notna().all()


def test_knobs_per_version_clean_drifted_then_schema_break(tmp_path):
    result = _generate(
        tmp_path,
        versions=3,
        rows=500,
        drift=0.0,
        knobs_per_version={"2": {"drift": 1.5}, "3": {"drift": 1.5, "missing_column": "region"}},
    )
    knobs = [v["knobs"] for v in result["versions"]]
    assert [k["drift"] for k in knobs] == [0.0, 1.5, 1.5]
    assert [k["missing_column"] for k in knobs] == [None, None, "region"]
    v1, v2, v3 = _frames(result)
    assert "region" in v1.columns and "region" in v2.columns and "region" not in v3.columns
    assert v2["income"].mean() > 1.3 * v1["income"].mean()


def test_features_carry_signal_for_a_logistic_model(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    df = read_version(_generate(tmp_path, rows=5000, seed=3)["versions"][0]["uri"])
    categorical = [name for name, kind in FEATURES.items() if kind == "categorical"]
    x = pd.get_dummies(df[list(FEATURES)], columns=categorical).astype(float).to_numpy()
    y = df[LABEL].to_numpy()
    split = 3500
    scaler = StandardScaler().fit(x[:split])
    model = LogisticRegression(max_iter=1000).fit(scaler.transform(x[:split]), y[:split])
    auc = roc_auc_score(y[split:], model.predict_proba(scaler.transform(x[split:]))[:, 1])
    assert auc > 0.7


def test_parquet_round_trip_matches_csv(tmp_path):
    spec = {"rows": 300, "seed": 5, "null_spike": {"age": 0.2}}
    parquet = _generate(tmp_path / "p", format="parquet", **spec)["versions"][0]
    csv = _generate(tmp_path / "c", **spec)["versions"][0]
    assert parquet["files"] == ["part-00000.parquet", "_SUCCESS"]
    from_parquet, from_csv = read_version(parquet["uri"]), read_version(csv["uri"])
    assert str(from_parquet["age"].dtype) == "Int64", "nullable ints keep their type in parquet"
    pd.testing.assert_frame_equal(from_parquet, from_csv, check_dtype=False)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rows", 0),
        ("rows", "many"),
        ("seed", -1),
        ("format", "json"),
        ("versions", []),
        ("versions", [1, 1]),
        ("versions", 0),
        ("versions", [10_000]),
        ("drift", -0.1),
        ("drift", "high"),
        ("label_shift", 0.6),
        ("new_category", "age"),
        ("missing_column", "label"),
        ("missing_column", "nope"),
        ("type_change", "region"),
        ("null_spike", {"age": 1.5}),
        ("null_spike", {"nope": 0.1}),
        ("null_spike", [0.1]),
        ("knobs_per_version", {"7": {"drift": 1.0}}),
        ("knobs_per_version", {"1": {"rows": 5}}),
        ("knobs_per_version", {"1": {"label_shift": 2}}),
        ("root", "s3://bucket/data"),
    ],
)
def test_bad_values_raise_value_error_naming_the_key(tmp_path, key, value):
    spec: dict[str, Any] = {"root": str(tmp_path / "x"), "rows": 10, key: value}
    expected = "label_shift" if key == "knobs_per_version" and value == {"1": {"label_shift": 2}} else key
    with pytest.raises(ValueError, match=expected):
        generate_dataset(spec)
    assert not (tmp_path / "x").exists(), "validation happens before anything is written"


def test_missing_root_and_unknown_key_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="root"):
        generate_dataset({"rows": 10})
    with pytest.raises(ValueError, match="colour"):
        generate_dataset({"root": str(tmp_path), "colour": "blue"})


def test_no_temporary_directories_left(tmp_path):
    _generate(tmp_path, versions=3, rows=20, format="parquet")
    assert _hidden_entries(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["version=0001", "version=0002", "version=0003"]


def test_null_spike_and_type_change_on_the_same_column(tmp_path):
    spec = {"rows": 500, "null_spike": {"is_active": 0.4}, "type_change": "is_active"}
    df = read_version(_generate(tmp_path, format="parquet", **spec)["versions"][0]["uri"])
    assert set(df["is_active"]) == {"yes", "no", "n/a"}
    assert (df["is_active"] == "n/a").mean() > 0.35


def test_extra_features_add_alternating_numeric_and_categorical_columns(tmp_path):
    result = _generate(tmp_path, versions=2, rows=3000, seed=4, extra_features=11)
    df = read_version(result["versions"][0]["uri"])
    extra = [f"num_{i:02d}" for i in range(6)] + [f"cat_{i:02d}" for i in range(5)]
    assert df.shape == (3000, 20)
    assert sorted(df.columns[8:19]) == sorted(extra)
    assert list(df.columns[:8]) == list(FEATURES) and df.columns[-1] == LABEL
    assert list(df.columns[8:12]) == ["num_00", "cat_00", "num_01", "cat_01"]
    assert result["columns"] == list(df.columns) == result["versions"][0]["columns"]
    assert result["features"]["num_05"] == "numeric" and result["features"]["cat_04"] == "categorical"
    assert len(result["features"]) == 19
    for i in range(6):
        column = df[f"num_{i:02d}"]
        assert column.dtype.kind == "f" and abs(column.mean()) < 0.15 and 0.9 < column.std() < 1.1
    for i in range(5):
        values = df[f"cat_{i:02d}"]
        assert values.dtype == object and 5 <= values.nunique() <= 10
    assert df["num_00"].corr(df[LABEL]) > 0.05, "num_00 leans with the label"

    plain = read_version(_generate(tmp_path / "plain", versions=1, rows=3000, seed=4)["versions"][0]["uri"])
    pd.testing.assert_frame_equal(df[COLUMNS], plain)  # the standard columns do not change


def test_extra_features_deterministic_and_moved_by_drift(tmp_path, monkeypatch):
    import airflow_ml_provider.ml.datagen as datagen

    monkeypatch.setattr(datagen, "WRITE_CHUNK_ROWS", 700)  # several blocks, appended to one CSV
    spec: dict[str, Any] = {"versions": 2, "rows": 2000, "seed": 9, "extra_features": 5}
    a = _generate(tmp_path / "a", **spec, knobs_per_version={"2": {"drift": 2.0}})
    b = _generate(tmp_path / "b", **spec, knobs_per_version={"2": {"drift": 2.0}})
    c = _generate(tmp_path / "c", **{**spec, "seed": 10})

    def data(result: dict[str, Any], i: int) -> bytes:
        return (Path(result["versions"][i]["uri"]) / "part-00000.csv").read_bytes()

    assert data(a, 0) == data(b, 0) and data(a, 1) == data(b, 1)
    assert data(a, 0) != data(c, 0)
    clean, drifted = _frames(a)
    assert len(clean) == 2000 and clean.columns.tolist().count("label") == 1
    assert drifted["num_01"].mean() - clean["num_01"].mean() > 0.35
    parquet = _generate(tmp_path / "p", format="parquet", **spec)
    pd.testing.assert_frame_equal(_frames(parquet)[0], clean, check_dtype=False)


@pytest.mark.parametrize("value", [-1, 201, 2.5, "3", True, None])
def test_extra_features_bad_values_raise(tmp_path, value):
    with pytest.raises(ValueError, match="extra_features"):
        generate_dataset({"root": str(tmp_path / "x"), "rows": 10, "extra_features": value})
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="knobs_per_version"):
        generate_dataset(
            {"root": str(tmp_path / "x"), "rows": 10, "knobs_per_version": {"1": {"extra_features": 2}}}
        )
