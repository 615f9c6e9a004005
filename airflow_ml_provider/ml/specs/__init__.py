"""
Each built-in step's spec, declared once as a type that both sides parse.

A spec travels as a plain JSON dict (the step entrypoint's ``--spec`` file, a pod's annotation,
the task's ``step/spec.json``). Its type, a frozen dataclass here, is the one place its keys, their
meaning and their checks are declared: the step parses its spec first thing (``XSpec.parse``), and
the operator calls :func:`check_spec` before anything starts, so a bad key fails the task at once
with a ValueError naming it. Standard library only: DAG files and the scheduler may import this.

=====================  ===================================================================
step                   type
=====================  ===================================================================
``echo``               :class:`~.basic.EchoSpec`
``describe_dataset``   :class:`~.basic.DescribeDatasetSpec`
``generate_dataset``   :class:`~.datagen.GenerateDatasetSpec`
``validate_data``      :class:`~.validation.ValidateDataSpec`
``infer_schema``       :class:`~.validation.InferSchemaSpec`
``train_model``        :class:`~.training.TrainModelSpec`
``evaluate_model``     :class:`~.evaluation.EvaluateModelSpec`
``infra_validate``     :class:`~.evaluation.InfraValidateSpec`
``tune``               :class:`~.tuning.TuneSpec`
``tuning_summary``     :class:`~.tuning.TuningSummarySpec`
=====================  ===================================================================
"""

from __future__ import annotations

from typing import Any

from airflow_ml_provider.ml.specs._base import VOLATILE_KEYS, StepSpec
from airflow_ml_provider.ml.specs.basic import DescribeDatasetSpec, EchoSpec
from airflow_ml_provider.ml.specs.datagen import GenerateDatasetSpec
from airflow_ml_provider.ml.specs.evaluation import EvaluateModelSpec, InfraValidateSpec
from airflow_ml_provider.ml.specs.training import MlflowTarget, TrainingInputs, TrainModelSpec
from airflow_ml_provider.ml.specs.tuning import (
    StudyLocation,
    StudyOptions,
    TuneObjective,
    TuneSpec,
    TuningSummarySpec,
)
from airflow_ml_provider.ml.specs.validation import InferSchemaSpec, ValidateDataSpec

__all__ = [
    "SPEC_TYPES",
    "VOLATILE_KEYS",
    "DescribeDatasetSpec",
    "EchoSpec",
    "EvaluateModelSpec",
    "GenerateDatasetSpec",
    "InferSchemaSpec",
    "InfraValidateSpec",
    "MlflowTarget",
    "StepSpec",
    "StudyLocation",
    "StudyOptions",
    "TrainModelSpec",
    "TrainingInputs",
    "TuneObjective",
    "TuneSpec",
    "TuningSummarySpec",
    "ValidateDataSpec",
    "check_spec",
    "spec_type",
]

#: the spec type of every built-in step (the keys of ``registry.BUILTIN_STEPS``)
SPEC_TYPES: dict[str, type[StepSpec]] = {
    cls.step: cls
    for cls in (
        EchoSpec,
        DescribeDatasetSpec,
        GenerateDatasetSpec,
        ValidateDataSpec,
        InferSchemaSpec,
        TrainModelSpec,
        EvaluateModelSpec,
        InfraValidateSpec,
        TuneSpec,
        TuningSummarySpec,
    )
}


def spec_type(step: str) -> type[StepSpec] | None:
    """
    The spec type of a built-in step; None for a ``package.module:function`` step of the user's.

    :param step: a step name or reference.
    """
    return SPEC_TYPES.get(step)


def check_spec(step: str, spec: dict[str, Any]) -> None:
    """
    Check a step's spec against its type before anything starts; nothing for the user's own steps.

    :param step: a built-in step name or a ``package.module:function`` reference.
    :param spec: the spec as it will go to the step.
    :raises ValueError: naming the first bad key and what to give instead.
    """
    cls = spec_type(step)
    if cls is not None:
        cls.parse(spec)
