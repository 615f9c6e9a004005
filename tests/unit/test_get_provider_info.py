"""Provider metadata: valid against Airflow's own schema, and everything it names exists."""

from __future__ import annotations

import importlib
import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from airflow_ml_provider.get_provider_info import get_provider_info

pytestmark = pytest.mark.unit


def _schema(name: str) -> dict:
    import airflow

    return json.loads((Path(airflow.__file__).parent / name).read_text())


def _listed_modules() -> list[str]:
    info = get_provider_info()
    modules = [
        m
        for section in ("hooks", "operators", "sensors", "triggers")
        for entry in info.get(section, [])
        for m in entry["python-modules"]
    ]
    return sorted(set(modules))


def _listed_classes() -> list[str]:
    info = get_provider_info()
    classes = [c["hook-class-name"] for c in info.get("connection-types", [])]
    classes += info.get("extra-links", [])
    classes += [p["plugin-class"] for p in info.get("plugins", [])]
    return classes


def test_matches_airflow_provider_info_schema():
    import jsonschema

    jsonschema.validate(get_provider_info(), _schema("provider_info.schema.json"))


def test_ui_field_behaviour_matches_airflow_schema():
    import jsonschema

    (conn,) = get_provider_info()["connection-types"]
    behaviour = conn["ui-field-behaviour"]
    as_python = {
        "hidden_fields": behaviour["hidden-fields"],
        "relabeling": behaviour["relabeling"],
        "placeholders": behaviour["placeholders"],
    }
    jsonschema.validate(as_python, _schema("customized_form_field_behaviours.schema.json"))
    assert behaviour["relabeling"]["host"] == "Tracking URI"


def test_entry_point_is_registered():
    (ep,) = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_ml_provider")
    ]
    assert ep.load() is get_provider_info


@pytest.mark.parametrize("module", _listed_modules())
def test_listed_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("path", _listed_classes())
def test_listed_class_exists(path):
    module, _, name = path.rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), name), type)


def test_connection_type_matches_hook():
    from airflow_ml_provider.hooks.mlflow import MlflowHook

    (conn,) = get_provider_info()["connection-types"]
    assert conn["connection-type"] == MlflowHook.conn_type == "mlflow"
    assert conn["hook-name"] == MlflowHook.hook_name
    # Every connection form field is an extra the hook reads by name.
    assert set(conn["conn-fields"]) == set(MlflowHook.EXTRA_KEYS)


def test_every_operator_module_is_listed():
    package = Path(importlib.import_module("airflow_ml_provider").__file__).parent
    listed = set(_listed_modules())
    for section in ("operators", "hooks", "sensors", "triggers"):
        for path in (package / section).glob("*.py"):
            if path.name.startswith("_"):
                continue
            assert f"airflow_ml_provider.{section}.{path.stem}" in listed, (
                f"{path} is not in get_provider_info()"
            )
