"""
A ``run_fn`` for the demo churn datasets (``generate_dataset``): the template for your own.

Reference it as ``"airflow_ml_provider.ml.training.demo:run_fn"``. Hyperparameters (all optional):
``epochs`` (5), ``batch_size`` (global, split across replicas: 256), ``learning_rate`` (0.01),
``hidden_units`` (32). Without ``eval_uri`` it holds out 20 % of the training rows (fixed seed).
With ``checkpoint_every``, ``ctx.callbacks()`` makes ``fit`` resume at the last checkpoint's epoch.
"""

from __future__ import annotations

from typing import Any

from airflow_ml_provider.ml.datagen import FEATURES, LABEL
from airflow_ml_provider.ml.training.context import TrainingContext

DEFAULTS: dict[str, Any] = {"epochs": 5, "batch_size": 256, "learning_rate": 0.01, "hidden_units": 32}
HOLDOUT_FRACTION = 0.2
ADAPT_BATCH = 8192


def _split(ctx: TrainingContext) -> tuple[Any, Any]:
    train = ctx.read_train()
    if ctx.eval_uri:
        return train, ctx.read_eval()
    held_out = train.sample(frac=HOLDOUT_FRACTION, random_state=0)
    return train.drop(held_out.index), held_out


def _columns(frame: Any) -> dict[str, Any]:
    import numpy as np

    columns = {}
    for name, kind in FEATURES.items():
        values = frame[name].to_numpy()
        columns[name] = (
            values.astype(str).reshape(-1, 1)
            if kind == "categorical"
            else values.astype(np.float32).reshape(-1, 1)
        )
    return columns


def make_dataset(frame: Any, batch_size: int, *, shuffle: bool) -> Any:
    """A batched tf.data pipeline of (feature dict, label), sharded by data across workers."""
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((_columns(frame), frame[LABEL].to_numpy().astype("float32")))
    if shuffle:
        data = data.shuffle(min(len(frame), 10_000), seed=0, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


def build_model(ctx: TrainingContext, train: Any, hp: dict[str, Any]) -> Any:
    """Normalization for numbers, one-hot lookup for categories, one hidden layer, a sigmoid."""
    keras = ctx.keras
    inputs, encoded = {}, []
    for name, kind in FEATURES.items():
        if kind == "categorical":
            inputs[name] = keras.Input(shape=(1,), name=name, dtype="string")
            vocabulary = sorted(train[name].dropna().astype(str).unique())
            lookup = keras.layers.StringLookup(vocabulary=vocabulary, output_mode="one_hot")
            encoded.append(lookup(inputs[name]))
        else:
            inputs[name] = keras.Input(shape=(1,), name=name, dtype="float32")
            norm = keras.layers.Normalization()
            # adapt() defaults to batches of 32: 10 s per feature at 160k rows, against 0.1 s.
            norm.adapt(train[[name]].to_numpy().astype("float32"), batch_size=ADAPT_BATCH)
            encoded.append(norm(inputs[name]))
    hidden = keras.layers.Dense(int(hp["hidden_units"]), activation="relu")(
        keras.layers.Concatenate()(encoded)
    )
    output = keras.layers.Dense(1, activation="sigmoid", name="probability")(hidden)
    model = keras.Model(inputs, output)
    model.compile(
        optimizer=keras.optimizers.Adam(float(hp["learning_rate"])),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return model


def run_fn(ctx: TrainingContext) -> Any:
    """Train the demo classifier under ``ctx.strategy``; return the model for the step to export."""
    hp = {**DEFAULTS, **ctx.hyperparameters}
    train, evaluation = _split(ctx)
    with ctx.strategy.scope():
        model = build_model(ctx, train, hp)
        ctx.load_warm_start(model)
    batch_size = int(hp["batch_size"])
    model.fit(
        make_dataset(train, batch_size, shuffle=True),
        validation_data=make_dataset(evaluation, batch_size, shuffle=False),
        epochs=int(hp["epochs"]),
        callbacks=ctx.callbacks(),
        verbose=2,
    )
    return model
