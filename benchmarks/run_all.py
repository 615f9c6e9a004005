"""Run every benchmark, then rewrite docs/benchmarks.md with what they printed and the machine.

Run from the repository root (``make bench``; ``make bench QUICK=1`` for the smaller settings)::

    .venv/bin/python benchmarks/run_all.py [--quick] [--only NAME ...] [--no-write]

Each benchmark runs as its own process, one after the other (they measure time, so never two at
once), with its own JSON results kept in ``benchmarks/results/`` (not committed). In
docs/benchmarks.md the runner rewrites two kinds of generated blocks and nothing else:

- at the top, the machine (CPU, cores, memory, load before the run, Python and the main package
  versions, the commit) and one line per benchmark: wall time, exit status, its PASS/FAIL lines;
- in each benchmark's section, "Latest run": what the script printed, its progress lines left out.

The prose of each section (method, analysis, earlier figures with their context) is written by
hand and stays. A benchmark that exits non-zero (a goal missed, or a crash) is recorded as such;
the runner exits non-zero if any did.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "benchmarks" / "results"
PACKAGES = (
    "apache-airflow",
    "mlflow",
    "tensorflow",
    "tensorflow-data-validation",
    "tensorflow-model-analysis",
    "optuna",
)
SUMMARY_START, SUMMARY_END = "<!-- bench:summary:start -->", "<!-- bench:summary:end -->"
MAX_OUTPUT_LINES = 60
# Lines that tell progress, not results: timestamps, log records, per-step chatter.
NOISE = re.compile(
    r"^\s*(\d{4}-\d\d-\d\dT|\[\d|INFO|WARNING|DEBUG|\d{2}:\d{2}:\d{2}\s)|it/s\]|Downloading artifacts"
)


@dataclass(frozen=True)
class Benchmark:
    name: str  # benchmarks/<name>.py, and the section whose heading names it
    quick: tuple[str, ...]  # arguments of the smaller run

    @property
    def script(self) -> Path:
        return REPO / "benchmarks" / f"{self.name}.py"


BENCHMARKS = (
    Benchmark("parse_overhead", ("--repeat", "20", "--skip-tensorflow")),
    Benchmark("tracking_overhead", ("--rounds", "1", "--metrics", "5000", "--baseline-metrics", "200")),
    Benchmark("alias_history", ("--rounds", "1", "--reads", "3")),
    Benchmark("validation", ("--repeat", "1", "--skip-beam", "--skip-5m")),
    Benchmark("freshness", ("--versions", "12", "--burst", "4", "--settle", "60", "--skip-scale")),
    Benchmark("training", ("--rows", "20000", "--epochs", "2")),
    Benchmark("checkpoint_resume", ("--rows", "10000", "--rounds", "1")),
    Benchmark("evaluation", ("--rows", "20000", "--large-rows", "100000", "--repeat", "1", "--skip-beam")),
    Benchmark("tuning", ("--seeds", "2", "--trials", "12", "--rows", "10000")),
    Benchmark("cache", ("--rows", "2000", "--epochs", "1")),
    Benchmark("warm_start", ("--repeat", "1")),
    Benchmark("loop_latency", ()),  # the demo's data as it is: no smaller setting
)


@dataclass
class Outcome:
    benchmark: Benchmark
    seconds: float
    exit_code: int
    output: list[str]

    @property
    def verdicts(self) -> list[str]:
        return [line.strip() for line in self.output if re.search(r"\b(PASS|FAIL)\b", line)]


def machine() -> list[str]:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(
            next(line.split()[1] for line in meminfo.read_text().splitlines() if line.startswith("MemTotal"))
        )
        memory = f", {kib / 1024 / 1024:.0f} GiB memory"
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores{memory}; {platform.system()} {platform.release()}",
        f"- load average before the run: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- Python {platform.python_version()}; {', '.join(versions)}",
        f"- commit {commit or 'unknown'}{' with local changes' if dirty else ''}",
    ]


def run(benchmark: Benchmark, quick: bool) -> Outcome:
    RESULTS.mkdir(exist_ok=True)
    args = [*(benchmark.quick if quick else ()), "--json", str(RESULTS / f"{benchmark.name}.json")]
    command = [sys.executable, str(benchmark.script), *args]
    print(f"\n=== {benchmark.name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"  {line}", end="", flush=True)
            lines.append(line.rstrip("\n"))
    seconds = time.monotonic() - started
    print(f"=== {benchmark.name}: exit {proc.returncode} after {seconds:.0f} s", flush=True)
    return Outcome(benchmark, seconds, proc.returncode, lines)


def results_text(outcome: Outcome) -> list[str]:
    kept = [
        line
        for line in outcome.output
        if line.strip() and not NOISE.search(line) and not line.startswith("results written to")
    ]
    if len(kept) > MAX_OUTPUT_LINES:
        kept = ["...", *kept[-MAX_OUTPUT_LINES:]]
    return kept


def section_block(outcome: Outcome, when: str, quick: bool) -> str:
    name = outcome.benchmark.name
    mode = "`make bench QUICK=1` (smaller settings)" if quick else "`make bench` (default settings)"
    status = "exit 0" if outcome.exit_code == 0 else f"exit {outcome.exit_code}"
    return "\n".join(
        [
            f"<!-- bench:{name}:start -->",
            f"**Latest run** ({when}, {mode}, {outcome.seconds:.0f} s, {status}; the machine is at the top of the page):",
            "",
            "```text",
            *results_text(outcome),
            "```",
            f"<!-- bench:{name}:end -->",
        ]
    )


def summary_block(outcomes: list[Outcome], when: str, quick: bool, previous: str = "") -> str:
    """The machine of this run, and a row per benchmark: this run's, else the row of an earlier run."""
    mode = "QUICK=1" if quick else "default"
    rows = {}
    for line in previous.splitlines():
        found = re.match(r"^\| `(\w+)` \|", line)
        if found:
            rows[found[1]] = line
    for o in outcomes:
        verdicts = ("; ".join(o.verdicts) or "(no PASS/FAIL line)").replace("|", "/")
        name = o.benchmark.name
        rows[name] = f"| `{name}` | {when} | {mode} | {o.seconds:.0f} s | {o.exit_code} | {verdicts} |"
    order = [b.name for b in BENCHMARKS]
    return "\n".join(
        [
            SUMMARY_START,
            f"Latest `make bench` ({', '.join(o.benchmark.name for o in outcomes)}): {when}, on",
            "",
            *machine(),
            "",
            "| benchmark | run at | settings | wall time | exit | verdicts |",
            "|-----------|--------|----------|----------:|-----:|----------|",
            *(rows[name] for name in order if name in rows),
            SUMMARY_END,
        ]
    )


