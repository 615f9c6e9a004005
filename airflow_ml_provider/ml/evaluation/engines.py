"""Pick the evaluation engine: the in-memory fast path when it can, TFMA's Beam pipeline else."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from tensorflow_model_analysis.proto.config_pb2 import EvalConfig

    from airflow_ml_provider.ml.evaluation.results import EvalOutput

log = logging.getLogger(__name__)


def evaluate_frame(
    frame: pd.DataFrame,
    config: EvalConfig,
    *,
    engine: str = "auto",
    beam_pipeline_args: list[str] | None = None,
    workdir: str,
) -> EvalOutput:
    """
    Metrics, diffs and threshold results of ``config`` on ``frame``.

    :param frame: label, prediction(s), weight and slicing columns.
    :param config: from :func:`~airflow_ml_provider.ml.evaluation.config.prepare_eval_config`.
    :param engine: ``"auto"`` (fast when the config allows it), ``"fast"`` or ``"beam"``.
    :param beam_pipeline_args: Beam options for the Beam engine.
    :param workdir: scratch directory (TFMA's output files).
    """
    from airflow_ml_provider.ml.evaluation.beam_engine import evaluate_beam
    from airflow_ml_provider.ml.evaluation.fast_engine import evaluate_fast, unsupported_reasons

    if engine == "beam":
        return evaluate_beam(frame, config, workdir=workdir, pipeline_args=beam_pipeline_args)
    reasons = unsupported_reasons(config, frame)
    if not reasons:
        return evaluate_fast(frame, config)
    if engine == "fast":
        raise ValueError(
            "evaluate_model: engine='fast' cannot evaluate this eval_config: "
            + "; ".join(reasons)
            + ". Use engine='auto' or 'beam' (TFMA's Beam pipeline computes everything)."
        )
    log.info("Evaluating with TFMA's Beam pipeline: %s", "; ".join(reasons))
    output = evaluate_beam(frame, config, workdir=workdir, pipeline_args=beam_pipeline_args)
    output.notes.append("Beam engine: " + "; ".join(reasons))
    return output
