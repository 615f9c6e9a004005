"""A run_fn over columns named as scikit-learn names them (``mean radius``): no valid TensorFlow names."""

from __future__ import annotations

from typing import Any

from airflow_ml_provider.ml.training.context import TrainingContext


def spaced_columns_run_fn(ctx: TrainingContext) -> Any:
    """A logistic regression with one Keras input per feature column, named as the column; one epoch."""
    keras = ctx.keras
    frame = ctx.read_train()
    features = [c for c in frame.columns if c != "label"]
    with ctx.strategy.scope():
        inputs = {name: keras.Input(shape=(1,), name=name, dtype="float32") for name in features}
        normalized = keras.layers.BatchNormalization()(keras.layers.Concatenate()(list(inputs.values())))
        output = keras.layers.Dense(1, activation="sigmoid", name="probability")(normalized)
        model = keras.Model(inputs, output)
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(
        {name: frame[name].to_numpy("float32").reshape(-1, 1) for name in features},
        frame["label"].to_numpy("float32"),
        batch_size=64,
        epochs=int(ctx.hyperparameters.get("epochs", 1)),
        verbose=0,
    )
    return model
