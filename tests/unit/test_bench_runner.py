"""benchmarks/run_all.py rewrites only its generated blocks of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from support.harness import load_script

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "run_all.py"
DOC = """# Benchmarks

Intro by hand.

## Parse overhead (`benchmarks/parse_overhead.py`)

Prose about parsing.

## Tuning (`benchmarks/tuning.py`)

Prose about tuning.
"""


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_script(SCRIPT, "bench_run_all")
    doc = tmp_path / "benchmarks.md"
    doc.write_text(DOC)
    monkeypatch.setattr(module, "DOC", doc)
    return module


def _outcome(runner: ModuleType, name: str, lines: list[str], code: int = 0) -> object:
    bench = next(b for b in runner.BENCHMARKS if b.name == name)
    return runner.Outcome(bench, 12.3, code, lines)


def test_blocks_go_into_their_sections_and_are_replaced_not_repeated(runner):
    first = [
        _outcome(runner, "parse_overhead", ["2026-12-03T10:00:00Z [info] starting", "ratio 1.07  PASS"]),
        _outcome(runner, "tuning", ["  FAIL  search: 20", "  PASS  parallel: 1.7"], code=1),
    ]
    runner.write_doc(first, quick=False)
    runner.write_doc([_outcome(runner, "parse_overhead", ["ratio 1.09  PASS"])], quick=True)
    text = runner.DOC.read_text()

    assert text.count("<!-- bench:summary:start -->") == 1
    assert text.count("<!-- bench:parse_overhead:start -->") == 1
    assert "ratio 1.09  PASS" in text and "ratio 1.07" not in text  # replaced
    assert "FAIL  search: 20" in text  # the tuning block of the first run stays
    assert "[info] starting" not in text  # progress lines are left out
    for prose in ("Intro by hand.", "Prose about parsing.", "Prose about tuning."):
        assert text.count(prose) == 1
    # Each block sits in its own section, after the prose, before the next heading.
    parse = text.index("## Parse overhead")
    block = text.index("<!-- bench:parse_overhead:start -->")
    assert parse < text.index("Prose about parsing.") < block < text.index("## Tuning")
    assert text.index("<!-- bench:summary:start -->") < parse
    # The summary keeps a row per benchmark: parse_overhead's from the second run, tuning's from the first.
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 2
    assert rows[0].startswith("| `parse_overhead` |") and "| QUICK=1 |" in rows[0] and "1.09" in rows[0]
    assert rows[1].startswith("| `tuning` |")
    assert rows[1].endswith("| default | 12 s | 1 | FAIL  search: 20; PASS  parallel: 1.7 |")
    assert "make bench QUICK=1" in text


def test_a_benchmark_without_a_section_stops_before_running(runner):
    runner.DOC.write_text("# Benchmarks\n\n## Parse overhead (`benchmarks/parse_overhead.py`)\n")
    with pytest.raises(SystemExit, match="no section whose heading names benchmarks/tuning.py"):
        runner.main(["--only", "tuning", "--no-write"])
