"""Distributed TensorFlow training steps (work in progress: the cluster description comes first)."""

from __future__ import annotations
