"""
Loaded at start-up by the step interpreters of ``reliability_crash`` (its validate and evaluate
tasks put this folder first on their steps' ``PYTHONPATH``): the pause points inside the steps,
which run in the step environment, not in the task process (see reliability_dags.py).
"""

import os

if os.environ.get("ML_TEST_PAUSE_DIR"):
    from steps_for_tests import install_step_pause_points

    install_step_pause_points()
