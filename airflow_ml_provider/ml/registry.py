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


# Spec keys that name user code a step calls, as "module:function" (dotted paths into the spec).
STEP_USER_REFERENCES: dict[str, tuple[str, ...]] = {
    "train_model": ("run_fn",),
    "tune": ("objective.ref",),
}


def user_references(step: str, spec: dict[str, Any]) -> list[tuple[str, str]]:
    """
    The ``(what, "module:function")`` pairs of user code a step will import: a step that is itself
    a reference, and the references its spec names (a training ``run_fn``, a tuning objective).

    :param step: a built-in step name or a ``package.module:function`` reference.
    :param spec: the step's input.
    """
    found: list[tuple[str, str]] = [] if step in BUILTIN_STEPS else [("step", step)]
    for path in STEP_USER_REFERENCES.get(step, ()):
        value: Any = spec
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            found.append((path.split(".", 1)[0], value))
    return found


def check_reference(ref: str) -> str | None:
    """
    Check cheaply that ``ref`` will resolve in this interpreter; return the problem, or None.

    Cheap means without importing the module (which may import TensorFlow): its parent packages
    are imported (``find_spec`` needs them), the module itself is only found and, when its source
    is at hand, parsed to see that the function is bound at its top level. Anything that cannot be
    told without running the module (a star import, a module ``__getattr__``, a compiled module)
    passes, and the import in the worker decides.

    :param ref: a ``package.module:function`` reference (see :func:`step_reference`).
    :returns: what is wrong and what to do, in one sentence; None when it resolves or may resolve.
    """
    import importlib.util

    module_name, _, func_name = step_reference(ref).partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError as err:  # a parent package is missing
        spec, missing = None, err.name or module_name
    except Exception as err:  # a parent package failed to import
        return f"importing the packages of module {module_name!r} failed ({type(err).__name__}: {err})"
    else:
        missing = module_name
    if spec is None:
        looking = f" (looking for {module_name!r})" if missing != module_name else ""
        return (
            f"no module named {missing!r}{looking}: install the package that holds it in this "
            "interpreter's environment, or put its folder on PYTHONPATH (the local launcher adds the DAG "
            "file's folder; for Kubernetes the module must be in the image)"
        )
    origin = spec.origin if spec.has_location else None
    if not origin or not origin.endswith(".py"):
        return None
    try:
        with open(origin, encoding="utf-8") as handle:
            source = handle.read()
    except OSError:
        return None
    return _check_top_level_name(source, origin, module_name, func_name)


def _top_level_names(tree: Any) -> set[str] | None:
    """
    The names a module's top level binds (``def``, ``class``, imports, assignments, also inside
    top-level ``if`` / ``try`` / ``with`` / loops); None when a star import may bind any name.

    :param tree: the module's ``ast.Module``.
    """
    import ast

    names: set[str] = set()
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(alias.name == "*" for alias in node.names):
                return None
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While | ast.ExceptHandler):
            for field in ("body", "orelse", "finalbody", "handlers"):
                pending.extend(getattr(node, field, []))
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            stored = (n for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
            names.update(n.id for n in stored)
    return names


def _check_top_level_name(source: str, origin: str, module_name: str, func_name: str) -> str | None:
    """The problem with ``func_name`` in the module's source, or None when it is (or may be) bound."""
    import ast

    try:
        tree = ast.parse(source, filename=origin)
    except SyntaxError as err:
        return f"module {module_name!r} ({origin}) has a syntax error at line {err.lineno}: {err.msg}"
    names = _top_level_names(tree)
    if names is None or func_name in names or "__getattr__" in names:  # __getattr__: any name may exist
        return None
    return (
        f"module {module_name!r} ({origin}) defines no {func_name!r} at its top level: fix the name, or "
        "define the function at the top level of that module"
    )
