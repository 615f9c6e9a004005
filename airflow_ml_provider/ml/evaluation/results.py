"""What an evaluation engine returns: metrics per slice and model, and the failed thresholds.

Both engines (the in-memory fast path and TFMA's Beam pipeline) return an :class:`EvalOutput`,
so the step, the report and the blessing do not care which one ran. No heavy imports here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CANDIDATE = "candidate"
BASELINE = "baseline"
OVERALL = "Overall"

SliceKey = tuple[tuple[str, Any], ...]


def slice_name(key: SliceKey) -> str:
    """``()`` -> ``"Overall"``; ``(("sex", "F"), ("region", "north"))`` -> ``"sex=F, region=north"``."""
    if not key:
        return OVERALL
    parts = []
    for column, value in key:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        parts.append(f"{column}={value}")
    return ", ".join(parts)


@dataclass
class Failure:
    """One threshold that a metric did not meet on one slice."""

    slice: str  # slice_name(...)
    metric: str  # flattened metric name, e.g. "auc"
    kind: str  # "value" or "change"
    value: float | None  # the candidate's value (None: the metric was not computed)
    bound: str  # readable bound, e.g. ">= 0.7" or "change >= -0.01 (absolute, higher is better)"
    baseline_value: float | None = None  # the baseline's value, for change thresholds
    threshold: dict[str, Any] = field(default_factory=dict)  # the threshold proto as a dict
    message: str = ""  # TFMA's own text, when TFMA produced the failure

    def describe(self) -> str:
        value = "missing" if self.value is None else f"{self.value:.6g}"
        base = "" if self.baseline_value is None else f", baseline {self.baseline_value:.6g}"
        return f"{self.slice}: {self.metric} = {value}{base}; required {self.bound} ({self.kind} threshold)"


@dataclass
class EvalOutput:
    """
    Metrics of the candidate (and baseline) per slice, and the result of the thresholds.

    ``metrics[slice_name][model][metric] = value`` with model ``"candidate"`` or ``"baseline"``;
    ``slice_keys[slice_name]`` is the slice as ``[[column, value], ...]`` (``[]`` for Overall).
    ``validation_ok`` is TFMA's ``ValidationResult.validation_ok`` (or the fast path's equal).
    """

    metrics: dict[str, dict[str, dict[str, float]]]
    slice_keys: dict[str, list[list[Any]]]
    failures: list[Failure]
    validation_ok: bool
    engine: str  # "fast" or "beam"
    example_count: int
    has_baseline: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalOutput:
        data = dict(data)
        data["failures"] = [Failure(**f) for f in data.get("failures", [])]
        return cls(**data)
