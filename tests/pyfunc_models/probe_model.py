"""A pyfunc "model from code" whose behaviour the infra validation tests choose in model_config."""

import time

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class ProbeModel(PythonModel):
    def load_context(self, context):
        self.behaviour = (context.model_config or {}).get("behaviour", "good")
        if self.behaviour == "fails_load":
            raise RuntimeError("weights file is corrupt")
        if self.behaviour == "hangs_load":
            time.sleep(600)

    def predict(self, context, model_input, params=None):
        values = model_input.select_dtypes("number").sum(axis=1).to_numpy(dtype="float64")
        if self.behaviour == "nan":
            values[::3] = np.nan
        if self.behaviour == "slow":
            time.sleep(0.05)
        if self.behaviour == "short":
            return values[:-1]
        if self.behaviour == "inverted":  # what a model learns from labels flipped upstream
            values = -values
        return 1 / (1 + np.exp(-values / 100))


mlflow.models.set_model(ProbeModel())
