"""benchmarks/loop_latency.py reads a task's compute and the decision from Airflow task logs."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from support.harness import load_script

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "loop_latency.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "bench_loop_latency")


def _json_log(*events: tuple[str, str]) -> str:
    return "\n".join(json.dumps({"timestamp": ts, "level": "info", "event": event}) for ts, event in events)


def test_a_step_task_compute_is_the_time_its_step_logged(bench):
    text = _json_log(
        ("2026-12-07T08:00:00.000000Z", "Running step validate_data with /opt/steps/bin/python"),
        (
            "2026-12-07T08:00:01.500000Z",
            "[step validate_data] INFO airflow_ml_provider.ml: Step validate_data computed in 0.12 s",
        ),
    )
    assert bench.step_computes(text) == {"": 0.12}
    assert bench.task_compute(text) == 0.12
    assert bench.log_records(text)[1][0] == pytest.approx(1796630401.5)


def test_a_gang_task_compute_is_its_slowest_worker(bench):
    text = "\n".join(
        [
            "[worker 0] [step train_model] INFO airflow_ml_provider.ml: Step train_model computed in 11.25 s",
            "[worker 1] [step train_model] INFO airflow_ml_provider.ml: Step train_model computed in 12.50 s",
        ]
    )
    assert bench.step_computes(text) == {"worker 0": 11.25, "worker 1": 12.5}
    assert bench.task_compute(text) == 12.5


def test_the_overhead_splits_around_the_step_window(bench):
    text = _json_log(
        ("2026-12-07T08:00:03Z", "Running step evaluate_model with /opt/steps/bin/python (warm)"),
        ("2026-12-07T08:00:03.1Z", "[step evaluate_model] INFO x: Running step evaluate_model in-process"),
        ("2026-12-07T08:00:06Z", "[step evaluate_model] INFO x: Step evaluate_model computed in 2.50 s"),
    )
    start = bench.parse_time("2026-12-07T08:00:00Z")
    window = bench.step_window(text)
    assert window == (start + 3.0, start + 6.0)
    split = bench.overhead_split(start, start + 7.0, 2.5, window)
    assert split == pytest.approx({"before": 3.0, "launch": 0.5, "after": 1.0})
    assert bench.overhead_split(start, start + 7.0, None, window)["before"] is None


def test_a_task_without_a_step_has_no_compute(bench):
    assert (
        bench.task_compute(_json_log(("2026-12-07T08:00:00Z", "Done. Returned value was: ['train']"))) is None
    )


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            "Freshness: the dataset version reached promoted and decided 41.3 s after it was completed (promoted).",
            (1796630405.0, 41.3),
        ),
        (
            "Freshness: the dataset version reached decided 9.0 s after it was completed (not promoted: x).",
            (1796630405.0, 9.0),
        ),
        ("Freshness: the dataset version reached trained 30.0 s after it was completed.", None),
    ],
)
def test_the_decision_is_the_freshness_record_that_says_decided(bench, event, expected):
    assert bench.decision_record(_json_log(("2026-12-07T08:00:05+00:00", event))) == expected


def test_goals_pass_at_the_limit_and_fail_without_a_figure(bench):
    checks = bench.goals({"decision_s": 35.0, "overhead_ratio": 2.5, "validate_overhead_s": 1.0})
    assert [c.passed for c in checks] == [True, False, True, False]  # evaluate: no figure
    assert checks[0].line().endswith("PASS") and checks[1].line().endswith("FAIL")
