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


# -- the guard's part: v2 rolled back to v1 -------------------------------------------------------


def _entry(epoch: int, kind: str, frm: str | None, to: str, **fields: str) -> dict[str, object]:
    return {
        "epoch": epoch,
        "kind": kind,
        "from_version": frm,
        "to_version": to,
        "at": f"2026-12-04T15:0{epoch}:00+00:00",
        "reason": fields.pop("reason", ""),
        "actor": "ti",
        **fields,
    }


RUNS = ("asset_triggered__v1", "asset_triggered__v2", "asset_triggered__v3")
HISTORY = [
    _entry(0, "promotion", None, "1", dag_id="continuous_training", run_id=RUNS[0], task_id="promote"),
    _entry(1, "promotion", "1", "2", dag_id="continuous_training", run_id=RUNS[1], task_id="promote"),
    _entry(
        2,
        "rollback",
        "2",
        "1",
        dag_id="deploy_champion",
        run_id="asset_triggered__d2",
        task_id="guard",
        reason="live_auc of churn v2 was 0.56, 0.55, 0.57 in 3 consecutive checks",
    ),
]
GUARDS = [
    {"version": "1", "outcome": "healthy", "rolled_back_to": "", "reason": ""},
    {"version": "2", "outcome": "rolled_back", "rolled_back_to": "1", "reason": "live_auc ..."},
    {"version": "1", "outcome": "healthy", "rolled_back_to": "", "reason": ""},
]


def test_each_row_shows_where_its_own_run_left_the_champion_not_the_later_rollback(demo):
    rows = [
        {**_row(v, "?"), "DAG run": f"{run} (success)"}
        for run, v in zip(RUNS, ("passed", "passed", "stopped"), strict=True)
    ]
    demo.settle_champions(rows, HISTORY)
    assert [r["champion after"] for r in rows] == ["v1", "v2", "v2"]
    assert demo.check_story(rows) == []


def test_the_guards_story_has_no_problems(demo):
    assert demo.check_guard(HISTORY, GUARDS, "v1") == []
    assert demo.EXPECTED_HISTORY == [
        ("promotion", None, "1"),
        ("promotion", "1", "2"),
        ("rollback", "2", "1"),
    ]


def test_a_missing_rollback_is_reported(demo):
    kept = [{**g, "outcome": "healthy", "rolled_back_to": ""} for g in GUARDS]
    problems = demo.check_guard(HISTORY[:2], kept, "v2")
    assert problems == [
        f"champion history is {[('promotion', None, '1'), ('promotion', '1', '2')]}, expected {demo.EXPECTED_HISTORY}",
        "champion at the end is v2, expected v1 (v2 rolled back)",
        "no guard rolled v2 back: [('1', 'healthy'), ('2', 'healthy'), ('1', 'healthy')]",
    ]
    failed = [*GUARDS[:2], {**GUARDS[2], "outcome": "failed"}]
    assert demo.check_guard(HISTORY, failed, "v1") == [f"guards that did not end well: {[failed[2]]}"]


def test_the_history_is_printed_with_who_moved_the_champion_and_why(demo, capsys):
    demo.print_history(HISTORY)
    lines = capsys.readouterr().out.splitlines()
    assert 'alias_history("churn")' in lines[1]
    assert lines[2].split() == [
        "0",
        "2026-12-04T15:00:00",
        "promotion",
        "none",
        "->",
        "v1",
        "continuous_training/promote",
    ]
    assert lines[4].split()[:7] == [
        "2",
        "2026-12-04T15:02:00",
        "rollback",
        "v2",
        "->",
        "v1",
        "deploy_champion/guard",
    ]
    assert lines[4].endswith("live_auc of churn v2 was 0.56, 0.55, 0.57 in 3 consecutive checks")


def test_the_demo_shortens_the_guard_through_the_example_variables(demo):
    env = demo.airflow_env("http://127.0.0.1:8080", "http://127.0.0.1:5000", None)
    assert env["AIRFLOW_ML_EXAMPLE_GUARD_WINDOW"] == str(demo.GUARD_WINDOW)
    assert env["AIRFLOW_ML_EXAMPLE_GUARD_INTERVAL"] == str(demo.GUARD_INTERVAL)
    # v2 must breach the example guard's lower bound (0.7) live, v1 must not.
    assert [landing.live_auc < 0.7 for landing in demo.SCENARIO[:2]] == [False, True]