def replace_block(text: str, start: str, end: str, block: str, insert_at: int) -> str:
    if start in text and end in text:
        i, j = text.index(start), text.index(end) + len(end)
        return text[:i] + block + text[j:]
    return text[:insert_at] + block + "\n\n" + text[insert_at:]


def section_end(text: str, name: str) -> int:
    """Where the section about benchmarks/<name>.py ends (the next ``## `` heading, or the end)."""
    heading = re.search(rf"^## .*`benchmarks/{re.escape(name)}\.py`.*$", text, re.MULTILINE)
    if heading is None:
        raise SystemExit(f"docs/benchmarks.md has no section whose heading names benchmarks/{name}.py")
    following = re.search(r"^## ", text[heading.end() :], re.MULTILINE)
    return heading.end() + following.start() if following else len(text)


def write_doc(outcomes: list[Outcome], quick: bool) -> None:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = DOC.read_text()
    for outcome in outcomes:
        name = outcome.benchmark.name
        text = replace_block(
            text,
            f"<!-- bench:{name}:start -->",
            f"<!-- bench:{name}:end -->",
            section_block(outcome, when, quick),
            section_end(text, name),
        )
    first_section = re.search(r"^## ", text, re.MULTILINE)
    previous = text[text.index(SUMMARY_START) : text.index(SUMMARY_END)] if SUMMARY_START in text else ""
    text = replace_block(
        text,
        SUMMARY_START,
        SUMMARY_END,
        summary_block(outcomes, when, quick, previous),
        first_section.start() if first_section else len(text),
    )
    DOC.write_text(text if text.endswith("\n") else text + "\n")
    print(f"\nrewrote {DOC}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller settings (minutes, not most of an hour)"
    )
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHMARKS], help="run only these")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    text = DOC.read_text()
    for benchmark in chosen:  # fail before an hour of work, not after
        section_end(text, benchmark.name)
    outcomes = [run(benchmark, args.quick) for benchmark in chosen]
    print("\nbenchmark            seconds  exit  verdicts")
    for o in outcomes:
        print(f"{o.benchmark.name:<20} {o.seconds:7.0f}  {o.exit_code:4d}  {'; '.join(o.verdicts)[:120]}")
    if not args.no_write:
        write_doc(outcomes, args.quick)
    return 0 if all(o.exit_code == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
