"""
Data validation steps built on TensorFlow Data Validation (TFDV).

``validate_data(spec)`` computes statistics of a dataset version (streamed in bounded chunks, or
with Beam), validates them against a schema (bootstrapped on the first run) and against previous /
serving statistics (drift / skew), and writes statistics, anomalies, the schema used and a
self-contained HTML report. ``infer_schema(spec)`` writes a schema inferred from one version.
"""

from __future__ import annotations

from airflow_ml_provider.ml.validation.step import infer_schema, validate_data

__all__ = ["infer_schema", "validate_data"]
