"""
Columns TensorFlow cannot name in a signature (scikit-learn's ``mean radius``): train, export, serve.

Before the export renamed them, training ran and ``model.save`` then failed with TensorFlow's
"non-flat/non-unique argument names for SavedModel signature".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.harness import load_dag, run_dag, task_states, task_xcom

pytestmark = pytest.mark.integration

FEATURES = ["mean radius", "mean texture", "worst area"]


def test_spaced_column_names_train_export_and_predict_through_the_pyfunc(
    airflow_db, mlflow_conn, monkeypatch, tmp_path: Path
):
    import mlflow.pyfunc
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame[[*FEATURES, "target"]].rename(columns={"target": "label"})
    data = tmp_path / "version=0001"
    data.mkdir()
    frame.to_csv(data / "part-00000.csv", index=False)
    (data / "_SUCCESS").touch()

    dag_run = run_dag(load_dag("training_spaced_columns"), conf={"train_uri": str(data)})

    assert task_states(dag_run) == {"train": "success"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_conn.url)
    # Evaluation (both engines) and infra validation predict through this pyfunc model too.
    model = mlflow.pyfunc.load_model(task_xcom(dag_run, "train")["model_uri"])
    probabilities = model.predict(frame.drop(columns=["label"]).head(50))
    assert probabilities.shape == (50,)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    with pytest.raises(ValueError, match="missing column.*mean radius; it needs mean radius, mean texture"):
        model.predict(frame[["mean texture", "worst area"]])
