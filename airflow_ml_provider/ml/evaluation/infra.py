"""
The ``infra_validate`` step: does the candidate load and serve, in a process of its own?

TFX's InfraValidator idea without a serving stack: the model is loaded with ``mlflow.pyfunc`` in a
separate Python process (``infra_probe``) under timeouts, predicts sample rows of the dataset
version, and is timed on single requests. Checks: ``load``, ``predict``, ``output_shape`` (one
prediction per row), ``finite`` (no NaN / inf), and ``latency_p50`` / ``latency_p99`` when bounds
are given. A failing model is a failed check in the result (the "infra blessing"), never an
exception; a bad spec is a ValueError.

Spec: :class:`~airflow_ml_provider.ml.specs.InfraValidateSpec`, as a JSON dict.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from airflow_ml_provider.ml.scratch import scratch_dir
from airflow_ml_provider.ml.specs.evaluation import InfraValidateSpec

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1


def sample_rows(settings: InfraValidateSpec) -> list[dict[str, Any]]:
    """The first ``sample_rows`` rows, without ``drop_columns``, as JSON-able dicts."""
    if settings.rows:
        rows = list(settings.rows)[: settings.sample_rows]
        return [{k: v for k, v in row.items() if k not in settings.drop_columns} for row in rows]
    from airflow_ml_provider.ml.training.context import read_table

    frame = read_table(str(settings.data_uri), settings.format).head(settings.sample_rows)
    frame = frame.drop(columns=[c for c in settings.drop_columns if c in frame.columns])
    return json.loads(frame.to_json(orient="records"))


def _read_state(path: str) -> dict[str, Any]:
    try:
        with open(path) as handle:
            return dict(json.load(handle))
    except (OSError, ValueError):
        return {}


def _kill(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def run_probe(settings: InfraValidateSpec, rows: list[dict[str, Any]], workdir: str) -> dict[str, Any]:
    """Run the probe process; return its state, with ``timeout`` set when it was killed."""
    spec_path, out = os.path.join(workdir, "spec.json"), os.path.join(workdir, "state.json")
    probe = {
        "model_uri": settings.model_uri,
        "batch_size": settings.batch_size,
        "requests": settings.requests,
    }
    with open(spec_path, "w") as handle:
        json.dump({**probe, "rows": rows}, handle)
    env = dict(os.environ)
    if settings.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    with open(os.path.join(workdir, "output.log"), "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow_ml_provider.ml.evaluation.infra_probe", spec_path, out],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills the model's children too
        )
        started, stage_started = time.monotonic(), time.monotonic()
        stage = "loading"
        while process.poll() is None:
            state = _read_state(out)
            if state.get("stage") == "loaded" and stage == "loading":
                stage, stage_started = "loaded", time.monotonic()
            limit = settings.load_timeout if stage == "loading" else settings.timeout
            if time.monotonic() - stage_started > limit:
                _kill(process)
                return {**_read_state(out), "timeout": stage, "limit": limit}
            time.sleep(POLL_SECONDS)
        log.info("Probe exited with %s after %.1f s", process.returncode, time.monotonic() - started)
    state = _read_state(out)
    if state.get("stage") != "done":
        with open(os.path.join(workdir, "output.log"), errors="replace") as handle:
            tail = handle.read()[-2000:]
        state["crash"] = f"the probe process exited with code {process.returncode}: {tail}"
    return state


def _checks(settings: InfraValidateSpec, state: dict[str, Any], rows: int) -> list[dict[str, Any]]:
    import numpy as np

    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"name": name, "ok": ok, "detail": detail})

    if state.get("timeout") == "loading":
        check("load", False, f"did not load within load_timeout={state['limit']:g} s")
        return checks
    if "load_error" in state or ("crash" in state and "load_seconds" not in state):
        check("load", False, state.get("load_error") or state.get("crash", ""))
        return checks
    check("load", True, f"loaded in {state.get('load_seconds', 0):.2f} s")
    if (
        state.get("timeout") == "loaded"
        or "predict_error" in state
        or "crash" in state
        or "output" not in state
    ):
        reason = (
            state.get("predict_error")
            or state.get("crash")
            or f"no answer within timeout={state.get('limit', 0):g} s"
        )
        check("predict", False, reason)
        if "output" not in state:
            return checks
    else:
        check("predict", True, f"{rows} rows")
    output = state["output"]
    shape = output["shape"]
    check(
        "output_shape", bool(shape) and shape[0] == rows and len(shape) <= 2, f"shape {shape} for {rows} rows"
    )
    bad = output.get("non_finite")
    check("finite", bad == 0, "not numeric" if bad is None else f"{bad} NaN/inf values")
    latencies = state.get("latencies_ms") or []
    for name, bound in sorted(settings.max_latency_ms.items()):
        if not latencies:
            check(f"latency_{name}", False, "no timed requests")
            continue
        value = float(np.percentile(latencies, int(name[1:])))
        check(f"latency_{name}", value <= bound, f"{value:.2f} ms (bound {bound:g} ms)")
    return checks


def infra_validate(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Load and serve the model in a separate process; return the infra blessing.

    :param spec: an :class:`~airflow_ml_provider.ml.specs.InfraValidateSpec` as a JSON dict.
    """
    settings = InfraValidateSpec.parse(spec)
    import numpy as np

    rows = sample_rows(settings)
    if not rows:
        raise ValueError(f"infra_validate: no sample rows in {settings.data_uri!r}.")
    with scratch_dir("infra-validation") as workdir:
        state = run_probe(settings, rows, workdir)
    checks = _checks(settings, state, len(rows))
    failures = [f"{c['name']}: {c['detail']}" for c in checks if not c["ok"]]
    latencies = state.get("latencies_ms") or []
    latency = {}
    if latencies:
        latency = {
            "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)),
            "mean": float(np.mean(latencies)),
        }
    blessed = not failures
    result = {
        "blessed": blessed,
        "model_uri": settings.model_uri,
        "checks": checks,
        "failures": failures,
        "latency_ms": latency,
        "load_seconds": state.get("load_seconds"),
        "rows": len(rows),
        "mlflow": {
            "metrics": {f"infra.latency_{k}_ms": v for k, v in latency.items()}
            | ({"infra.load_seconds": state["load_seconds"]} if state.get("load_seconds") else {}),
            "tags": {"airflow_ml.infra_blessed": str(blessed).lower()},
        },
    }
    if settings.output_dir:
        os.makedirs(settings.output_dir, exist_ok=True)
        with open(os.path.join(settings.output_dir, "infra_validation.json"), "w") as handle:
            json.dump({**result, "traceback": state.get("traceback")}, handle, indent=1)
    log.info(
        "%s: %s%s",
        settings.model_uri,
        "INFRA BLESSED" if blessed else "NOT INFRA BLESSED",
        "".join(f"\n  - {f}" for f in failures),
    )
    return result
