"""Objective functions for the tuning tests (importable by the worker processes: this folder is on their path).

Every call leaves a marker ``<marker_dir>/trial-<number>-<pid>.json`` with the trial's params, so the
tests can count how often each trial really ran.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

STEPS = 5


def _mark(ctx: Any) -> Path:
    folder = Path(ctx.custom_config["marker_dir"])
    path = folder / f"trial-{ctx.number}-{os.getpid()}.json"
    path.write_text(json.dumps({"number": ctx.number, "params": ctx.params, "worker": ctx.worker}))
    return folder


def quadratic(ctx: Any) -> float:
    """(x - 2)^2, +1 for kind 'b'; the reported value falls towards it over STEPS steps."""
    _mark(ctx)
    final = (ctx.hyperparameters["x"] - 2) ** 2 + (1.0 if ctx.hyperparameters["kind"] == "b" else 0.0)
    for step in range(STEPS):
        time.sleep(float(ctx.custom_config.get("step_seconds", 0.05)))
        ctx.report(final + 1.0 / (step + 1), step)
    return final


def fails_below_zero(ctx: Any) -> float:
    """quadratic, but a trial with x < 0 raises."""
    if ctx.hyperparameters["x"] < 0:
        _mark(ctx)
        raise RuntimeError(f"x={ctx.hyperparameters['x']:.3f} is below zero")
    return quadratic(ctx)


def always_fails(ctx: Any) -> float:
    _mark(ctx)
    raise RuntimeError("the objective is broken")


def dies_once(ctx: Any) -> float:
    """quadratic; the first trial numbered ``die_at`` kills its own worker process (SIGKILL) mid-way."""
    folder = _mark(ctx)
    armed = folder / "armed"
    if ctx.number == int(ctx.custom_config["die_at"]) and armed.exists():
        armed.unlink()
        ctx.report(100.0, 0)
        os.kill(os.getpid(), signal.SIGKILL)
    return quadratic(ctx)
