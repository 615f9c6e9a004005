"""scripts/reliability_report.py: which tests docs/reliability.md names, and how it rewrites results."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from support.harness import load_script

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).parents[2] / "scripts" / "reliability_report.py"
DOC = """# Reliability

Intro.

| scenario | test | result |
|----------|------|--------|
| outage | `tests/integration/test_a.py::test_outage` | old |
| hostile | `tests/unit/test_b.py` (scan) | old |
| crash | `tests/integration/test_a.py::test_crash` | old |
| later | — | **open** |
"""
JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.integration.test_a" name="test_outage" time="30">
  <properties><property name="measured" value="gave up after 30 s | 1 run" /></properties>
</testcase>
<testcase classname="tests.integration.test_a" name="test_crash" time="1">
  <failure message="AssertionError: 2 runs&#10;more">trace</failure>
</testcase>
<testcase classname="tests.unit.test_b" name="test_one[x]" time="0.1" />
<testcase classname="tests.unit.test_b" name="test_one[y]" time="0.1" />
<testcase classname="tests.unit.test_b" name="test_two" time="0.1"><skipped message="no" /></testcase>
</testsuite></testsuites>
"""


@pytest.fixture(scope="module")
def report() -> ModuleType:
    module = load_script(SCRIPT, "reliability_report")
    return module


def test_the_rows_name_the_tests_to_run(report):
    assert report.references(DOC) == [
        "tests/integration/test_a.py::test_outage",
        "tests/unit/test_b.py",
        "tests/integration/test_a.py::test_crash",
    ]


def test_results_are_rewritten_from_what_the_tests_recorded(report, tmp_path):
    junit = tmp_path / "r.xml"
    junit.write_text(JUNIT)
    text = report.rewrite(DOC, report.read_junit(junit), "_made now_")
    lines = text.splitlines()
    assert "| outage | `tests/integration/test_a.py::test_outage` | gave up after 30 s / 1 run |" in lines
    assert "| hostile | `tests/unit/test_b.py` (scan) | 2 passed |" in lines
    assert (
        "| crash | `tests/integration/test_a.py::test_crash` | **FAILED**: AssertionError: 2 runs |" in lines
    )
    assert "| later | — | **open** |" in lines  # no test: left as it is
    assert lines[:4] == ["# Reliability", "", report.STAMP_START, "_made now_"]
    # A second run replaces the stamp instead of adding one.
    again = report.rewrite(text, report.read_junit(junit), "_made later_")
    assert again.count(report.STAMP_START) == 1 and "_made later_" in again and "_made now_" not in again
