"""
Demo data: versioned tabular datasets for binary classification (credit / churn style).

Each version is a directory ``<root>/version=NNNN/`` holding ``part-00000.csv`` (or ``.parquet``)
and, written last, an empty ``_SUCCESS`` marker. A version is written into a hidden temporary
sibling and renamed into place, so a reader never sees half a version. Knobs inject the problems a
continuous-training pipeline must catch: covariate drift, label shift, unseen categories, dropped
columns, type changes and null spikes.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

log = logging.getLogger(__name__)

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
COLUMNS: list[str] = [*FEATURES, LABEL]
SUCCESS_MARKER = "_SUCCESS"
FORMATS = ("csv", "parquet")
MAX_VERSION = 9999
MAX_ROWS = 10_000_000
MAX_DRIFT = 10.0
MAX_EXTRA_FEATURES = 200
# Rows per block when writing (and when drawing the extra features): bounds the memory of a version
# beyond the standard columns; a constant, so the data never depends on anything but (seed, version).
WRITE_CHUNK_ROWS = 250_000

REGIONS = ["north", "south", "east", "west", "central"]
CHANNELS = ["branch", "online", "mobile", "partner"]
# ``extra_features``: noise columns num_00, cat_00, num_01, ... (alternating, numeric first).
EXTRA_VOCABULARY = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
]
_EXTRA_WEIGHTS = 1.0 / np.arange(1, len(EXTRA_VOCABULARY) + 1)
EXTRA_PROBABILITIES = _EXTRA_WEIGHTS / _EXTRA_WEIGHTS.sum()  # Zipf-like: a few common values
EXTRA_DRIFT_SHIFT = 0.25  # extra numeric columns move by this many standard deviations per unit drift
EXTRA_LABEL_WEIGHT = 0.3  # every third extra numeric column leans this much with the label
# Values never produced by a clean version; ``new_category`` puts them in NEW_CATEGORY_FRACTION of rows.
NEW_CATEGORY = {"region": "overseas", "channel": "crypto_wallet"}
NEW_CATEGORY_FRACTION = 0.25
# ``type_change``: how a numeric column is rendered as text, plus this fraction of "n/a".
TYPE_CHANGE_NA_FRACTION = 0.05
BASE_POSITIVE_RATE_INTERCEPT = -0.95  # about 30 % positives on an undrifted version

KNOB_DEFAULTS: dict[str, Any] = {
    "drift": 0.0,
    "label_shift": 0.0,
    "new_category": None,
    "missing_column": None,
    "type_change": None,
    "null_spike": None,
}
SPEC_KEYS = {
    "root",
    "versions",
    "rows",
    "seed",
    "format",
    "overwrite",
    "extra_features",
    "knobs_per_version",
    *KNOB_DEFAULTS,
}


def _spec_error(key: str, message: str, where: str = "generate_dataset: spec key") -> ValueError:
    return ValueError(f"{where} {key!r}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any, low: float, high: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high


def _local_path(uri: Any, key: str = "root", where: str = "generate_dataset: spec key") -> Path:
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


def _parse_versions(value: Any) -> list[int]:
    if _is_int(value):
        if not 1 <= value <= MAX_VERSION:
            raise _spec_error("versions", f"an int N means versions 1..N; N must be in 1..{MAX_VERSION}.")
        return list(range(1, value + 1))
    if not isinstance(value, list) or not value:
        raise _spec_error("versions", f"must be a non-empty list of ints or an int N, got {value!r}.")
    if not all(_is_int(v) and 1 <= v <= MAX_VERSION for v in value):
        raise _spec_error("versions", f"every version must be an int in 1..{MAX_VERSION}, got {value!r}.")
    if len(set(value)) != len(value):
        raise _spec_error("versions", f"versions must be unique, got {value!r}.")
    return list(value)


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
        if not _is_number(fraction, 0, 1):
            raise _spec_error("null_spike", f"fraction for {column!r} must be in [0, 1], got {fraction!r}.")


def _check_knobs(knobs: dict[str, Any]) -> dict[str, Any]:
    """Validate one version's knobs (:param knobs: all KNOB_DEFAULTS keys); return plain types."""
    drift, shift = knobs["drift"], knobs["label_shift"]
    if not _is_number(drift, 0, MAX_DRIFT):
        raise _spec_error("drift", f"must be a number in [0, {MAX_DRIFT}], got {drift!r}.")
    if not _is_number(shift, -0.5, 0.5):
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


