"""
The fixed small problem of ``benchmarks/tuning.py``: a one-hidden-layer network on the demo churn
data, trained with minibatch SGD (momentum, L2) in NumPy, one thread, 20 epochs; the objective is
the validation log loss, reported after every epoch (so the pruner can stop a trial).

Every call to :func:`objective` appends ``{"number", "compute_seconds", "epochs"}`` to
``<custom_config["record_dir"]>/<pid>.jsonl``: the time spent inside the model's own work, which
the benchmark sets against the workers' wall time to measure the orchestration around it.

The value is a deterministic function of the hyperparameters (fixed initialization and shuffling),
so samplers are compared on the same landscape.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

EPOCHS = 20
BATCH = 128
DIVERGED_LOSS = 5.0  # the weights overflowed: a bad configuration, not a failed trial
HOLDOUT = 0.2
# Wide ranges, as written by someone who does not know the right scale yet: much of the space
# learns slowly, overfits or diverges, and the good region is small.
SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 10.0, "log": True},
    "hidden_units": {"type": "int", "low": 2, "high": 256, "log": True},
    "l2": {"type": "float", "low": 1e-7, "high": 1.0, "log": True},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99},
}
# The same kind of configurations on a grid: every case of the speed comparison runs all of them.
GRID_SPACE = {
    "learning_rate": [0.01, 0.03, 0.1],
    "hidden_units": [16, 32],
    "l2": [1e-5, 1e-3],
    "momentum": [0.0, 0.9],
}

_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def load(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The CSV as standardized numbers and one-hot categories, split 80/20 with a fixed seed (cached)."""
    if path in _cache:
        return _cache[path]
    import pandas as pd

    from airflow_ml_provider.ml.datagen import FEATURES, LABEL

    frame = pd.concat([pd.read_csv(p) for p in sorted(Path(path).glob("*.csv"))], ignore_index=True)
    columns = []
    for name, kind in FEATURES.items():
        if kind == "categorical":
            columns.append(pd.get_dummies(frame[name].astype(str), prefix=name).to_numpy(np.float64))
        else:
            values = frame[name].to_numpy(np.float64).reshape(-1, 1)
            values = np.nan_to_num(values, nan=np.nanmean(values))
            columns.append((values - values.mean()) / (values.std() or 1.0))
    x = np.hstack(columns)
    y = frame[LABEL].to_numpy(np.float64)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(len(y) * (1 - HOLDOUT))
    train, held = order[:cut], order[cut:]
    _cache[path] = (x[train], y[train], x[held], y[held])
    return _cache[path]


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def objective(ctx: Any) -> float:
    """Train the network with the trial's hyperparameters; report the validation log loss per epoch."""
    hp = ctx.hyperparameters
    x, y, xv, yv = load(ctx.custom_config["data"])
    rng = np.random.default_rng(0)
    hidden = int(hp["hidden_units"])
    w1 = rng.normal(0, np.sqrt(2 / x.shape[1]), (x.shape[1], hidden))
    b1 = np.zeros(hidden)
    w2 = rng.normal(0, np.sqrt(1 / hidden), (hidden, 1))
    b2 = np.zeros(1)
    params = [w1, b1, w2, b2]
    velocity = [np.zeros_like(p) for p in params]
    lr, l2, momentum = float(hp["learning_rate"]), float(hp["l2"]), float(hp["momentum"])
    compute, epochs, loss = 0.0, 0, float("nan")
    # A learning rate near 10 diverges on purpose (the search must learn to avoid it): no warnings.
    errors = np.seterr(all="ignore")
    try:
        for epoch in range(int(ctx.custom_config.get("epochs", EPOCHS))):
            started = time.perf_counter()
            order = rng.permutation(len(y))
            for start in range(0, len(y), BATCH):
                rows = order[start : start + BATCH]
                xb, yb = x[rows], y[rows].reshape(-1, 1)
                h = np.maximum(xb @ w1 + b1, 0)
                p = _sigmoid(h @ w2 + b2)
                d2 = (p - yb) / len(rows)
                dh = (d2 @ w2.T) * (h > 0)
                grads = [xb.T @ dh + l2 * w1, dh.sum(0), h.T @ d2 + l2 * w2, d2.sum(0)]
                for i, grad in enumerate(grads):
                    velocity[i] = momentum * velocity[i] - lr * grad
                    params[i] += velocity[i]
            hv = np.maximum(xv @ w1 + b1, 0)
            loss = _log_loss(_sigmoid(hv @ w2 + b2).ravel(), yv)
            diverged = not np.isfinite(loss)
            loss = DIVERGED_LOSS if diverged else loss
            compute += time.perf_counter() - started
            epochs += 1
            ctx.report(loss, epoch)  # may raise optuna.TrialPruned
            if diverged:
                break
    finally:
        np.seterr(**errors)
        record = Path(ctx.custom_config["record_dir"]) / f"{os.getpid()}.jsonl"
        with record.open("a") as out:
            out.write(json.dumps({"number": ctx.number, "compute_seconds": compute, "epochs": epochs}) + "\n")
    return loss
