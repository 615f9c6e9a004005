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

import numpy as np

from airflow_ml_provider.ml.specs.datagen import FEATURES, LABEL, GenerateDatasetSpec, local_path

log = logging.getLogger(__name__)

COLUMNS: list[str] = [*FEATURES, LABEL]
SUCCESS_MARKER = "_SUCCESS"
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

    :param spec: a :class:`~airflow_ml_provider.ml.specs.GenerateDatasetSpec` as a JSON dict (its
        knobs inject the problems: drift, label shift, new categories, a missing column, a type
        change, null spikes, per version with ``knobs_per_version``).
    :return: ``{"root", "format", "versions": [{"version": "0001", "uri", "rows", "files",
        "columns", "positive_rate", "knobs"}], "columns", "features", "label"}``.
    """
    settings = GenerateDatasetSpec.parse(spec)
    import pandas as pd

    root = settings.root
    targets = {v: root / f"version={v:04d}" for v in settings.versions}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing and not settings.overwrite:
        raise ValueError(
            f"generate_dataset: version directories already exist: {', '.join(existing)}; "
            "set 'overwrite': true to replace them."
        )
    root.mkdir(parents=True, exist_ok=True)
    extra = extra_feature_names(settings.extra_features)
    written = []
    for version, target in targets.items():
        knobs = settings.knobs[version]
        rng = np.random.default_rng([settings.seed, version])
        df = pd.DataFrame(_sample(settings.rows, rng, knobs["drift"], knobs["label_shift"]))
        df = _apply_problems(df, knobs, rng)
        extra_rng = np.random.default_rng([settings.seed, version, 1])
        blocks = _blocks(df, extra, extra_rng, knobs["drift"])
        files = _write_version(blocks, target, settings.format, settings.overwrite)
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
        "format": settings.format,
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

    path = local_path(uri, key="uri", where="read_version: argument")
    if require_success and not (path / SUCCESS_MARKER).is_file():
        raise FileNotFoundError(f"read_version: {path} has no {SUCCESS_MARKER} marker (incomplete version?).")
    csv_parts = sorted(path.glob("part-*.csv"))
    parquet_parts = sorted(path.glob("part-*.parquet"))
    if not csv_parts and not parquet_parts:
        raise FileNotFoundError(f"read_version: no part-*.csv or part-*.parquet file in {path}.")
    frames = [pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in csv_parts]
    frames += [pd.read_parquet(p, engine="pyarrow") for p in parquet_parts]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
