"""
The shared names (airflow_ml_provider/vocabulary.py): unique, spelled out nowhere else, and the
same objects on the side that writes them and the side that reads them.

The scan reads the syntax tree of every module of the package. A module owned elsewhere that
still spells a name out is listed in ALLOWED, entry by entry; an entry that is no longer needed
fails the test, so the list only shrinks.
"""

from __future__ import annotations

import ast
import inspect
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_ml_provider import vocabulary as v

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "airflow_ml_provider"
VOCABULARY_FILE = PACKAGE / "vocabulary.py"

# Constants that name something (a tag, a metric, an artifact, an XCom key, a trial attribute,
# a state key, an experiment): unique across all kinds.
NAME_KINDS = ("TAG_", "METRIC_", "ARTIFACT_", "XCOM_", "TRIAL_ATTR_", "STATE_", "EXPERIMENT_")
# Constants that are a value of a tag (or an alias name): unique within their kind.
VALUE_KINDS = ("ROLE_", "STEP_", "TUNING_ROLE_", "PROMOTION_", "ALIAS_", "HISTORY_OUTCOME_", "MOVE_")
OTHER = {"FRESHNESS_STAGES"}
# The same string on purpose, in two places that never meet: an Optuna attribute and an MLflow
# tag or XCom key.
SAME_STRING = {
    frozenset({"TRIAL_ATTR_RUN_ID", "XCOM_RUN_ID"}),
    frozenset({"TRIAL_ATTR_WORKER", "TAG_TRIAL_WORKER"}),
}

# Literals in modules owned elsewhere that should become the vocabulary constant named in the
# comment. Remove an entry once its module imports the constant (the test says which ones).
ALLOWED: dict[str, set[str]] = {
    "airflow_ml_provider/ml/evaluation/step.py": {
        "airflow_ml.blessed",  # TAG_BLESSED
    },
    "airflow_ml_provider/ml/evaluation/infra.py": {
        "airflow_ml.infra_blessed",  # TAG_INFRA_BLESSED
    },
}
# Names that look like the vocabulary's but are no recorded name: they stay where they are.
LOCAL: dict[str, set[str]] = {
    "airflow_ml_provider/ml/specs/_base.py": {"airflow_ml.derived"},  # a dataclass field's metadata key
}


def _constants() -> dict[str, object]:
    return {name: value for name, value in vars(v).items() if name.isupper() and not name.startswith("_")}


def _names() -> dict[str, str]:
    return {n: val for n, val in _constants().items() if n.startswith(NAME_KINDS) and isinstance(val, str)}


def _by_kind(name: str) -> str | None:
    if name in OTHER:
        return name
    # TUNING_ROLE_ before ROLE_: the longest matching prefix decides.
    kinds = sorted((k for k in NAME_KINDS + VALUE_KINDS if name.startswith(k)), key=len, reverse=True)
    return kinds[0] if kinds else None


# -- (a) the values -------------------------------------------------------------------------------


def test_every_constant_has_a_kind():
    assert [n for n in _constants() if _by_kind(n) is None] == []


