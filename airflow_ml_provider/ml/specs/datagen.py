"""The spec of ``generate_dataset`` (the demo data generator) and the columns it knows."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from airflow_ml_provider.ml.specs._base import StepSpec, derived, is_int, is_number

LABEL = "label"
FEATURES: dict[str, str] = {
    "age": "numeric",
    "income": "numeric",
    "tenure_months": "numeric",
    "balance": "numeric",
    "num_products": "numeric",
    "region": "categorical",
    "channel": "categorical",
    "is_active": "numeric",
}
FORMATS = ("csv", "parquet")
MAX_VERSION = 9999
MAX_ROWS = 10_000_000
MAX_DRIFT = 10.0
MAX_EXTRA_FEATURES = 200
KNOB_DEFAULTS: dict[str, Any] = {
    "drift": 0.0,
    "label_shift": 0.0,
    "new_category": None,
    "missing_column": None,
    "type_change": None,
    "null_spike": None,
}
STEP = "generate_dataset"
_WHERE = f"{STEP}: spec key"


def _spec_error(key: str, message: str, where: str = _WHERE) -> ValueError:
    return ValueError(f"{where} {key!r}: {message}")


def local_path(uri: Any, key: str = "root", where: str = _WHERE) -> Path:
    """
    Turn a plain path or a ``file://`` URI into an absolute local path.

    :param uri: the path or URI.
    :param key: the spec key (or argument) named in error messages.
    :param where: the prefix of error messages.
    """
    if not isinstance(uri, str | os.PathLike) or not str(uri):
        raise _spec_error(key, f"must be a non-empty local path or file:// URI, got {uri!r}.", where)
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise _spec_error(key, f"file:// URI with a remote host is not supported: {text!r}.", where)
        text = unquote(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive
        raise _spec_error(key, f"only local paths and file:// URIs are supported, got {text!r}.", where)
    return Path(os.path.abspath(os.path.expanduser(text)))


def _parse_versions(value: Any) -> tuple[int, ...]:
    if is_int(value):
        if not 1 <= value <= MAX_VERSION:
            raise _spec_error("versions", f"an int N means versions 1..N; N must be in 1..{MAX_VERSION}.")
        return tuple(range(1, value + 1))
    if not isinstance(value, list) or not value:
        raise _spec_error("versions", f"must be a non-empty list of ints or an int N, got {value!r}.")
    if not all(is_int(v) and 1 <= v <= MAX_VERSION for v in value):
        raise _spec_error("versions", f"every version must be an int in 1..{MAX_VERSION}, got {value!r}.")
    if len(set(value)) != len(value):
        raise _spec_error("versions", f"versions must be unique, got {value!r}.")
    return tuple(value)


def _in_range(value: Any, low: float, high: float) -> bool:
    return is_number(value) and low <= value <= high


def _check_column(key: str, value: Any, kinds: tuple[str, ...]) -> None:
    allowed = sorted(name for name, kind in FEATURES.items() if kind in kinds)
    if value is not None and value not in allowed:
        raise _spec_error(key, f"must be null or one of {allowed}, got {value!r}.")


def _check_null_spike(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise _spec_error("null_spike", f"must be null or a dict {{column: fraction}}, got {value!r}.")
    for column, fraction in value.items():
        _check_column("null_spike", column, ("numeric", "categorical"))
        if not _in_range(fraction, 0, 1):
            raise _spec_error("null_spike", f"fraction for {column!r} must be in [0, 1], got {fraction!r}.")


def _check_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    """Validate one version's knobs (:param knobs: all KNOB_DEFAULTS keys); return plain types."""
    drift, shift = knobs["drift"], knobs["label_shift"]
    if not _in_range(drift, 0, MAX_DRIFT):
        raise _spec_error("drift", f"must be a number in [0, {MAX_DRIFT}], got {drift!r}.")
    if not _in_range(shift, -0.5, 0.5):
        raise _spec_error("label_shift", f"must be a number in [-0.5, 0.5], got {shift!r}.")
    _check_column("new_category", knobs["new_category"], ("categorical",))
    _check_column("missing_column", knobs["missing_column"], ("numeric", "categorical"))
    _check_column("type_change", knobs["type_change"], ("numeric",))
    _check_null_spike(knobs["null_spike"])
    spike = knobs["null_spike"]
    return {
        **knobs,
        "drift": float(drift),
        "label_shift": float(shift),
        "null_spike": {str(k): float(v) for k, v in spike.items()} if spike else None,
    }


def _overrides(spec: dict[str, Any], versions: tuple[int, ...]) -> dict[int, dict[str, Any]]:
    """``knobs_per_version`` by version number, checked against the versions written."""
    overrides = spec.get("knobs_per_version") or {}
    if not isinstance(overrides, dict):
        raise _spec_error("knobs_per_version", f"must be a dict version -> knobs, got {overrides!r}.")
    by_version: dict[int, dict[str, Any]] = {}
    for raw_version, knobs in overrides.items():
        version = int(raw_version) if str(raw_version).isdigit() else -1
        if version not in versions:
            raise _spec_error(
                "knobs_per_version", f"{raw_version!r} is not a version written {list(versions)}."
            )
        if not isinstance(knobs, dict) or set(knobs) - set(KNOB_DEFAULTS):
            raise _spec_error(
                "knobs_per_version",
                f"version {raw_version!r}: want a dict with keys from {sorted(KNOB_DEFAULTS)}, got {knobs!r}.",
            )
        by_version[version] = dict(knobs)
    return by_version


