"""validate_data / infer_schema on generated demo data, running real TFDV in-process."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from airflow_ml_provider.ml.datagen import generate_dataset, read_version
from airflow_ml_provider.ml.registry import resolve_step
from airflow_ml_provider.ml.validation import infer_schema, validate_data

pytestmark = pytest.mark.unit

ROWS = 3000
DRIFTED = ["age", "income", "balance", "tenure_months"]
VERSIONS = {
    1: {},
    2: {},  # a resample of version 1's distribution
    3: {"drift": 0.5},
    4: {"drift": 1.0},
    5: {"new_category": "region"},
    6: {"label_shift": 0.3},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Five demo versions plus a first validate_data run that bootstraps the schema."""
    root = tmp_path_factory.mktemp("validation")
    generate_dataset(
        {
            "root": str(root / "data"),
            "versions": len(VERSIONS),
            "rows": ROWS,
            "knobs_per_version": {str(v): k for v, k in VERSIONS.items() if k},
        }
    )
    schema_uri = str(root / "schema" / "schema.pbtxt")
    first = validate_data(
        {"data_uri": version(root, 1), "output_dir": str(root / "out1"), "schema_uri": schema_uri}
    )
    return {"root": root, "schema_uri": schema_uri, "first": first}


def version(root: Path, v: int) -> str:
    return str(root / "data" / f"version={v:04d}")


def run_against_first(data: dict[str, Any], v: int, **extra: Any) -> dict[str, Any]:
    root = data["root"]
    return validate_data(
        {
            "data_uri": version(root, v),
            "output_dir": str(root / f"out{v}-{len(extra)}"),
            "schema_uri": data["schema_uri"],
            "previous_statistics_uri": data["first"]["artifacts"]["statistics"],
            **extra,
        }
    )


def kinds(result: dict[str, Any]) -> set[tuple[str, str]]:
    return {(a["feature"], a["kind"]) for a in result["anomalies"]}


def test_registered_in_builtin_steps() -> None:
    assert resolve_step("validate_data") is validate_data
    assert resolve_step("infer_schema") is infer_schema


def test_first_run_bootstraps_the_schema(data: dict[str, Any]) -> None:
    first = data["first"]
    assert first["schema_created"] is True
    assert Path(data["schema_uri"]).is_file()
    assert first["example_count"] == ROWS
    assert first["feature_count"] == 9
    assert first["anomalies"] == []
    assert first["anomaly_count"] == 0
    assert first["drift"] == {}
    assert first["format"] == "csv"
    metrics = first["mlflow"]["metrics"]
    assert metrics["example_count"] == ROWS and metrics["anomaly_count"] == 0
    for key in ("statistics", "anomalies_text", "anomalies_json", "schema", "report_html"):
        assert Path(first["artifacts"][key]).is_file(), key
    assert not [p for p in os.listdir(Path(first["artifacts"]["statistics"]).parent) if p.startswith(".")]


def test_second_run_validates_against_stored_schema(data: dict[str, Any]) -> None:
    before = Path(data["schema_uri"]).read_text()
    result = run_against_first(data, 2)
    assert result["schema_created"] is False
    assert Path(data["schema_uri"]).read_text() == before
    assert result["anomalies"] == [], result["anomalies"]
    # a resample scores under the default thresholds on every feature
    assert set(result["drift"]) >= set(DRIFTED) | {"region", "channel"}
    assert all(score < 0.03 for score in result["drift"].values()), result["drift"]
    assert result["mlflow"]["metrics"]["drift.income"] == result["drift"]["income"]
    plots = result["artifacts"]["plots"]
    assert len(plots) == 9 and all(Path(p).is_file() for p in plots)


