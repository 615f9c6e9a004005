"""Pick the evaluation engine: the in-memory fast path when it can, TFMA's Beam pipeline else."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from tensorflow_model_analysis.proto.config_pb2 import EvalConfig

    from airflow_ml_provider.ml.evaluation.results import EvalOutput

log = logging.getLogger(__name__)

ENGINES = ("auto", "fast", "beam")


def evaluate_frame(
    frame: pd.DataFrame,
    eval_config: EvalConfig,
    *,
    engine: str = "auto",
    beam_pipeline_args: list[str] | None = None,
    workdir: str,
) -> EvalOutput:
    """
    Metrics, diffs and threshold results of ``eval_config`` on ``frame``, with TFMA's semantics.

    ``auto`` takes the fast path when :func:`~airflow_ml_provider.ml.evaluation.fast_engine.unsupported_reasons`
    is empty, else TFMA's Beam pipeline, and says why in ``EvalOutput.notes``. Both engines return
    the same numbers and the same failures for what the fast path supports.

    :param frame: label, prediction(s), weight and slicing columns (others are ignored).
    :param eval_config: from :func:`~airflow_ml_provider.ml.evaluation.config.prepare_eval_config`.
    :param engine: ``"auto"``, ``"fast"`` or ``"beam"``.
    :param beam_pipeline_args: Beam options for the Beam engine (runner, parallelism ...).
    :param workdir: scratch directory (TFMA's output files, under ``tfma/``).
    :raises ValueError: for an unknown engine, empty data, columns the config names but the data
        lacks, or ``engine="fast"`` with a config the fast path does not support (with the reasons).
    """
    from airflow_ml_provider.ml.evaluation.beam_engine import evaluate_beam, frame_for_tfma
    from airflow_ml_provider.ml.evaluation.config import check_against_frame, needed_columns
    from airflow_ml_provider.ml.evaluation.fast_engine import evaluate_fast, unsupported_reasons

    if engine not in ENGINES:
        raise ValueError(f"evaluate_model: engine must be one of {list(ENGINES)}, got {engine!r}.")
    if len(frame) == 0:
        raise ValueError(
            "evaluate_model: the evaluation data has no rows; point data_uri at a non-empty version."
        )
    check_against_frame(eval_config, frame.columns)
    data = frame_for_tfma(frame, needed_columns(eval_config))
    started = time.monotonic()
    if engine == "beam":
        output = evaluate_beam(data, eval_config, workdir=workdir, pipeline_args=beam_pipeline_args)
    else:
        reasons = unsupported_reasons(eval_config, data)
        if not reasons:
            output = evaluate_fast(data, eval_config)
        elif engine == "fast":
            raise ValueError(
                "evaluate_model: engine='fast' cannot evaluate this eval_config: "
                + "; ".join(reasons)
                + ". Use engine='auto' or 'beam' (TFMA's Beam pipeline computes everything)."
            )
        else:
            log.info("Evaluating with TFMA's Beam pipeline: %s", "; ".join(reasons))
            output = evaluate_beam(data, eval_config, workdir=workdir, pipeline_args=beam_pipeline_args)
            output.notes.append("Beam engine, because the fast path does not take: " + "; ".join(reasons))
    log.info(
        "Evaluated %d rows with the %s engine in %.1f s: %d slices, %s.",
        len(data),
        output.engine,
        time.monotonic() - started,
        len(output.metrics),
        "thresholds met" if output.validation_ok else f"{len(output.failures)} failed thresholds",
    )
    return output