def _settings(spec: dict[str, Any]) -> tuple[int, int, str, int]:
    """``rows``, ``seed``, ``format`` and ``extra_features``, checked."""
    rows, seed, fmt = spec.get("rows", 2000), spec.get("seed", 0), spec.get("format", "csv")
    if not is_int(rows) or not 1 <= rows <= MAX_ROWS:
        raise _spec_error("rows", f"must be an int in 1..{MAX_ROWS}, got {rows!r}.")
    if not is_int(seed) or seed < 0:
        raise _spec_error("seed", f"must be an int >= 0, got {seed!r}.")
    if fmt not in FORMATS:
        raise _spec_error("format", f"must be one of {list(FORMATS)}, got {fmt!r}.")
    extra = spec.get("extra_features", 0)
    if not is_int(extra) or not 0 <= extra <= MAX_EXTRA_FEATURES:
        raise _spec_error("extra_features", f"must be an int in 0..{MAX_EXTRA_FEATURES}, got {extra!r}.")
    return rows, seed, fmt, extra


@dataclass(frozen=True, kw_only=True)
class GenerateDatasetSpec(StepSpec):
    """
    The spec of ``generate_dataset``: versions of the demo binary-classification dataset.

    Unknown keys are an error. The knobs (``drift`` to ``null_spike``) apply to every version;
    ``knobs_per_version`` replaces some of them for some versions.

    :param root: local directory path or ``file://`` URI (required; parsed to an absolute path);
        versions go to ``<root>/version=NNNN/`` (``part-00000.<format>`` then an empty ``_SUCCESS``).
    :param versions: list of ints in 1..9999, or an int N meaning 1..N. Default ``[1]``.
    :param rows: rows per version, int in 1..10,000,000. Default 2000.
    :param seed: int >= 0. Default 0. Version ``v`` is drawn from the seed sequence ``(seed, v)``.
    :param format: ``"csv"`` (default) or ``"parquet"``.
    :param overwrite: replace existing versions. Default false: an existing version is an error,
        checked for every version before anything is written.
    :param extra_features: int in 0..200, default 0 (top level only, the same for every version).
        Adds that many noise features between the standard ones and the label, alternating
        ``num_00`` (float, normal, 4 decimals; every third leans slightly with the label;
        ``drift`` moves them by 0.25 standard deviation per unit) and ``cat_00`` (one of 10
        words, Zipf-like frequencies). ``extra_features=11`` gives 8 + 11 + label = 20 columns.
        They are drawn from their own seed sequence ``(seed, v, 1)``, so the standard columns do
        not change with this knob.
    :param drift: float in [0, 10], default 0. Shifts numeric distributions proportionally (at 1:
        age +6 years, income mean x1.42, balance +40 %, tenure shorter). 0 draws every version
        from the same distribution (a different sample each).
    :param label_shift: float in [-0.5, 0.5], default 0. Added to the positive rate (the result
        is clipped to [0.01, 0.99]).
    :param new_category: null or ``"region"`` / ``"channel"``: about 25 % of that column get a
        value no clean version has (``overseas`` / ``crypto_wallet``).
    :param missing_column: null or a feature name: that column is dropped.
    :param type_change: null or a numeric feature name: written as text (``"42.3k"``, ``"37y"``,
        ``"yes"``), about 5 % ``"n/a"``.
    :param null_spike: null or ``{feature: fraction in [0, 1]}``: that fraction of values become
        null (ints become nullable ints).
    :param knobs_per_version: ``{"<version>": {knob: value}}``; for that version these knobs
        replace the top-level ones (knobs: drift, label_shift, new_category, missing_column,
        type_change, null_spike). Parsed with int keys.
    :param knobs: (derived) the checked knobs of each version written, top level and
        ``knobs_per_version`` merged.
    """

    step = STEP
    strict = True

    root: Path
    versions: tuple[int, ...] = (1,)
    rows: int = 2000
    seed: int = 0
    format: str = "csv"
    overwrite: bool = False
    extra_features: int = 0
    drift: float = 0.0
    label_shift: float = 0.0
    new_category: str | None = None
    missing_column: str | None = None
    type_change: str | None = None
    null_spike: dict[str, float] | None = None
    knobs_per_version: dict[int, dict[str, Any]] = field(default_factory=dict)
    knobs: dict[int, dict[str, Any]] = derived()

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        if "root" not in spec:
            raise _spec_error("root", "is required (a local directory path or file:// URI).")
        rows, seed, fmt, extra = _settings(spec)
        versions = _parse_versions(spec.get("versions", [1]))
        root = local_path(spec["root"])
        overwrite = spec.get("overwrite", False)
        if not isinstance(overwrite, bool):
            raise _spec_error("overwrite", f"must be true or false, got {overwrite!r}.")
        top = _check_knobs({key: spec.get(key, default) for key, default in KNOB_DEFAULTS.items()})
        overrides = _overrides(spec, versions)
        knobs = {v: _check_knobs({**top, **overrides.get(v, {})}) for v in versions}
        return {
            "root": root,
            "versions": versions,
            "rows": rows,
            "seed": seed,
            "format": fmt,
            "overwrite": overwrite,
            "extra_features": extra,
            **top,
            "knobs_per_version": overrides,
            "knobs": knobs,
        }
