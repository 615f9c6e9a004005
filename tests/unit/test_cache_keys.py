"""Cache keys and fingerprints: what must change the key, and what must not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_ml_provider import cache

pytestmark = pytest.mark.unit


def _version(root: Path, rows: str = "a,b\n1,2\n") -> Path:
    root.mkdir(parents=True)
    (root / "part-0.csv").write_text(rows)
    (root / "_SUCCESS").touch()
    return root


def test_a_folder_fingerprint_follows_every_file(tmp_path: Path):
    version = _version(tmp_path / "v")
    before = cache.fingerprint(str(version))
    assert cache.fingerprint(f"file://{version}") == before
    (version / "part-0.csv").write_text("a,b\n1,3\n")  # same size, other content
    changed = cache.fingerprint(str(version))
    assert changed != before
    (version / "part-1.csv").write_text("a,b\n")
    assert cache.fingerprint(str(version)) not in (before, changed)


def test_large_files_are_fingerprinted_by_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cache, "CONTENT_DIGEST_MAX_BYTES", 4)
    version = _version(tmp_path / "v")
    before = cache.fingerprint(str(version))
    stat = (version / "part-0.csv").stat()
    os.utime(version / "part-0.csv", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cache.fingerprint(str(version)) != before


def test_missing_inputs_and_mlflow_uris(tmp_path: Path):
    assert cache.fingerprint(str(tmp_path / "nope")) == cache.MISSING
    assert cache.fingerprint(None) == cache.MISSING
    assert cache.fingerprint("models:/m-123") == "uri:models:/m-123"


def test_the_key_ignores_volatile_fields_and_follows_everything_else(tmp_path: Path):
    version = _version(tmp_path / "v")
    spec = {"data_uri": str(version), "engine": "in_memory", "output_dir": "/tmp/a"}

    def key(**changes: object) -> str:
        return cache.cache_key(
            "validate_data", {**spec, **changes}, inputs={"data_uri": str(version)}, volatile=["output_dir"]
        )

    base = key()
    assert key(output_dir="/tmp/b") == base
    assert key(engine="beam") != base
    assert (
        cache.cache_key("infer_schema", spec, inputs={"data_uri": str(version)}, volatile=["output_dir"])
        != base
    )
    other = _version(tmp_path / "w")  # same content elsewhere: another input, another key
    assert (
        cache.cache_key(
            "validate_data",
            {**spec, "data_uri": str(other)},
            inputs={"data_uri": str(other)},
            volatile=["output_dir"],
        )
        != base
    )
    copy_a = cache.cache_key("s", {}, inputs={"stats": str(version)}, content_only=["stats"])
    copy_b = cache.cache_key("s", {}, inputs={"stats": str(other)}, content_only=["stats"])
    assert copy_a == copy_b  # a fetched copy is keyed by its content


def test_user_code_is_keyed_by_its_source_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "user_code_for_cache_key.py"
    module.write_text("def run_fn(ctx):\n    return 1\n")
    first = cache.code_fingerprint("user_code_for_cache_key:run_fn")
    key = cache.cache_key("train_model", {}, code=["user_code_for_cache_key:run_fn"])
    module.write_text("def run_fn(ctx):\n    return 2\n")
    assert cache.code_fingerprint("user_code_for_cache_key:run_fn") not in (None, first)
    assert cache.cache_key("train_model", {}, code=["user_code_for_cache_key:run_fn"]) != key
    assert (
        cache.code_fingerprint("airflow_ml_provider.ml.training.demo:run_fn") is None
    )  # the version covers it


def test_the_provider_version_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch):
    key = cache.cache_key("validate_data", {})
    monkeypatch.setattr(cache, "__version__", "99.0")
    assert cache.cache_key("validate_data", {}) != key
