"""benchmarks/checkpoint_resume.py judges its goals on the medians, and no wrong run passes."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.harness import load_script

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "checkpoint_resume.py"
ARGS = Namespace(rows=1000, epochs=6, kill_epoch=3, rounds=1, json=None)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "bench_checkpoint_resume")


def _items(
    bench: ModuleType, seconds: dict[str, float], resumed_accuracy: float = 0.80
) -> list[dict[str, Any]]:
    items = []
    for case, value in seconds.items():
        accuracy = resumed_accuracy if case == bench.CASES[3] else 0.80
        result = {"epochs": 6, "final_metrics": {"val_accuracy": accuracy}}
        items.append({"case": case, "seconds": value, "result": result, "problems": []})
    return items


def test_goals_on_the_ratios_to_the_baseline(bench):
    cases = bench.CASES
    summary = bench.summarise(_items(bench, dict(zip(cases, (10.0, 11.0, 10.5, 6.0), strict=True))), ARGS)
    assert summary["ideal_resume_ratio"] == 0.5
    assert summary["goals"]["mlflow_overhead"]["met"] and summary["goals"]["resume_ratio"]["met"]
    slow = bench.summarise(_items(bench, dict(zip(cases, (10.0, 13.0, 10.5, 7.5), strict=True))), ARGS)
    assert not slow["goals"]["mlflow_overhead"]["met"]  # +30 %
    assert not slow["goals"]["resume_ratio"]["met"]  # 0.75 > 0.5 + 0.2
    assert slow["problems"] == []


def test_a_resume_far_from_the_baseline_accuracy_is_a_failed_check(bench):
    items = _items(bench, dict.fromkeys(bench.CASES, 10.0), resumed_accuracy=0.70)
    assert any("not within" in p for p in bench.summarise(items, ARGS)["problems"])


def test_a_resume_from_the_wrong_epoch_is_a_failed_check(bench):
    item = {"result": {"epochs": 6, "resumed_from": {"epoch": 0, "step": 0}}, "run_id": "r"}

    class Client:
        def list_artifacts(self, run_id: str, path: str) -> list[Any]:
            return []

    assert bench.check(bench.CASES[3], item, ARGS, Client()) == [
        "resume after a crash: resumed from {'epoch': 0, 'step': 0}, not epoch 3"
    ]
