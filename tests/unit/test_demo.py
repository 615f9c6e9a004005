"""scripts/demo.py's own judgement of the story it tells (the demo exits non-zero when it fails)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from support.harness import load_script

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).parents[2] / "scripts" / "demo.py"


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    module = load_script(SCRIPT, "demo_script")
    return module


def _row(validation: str, champion: str) -> dict[str, str]:
    return {
        "version": "",
        "DAG run": "",
        "validation": validation,
        "blessing": "",
        "champion after": champion,
    }


def test_the_expected_story_has_no_problems(demo):
    rows = [_row("passed", "v1"), _row("passed", "v2"), _row("stopped: 1 anomaly (income: ...)", "v2")]
    assert demo.check_story(rows) == []


def test_v2_not_promoted_and_v3_not_stopped_are_reported(demo):
    rows = [_row("passed", "v1"), _row("passed", "v1"), _row("passed", "v3")]
    problems = demo.check_story(rows)
    assert problems == [
        "v2: champion after is v1, expected v2",
        "v3: champion after is v3, expected v2",
        "v3: validation 'passed', expected it to stop the run",
    ]


def test_the_scenario_breaks_the_schema_only_in_its_last_version(demo):
    assert [landing.version for landing in demo.SCENARIO] == [1, 2, 3]
    assert [landing.expect_promoted for landing in demo.SCENARIO] == [True, True, False]
    assert "type_change" in demo.SCENARIO[-1].spec and "type_change" not in demo.SCENARIO[1].spec


def test_the_summary_links_each_run_to_its_ml_lineage_tab(demo, capsys):
    row = {
        **_row("passed", "v1"),
        "version": "v1 (0001)",
        "DAG run": "asset_triggered__2026-12-04T15:00:00+00:00 (success)",
    }
    demo.say_lineage_links("http://127.0.0.1:8080", [row])
    out = capsys.readouterr().out
    assert (
        "ML lineage of v1: http://127.0.0.1:8080/dags/continuous_training/runs/"
        "asset_triggered__2026-12-04T15%3A00%3A00%2B00%3A00/plugin/ml-lineage"
    ) in out