def test_vocabulary_imports_nothing():
    tree = ast.parse(VOCABULARY_FILE.read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else ", ".join(a.name for a in node.names)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    assert set(imported) <= {"__future__", "typing"}


def test_names_are_unique():
    owners: dict[str, set[str]] = defaultdict(set)
    for name, value in _names().items():
        owners[value].add(name)
    clashes = [names for names in owners.values() if len(names) > 1 and frozenset(names) not in SAME_STRING]
    assert clashes == []
    # Each pair in SAME_STRING is still the same string (else it has no business being listed).
    for pair in SAME_STRING:
        assert len({_names()[n] for n in pair}) == 1, pair


@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_values_are_unique_within_their_kind(kind):
    values = [val for n, val in _constants().items() if _by_kind(n) == kind]
    assert values
    assert len(values) == len(set(values))


def test_no_name_falls_under_another_names_prefix():
    """A tag under ``dataset.`` would be read as a dataset version, one under ``airflow_ml.run.`` as a stage's run."""
    prefixes = {n: val for n, val in _names().items() if val.endswith(".")}
    assert len(prefixes) >= 5
    inside = [
        (name, prefix)
        for name, value in _names().items()
        for prefix, start in prefixes.items()
        if name != prefix and value.startswith(start)
    ]
    assert inside == []


def test_freshness_stages_are_unique():
    assert len(set(v.FRESHNESS_STAGES)) == len(v.FRESHNESS_STAGES) == 4


# -- (b) nobody else spells them out ---------------------------------------------------------------

XCOM_KEYS = {val for n, val in _names().items() if n.startswith("XCOM_")}
TRIAL_ATTRS = {val for n, val in _names().items() if n.startswith("TRIAL_ATTR_")}
ARTIFACT_ROOTS = {val for n, val in _names().items() if n.startswith("ARTIFACT_") and n.endswith("_DIR")}
# Distinctive enough to be found by equality anywhere: tags, metrics, paths, prefixes.
DISTINCT = {val for val in _names().values() if "." in val or "/" in val}
# Format strings, matched against f-strings that re-type them (``f"freshness.version_to_{s}_seconds"``).
TEMPLATES = {re.sub(r"\{[^}]*\}", "{}", val) for val in DISTINCT if "{" in val}
NAME_POSITION_TARGETS = {
    "XCOM": XCOM_KEYS,
    "ATTR": TRIAL_ATTRS,
    "ARTIFACT": ARTIFACT_ROOTS,
    "FOLDER": ARTIFACT_ROOTS,
}


def _strings(node: ast.AST) -> Iterator[ast.Constant]:
    """The string constants of an expression, through tuples and lists."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    elif isinstance(node, ast.Tuple | ast.List):
        for element in node.elts:
            yield from _strings(element)


def _target_names(node: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [
        t.id if isinstance(t, ast.Name) else t.attr
        for t in targets
        if isinstance(t, ast.Name | ast.Attribute)
    ]


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _receiver_name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def _among(node: ast.AST, values: set[str], why: str) -> Iterator[tuple[ast.Constant, str]]:
    return ((c, why) for c in _strings(node) if c.value in values)


def _assigned(node: ast.Assign | ast.AnnAssign) -> Iterator[tuple[ast.Constant, str]]:
    """``XCOM_... = "..."``, ``ARTIFACT_DIR = "..."``, ``cache_artifacts = ("...",)``: a name re-typed."""
    for target in _target_names(node):
        for marker, values in NAME_POSITION_TARGETS.items():
            if (target.isupper() and marker in target) or (
                marker == "ARTIFACT" and target == "cache_artifacts"
            ):
                yield from _among(node.value, values, "assigned to " + target) if node.value else ()


def _passed(node: ast.Call) -> Iterator[tuple[ast.Constant, str]]:
    """A name passed where a call takes one: an XCom key, an artifact path, a trial attribute."""
    name = _call_name(node)
    for keyword in node.keywords:
        if keyword.arg == "key":
            yield from _among(keyword.value, XCOM_KEYS, "an XCom key")
    if name == "xcom_push" and node.args:
        yield from _among(node.args[0], XCOM_KEYS, "an XCom key")
    if "artifact" in name or name == "log_text":
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            yield from _among(arg, ARTIFACT_ROOTS, "an artifact path")
    receiver = _receiver_name(node.func.value) if isinstance(node.func, ast.Attribute) else ""
    if "attr" in name or (name == "get" and receiver.endswith("attrs")):
        for arg in node.args:
            yield from _among(arg, TRIAL_ATTRS, "a trial attribute")


def _in_name_position(tree: ast.AST) -> Iterator[tuple[ast.Constant, str]]:
    """Bare names (no dot) where they are used as a name: an XCom key, a trial attribute, an artifact folder."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            yield from _assigned(node)
        elif isinstance(node, ast.Call):
            yield from _passed(node)
        elif isinstance(node, ast.Subscript) and _receiver_name(node.value).endswith("attrs"):
            yield from _among(node.slice, TRIAL_ATTRS, "a trial attribute")


def _template_of(node: ast.JoinedStr) -> str:
    parts = [p.value if isinstance(p, ast.Constant) else "{}" for p in node.values]
    return "".join(str(p) for p in parts)


def findings(path: Path) -> list[tuple[int, str, str]]:
    """``(line, literal, why)`` for every vocabulary name spelled out in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found: set[tuple[int, str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and _template_of(node) in TEMPLATES:
            found.add((node.lineno, _template_of(node), "a vocabulary format string"))
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
            continue
        text = node.value
        if text in DISTINCT:
            found.add((node.lineno, text, "a vocabulary name"))
        elif any(text.startswith(root + "/") for root in ARTIFACT_ROOTS):
            found.add((node.lineno, text, "an artifact path"))
        elif text.startswith("airflow_ml.") and not any(
            text.startswith(p) for p in DISTINCT if p.endswith(".")
        ):
            found.add((node.lineno, text, "an airflow_ml.* name missing from the vocabulary"))
    found |= {(c.lineno, c.value, why) for c, why in _in_name_position(tree)}
    return sorted(found)


def _scan() -> dict[str, list[tuple[int, str, str]]]:
    result = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == VOCABULARY_FILE:
            continue
        found = findings(path)
        if found:
            result[str(path.relative_to(ROOT))] = found
    return result


def test_no_module_spells_out_a_vocabulary_name():
    scanned = _scan()
    offending = [
        f"{path}:{line}: {text!r} ({why})"
        for path, found in scanned.items()
        for line, text, why in found
        if text not in ALLOWED.get(path, set()) | LOCAL.get(path, set())
    ]
    assert offending == [], "import these from airflow_ml_provider.vocabulary:\n" + "\n".join(offending)
    stale = [
        f"{path}: {text!r}"
        for path, values in ALLOWED.items()
        for text in sorted(values)
        if text not in {t for _, t, _ in scanned.get(path, [])}
    ]
    assert stale == [], "no longer spelled out; remove from ALLOWED in this test:\n" + "\n".join(stale)
    if ALLOWED:
        listing = "\n".join(
            f"  {path}: {', '.join(sorted(values))}" for path, values in sorted(ALLOWED.items())
        )
        print(f"Vocabulary names still spelled out (ALLOWED in tests/unit/test_vocabulary.py):\n{listing}")
        warnings.warn(
            f"{sum(map(len, ALLOWED.values()))} vocabulary names are still spelled out in "
            f"{len(ALLOWED)} modules (ALLOWED in tests/unit/test_vocabulary.py):\n{listing}",
            stacklevel=1,
        )


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The checker itself: each way of re-typing a name in a sample module is reported."""
    path = tmp_path / "sample.py"
    path.write_text(
        '"""Docstring naming airflow_ml.step is fine."""\n'
        'run.set_tags({"airflow_ml.step": "promote"})\n'
        'XCOM_ID = "mlflow_experiment_id"\n'
        'ti.xcom_push(key="mlflow_run_url", value="")\n'
        'ti.xcom_push("tuning_summary", 1)\n'
        'ARTIFACT_DIR = "validation"\n'
        'client.log_artifacts(run_id, out, "evaluation")\n'
        'read(hook, run, "tuning/summary.json")\n'
        'ref = f"tuning/{name}"\n'
        'seconds = metrics[f"freshness.version_to_{stage}_seconds"]\n'
        'tags = {f"airflow_ml.run.{k}": v for k, v in runs.items()}\n'
        'storage.set_trial_system_attr(trial_id, "failed_trial", 3)\n'
        't.user_attrs.get("reported_steps")\n'
        'tags["airflow_ml.something_new"] = "1"\n'
        'stage = "validation"\n'  # a stage's name, not an artifact folder: not reported
        'result = {"mlflow_run_id": run_id}\n'  # a result's field, not an XCom key: not reported
    )
    assert [(line, text) for line, text, _ in findings(path)] == [
        (2, "airflow_ml.step"),
        (3, "mlflow_experiment_id"),
        (4, "mlflow_run_url"),
        (5, "tuning_summary"),
        (6, "validation"),
        (7, "evaluation"),
        (8, "tuning/summary.json"),
        (9, "tuning/"),
        (10, "freshness.version_to_{}_seconds"),
        (11, "airflow_ml.run."),
        (12, "failed_trial"),
        (13, "reported_steps"),
        (14, "airflow_ml.something_new"),
    ]


# -- (c) writers and readers use the same constant ---------------------------------------------------


def _same(*values: object) -> bool:
    return all(value is values[0] for value in values)


def test_cache_tags_written_by_the_cache_are_read_by_the_lineage_view():
    from airflow_ml_provider import cache
    from airflow_ml_provider.plugins import lineage_data

    assert _same(cache.TAG_CACHE_SOURCE, lineage_data.TAG_CACHE_SOURCE_RUN_ID, v.TAG_CACHE_SOURCE_RUN_ID)
    assert _same(cache.TAG_CACHE_HIT, lineage_data.TAG_CACHE_HIT, v.TAG_CACHE_HIT)
    assert _same(cache.TAG_CACHE_KEY, v.TAG_CACHE_KEY)
    assert _same(cache.TAG_CACHE_SOURCE_URL, v.TAG_CACHE_SOURCE_URL)


def test_xcom_keys_pushed_by_tracking_are_read_by_the_links_and_the_lineage_app():
    from airflow_ml_provider import cache, tracking
    from airflow_ml_provider.links import mlflow as links
    from airflow_ml_provider.plugins import lineage_app

    assert _same(tracking.XCOM_RUN_URL, links.XCOM_RUN_URL, v.XCOM_RUN_URL)
    assert _same(tracking.XCOM_EXPERIMENT_ID, lineage_app.XCOM_EXPERIMENT_ID, v.XCOM_EXPERIMENT_ID)
    assert _same(cache.XCOM_CACHE_SOURCE_URL, links.XCOM_CACHE_SOURCE_URL, v.XCOM_CACHE_SOURCE_URL)
    assert _same(links.ValidationReportLink.path, v.ARTIFACT_VALIDATION_REPORT)
    assert _same(links.EvaluationReportLink.path, v.ARTIFACT_EVALUATION_REPORT)


def test_run_tags_written_by_tracking_are_read_by_the_lineage_view():
    from airflow_ml_provider import tracking
    from airflow_ml_provider.plugins import lineage_data

    for name in ("TAG_DAG_ID", "TAG_RUN_ID", "TAG_TASK_ID", "TAG_MAP_INDEX", "TAG_TRY_NUMBER", "TAG_ROLE"):
        assert _same(getattr(tracking, name), getattr(lineage_data, name), getattr(v, name)), name
    identity = tracking.TaskIdentity("dag", "run", "task")
    assert identity.task_tags()[v.TAG_ROLE] == v.ROLE_TASK
    assert identity.dag_run_tags()[v.TAG_ROLE] == v.ROLE_DAG_RUN
    assert _same(tracking.TAG_PARENT, v.TAG_PARENT_RUN)


def test_parent_run_tags_are_read_by_the_lineage_view():
    from airflow_ml_provider import freshness, versions
    from airflow_ml_provider.plugins import lineage_data

    if "airflow_ml_provider/dataset_version.py" in ALLOWED:  # still spelled out there: equal, not the same
        assert versions.TAG_PREFIX == lineage_data.TAG_DATASET_PREFIX
    else:
        assert _same(versions.TAG_PREFIX, lineage_data.TAG_DATASET_PREFIX, v.TAG_DATASET_PREFIX)
    assert _same(freshness.TAG_FRESHNESS_DECISION, lineage_data.TAG_FRESHNESS_DECISION)
    assert _same(freshness.METRIC_FRESHNESS, lineage_data.METRIC_FRESHNESS)
    assert tuple(lineage_data.FRESHNESS_LABELS) == freshness.FRESHNESS_STAGES == v.FRESHNESS_STAGES


def test_steps_and_promotion_tags_are_read_by_the_lineage_view():
    from airflow_ml_provider.ml.registry import BUILTIN_STEPS
    from airflow_ml_provider.operators import promotion, training, tuning
    from airflow_ml_provider.plugins import lineage_data

    steps = {val for n, val in _constants().items() if _by_kind(n) == "STEP_"}
    assert set(lineage_data.STAGES) == steps
    assert steps - {v.STEP_PROMOTE} <= set(BUILTIN_STEPS)
    assert training.STEP == v.STEP_TRAIN_MODEL
    assert tuning.WORKER_STEP == v.STEP_TUNE
    for name in (
        "TAG_STEP",
        "TAG_PROMOTION",
        "TAG_MODEL_VERSION",
        "TAG_PROMOTION_REFUSED",
        "PROMOTION_PROMOTED",
    ):
        assert _same(getattr(promotion, name), getattr(lineage_data, name)), name
    served = set(lineage_data.SERVED_FOLDERS)
    # Reports and plots are served; a step's spec and result, and the cached XCom value, are not.
    assert served == ARTIFACT_ROOTS - {v.ARTIFACT_CACHE_DIR, v.ARTIFACT_STEP_DIR}


def test_tuning_names_agree_between_workers_summary_and_operator():
    from airflow_ml_provider.ml.training import step as training_step
    from airflow_ml_provider.ml.tuning import summary, trial_runs, worker
    from airflow_ml_provider.plugins import lineage_data

    for name in ("TRIAL_ATTR_RUN_ID", "TRIAL_ATTR_ERROR", "TRIAL_ATTR_STEPS"):
        assert _same(getattr(worker, name), getattr(summary, name), getattr(v, name)), name
    assert _same(trial_runs.TAG_STUDY, lineage_data.TAG_STUDY)
    # operators/tuning.py imports these two from trial_runs.
    assert _same(trial_runs.TAG_PARENT, v.TAG_PARENT_RUN)
    assert _same(trial_runs.TAG_STATE, v.TAG_TRIAL_STATE)
    # operators/training.py imports the train step's result path from the step.
    assert _same(training_step.RESULT_ARTIFACT, v.ARTIFACT_TRAINING_RESULT)


def test_alias_defaults_agree_between_promotion_registry_and_sensor():
    from airflow_ml_provider.hooks._registry import TAG_EPOCH_PREFIX, ModelRegistryMixin
    from airflow_ml_provider.operators.promotion import PromoteModelOperator
    from airflow_ml_provider.sensors.model_alias import ModelAliasSensor

    def default(func, name):
        return inspect.signature(func).parameters[name].default

    assert _same(
        default(PromoteModelOperator.__init__, "alias"),
        default(ModelRegistryMixin.move_alias, "alias"),
        default(ModelRegistryMixin.rollback_alias, "alias"),
        default(ModelAliasSensor.__init__, "alias"),
        v.ALIAS_CHAMPION,
    )
    assert _same(
        default(PromoteModelOperator.__init__, "previous_alias"),
        default(ModelRegistryMixin.move_alias, "previous_alias"),
        v.ALIAS_PREVIOUS_CHAMPION,
    )
    assert _same(TAG_EPOCH_PREFIX, v.TAG_ALIAS_EPOCH_PREFIX)
