"""Warm step servers: a step's start in a new interpreter, on a fresh worker, and on a warm one.

Run from the repository root::

    .venv/bin/python benchmarks/warm_start.py [--rows 2000] [--repeat 3] [--json FILE]

One dataset version (the demo generator, ``--rows`` rows) is validated by ``validate_data`` through
``PythonRunner`` in the step environment (``.venv-steps/bin/python``, or ``--python``), from
Airflow's environment, as a task does. Three cases, interleaved over ``--repeat`` rounds, each timed
from the runner's call to its result:

* ``cold``: ``warm=False``: a new interpreter imports what the step needs (today's start without
  a server; the baseline);
* ``fresh worker``: ``warm=True`` with an empty servers' folder: the first task on a fresh worker.
  It finds no server, starts one for the steps after it, and runs its own step cold beside the
  server's imports;
* ``warm``: ``warm=True`` with that server warm (its ``.ready`` file is there): a forked child.

Goals: fresh worker / cold <= 1.10 (the first task is no slower than before, within the noise of
one round), warm / cold reported (and warm - the step's own compute <= 1 s). Each round uses its
own servers' folder, and the servers are stopped at the end. Exit status 0 when the goals are met.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from airflow_ml_provider.runners import PythonRunner  # noqa: E402
from airflow_ml_provider.runners.warm import WARM_DIR_ENV, server_ready, stop_servers  # noqa: E402

FRESH_GOAL = 1.10
WARM_OVERHEAD_GOAL = 1.0
_COMPUTED = re.compile(r"Step validate_data computed in ([0-9.]+) s")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _run(python: str, warm: bool, data_uri: str, workdir: Path) -> dict[str, Any]:
    """Validate the version once; return the wall time, the step's own compute and how it started."""
    logger = logging.getLogger(f"bench.warm_start.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = _Lines()
    logger.addHandler(handler)
    out = tempfile.mkdtemp(dir=workdir)
    spec = {"data_uri": data_uri, "format": "csv", "output_dir": out}
    started = time.perf_counter()
    PythonRunner(python=python, warm=warm).run("validate_data", spec, logger=logger)
    wall = time.perf_counter() - started
    computed = next(
        (float(m.group(1)) for line in handler.lines if (m := _COMPUTED.search(line))), float("nan")
    )
    return {
        "wall": wall,
        "compute": computed,
        "warm_child": any("(warm: child " in line for line in handler.lines),
    }


def _wait_ready(python: str, folder: Path, within: float = 300.0) -> None:
    deadline = time.monotonic() + within
    while not server_ready(python):  # in the servers' folder of the round (AIRFLOW_ML_WARM_DIR)
        if time.monotonic() > deadline:
            raise SystemExit(f"the warm step server did not finish its imports in {within:.0f} s ({folder})")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--python", default=str(REPO_ROOT / ".venv-steps" / "bin" / "python"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    rounds: dict[str, list[dict[str, Any]]] = {"cold": [], "fresh worker": [], "warm": []}
    folders: list[Path] = []
    try:
        from airflow_ml_provider.runners import PythonRunner as _Runner

        data = _Runner(python=args.python).run(
            "generate_dataset", {"root": str(workdir / "data"), "rows": args.rows, "seed": 0}
        )
        data_uri = data["versions"][0]["uri"]
        print(f"python {args.python}; {args.rows} rows; {args.repeat} round(s)", flush=True)
        for index in range(args.repeat):
            folder = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))  # short: a socket path
            folders.append(folder)
            os.environ[WARM_DIR_ENV] = str(folder)
            rounds["cold"].append(_run(args.python, False, data_uri, workdir))
            rounds["fresh worker"].append(_run(args.python, True, data_uri, workdir))
            _wait_ready(args.python, folder)
            rounds["warm"].append(_run(args.python, True, data_uri, workdir))
            print(
                f"round {index + 1}: "
                + ", ".join(f"{case} {runs[-1]['wall']:.2f} s" for case, runs in rounds.items()),
                flush=True,
            )
    finally:
        for folder in folders:
            stop_servers(folder)
        time.sleep(1)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    if not all(run["warm_child"] for run in rounds["warm"]):
        print("FAIL: a 'warm' run did not start in a warm child")
        return 1
    if any(run["warm_child"] for run in rounds["fresh worker"]):
        print("FAIL: a 'fresh worker' run found a warm server")
        return 1
    median = {case: statistics.median(r["wall"] for r in runs) for case, runs in rounds.items()}
    compute = {case: statistics.median(r["compute"] for r in runs) for case, runs in rounds.items()}
    print(f"{'case':<14}{'wall s':>9}{'step compute s':>16}")
    for case in rounds:
        print(f"{case:<14}{median[case]:>9.2f}{compute[case]:>16.2f}")
    fresh_ratio = median["fresh worker"] / median["cold"]
    warm_ratio = median["warm"] / median["cold"]
    warm_overhead = median["warm"] - compute["warm"]
    fresh_ok = fresh_ratio <= FRESH_GOAL
    warm_ok = warm_overhead <= WARM_OVERHEAD_GOAL
    print(f"fresh worker / cold <= {FRESH_GOAL}: {fresh_ratio:.3f} -> {'PASS' if fresh_ok else 'FAIL'}")
    print(
        f"warm: wall - step compute <= {WARM_OVERHEAD_GOAL} s: {warm_overhead:.2f} s -> "
        f"{'PASS' if warm_ok else 'FAIL'}; warm / cold {warm_ratio:.3f} (cold / warm {1 / warm_ratio:.1f}x)"
    )
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "median": median, "compute": compute}, indent=2))
    return 0 if fresh_ok and warm_ok else 1


if __name__ == "__main__":
    sys.exit(main())
