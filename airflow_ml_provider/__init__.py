"""Apache Airflow provider for continuous training with TFDV, TensorFlow, TFMA and MLflow."""

from __future__ import annotations

__version__ = "0.1.0"