def _per_version_knobs(spec: dict[str, Any], versions: list[int]) -> dict[int, dict[str, Any]]:
    """
    Merge the top-level knobs with ``knobs_per_version`` into validated knobs per version.

    :param spec: the step spec.
    :param versions: the versions being written.
    """
    top = {key: spec.get(key, default) for key, default in KNOB_DEFAULTS.items()}
    overrides = spec.get("knobs_per_version") or {}
    if not isinstance(overrides, dict):
        raise _spec_error("knobs_per_version", f"must be a dict version -> knobs, got {overrides!r}.")
    by_version: dict[int, dict[str, Any]] = {}
    for raw_version, knobs in overrides.items():
        version = int(raw_version) if str(raw_version).isdigit() else -1
        if version not in versions:
            raise _spec_error("knobs_per_version", f"{raw_version!r} is not a version written {versions}.")
        if not isinstance(knobs, dict) or set(knobs) - set(KNOB_DEFAULTS):
            raise _spec_error(
                "knobs_per_version",
                f"version {raw_version!r}: want a dict with keys from {sorted(KNOB_DEFAULTS)}, got {knobs!r}.",
            )
        by_version[version] = knobs
    return {v: _check_knobs({**top, **by_version.get(v, {})}) for v in versions}


def _validate(spec: dict[str, Any]) -> dict[str, Any]:
    """Check the whole spec up front, return normalised settings (:param spec: see generate_dataset)."""
    if not isinstance(spec, dict):
        raise ValueError(f"generate_dataset: spec must be a dict, got {type(spec).__name__}.")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(
            f"generate_dataset: unknown spec keys {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}."
        )
    if "root" not in spec:
        raise _spec_error("root", "is required (a local directory path or file:// URI).")
    rows, seed, fmt = spec.get("rows", 2000), spec.get("seed", 0), spec.get("format", "csv")
    if not _is_int(rows) or not 1 <= rows <= MAX_ROWS:
        raise _spec_error("rows", f"must be an int in 1..{MAX_ROWS}, got {rows!r}.")
    if not _is_int(seed) or seed < 0:
        raise _spec_error("seed", f"must be an int >= 0, got {seed!r}.")
    if fmt not in FORMATS:
        raise _spec_error("format", f"must be one of {list(FORMATS)}, got {fmt!r}.")
    extra = spec.get("extra_features", 0)
    if not _is_int(extra) or not 0 <= extra <= MAX_EXTRA_FEATURES:
        raise _spec_error("extra_features", f"must be an int in 0..{MAX_EXTRA_FEATURES}, got {extra!r}.")
    versions = _parse_versions(spec.get("versions", [1]))
    return {
        "root": _local_path(spec["root"]),
        "rows": rows,
        "seed": seed,
        "format": fmt,
        "overwrite": bool(spec.get("overwrite", False)),
        "extra_features": extra,
        "versions": versions,
        "knobs": _per_version_knobs(spec, versions),
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def _shifted_probabilities(logit: np.ndarray, label_shift: float) -> np.ndarray:
    """
    Move the mean positive probability by ``label_shift`` by re-solving the intercept.

    :param logit: the per-row log-odds with the base intercept.
    :param label_shift: the additive change of the positive rate (clipped to [0.01, 0.99]).
    """
    probabilities = _sigmoid(logit)
    if label_shift == 0:
        return probabilities
    target = min(max(float(probabilities.mean()) + label_shift, 0.01), 0.99)
    low, high = -30.0, 30.0
    for _ in range(60):  # bisection on the intercept offset
        mid = (low + high) / 2
        if float(_sigmoid(logit + mid).mean()) < target:
            low = mid
        else:
            high = mid
    return _sigmoid(logit + (low + high) / 2)


def _sample(rows: int, rng: np.random.Generator, drift: float, label_shift: float) -> dict[str, Any]:
    """
    Draw the clean columns; ``drift`` shifts numeric distributions, the label model stays fixed.

    :param rows: number of rows.
    :param rng: the version's random generator.
    :param drift: covariate-shift strength (0: the reference distribution).
    :param label_shift: additive change of the positive rate.
    """
    age = np.clip(np.rint(rng.normal(40 + 6 * drift, 11, rows)), 18, 90).astype(np.int64)
    income = rng.lognormal(math.log(42_000) + 0.35 * drift, 0.5, rows)
    tenure = np.clip(np.rint(rng.gamma(2.0, 18.0 / (1 + 0.5 * drift), rows)), 0, 240).astype(np.int64)
    has_balance = rng.random(rows) < 0.7
    balance = np.where(
        has_balance, np.clip(rng.normal(60_000 * (1 + 0.4 * drift), 25_000, rows), 0, None), 0.0
    )
    num_products = rng.choice([1, 2, 3, 4], size=rows, p=[0.5, 0.4, 0.07, 0.03]).astype(np.int64)
    # Object arrays as the population: the draws are the same, but every row shares the few
    # vocabulary strings instead of holding a string of its own (8 bytes a row, not ~60).
    region = rng.choice(np.asarray(REGIONS, dtype=object), size=rows, p=[0.25, 0.2, 0.2, 0.25, 0.1])
    channel = rng.choice(np.asarray(CHANNELS, dtype=object), size=rows, p=[0.3, 0.35, 0.25, 0.1])
    is_active = (rng.random(rows) < 0.52).astype(np.int64)

    logit = (
        BASE_POSITIVE_RATE_INTERCEPT
        + 0.07 * (age - 40)
        - 0.8 * (np.log(income) - math.log(42_000))
        - 0.025 * (tenure - 36)
        + 0.000012 * (balance - 42_000)
        + 0.9 * (num_products >= 3)
        - 0.3 * (num_products == 2)
        - 1.0 * is_active
        + np.select([region == "south", region == "central"], [0.7, -0.4], 0.0)
        + np.select([channel == "online", channel == "partner"], [0.4, 0.6], 0.0)
    )
    probabilities = _shifted_probabilities(logit, label_shift)
    label = (rng.random(rows) < probabilities).astype(np.int64)
    return {
        "age": age,
        "income": np.round(income, 2),
        "tenure_months": tenure,
        "balance": np.round(balance, 2),
        "num_products": num_products,
        "region": region,
        "channel": channel,
        "is_active": is_active,
        LABEL: label,
    }


def extra_feature_names(count: int) -> dict[str, str]:
    """
    Names and kinds of ``count`` extra features: ``num_00``, ``cat_00``, ``num_01``, ... alternating.

    :param count: how many (the ``extra_features`` spec key).
    """
    return {
        (f"num_{i // 2:02d}" if i % 2 == 0 else f"cat_{i // 2:02d}"): (
            "numeric" if i % 2 == 0 else "categorical"
        )
        for i in range(count)
    }


def _extra_columns(
    names: dict[str, str], label: np.ndarray, rng: np.random.Generator, drift: float
) -> dict[str, np.ndarray]:
    """
    Draw the extra features for one block of rows.

    Numeric ones are standard normal noise (4 decimals) moved by ``EXTRA_DRIFT_SHIFT * drift``;
    every third also leans with the label. Categorical ones take values of ``EXTRA_VOCABULARY``
    with Zipf-like frequencies.

    :param names: the extra features (see ``extra_feature_names``).
    :param label: the block's labels (0/1).
    :param rng: the version's generator for extra features.
    :param drift: the version's covariate-shift strength.
    """
    rows = len(label)
    vocabulary = np.asarray(EXTRA_VOCABULARY, dtype=object)
    cdf = np.cumsum(EXTRA_PROBABILITIES)
    cdf[-1] = 1.0
    columns: dict[str, np.ndarray] = {}
    for i, (name, kind) in enumerate(names.items()):
        if kind == "numeric":
            values = rng.standard_normal(rows)
            values += EXTRA_DRIFT_SHIFT * drift
            if (i // 2) % 3 == 0:
                values += EXTRA_LABEL_WEIGHT * (label - 0.3)
            columns[name] = np.round(values, 4)
        else:
            columns[name] = vocabulary[cdf.searchsorted(rng.random(rows), side="right")]
    return columns


def _blocks(df: Any, extra: dict[str, str], rng: np.random.Generator, drift: float) -> Iterator[Any]:
    """
    Yield the version's frame in blocks of ``WRITE_CHUNK_ROWS`` rows, extra features added.

    The extra features sit between the standard features and the label; only one block of them
    exists at a time.

    :param df: the standard columns (problems applied).
    :param extra: the extra features (see ``extra_feature_names``).
    :param rng: the version's generator for extra features.
    :param drift: the version's covariate-shift strength.
    """
    import pandas as pd

    if not extra:
        for start in range(0, len(df), WRITE_CHUNK_ROWS):
            yield df.iloc[start : start + WRITE_CHUNK_ROWS]
        return
    features = [c for c in df.columns if c != LABEL]
    for start in range(0, len(df), WRITE_CHUNK_ROWS):
        block = df.iloc[start : start + WRITE_CHUNK_ROWS]
        label = block[LABEL].to_numpy()
        columns = {c: block[c].to_numpy() for c in features}
        columns.update(_extra_columns(extra, label, rng, drift))
        columns[LABEL] = label
        frame = pd.DataFrame(columns, index=block.index)
        for column in features:  # keep nullable ints (null_spike) nullable
            if frame[column].dtype != block[column].dtype:
                frame[column] = block[column]
        yield frame


def _as_text(column: str, value: Any) -> str:
    """Render a non-null value of numeric ``column`` as text (:param value:) for ``type_change``."""
    if column in ("income", "balance"):
        return f"{float(value) / 1000:.1f}k"
    if column == "is_active":
        return "yes" if int(value) else "no"
    suffix = {"age": "y", "tenure_months": "mo", "num_products": " products"}[column]
    return f"{int(value)}{suffix}"


def _apply_problems(df: Any, knobs: dict[str, Any], rng: np.random.Generator) -> Any:
    """
    Inject the data problems asked for by the knobs into a clean frame.

    :param df: the clean pandas DataFrame (modified and returned).
    :param knobs: the validated knobs of this version.
    :param rng: the version's random generator.
    """
    rows = len(df)
    if knobs["new_category"]:
        column = knobs["new_category"]
        df.loc[rng.random(rows) < NEW_CATEGORY_FRACTION, column] = NEW_CATEGORY[column]
    for column, fraction in (knobs["null_spike"] or {}).items():
        if df[column].dtype.kind in "iu":
            df[column] = df[column].astype("Int64")  # nullable ints keep their type in parquet
        df.loc[rng.random(rows) < fraction, column] = None
    if knobs["type_change"]:
        column = knobs["type_change"]
        na = df[column].isna().to_numpy() | (rng.random(rows) < TYPE_CHANGE_NA_FRACTION)
        text = [_as_text(column, v) for v in df[column].fillna(0).astype(object)]
        df[column] = np.where(na, "n/a", np.asarray(text, dtype=object))
    if knobs["missing_column"]:
        df = df.drop(columns=[knobs["missing_column"]])
    return df


def _write_version(blocks: Iterable[Any], target: Path, fmt: str, overwrite: bool) -> list[str]:
    """
    Write one version atomically: temporary sibling, data, ``_SUCCESS``, then rename into place.

    :param blocks: the frame to write, as consecutive blocks of rows (CSV appends them one by one).
    :param target: the final ``version=NNNN`` directory.
    :param fmt: ``csv`` or ``parquet``.
    :param overwrite: replace an existing version (briefly absent while being swapped).
    """
    token = uuid.uuid4().hex[:12]
    tmp = target.with_name(f".{target.name}.tmp-{token}")
    old = target.with_name(f".{target.name}.old-{token}")
    data_file = f"part-00000.{fmt}"
    tmp.mkdir()
    try:
        if fmt == "csv":
            with open(tmp / data_file, "w", newline="", encoding="utf-8") as handle:
                for i, block in enumerate(blocks):
                    block.to_csv(handle, index=False, header=i == 0)
        else:
            import pandas as pd

            pd.concat(list(blocks)).to_parquet(tmp / data_file, index=False, engine="pyarrow")
        (tmp / SUCCESS_MARKER).touch()
        if target.exists():
            if not overwrite:
                raise ValueError(f"generate_dataset: version {target} already exists (set overwrite: true).")
            os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError as err:
            if old.exists() and not target.exists():
                os.rename(old, target)  # put the previous version back
            raise ValueError(
                f"generate_dataset: could not move the new version into {target}: {err}"
            ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return [data_file, SUCCESS_MARKER]


def generate_dataset(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Write versions of a synthetic binary-classification dataset under ``root``.

    Columns: ``age`` (int), ``income`` (float, lognormal), ``tenure_months`` (int), ``balance``
    (float), ``num_products`` (int), ``region`` and ``channel`` (categorical str), ``is_active``
    (int 0/1) and ``label`` (int 0/1, about 30 % positives). The features carry real signal: a
    logistic regression reaches a ROC AUC around 0.8. Version ``v`` is drawn from the seed sequence
    ``(seed, v)``, so the same spec always writes the same data.

    :param spec: a dict with the keys below.

        - ``root`` (required): local directory path or ``file://`` URI; versions go to
          ``<root>/version=NNNN/`` (``part-00000.<format>`` then an empty ``_SUCCESS``).
        - ``versions``: list of ints in 1..9999, or an int N meaning 1..N. Default ``[1]``.
        - ``rows``: rows per version, int in 1..10,000,000. Default 2000.
        - ``seed``: int >= 0. Default 0.
        - ``format``: ``"csv"`` (default) or ``"parquet"``.
        - ``extra_features``: int in 0..200, default 0 (top level only, the same for every
          version). Adds that many noise features between the standard ones and the label,
          alternating ``num_00`` (float, normal, 4 decimals; every third leans slightly with the
          label; ``drift`` moves them by 0.25 standard deviation per unit) and ``cat_00`` (one of
          10 words, Zipf-like frequencies). ``extra_features=11`` gives 8 + 11 + label = 20
          columns. They are drawn from their own seed sequence ``(seed, v, 1)``, so the standard
          columns do not change with this knob.
        - ``overwrite``: replace existing versions. Default false: an existing version is an
          error, checked for every version before anything is written.
        - ``drift``: float in [0, 10], default 0. Shifts numeric distributions proportionally (at 1:
          age +6 years, income mean x1.42, balance +40 %, tenure shorter). 0 draws every version
          from the same distribution (a different sample each).
        - ``label_shift``: float in [-0.5, 0.5], default 0. Added to the positive rate (the
          result is clipped to [0.01, 0.99]).
        - ``new_category``: null or ``"region"`` / ``"channel"``: about 25 % of that column
          get a value no clean version has (``overseas`` / ``crypto_wallet``).
        - ``missing_column``: null or a feature name: that column is dropped.
        - ``type_change``: null or a numeric feature name: written as text (``"42.3k"``,
          ``"37y"``, ``"yes"``), about 5 % ``"n/a"``.
        - ``null_spike``: null or ``{feature: fraction in [0, 1]}``: that fraction of values
          become null (ints become nullable ints).
        - ``knobs_per_version``: ``{"<version>": {knob: value}}``; for that version these knobs
          replace the top-level ones (knobs: drift, label_shift, new_category, missing_column,
          type_change, null_spike).
    :return: ``{"root", "format", "versions": [{"version": "0001", "uri", "rows", "files",
        "columns", "positive_rate", "knobs"}], "columns", "features", "label"}``.
    """
    import pandas as pd

    settings = _validate(spec)
    root: Path = settings["root"]
    targets = {v: root / f"version={v:04d}" for v in settings["versions"]}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing and not settings["overwrite"]:
        raise ValueError(
            f"generate_dataset: version directories already exist: {', '.join(existing)}; "
            "set 'overwrite': true to replace them."
        )
    root.mkdir(parents=True, exist_ok=True)
    extra = extra_feature_names(settings["extra_features"])
    written = []
    for version, target in targets.items():
        knobs = settings["knobs"][version]
        rng = np.random.default_rng([settings["seed"], version])
        df = pd.DataFrame(_sample(settings["rows"], rng, knobs["drift"], knobs["label_shift"]))
        df = _apply_problems(df, knobs, rng)
        extra_rng = np.random.default_rng([settings["seed"], version, 1])
        blocks = _blocks(df, extra, extra_rng, knobs["drift"])
        files = _write_version(blocks, target, settings["format"], settings["overwrite"])
        columns = [str(c) for c in df.columns if c != LABEL] + list(extra) + [LABEL]
        positive_rate = round(float(df[LABEL].mean()), 4)
        log.info("Wrote %s (%s rows, positive rate %s, knobs %s)", target, len(df), positive_rate, knobs)
        written.append(
            {
                "version": f"{version:04d}",
                "uri": str(target),
                "rows": len(df),
                "files": files,
                "columns": columns,
                "positive_rate": positive_rate,
                "knobs": knobs,
            }
        )
    return {
        "root": str(root),
        "format": settings["format"],
        "versions": written,
        "columns": [*FEATURES, *extra, LABEL],
        "features": {**FEATURES, **extra},
        "label": LABEL,
    }


def read_version(uri: str | os.PathLike[str], require_success: bool = True) -> Any:
    """
    Read one version directory (all ``part-*.csv`` / ``part-*.parquet`` files) into a DataFrame.

    CSV is read with only empty fields as nulls, so text such as ``"n/a"`` stays text.

    :param uri: the ``version=NNNN`` directory, a plain path or ``file://`` URI.
    :param require_success: refuse a directory without the ``_SUCCESS`` marker.
    :return: a pandas DataFrame.
    """
    import pandas as pd

    path = _local_path(uri, key="uri", where="read_version: argument")
    if require_success and not (path / SUCCESS_MARKER).is_file():
        raise FileNotFoundError(f"read_version: {path} has no {SUCCESS_MARKER} marker (incomplete version?).")
    csv_parts = sorted(path.glob("part-*.csv"))
    parquet_parts = sorted(path.glob("part-*.parquet"))
    if not csv_parts and not parquet_parts:
        raise FileNotFoundError(f"read_version: no part-*.csv or part-*.parquet file in {path}.")
    frames = [pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in csv_parts]
    frames += [pd.read_parquet(p, engine="pyarrow") for p in parquet_parts]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
