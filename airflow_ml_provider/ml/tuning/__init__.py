"""Hyperparameter tuning on Optuna: search spaces as data, workers sharing a study, MLflow child runs.

Steps: ``tune`` (one worker's loop over the shared study, :mod:`.worker`) and ``tuning_summary``
(the best trial, counts, pruning savings and plots, :mod:`.summary`). Nothing here imports
Airflow; Optuna, TensorFlow and MLflow are imported inside functions.
"""
