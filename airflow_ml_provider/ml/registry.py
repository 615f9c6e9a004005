"""Names of the built-in steps, resolved lazily to their functions."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Spec = dict[str, Any]
Result = dict[str, Any]
StepFn = Callable[[Spec], Result]

# name -> "module:function". Modules are imported only when the step runs.
BUILTIN_STEPS: dict[str, str] = {
    "echo": "airflow_ml_provider.ml.basic:echo",
    "describe_dataset": "airflow_ml_provider.ml.basic:describe_dataset",
    "generate_dataset": "airflow_ml_provider.ml.datagen:generate_dataset",
    "validate_data": "airflow_ml_provider.ml.validation:validate_data",
    "infer_schema": "airflow_ml_provider.ml.validation:infer_schema",
    "train_model": "airflow_ml_provider.ml.training.step:train",
    "evaluate_model": "airflow_ml_provider.ml.evaluation.step:evaluate_model",
    "infra_validate": "airflow_ml_provider.ml.evaluation.infra:infra_validate",
    "tune": "airflow_ml_provider.ml.tuning.worker:tune",
    "tuning_summary": "airflow_ml_provider.ml.tuning.summary:summarize",
}


def step_reference(step: str) -> str:
    """
    Return the ``module:function`` reference of a step.

    :param step: a built-in step name (see ``BUILTIN_STEPS``) or a ``package.module:function``
        reference to a function of the user's own.
    """
    if step in BUILTIN_STEPS:
        return BUILTIN_STEPS[step]
    module, sep, func = step.partition(":")
    if (
        not sep
        or not module
        or not func
        or not all(p.isidentifier() for p in module.split("."))
        or not func.isidentifier()
    ):
        known = ", ".join(sorted(BUILTIN_STEPS))
        raise ValueError(
            f"Unknown step {step!r}: give a built-in step name ({known}) "
            "or a reference of the form 'package.module:function'."
        )
    return step


def resolve_step(step: str) -> StepFn:
    """Import and return the function behind a step name or ``module:function`` reference."""
    module_name, _, func_name = step_reference(step).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"Step {step!r}: cannot import module {module_name!r} ({err}). Is the package that "
            "holds it installed in the interpreter that runs the step?"
        ) from err
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"Step {step!r}: module {module_name!r} has no function {func_name!r}.")
    return func  # type: ignore[no-any-return,unused-ignore]
