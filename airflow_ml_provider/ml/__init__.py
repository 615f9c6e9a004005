"""The step layer: pure functions from a JSON-able spec to a JSON-able result.

Nothing in this package imports Airflow. Heavy libraries (TensorFlow, TFDV, TFMA, pandas ...) are
imported inside the functions of the leaf modules, so importing this package stays cheap.
A step runs in-process, in another Python interpreter (``python -m airflow_ml_provider.ml``) or in
a pod; the spec and the result are the same either way.
"""

from __future__ import annotations
