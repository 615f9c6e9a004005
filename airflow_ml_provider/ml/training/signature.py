"""
Names of the serving signature's inputs: a safe name for every model input that TensorFlow cannot sign.

TensorFlow turns a signature argument's name into a Python parameter name (letters, digits and
``_``, not starting with a digit: ``function_type.sanitize_arg_name``) and names the argument's
placeholder after the original; when the two differ (``mean radius``, scikit-learn's column names)
``model.save`` fails with "non-flat/non-unique argument names for SavedModel signature". So the
export names such an input ``mean_radius`` in the signature and writes the mapping next to the
SavedModel (``assets.extra/input_names.json``, the place TensorFlow Serving keeps files it does not
load); the pyfunc model reads it and takes the original column names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

INPUT_NAMES_FILE = "assets.extra/input_names.json"
_SAFE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_]")


def is_signable(name: str) -> bool:
    """Whether TensorFlow keeps ``name`` as it is for a signature input."""
    return _SAFE.fullmatch(name) is not None


def signature_input_names(names: list[str]) -> dict[str, str]:
    """
    Map each model input name to its signature input name: itself when signable, else a safe name.

    A safe name replaces every other character than ASCII letters, digits and ``_`` with ``_``,
    prefixes ``input_`` when it would not start with a letter, and takes a ``_2``, ``_3`` ...
    suffix when another input already has it (``mean radius`` and ``mean_radius``).

    :param names: the model's input names, unique.
    """
    taken = {name for name in names if is_signable(name)}
    mapping: dict[str, str] = {}
    for name in names:
        if name in taken:
            mapping[name] = name
            continue
        base = _UNSAFE_CHAR.sub("_", name)
        base = base if base[:1].isalpha() else f"input_{base}"
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        mapping[name] = candidate
    return mapping


def write_input_names(export_dir: str, mapping: dict[str, str]) -> None:
    """
    Record the renamed inputs (signature name -> model input name) in the SavedModel directory.

    Nothing is written when no input was renamed, so such a SavedModel is what it always was.

    :param export_dir: the SavedModel directory.
    :param mapping: model input name -> signature input name, from :func:`signature_input_names`.
    """
    renamed = {safe: name for name, safe in mapping.items() if safe != name}
    if not renamed:
        return
    path = Path(export_dir) / INPUT_NAMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"inputs": renamed}, indent=2, sort_keys=True))
