"""The step layer: pure functions from a JSON-able spec to a JSON-able result.

Nothing in this package imports Airflow. Heavy libraries (TensorFlow, TFDV, TFMA, pandas ...) are
imported inside the functions of the leaf modules, so importing this package stays cheap.
A step runs in-process, in another Python interpreter (``python -m airflow_ml_provider.ml``) or in
a pod; the spec and the result are the same either way. Each built-in step's spec is declared once,
as a type in :mod:`airflow_ml_provider.ml.specs`, which the step and the operator both parse.
"""

from __future__ import annotations
