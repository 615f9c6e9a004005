"""Distributed TensorFlow training: the ``train_model`` step, the ``run_fn`` contract, TF_CONFIG."""

from __future__ import annotations
