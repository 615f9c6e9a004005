"""
Run the reliability and security scenarios, then rewrite the results in docs/reliability.md.

Run from the repository root (``make reliability``)::

    .venv/bin/python scripts/reliability_report.py [--junit FILE] [--no-run]

Every table row of docs/reliability.md names its test in backticks (``tests/...py::test_name``,
or a whole module ``tests/...py``). The script runs exactly those tests with pytest (on the
PostgreSQL of ``ML_PROVIDER_TEST_DATABASE_URL``, default the local server), reads pytest's JUnit
XML and rewrites the last cell of each row: what the test recorded with
``record_property("measured", ...)``, else ``passed`` (``N passed`` for a module), or ``FAILED``
with the first line of the failure. Rows without a test (marked **open**) stay as they are. A line
under the title says when, on what and with which outcome the table was last made. It exits
non-zero when a test failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")
STAMP_START, STAMP_END = "<!-- reliability:stamp:start -->", "<!-- reliability:stamp:end -->"


@dataclass
class Outcome:
    passed: int = 0
    failed: list[str] = field(default_factory=list)  # first lines of the failures
    measured: list[str] = field(default_factory=list)

    def text(self, whole_module: bool) -> str:
        if self.failed:
            return f"**FAILED**: {self.failed[0]}"
        if self.measured:
            return "; ".join(self.measured)
        if not self.passed:
            return "not run"
        return f"{self.passed} passed" if whole_module else "passed"


def references(text: str) -> list[str]:
    """The test ids the table rows name, in order, without repeats (``path`` or ``path::name``)."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if line.startswith("|"):
            for path, name in TEST_REF.findall(line):
                seen[f"{path}::{name}" if name else path] = None
    return list(seen)


def read_junit(path: Path) -> dict[str, Outcome]:
    """Outcomes per test id and per module from pytest's JUnit XML."""
    outcomes: dict[str, Outcome] = defaultdict(Outcome)
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/") + ".py"
        name = case.get("name", "").split("[")[0]
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        measured = [p.get("value", "") for p in case.iter("property") if p.get("name") == "measured"]
        for key in (f"{module}::{name}", module):
            outcome = outcomes[key]
            if problem is not None:
                outcome.failed.append((problem.get("message") or "failed").splitlines()[0][:200])
            elif case.find("skipped") is None:
                outcome.passed += 1
            outcome.measured += measured
    return outcomes


def rewrite(text: str, outcomes: dict[str, Outcome], stamp: str) -> str:
    """The doc with each referenced row's last cell and the stamp replaced."""
    lines = []
    for line in text.splitlines():
        refs = TEST_REF.findall(line) if line.startswith("|") else []
        if refs:
            path, name = refs[0]
            outcome = outcomes.get(f"{path}::{name}" if name else path, Outcome())
            cells = line.rstrip().rstrip("|").split(" | ")
            cells[-1] = outcome.text(whole_module=not name).replace("|", "/")
            line = " | ".join(cells) + " |"
        lines.append(line)
    out = "\n".join(lines) + "\n"
    block = f"{STAMP_START}\n{stamp}\n{STAMP_END}"
    if STAMP_START in out:
        return re.sub(re.escape(STAMP_START) + r".*?" + re.escape(STAMP_END), block, out, flags=re.S)
    title_end = out.index("\n", out.index("# ")) + 1
    return out[:title_end] + "\n" + block + "\n" + out[title_end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--junit", type=Path, default=REPO / ".pytest_cache" / "reliability.xml")
    parser.add_argument(
        "--no-run", action="store_true", help="only rewrite the doc from an earlier --junit file"
    )
    args = parser.parse_args(argv)
    text = DOC.read_text()
    tests = references(text)
    started = dt.datetime.now(dt.UTC)
    if not args.no_run:
        args.junit.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "ML_PROVIDER_TEST_DATABASE_URL": os.environ.get("ML_PROVIDER_TEST_DATABASE_URL", DEFAULT_DB),
        }
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--dist",
            "loadfile",
            f"--junitxml={args.junit}",
            *tests,
        ]
        print("running", len(tests), "tests and modules:", " ".join(command[3:6]), "...", flush=True)
        subprocess.run(command, cwd=REPO, env=env, check=False)
    outcomes = read_junit(args.junit)
    failed = sum(len(o.failed) for key, o in outcomes.items() if "::" in key)
    passed = sum(o.passed for key, o in outcomes.items() if "::" in key)
    stamp = (
        f"_Results of `make reliability` on {started:%Y-%m-%d %H:%M} UTC, {platform.machine()} with "
        f"{os.cpu_count()} cores, Python {platform.python_version()}: {passed} passed, {failed} failed._"
    )
    DOC.write_text(rewrite(text, outcomes, stamp))
    print(f"{DOC.relative_to(REPO)}: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
