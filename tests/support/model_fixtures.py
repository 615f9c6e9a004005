"""Small real models for the evaluation and promotion tests: scikit-learn, served by mlflow.pyfunc.

Three churn classifiers of known, ordered quality, trained on the demo generator's data:
``weak`` (one feature), ``medium`` (two) and ``good`` (all numeric features). They load without
TensorFlow, so the tests spend their time in evaluation and the registry, not in model loading.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow_ml_provider.ml.datagen import generate_dataset

FEATURE_SETS = {
    "weak": ["age"],
    "medium": ["age", "is_active"],
    "good": ["age", "income", "tenure_months", "balance", "num_products", "is_active"],
}

EVAL_CONFIG: dict[str, Any] = {
    "model_specs": [{"label_key": "label"}],
    "slicing_specs": [{}, {"feature_keys": ["region"]}],
    "metrics_specs": [
        {
            "metrics": [
                {"class_name": "ExampleCount"},
                {
                    "class_name": "AUC",
                    "threshold": {
                        "value_threshold": {"lower_bound": 0.55},
                        "change_threshold": {"direction": "HIGHER_IS_BETTER", "absolute": -0.002},
                    },
                },
                {"class_name": "BinaryAccuracy"},
                {"class_name": "Precision"},
                {"class_name": "Recall"},
            ]
        }
    ],
}


def churn_version(root: Path, rows: int = 4000, seed: int = 11, *, flip_labels: bool = False) -> str:
    """
    Write one demo dataset version under ``root``; return its URI.

    :param flip_labels: every label inverted, as an encoding bug upstream would leave them.
    """
    result = generate_dataset({"root": str(root), "versions": 1, "rows": rows, "seed": seed})
    uri = str(result["versions"][0]["uri"])
    if flip_labels:
        import pandas as pd

        for part in sorted(Path(uri).glob("part-*.csv")):
            frame = pd.read_csv(part)
            frame["label"] = 1 - frame["label"]
            frame.to_csv(part, index=False)
    return uri


def log_churn_model(tracking_uri: str, experiment: str, data_uri: str, quality: str) -> str:
    """Train a logistic regression on ``FEATURE_SETS[quality]``; log it; return ``models:/m-<id>``."""
    import mlflow
    import mlflow.sklearn
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from airflow_ml_provider.ml.training.context import read_table

    frame = read_table(data_uri)
    columns = FEATURE_SETS[quality]
    model = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), columns)]), LogisticRegression(max_iter=200)
    )
    model.fit(frame, frame["label"])
    os.environ["MLFLOW_LOG_UV_FILES"] = "false"  # do not copy the project's uv.lock into the model
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"train_{quality}"):
        info = mlflow.sklearn.log_model(
            model, name="model", pyfunc_predict_fn="predict_proba", pip_requirements=["scikit-learn"]
        )
    return str(info.model_uri)
