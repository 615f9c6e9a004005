"""benchmarks/alias_history.py reports no speed for a history that is not exactly the moves made."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import pytest
from support.harness import load_script

from airflow_ml_provider.hooks._alias_history import AliasHistoryEntry

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "alias_history.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script(SCRIPT, "bench_alias_history")


def _entry(epoch: int, from_version: str | None, to_version: str | None) -> AliasHistoryEntry:
    at = datetime(2026, 12, 8, tzinfo=timezone.utc)
    return AliasHistoryEntry("m", "champion", epoch, from_version, to_version, at, "promotion", "", "ti")


def test_the_history_must_chain_every_move_to_the_current_alias(bench):
    planned = bench.plan(["1", "2", "3"], 4)
    assert planned == ["1", "2", "3", "1"]
    good = [_entry(0, None, "1"), _entry(1, "1", "2"), _entry(2, "2", "3"), _entry(3, "3", "1")]
    assert bench.check_history(good, planned, "1")[0]

    assert not bench.check_history(good[:3], planned, "3")[0]  # a move missing
    assert not bench.check_history(good, planned, "2")[0]  # the alias is elsewhere
    broken = [*good[:2], _entry(2, "1", "3"), good[3]]
    ok, detail = bench.check_history(broken, planned, "1")
    assert not ok and "entry 2 is from 1" in detail