def test_half_drift_flags_income(data: dict[str, Any]) -> None:
    result = run_against_first(data, 3)
    assert ("income", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH") in kinds(result), result["drift"]
    assert result["drift"]["income"] > 0.03
    assert all(a["kind"].startswith("COMPARATOR_") for a in result["anomalies"])


def test_full_drift_flags_every_drifted_numeric_feature(data: dict[str, Any]) -> None:
    result = run_against_first(data, 4)
    flagged = {f for f, kind in kinds(result) if kind == "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH"}
    assert flagged >= set(DRIFTED), result["drift"]
    assert {"region", "channel"}.isdisjoint(flagged)
    assert all(a["severity"] in ("ERROR", "WARNING") for a in result["anomalies"])


def test_threshold_overrides(data: dict[str, Any]) -> None:
    result = run_against_first(data, 4, drift={"numeric_jsd": 0.5, "features": {"income": 0.001}}, skew=None)
    flagged = {f for f, _ in kinds(result)}
    assert flagged == {"income"}


def test_new_category_is_an_anomaly(data: dict[str, Any]) -> None:
    result = run_against_first(data, 5)
    found = kinds(result)
    assert ("region", "ENUM_TYPE_UNEXPECTED_STRING_VALUES") in found
    assert ("region", "COMPARATOR_L_INFTY_HIGH") in found
    assert result["drift"]["region"] > 0.2


def test_label_shift_is_drift_on_the_label(data: dict[str, Any]) -> None:
    """TFDV infers a bool_domain for the 0/1 label; it still gets a JSD comparator, not L-inf."""
    result = run_against_first(data, 6)
    assert ("label", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH") in kinds(result), result["drift"]
    assert result["drift"]["label"] > 0.03
    assert result["drift"]["is_active"] < 0.01


def test_memory_filesystem(data: dict[str, Any], tmp_path: Path) -> None:
    import fsspec

    memory = fsspec.filesystem("memory")
    source = Path(version(data["root"], 1)) / "part-00000.csv"
    memory.pipe("/validation-test/v1/part-00000.csv", source.read_bytes())
    try:
        result = validate_data(
            {
                "data_uri": "memory://validation-test/v1",
                "output_dir": str(tmp_path / "out"),
                "schema_uri": "memory://validation-test/schema.pbtxt",
            }
        )
        assert result["example_count"] == ROWS and result["schema_created"] is True
        assert memory.isfile("/validation-test/schema.pbtxt")
    finally:
        memory.rm("/validation-test", recursive=True)


def test_skew_against_serving_statistics(data: dict[str, Any]) -> None:
    root = data["root"]
    result = validate_data(
        {
            "data_uri": version(root, 4),
            "output_dir": str(root / "skew"),
            "serving_statistics_uri": data["first"]["artifacts"]["statistics"],
            "skew": {"numeric_jsd": 0.03},
        }
    )
    assert result["schema_uri"] is None and result["schema_created"] is False
    assert set(DRIFTED) <= {f for f, k in kinds(result) if k.startswith("COMPARATOR")}
    assert result["skew"]["income"] > 0.03 and result["drift"] == {}
    assert result["mlflow"]["metrics"]["skew.income"] == result["skew"]["income"]
    assert result["artifacts"]["plots"] == []


def _serving_data(root: Path, v: int, target: Path) -> str:
    """Version ``v`` as serving data: the same rows without the label."""
    target.mkdir(parents=True, exist_ok=True)
    read_version(version(root, v)).drop(columns=["label"]).to_csv(target / "part-00000.csv", index=False)
    return str(target)


def test_serving_data_is_checked_for_skew_against_training_statistics(
    data: dict[str, Any], tmp_path: Path
) -> None:
    root = data["root"]
    training_statistics = data["first"]["artifacts"]["statistics"]
    serving = validate_data(
        {
            "data_uri": _serving_data(root, 4, tmp_path / "serving"),
            "output_dir": str(tmp_path / "out-serving"),
            "schema_uri": data["schema_uri"],  # inferred from training data: it has the label
            "data_role": "serving",
            "training_statistics_uri": training_statistics,
        }
    )
    assert serving["data_role"] == "serving"
    # The label is missing from serving data, as expected there (the SERVING environment).
    assert "label" not in {a["feature"] for a in serving["anomalies"]}
    assert set(DRIFTED) <= {f for f, k in kinds(serving) if k.startswith("COMPARATOR")}
    assert serving["drift"] == {} and serving["skew"]["income"] > 0.03

    # TFDV's own orientation (training data validated, serving statistics as the other side)
    # scores the same: the skew measures are symmetric.
    training = validate_data(
        {
            "data_uri": version(root, 1),
            "output_dir": str(tmp_path / "out-training"),
            "schema_uri": data["schema_uri"],
            "serving_statistics_uri": serving["artifacts"]["statistics"],
        }
    )
    assert (
        set(serving["skew"])
        == set(training["skew"])
        == set(DRIFTED)
        | {
            "channel",
            "is_active",
            "num_products",
            "region",
        }
    )
    for feature, score in training["skew"].items():
        assert serving["skew"][feature] == pytest.approx(score, abs=1e-12), feature


def test_serving_data_bootstraps_no_schema(data: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "schema" / "schema.pbtxt"
    with pytest.raises(FileNotFoundError, match="a schema is not inferred from serving data"):
        validate_data(
            {
                "data_uri": _serving_data(data["root"], 2, tmp_path / "serving"),
                "output_dir": str(tmp_path / "out"),
                "schema_uri": str(missing),
                "data_role": "serving",
            }
        )
    assert not missing.exists()


def test_report_is_self_contained(data: dict[str, Any]) -> None:
    result = run_against_first(data, 5)
    page = Path(result["artifacts"]["report_html"]).read_text()
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    assert page.count("data:image/png;base64,") == 9
    assert "ENUM_TYPE_UNEXPECTED_STRING_VALUES" in page
    assert "overseas" in page


def test_report_escapes_feature_names(tmp_path: Path) -> None:
    data_file = tmp_path / "odd.csv"
    data_file.write_text("<b>x</b>,y\n" + "".join(f"v{i % 3},{i}\n" for i in range(50)))
    result = validate_data({"data_uri": f"file://{data_file}", "output_dir": str(tmp_path / "out")})
    page = Path(result["artifacts"]["report_html"]).read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<b>x</b>" not in page
    assert result["example_count"] == 50


def test_parquet_input(tmp_path: Path) -> None:
    generate_dataset({"root": str(tmp_path / "pq"), "versions": 1, "rows": 2000, "format": "parquet"})
    result = validate_data(
        {"data_uri": str(tmp_path / "pq" / "version=0001"), "output_dir": str(tmp_path / "out")}
    )
    assert result["format"] == "parquet"
    assert result["example_count"] == 2000
    assert result["anomalies"] == []


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_chunked_statistics_equal_one_shot(tmp_path: Path, fmt: str) -> None:
    import tensorflow_data_validation as tfdv

    from airflow_ml_provider.ml.validation.io import find_data_files
    from airflow_ml_provider.ml.validation.statistics import compute_statistics

    generate_dataset(
        {"root": str(tmp_path), "versions": 1, "rows": 3000, "format": fmt, "null_spike": {"income": 0.2}}
    )
    uri = str(tmp_path / "version=0001")
    chunked = compute_statistics(find_data_files(uri, None), chunk_rows=500).datasets[0]
    whole = tfdv.generate_statistics_from_dataframe(read_version(uri)).datasets[0]
    assert chunked.num_examples == whole.num_examples == 3000
    expected = {f.path.step[0]: f for f in whole.features}
    assert {f.path.step[0] for f in chunked.features} == set(expected)
    for feature in chunked.features:
        other = expected[feature.path.step[0]]
        if other.HasField("num_stats"):
            a, b = feature.num_stats, other.num_stats
            assert a.common_stats.num_non_missing == b.common_stats.num_non_missing
            for field in ("mean", "std_dev", "min", "max", "num_zeros"):
                assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-9, abs=1e-9), field
        else:
            a, b = feature.string_stats, other.string_stats
            assert a.common_stats.num_non_missing == b.common_stats.num_non_missing
            assert a.unique == b.unique
            assert [v.value for v in a.top_values] == [v.value for v in b.top_values]


def test_rerun_into_the_same_output_dir_drops_stale_plots(data: dict[str, Any], tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    with_plots = validate_data(
        {
            "data_uri": version(data["root"], 2),
            "output_dir": out,
            "previous_statistics_uri": data["first"]["artifacts"]["statistics"],
        }
    )
    assert with_plots["artifacts"]["plots"] and (tmp_path / "out" / "plots").is_dir()
    without = validate_data({"data_uri": version(data["root"], 3), "output_dir": out})
    assert without["artifacts"]["plots"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "anomalies.json",
        "anomalies.pbtxt",
        "report.html",
        "schema.pbtxt",
        "statistics.pb",
    ]


def test_failed_run_leaves_no_artifacts(
    data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_ml_provider.ml.validation import report

    def boom(*args: Any, **kwargs: Any) -> list[str]:
        raise RuntimeError("report failed")

    monkeypatch.setattr(report, "write_report", boom)
    out = tmp_path / "out"
    schema = tmp_path / "schema.pbtxt"
    with pytest.raises(RuntimeError, match="report failed"):
        validate_data(
            {"data_uri": version(data["root"], 2), "output_dir": str(out), "schema_uri": str(schema)}
        )
    assert list(out.iterdir()) == []
    assert not schema.exists()


def test_bootstrap_logs_a_warning(
    data: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    schema = tmp_path / "new" / "schema.pbtxt"
    with caplog.at_level(logging.WARNING, logger="airflow_ml_provider.ml.validation"):
        result = validate_data(
            {
                "data_uri": version(data["root"], 2),
                "output_dir": str(tmp_path / "o"),
                "schema_uri": str(schema),
            }
        )
    assert result["schema_created"] is True and schema.is_file()
    assert any(
        "No schema at" in r.getMessage() and "later runs validate against it" in r.getMessage()
        for r in caplog.records
    )
    assert not [p for p in os.listdir(schema.parent) if p.startswith(".")]


def test_infer_schema(data: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "s" / "schema.pbtxt"
    result = infer_schema(
        {"data_uri": version(data["root"], 1), "schema_uri": str(target), "chunk_rows": 700}
    )
    assert result["schema_uri"] == str(target) and target.is_file()
    assert result["feature_count"] == 9 and result["example_count"] == ROWS
    assert result["features"]["age"] == "INT"
    assert result["features"]["income"] == "FLOAT"
    assert result["features"]["region"] == "BYTES"
    with pytest.raises(ValueError, match="already exists.*overwrite"):
        infer_schema({"data_uri": version(data["root"], 1), "schema_uri": str(target)})
    again = infer_schema({"data_uri": version(data["root"], 2), "schema_uri": str(target), "overwrite": True})
    assert again["feature_count"] == 9
    checked = validate_data(
        {"data_uri": version(data["root"], 5), "output_dir": str(tmp_path / "o"), "schema_uri": str(target)}
    )
    assert ("region", "ENUM_TYPE_UNEXPECTED_STRING_VALUES") in kinds(checked)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_beam_engine_direct_runner(tmp_path: Path, fmt: str) -> None:
    generate_dataset({"root": str(tmp_path / "d"), "versions": 1, "rows": 200, "format": fmt})
    result = validate_data(
        {
            "data_uri": str(tmp_path / "d" / "version=0001"),
            "output_dir": str(tmp_path / "out"),
            "engine": "beam",
            "beam_pipeline_args": ["--runner=DirectRunner"],
        }
    )
    assert result["example_count"] == 200
    assert result["feature_count"] == 9
    assert result["engine"] == "beam" and result["format"] == fmt
    assert sorted(os.listdir(tmp_path / "out")) == [
        "anomalies.json",
        "anomalies.pbtxt",
        "report.html",
        "schema.pbtxt",
        "statistics.pb",
    ]
