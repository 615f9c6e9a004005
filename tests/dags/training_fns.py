"""run_fn functions for the training tests (importable by the worker processes: this folder is on their path)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from airflow_ml_provider.ml.training.context import TrainingContext
from airflow_ml_provider.ml.training.demo import build_model, make_dataset


def slow_run_fn(ctx: TrainingContext) -> Any:
    """The demo model, one slow epoch after another; writes worker-<i>.pid when fit() starts."""
    train = ctx.read_train()
    with ctx.strategy.scope():
        model = build_model(ctx, train, {"hidden_units": 8, "learning_rate": 0.01})
    marker = Path(ctx.custom_config["marker_dir"]) / f"worker-{ctx.role.index}.pid"

    class Slow(ctx.keras.callbacks.Callback):  # type: ignore[name-defined,misc]
        def on_train_begin(self, logs: Any = None) -> None:
            marker.write_text(str(os.getpid()))

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            time.sleep(0.5)

    model.fit(make_dataset(train, 128, shuffle=False), epochs=1000, callbacks=[Slow()], verbose=0)
    return model
