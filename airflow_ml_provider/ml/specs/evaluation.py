"""Specs of the model checks: ``evaluate_model`` (TFMA semantics) and ``infra_validate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from airflow_ml_provider.ml.specs._base import Reader, StepSpec, is_number

ENGINES = ("auto", "fast", "beam")
# The datasets an evaluation can read: ``data`` (the new version, ``data_uri``) and ``holdout`` (a
# fixed, versioned holdout, ``holdout_uri``); ``evaluate_on`` names one of them or ``both``.
DATA = "data"
HOLDOUT = "holdout"
BOTH = "both"
EVALUATE_ON = (DATA, HOLDOUT, BOTH)
#: The prefix of each dataset's MLflow metric names (``holdout/auc``, ``holdout/diff/auc``); the
#: data's numbers keep the names they always had (``auc``, ``diff/auc``).
METRIC_PREFIXES = {DATA: "", HOLDOUT: "holdout/"}
BASELINE_KEYS = ("model_name", "alias", "version", "model_uri")
INFRA_DEFAULTS: dict[str, Any] = {
    "sample_rows": 100,
    "batch_size": 1,
    "requests": 50,
    "load_timeout": 300.0,
    "timeout": 300.0,
}


def _eval_config(read: Reader) -> dict[str, Any] | str:
    value = read.spec.get("eval_config")
    if value in (None, "", {}):
        raise read.error(
            "eval_config",
            "is required: a TFMA EvalConfig as a dict, JSON or text proto with metrics_specs and "
            "slicing_specs (see docs/evaluation.md).",
        )
    if not isinstance(value, dict | str):
        raise read.error(
            "eval_config",
            f"must be a dict (protobuf JSON), a JSON string or a text proto, got {type(value).__name__}.",
        )
    return value


def evaluated_datasets(evaluate_on: str | None, holdout_uri: str | None) -> tuple[str, ...]:
    """
    The datasets an evaluation reads, the first one's artifacts at the top of its folder.

    ``evaluate_on`` None means ``both`` when a holdout is given, else ``data`` (as before holdouts).
    """
    mode = evaluate_on or (BOTH if holdout_uri else DATA)
    return (DATA, HOLDOUT) if mode == BOTH else (mode,)


def _datasets(read: Reader) -> dict[str, Any]:
    """``evaluate_on``, ``data_uri`` and ``holdout_uri``: each dataset evaluated must be given."""
    holdout_uri = read.text("holdout_uri")
    evaluate_on = read.spec.get("evaluate_on")
    if evaluate_on is not None and evaluate_on not in EVALUATE_ON:
        raise read.error("evaluate_on", f"must be one of {list(EVALUATE_ON)}, got {evaluate_on!r}.")
    datasets = evaluated_datasets(evaluate_on, holdout_uri)
    data_uri: str | None
    if DATA in datasets:
        data_uri = read.required_text(
            "data_uri", "is required (a URI or path string); with evaluate_on='holdout' it may be left out."
        )
    else:
        data_uri = read.text("data_uri")
    if HOLDOUT in datasets and not holdout_uri:
        raise read.error(
            "holdout_uri",
            f"is required with evaluate_on={evaluate_on!r}: a fixed, versioned holdout "
            "(e.g. '.../holdout/version=0001').",
        )
    if holdout_uri and HOLDOUT not in datasets:
        raise read.error(
            "holdout_uri", "is given but evaluate_on='data' does not read it; use 'both' or 'holdout'."
        )
    return {
        "evaluate_on": BOTH if len(datasets) > 1 else datasets[0],
        "data_uri": data_uri,
        "holdout_uri": holdout_uri,
    }


def _baseline(read: Reader) -> dict[str, Any] | None:
    value = read.get("baseline")
    if value is not None and not isinstance(value, dict):
        raise read.error("baseline", f"must be a dict, got {value!r}.")
    return value


@dataclass(frozen=True, kw_only=True)
class EvaluateModelSpec(StepSpec):
    """
    The spec of ``evaluate_model``: a candidate model against a baseline, per slice, with TFMA
    semantics. Unknown keys are an error.

    :param candidate_model_uri: the candidate, any URI ``mlflow.pyfunc.load_model`` takes (required).
    :param data_uri: the evaluation dataset version, a csv/parquet file or directory (required,
        unless ``evaluate_on`` is ``"holdout"``).
    :param output_dir: where the artifacts go (required): ``metrics.json``, ``blessing.json``,
        ``thresholds.json``, ``eval_config.pbtxt``, ``report.html``, ``plots/``.
    :param eval_config: a TFMA ``EvalConfig`` (required) as a dict (protobuf JSON), a JSON string
        or a text proto.
    :param baseline_model_uri: the baseline (the current champion), or null on a first run (then
        change thresholds are dropped and only value thresholds decide, as TFMA's "rubber stamp").
    :param baseline: what the baseline is, for ``blessing.json``: ``model_name``, ``alias``,
        ``version`` (the registered version the alias held), ``model_uri`` (optional).
    :param format: ``"csv"``, ``"parquet"`` or null to tell by file extension.
    :param holdout_uri: a fixed, versioned holdout (a csv/parquet file or directory) that both
        models are evaluated on too, or instead (``evaluate_on``).
    :param holdout_format: the holdout's format, like ``format`` (default: ``format``).
    :param evaluate_on: ``"data"``, ``"holdout"`` or ``"both"``; null: ``"both"`` when
        ``holdout_uri`` is given, else ``"data"``. With both, the candidate is blessed only when
        it meets the thresholds on each; the first dataset's files are at the top of
        ``output_dir``, the holdout's under ``holdout/`` (its metrics named ``holdout/...``).
    :param label_key: the label column (default ``"label"``; null: the one ``eval_config``'s model
        spec names).
    :param example_weight_key: a weight column, or null.
    :param feature_columns: the columns the models get (default: every column but the label and
        the weight).
    :param engine: ``"auto"`` (default: the in-memory fast path when the config allows it, else
        TFMA's Beam pipeline), ``"fast"`` or ``"beam"``.
    :param beam_pipeline_args: options of the Beam runner, e.g. ``["--runner=FlinkRunner"]``.
    :param tracking_uri: the MLflow server, for ``models:/`` and ``runs:/`` URIs.
    :param title: the report's title (default ``"Model evaluation"``).
    :param context: label -> text lines shown at the top of the report.
    """

    step = "evaluate_model"
    strict = True

    candidate_model_uri: str
    output_dir: str
    eval_config: dict[str, Any] | str
    data_uri: str | None = None
    holdout_uri: str | None = None
    holdout_format: str | None = None
    evaluate_on: str = DATA
    baseline_model_uri: str | None = None
    baseline: dict[str, Any] | None = None
    format: str | None = None
    label_key: str | None = "label"
    example_weight_key: str | None = None
    feature_columns: tuple[str, ...] | None = None
    engine: str = "auto"
    beam_pipeline_args: tuple[str, ...] = ()
    tracking_uri: str | None = None
    title: str | None = None
    context: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        read = Reader(spec, cls.step)
        required = "is required (a URI or path string)."
        values: dict[str, Any] = {
            key: read.required_text(key, required) for key in ("candidate_model_uri", "output_dir")
        }
        # An explicit null label_key leaves the label to eval_config's model spec.
        label_key = spec["label_key"] if "label_key" in spec else "label"
        if label_key is not None and not isinstance(label_key, str):
            raise read.error("label_key", f"must be a column name or null, got {label_key!r}.")
        return {
            **values,
            **_datasets(read),
            "holdout_format": read.data_format("holdout_format"),
            "eval_config": _eval_config(read),
            "engine": read.choice("engine", ENGINES, "auto"),
            "baseline": _baseline(read),
            "feature_columns": read.str_list("feature_columns"),
            "label_key": label_key,
            "format": read.data_format(),
            "beam_pipeline_args": read.str_list("beam_pipeline_args") or (),
            "context": read.mapping("context"),
            **{
                key: read.text(key)
                for key in ("baseline_model_uri", "example_weight_key", "tracking_uri", "title")
            },
        }

    def datasets(self) -> tuple[tuple[str, str, str | None], ...]:
        """``(name, uri, format)`` of each dataset to evaluate, in order."""
        uris = {
            DATA: (self.data_uri, self.format),
            HOLDOUT: (self.holdout_uri, self.holdout_format or self.format),
        }
        names = evaluated_datasets(self.evaluate_on, self.holdout_uri)
        return tuple((name, str(uris[name][0]), uris[name][1]) for name in names)


def _positive(read: Reader, key: str, kind: type) -> Any:
    value = read.get(key, INFRA_DEFAULTS[key])
    if not is_number(value) or value <= 0 or (kind is int and value != int(value)):
        raise read.error(key, f"must be a positive {kind.__name__}, got {value!r}.")
    return kind(value)


def _latency_bounds(read: Reader) -> dict[str, float]:
    bounds = read.get("max_latency_ms", {})
    if not isinstance(bounds, dict) or set(bounds) - {"p50", "p99"}:
        raise ValueError(
            f"infra_validate: 'max_latency_ms' must be a dict with keys p50 and/or p99, got {bounds!r}."
        )
    for name, value in bounds.items():
        if not is_number(value) or value <= 0:
            raise ValueError(
                f"infra_validate: max_latency_ms[{name!r}] must be a positive number of ms, got {value!r}."
            )
    return dict(bounds)


def _rows(read: Reader) -> list[dict[str, Any]] | None:
    rows = read.get("rows")
    if rows is not None and (not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows)):
        raise read.error("rows", f"must be a list of dicts (column -> value), got {rows!r:.200}.")
    return rows


@dataclass(frozen=True, kw_only=True)
class InfraValidateSpec(StepSpec):
    """
    The spec of ``infra_validate``: does the model load and serve, in a process of its own?
    Unknown keys are an error.

    :param model_uri: the model, any URI ``mlflow.pyfunc.load_model`` takes (required).
    :param data_uri: a dataset version to take the sample rows from; give it or ``rows``.
    :param rows: the sample rows as a list of dicts (column -> value), instead of ``data_uri``.
    :param format: ``"csv"``, ``"parquet"`` or null (for ``data_uri``).
    :param sample_rows: rows predicted at once (default 100).
    :param drop_columns: columns the model does not take (e.g. the label).
    :param batch_size: rows per timed request (default 1).
    :param requests: timed requests, after a warm-up (default 50).
    :param max_latency_ms: ``{"p50": ms, "p99": ms}``, bounds on a request's latency.
    :param load_timeout: seconds to load the model (default 300).
    :param timeout: seconds to predict and time, once loaded (default 300).
    :param tracking_uri: the MLflow server, for ``models:/`` and ``runs:/`` URIs.
    :param output_dir: where ``infra_validation.json`` goes; null: nowhere.
    """

    step = "infra_validate"
    strict = True

    model_uri: str
    data_uri: str | None = None
    rows: list[dict[str, Any]] | None = None
    format: str | None = None
    sample_rows: int = INFRA_DEFAULTS["sample_rows"]
    drop_columns: tuple[str, ...] = ()
    batch_size: int = INFRA_DEFAULTS["batch_size"]
    requests: int = INFRA_DEFAULTS["requests"]
    max_latency_ms: dict[str, float] = field(default_factory=dict)
    load_timeout: float = INFRA_DEFAULTS["load_timeout"]
    timeout: float = INFRA_DEFAULTS["timeout"]
    tracking_uri: str | None = None
    output_dir: str | None = None

    @classmethod
    def _values(cls, spec: dict[str, Any]) -> dict[str, Any]:
        read = Reader(spec, cls.step)
        model_uri = read.required_text("model_uri", "is required (a model URI or path).")
        if bool(spec.get("data_uri")) == bool(spec.get("rows")):
            raise ValueError(
                "infra_validate: give exactly one of 'data_uri' (a dataset version) or 'rows' (a list of dicts)."
            )
        values: dict[str, Any] = {
            key: _positive(read, key, int) for key in ("sample_rows", "batch_size", "requests")
        }
        values.update({key: _positive(read, key, float) for key in ("load_timeout", "timeout")})
        return {
            "model_uri": model_uri,
            **values,
            "max_latency_ms": _latency_bounds(read),
            "drop_columns": read.str_list(
                "drop_columns", f"must be a list of column names, got {spec.get('drop_columns')!r}."
            )
            or (),
            "data_uri": read.text("data_uri"),
            "rows": _rows(read),
            "format": read.data_format(),
            "tracking_uri": read.text("tracking_uri"),
            "output_dir": read.text("output_dir"),
        }
