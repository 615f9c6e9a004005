"""The training step's TensorFlow set-up, in a fresh interpreter (as a worker process starts)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

PROBE = textwrap.dedent(
    """
    import json, os
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tf_keras
    from tensorflow.python.autograph.core import config
    from tensorflow.python.autograph.impl.conversion import is_allowlisted

    def user_fn(x):
        return x

    before = is_allowlisted(tf_keras.Model.train_step)
    from airflow_ml_provider.ml.training.step import import_tensorflow
    import_tensorflow()
    rules = len(config.CONVERSION_RULES)
    import_tensorflow()
    print(json.dumps({
        "before": bool(before),
        "after": bool(is_allowlisted(tf_keras.Model.train_step)),
        "user_fn": bool(is_allowlisted(user_fn)),
        "idempotent": rules == len(config.CONVERSION_RULES),
        "legacy_keras": tf.keras.__name__.startswith("tf_keras"),
    }))
    """
)


def test_autograph_leaves_tf_keras_unconverted_and_user_code_converted():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Without the rule AutoGraph rewrites Keras' training loop on the first fit (~20 s here).
    assert result == {
        "before": False,
        "after": True,
        "user_fn": False,
        "idempotent": True,
        "legacy_keras": True,
    }
