"""Signature input names for model inputs TensorFlow cannot sign (scikit-learn's ``mean radius``)."""

from __future__ import annotations

import json

import pytest

from airflow_ml_provider.ml.training.signature import (
    INPUT_NAMES_FILE,
    is_signable,
    signature_input_names,
    write_input_names,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["age", "is_active"], {"age": "age", "is_active": "is_active"}),
        (["mean radius", "worst area"], {"mean radius": "mean_radius", "worst area": "worst_area"}),
        (["1st", "_x", "a/b", "ü"], {"1st": "input_1st", "_x": "input__x", "a/b": "a_b", "ü": "input__"}),
        # A safe name keeps its name; the renamed one takes a suffix instead of colliding with it.
        (["mean radius", "mean_radius"], {"mean radius": "mean_radius_2", "mean_radius": "mean_radius"}),
        (["a b", "a-b", "a_b_2"], {"a b": "a_b", "a-b": "a_b_3", "a_b_2": "a_b_2"}),
    ],
)
def test_signature_input_names_are_safe_unique_and_stable(names, expected):
    mapping = signature_input_names(names)
    assert mapping == expected
    assert all(is_signable(safe) for safe in mapping.values())
    assert len(set(mapping.values())) == len(names)


def test_the_mapping_is_written_only_when_an_input_was_renamed(tmp_path):
    write_input_names(str(tmp_path / "plain"), {"age": "age"})
    assert not (tmp_path / "plain").exists()
    write_input_names(str(tmp_path / "renamed"), {"age": "age", "mean radius": "mean_radius"})
    stored = json.loads((tmp_path / "renamed" / INPUT_NAMES_FILE).read_text())
    assert stored == {"inputs": {"mean_radius": "mean radius"}}


def test_the_pyfunc_model_reads_the_file_the_export_writes():
    from airflow_ml_provider.ml.training.step import PYFUNC_FILE

    # pyfunc_model.py is copied into every logged model and cannot import this provider.
    assert f'INPUT_NAMES_FILE = "{INPUT_NAMES_FILE}"' in open(PYFUNC_FILE).read()
