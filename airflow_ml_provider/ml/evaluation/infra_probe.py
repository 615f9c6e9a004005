"""
The infra validation probe: ``python -m airflow_ml_provider.ml.evaluation.infra_probe SPEC OUT``.

Runs in its own process (so a model that hangs, crashes or leaks cannot take the worker with it):
loads the model with ``mlflow.pyfunc``, predicts the sample rows once, then times ``requests``
predictions of ``batch_size`` rows after a warm-up. Progress and results go to the JSON file
``OUT`` (the model may print anything on stdout): ``{"stage": "loading" | "loaded" | "done", ...}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

WARMUP_CALLS = 3


def _write(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def _summary(output: Any) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    if isinstance(output, pd.DataFrame | pd.Series):
        output = output.to_numpy()
    array = np.asarray(output)
    info: dict[str, Any] = {"shape": list(array.shape), "dtype": str(array.dtype)}
    if np.issubdtype(array.dtype, np.number):
        info["non_finite"] = int((~np.isfinite(array.astype("float64"))).sum())
    return info


def probe(spec: dict[str, Any], out: str) -> dict[str, Any]:
    """Load, predict and time the model of ``spec``; write progress to ``out``."""
    import mlflow.pyfunc
    import pandas as pd

    state: dict[str, Any] = {"stage": "loading"}
    _write(out, state)
    started = time.perf_counter()
    try:
        model = mlflow.pyfunc.load_model(spec["model_uri"])
    except BaseException as err:
        state.update(
            stage="done", load_error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-3000:]
        )
        return state
    state.update(stage="loaded", load_seconds=time.perf_counter() - started)
    _write(out, state)
    frame = pd.DataFrame(spec["rows"])
    try:
        state["output"] = _summary(model.predict(frame))
        batch = frame.head(int(spec.get("batch_size", 1)))
        for _ in range(WARMUP_CALLS):
            model.predict(batch)
        latencies = []
        for _ in range(int(spec.get("requests", 50))):
            begin = time.perf_counter()
            model.predict(batch)
            latencies.append((time.perf_counter() - begin) * 1000.0)
        state["latencies_ms"] = latencies
    except BaseException as err:
        state["predict_error"] = f"{type(err).__name__}: {err}"
        state["traceback"] = traceback.format_exc()[-3000:]
    state["stage"] = "done"
    return state


def main(argv: list[str]) -> int:
    spec_path, out = argv
    with open(spec_path) as handle:
        spec = json.load(handle)
    _write(out, probe(spec, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
