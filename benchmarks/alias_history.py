"""Alias history: a recorded, race-safe alias move and reading its history, against MLflow's own calls.

Run from the repository root::

    .venv/bin/python benchmarks/alias_history.py [--moves 10 100] [--reads 5] [--rounds 3]
                                                 [--workers 2] [--json FILE]

One run starts a real ``mlflow server`` (SQLite backend store, the test harness's ``MlflowServer``),
waits until its processes are idle, points ``MlflowHook()`` at it through the connection
``AIRFLOW_CONN_MLFLOW_DEFAULT``, and measures, for each N of ``--moves``, on fresh registered models
of three versions each (``champion`` cycles over them, never staying put):

* per alias move, N moves of ``champion`` on a model of its own per case:

  - ``baseline set alias``: ``MlflowClient.set_registered_model_alias(name, "champion", v)``, the one
    call a plain MLflow user writes (two requests: MLflow's client first reads the model to check it
    is not a prompt);
  - ``provider move_alias``: ``MlflowHook.move_alias(name, v, expected=<the holder>, owner=...,
    record=MoveRecord(...))`` as the promotion operator calls it. It reads the history first (to
    record a move made by hand), claims the alias's epoch with the move's record, checks the alias
    again, sets ``previous_champion`` and ``champion``, claims the epoch's outcome and bumps the
    epoch tag on the registered model;

* reading, after those N moves, ``--reads`` times each, the two cases interleaved:

  - ``baseline get_registered_model``: ``MlflowClient.get_registered_model(name)``, which gives
    where the alias points now and nothing of its past;
  - ``provider alias_history``: ``MlflowHook.alias_history(name)``, every move with its record.

Each case gets an untimed warm-up; the rounds (``--rounds``) repeat everything on fresh models.
A case's ms/op is the mean over a round's operations (what N moves cost, divided by N: a move reads
the whole history, so later moves cost more); the table shows the median round's, its median
operation and its slowest, and the ratios compare the means. Requests are counted at ``requests.Session.request``
(every HTTP request either client makes). Correctness is checked in the same run, so that no speed
is reported for wrong data: the history has exactly N entries, epochs 0..N-1, each from the
previous entry's ``to`` (the first from nothing) to the version moved to, and the last ``to`` is
where ``champion`` points; ``previous_champion`` and the epoch tag agree; the baseline's alias ends
on its last version; every timed read returned that same history.

Goals (exit status 0 when every case verified and every goal measured is met):

* a recorded move costs at most 25x a bare alias set (it does a search, two claims and epoch tags)
  and at most 300 ms, mean per move, for every N measured;
* reading a 100-move history takes at most 1 s (mean per read; measured when 100 is in ``--moves``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
GOAL_MOVE_RATIO = 25.0  # provider move_alias / baseline set alias
GOAL_MOVE_MS = 300.0  # per recorded move
GOAL_READ_MOVES = 100  # the history length the read goal is set for
GOAL_READ_S = 1.0  # alias_history of a GOAL_READ_MOVES-move history
N_VERSIONS = 3
ALIAS = "champion"
CASES = (
    "baseline set alias",
    "provider move_alias",
    "baseline get_registered_model",
    "provider alias_history",
)
BASELINE_OF = {CASES[1]: CASES[0], CASES[3]: CASES[2]}


@dataclass
class CaseResult:
    case: str
    moves: int  # N: how many moves the history holds (made, for the move cases)
    round: int
    operations: int  # moves made, or reads
    requests: int  # HTTP requests over all operations
    seconds: float  # wall time over all operations
    ms_per_op: float  # mean
    ms_median: float
    ms_slowest: float
    client_cpu_seconds: float
    verified: bool
    detail: str
    ms_each: list[float]  # every operation, in order (a move's cost grows with the history)


@dataclass
class Tally:
    """Wall time of each operation, the client's CPU time and the requests they made."""

    times: list[float] = field(default_factory=list)
    cpu: float = 0.0
    requests: int = 0

    def run(self, fn: Callable[[], Any]) -> Any:
        before = RequestCounter.count
        cpu = time.process_time()
        start = time.perf_counter()
        out = fn()
        self.times.append(time.perf_counter() - start)
        self.cpu += time.process_time() - cpu
        self.requests += RequestCounter.count - before
        return out


class RequestCounter:
    """Counts every ``requests.Session.request`` (MLflow's REST stores send everything through it)."""

    count = 0

    @classmethod
    def install(cls) -> None:
        import requests

        original = requests.Session.request

        def counting(session: Any, *args: Any, **kwargs: Any) -> Any:
            cls.count += 1
            return original(session, *args, **kwargs)

        requests.Session.request = counting  # type: ignore[method-assign]


def plan(versions: Sequence[str], n: int) -> list[str]:
    """The versions ``champion`` is moved to, in order: cycling, so each move changes it."""
    return [versions[i % len(versions)] for i in range(n)]


def check_history(entries: Sequence[Any], planned: Sequence[str], current: str | None) -> tuple[bool, str]:
    """Whether ``entries`` (AliasHistoryEntry, oldest first) are exactly the ``planned`` moves."""
    problems: list[str] = []
    if len(entries) != len(planned):
        problems.append(f"{len(entries)} entries for {len(planned)} moves")
    previous_to: str | None = None
    for i, (entry, to) in enumerate(zip(entries, planned, strict=False)):
        if entry.from_version != previous_to:
            problems.append(f"entry {i} is from {entry.from_version}, the one before went to {previous_to}")
        if (entry.epoch, entry.to_version, entry.kind) != (i, to, "promotion"):
            problems.append(
                f"entry {i} is epoch {entry.epoch} {entry.kind} to {entry.to_version}, "
                f"expected epoch {i} promotion to {to}"
            )
        previous_to = entry.to_version
        if len(problems) > 3:
            break
    last = entries[-1].to_version if entries else None
    if last != current:
        problems.append(f"the last entry goes to {last}, {ALIAS} is on {current}")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(entries)} entries chained None -> ... -> {last} = current {ALIAS}"


def result(case: str, moves: int, round_no: int, tally: Tally, ok: bool, detail: str) -> CaseResult:
    seconds = sum(tally.times)
    done = CaseResult(
        case=case,
        moves=moves,
        round=round_no,
        operations=len(tally.times),
        requests=tally.requests,
        seconds=seconds,
        ms_per_op=seconds * 1000 / len(tally.times),
        ms_median=statistics.median(tally.times) * 1000,
        ms_slowest=max(tally.times) * 1000,
        client_cpu_seconds=tally.cpu,
        verified=ok,
        detail=detail,
        ms_each=[round(t * 1000, 3) for t in tally.times],
    )
    print(
        f"  round {round_no} N={moves:<4} {case:<30} {done.operations:>4} ops {done.requests:>5} requests "
        f"{seconds:8.3f} s {done.ms_per_op:8.2f} ms/op  {'verified' if ok else 'NOT VERIFIED'}: {detail}",
        flush=True,
    )
    return done


class Bench:
    """The cases against one server: ``hook`` (the provider) and ``client`` (a plain MLflow user)."""

    def __init__(self, hook: Any, client: Any) -> None:
        self.hook = hook
        self.client = client

    def new_model(self, name: str) -> list[str]:
        """A registered model with N_VERSIONS versions, no alias; untimed."""
        return [
            str(
                self.hook.register_version(name, f"s3://bench/{name}/{i}", registration_key=f"k{i}")[
                    0
                ].version
            )
            for i in range(N_VERSIONS)
        ]

    def baseline_moves(self, name: str, targets: list[str], tally: Tally) -> tuple[bool, str]:
        for version in targets:
            tally.run(lambda v=version: self.client.set_registered_model_alias(name, ALIAS, v))
        current = self.client.get_registered_model(name).aliases.get(ALIAS)
        ok = current == targets[-1]
        return ok, f"{ALIAS} on {current}, last set {targets[-1]}"

    def provider_moves(self, name: str, targets: list[str], tally: Tally) -> tuple[bool, str]:
        from airflow_ml_provider.hooks._alias_history import MoveRecord
        from airflow_ml_provider.vocabulary import ALIAS_PREVIOUS_CHAMPION, TAG_ALIAS_EPOCH_PREFIX

        expected: str | None = None
        for i, version in enumerate(targets):
            record = MoveRecord(  # what the promotion operator passes
                reason=f"Blessed against {ALIAS} = {expected or 'not set'} (auc 0.{800 + i}).",
                dag_id="continuous_training",
                run_id=f"scheduled__bench_{i}",
                task_id="promote",
                dataset_version=f"{i:04d}",
                evaluation_run_id=f"{i:032x}",
            )
            owner = f"continuous_training/scheduled__bench_{i}/promote/1"
            tally.run(
                lambda v=version, e=expected, r=record, o=owner: self.hook.move_alias(
                    name, v, expected=e, owner=o, record=r
                )
            )
            expected = version
        model = self.client.get_registered_model(name)
        ok, detail = check_history(self.hook.alias_history(name), targets, model.aliases.get(ALIAS))
        epoch = (model.tags or {}).get(TAG_ALIAS_EPOCH_PREFIX + ALIAS)
        previous = model.aliases.get(ALIAS_PREVIOUS_CHAMPION)
        want_previous = targets[-2] if len(targets) > 1 else None
        if epoch != str(len(targets)) or previous != want_previous:
            ok = False
            detail += f"; epoch tag {epoch} (want {len(targets)}), previous_champion {previous} (want {want_previous})"
        return ok, detail

    def reads(
        self, names: dict[str, str], targets: dict[str, list[str]], n_reads: int
    ) -> tuple[Tally, Tally, tuple[bool, str], tuple[bool, str]]:
        """The two read cases, interleaved, on the models of the two move cases; every answer checked."""
        base_name, base_targets = names[CASES[0]], targets[CASES[0]]
        provider_name, provider_targets = names[CASES[1]], targets[CASES[1]]
        base, history = Tally(), Tally()
        base_ok, history_ok = True, (True, "")
        for _ in range(n_reads):
            model = base.run(lambda: self.client.get_registered_model(base_name))
            base_ok = base_ok and model.aliases.get(ALIAS) == base_targets[-1]
            entries = history.run(lambda: self.hook.alias_history(provider_name))
            if history_ok[0]:
                history_ok = check_history(entries, provider_targets, provider_targets[-1])
        base_detail = f"{n_reads} reads, {ALIAS} on {base_targets[-1]}" if base_ok else "alias not where set"
        if history_ok[0]:
            history_ok = (True, f"{n_reads} reads of {len(provider_targets)} entries, chained and current")
        return base, history, (base_ok, base_detail), history_ok

    def models(self, prefix: str, n: int) -> tuple[dict[str, str], dict[str, list[str]]]:
        """A fresh model per move case, and the versions its alias is moved to; untimed."""
        names = {case: f"{prefix}-{case.split()[0]}" for case in CASES[:2]}
        return names, {case: plan(self.new_model(name), n) for case, name in names.items()}

    def moves(
        self, names: dict[str, str], targets: dict[str, list[str]]
    ) -> dict[str, tuple[Tally, bool, str]]:
        """The two move cases, one after the other."""
        out = {}
        for case, body in ((CASES[0], self.baseline_moves), (CASES[1], self.provider_moves)):
            tally = Tally()
            ok, detail = body(names[case], targets[case], tally)
            out[case] = (tally, ok, detail)
        return out

    def warm_up(self) -> None:
        """Untimed: both clients' HTTP sessions, the server's workers, every endpoint the cases use."""
        names, targets = self.models("bench-alias-warm-up", 6)
        self.moves(names, targets)
        self.reads(names, targets, 3)

    def round(self, round_no: int, n: int, n_reads: int) -> list[CaseResult]:
        names, targets = self.models(f"bench-alias-r{round_no}-n{n}", n)
        out = [result(case, n, round_no, *measured) for case, measured in self.moves(names, targets).items()]
        base, history, base_ok, history_ok = self.reads(names, targets, n_reads)
        out.append(result(CASES[2], n, round_no, base, *base_ok))
        out.append(result(CASES[3], n, round_no, history, *history_ok))
        return out


def run_benchmark(args: argparse.Namespace, workdir: Path) -> list[CaseResult]:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    sys.path.insert(0, str(REPO_ROOT))
    from support.harness import MlflowServer
    from tracking_overhead import wait_until_idle

    server = MlflowServer(workdir / "mlflow", workers=args.workers)
    print(f"Starting mlflow server ({server.backend_store_uri}, {args.workers} workers) ...", flush=True)
    try:
        server.start()
        wait_until_idle(server)
        os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = server.connection_json()
        from mlflow.tracking import MlflowClient

        from airflow_ml_provider.hooks.mlflow import MlflowHook

        for quiet in ("mlflow", "airflow_ml_provider"):  # a line per version created, per move made
            logging.getLogger(quiet).setLevel(logging.WARNING)

        RequestCounter.install()
        # The baseline's client, built once, as a user would keep it.
        bench = Bench(MlflowHook(), MlflowClient(tracking_uri=server.url))
        bench.warm_up()
        results: list[CaseResult] = []
        for round_no in range(1, args.rounds + 1):
            for n in args.moves:
                results += bench.round(round_no, n, args.reads)
        return results
    finally:
        server.stop()


def summarise(results: list[CaseResult], args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for n in args.moves:
        for case in CASES:
            rounds = [r for r in results if r.case == case and r.moves == n]
            median = sorted(rounds, key=lambda r: r.ms_per_op)[(len(rounds) - 1) // 2]
            summary.setdefault(str(n), {})[case] = {
                "operations": median.operations,
                "requests_per_op": median.requests / median.operations,
                "ms_per_op": statistics.median(r.ms_per_op for r in rounds),
                "ms_per_op_min": min(r.ms_per_op for r in rounds),
                "ms_per_op_max": max(r.ms_per_op for r in rounds),
                "ms_median": statistics.median(r.ms_median for r in rounds),
                "ms_slowest": max(r.ms_slowest for r in rounds),
                "client_cpu_ms_per_op": statistics.median(
                    r.client_cpu_seconds * 1000 / r.operations for r in rounds
                ),
                "verified": all(r.verified for r in rounds),
            }
        for case, base in BASELINE_OF.items():
            cases = summary[str(n)]
            cases[case]["ratio_to_baseline"] = cases[case]["ms_per_op"] / cases[base]["ms_per_op"]
    return {
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "server": f"mlflow server, SQLite backend, {args.workers} workers",
        "load_average_before": list(args.load_before),
        "rounds": args.rounds,
        "reads": args.reads,
        "summary": summary,
        "goals": goals(summary),
        "all_verified": all(r.verified for r in results),
        "rounds_detail": [asdict(r) for r in results],
    }


def goals(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each goal with the worst value measured (None: not measured), its limit, and whether met."""
    moves = [(int(n), cases[CASES[1]]) for n, cases in summary.items()]
    worst_ratio = max(moves, key=lambda m: m[1]["ratio_to_baseline"])
    worst_ms = max(moves, key=lambda m: m[1]["ms_per_op"])
    read = summary.get(str(GOAL_READ_MOVES), {}).get(CASES[3])
    measured = [
        (
            f"recorded move <= {GOAL_MOVE_RATIO:g}x a bare alias set",
            worst_ratio,
            "ratio_to_baseline",
            GOAL_MOVE_RATIO,
            "x",
        ),
        (f"recorded move <= {GOAL_MOVE_MS:g} ms", worst_ms, "ms_per_op", GOAL_MOVE_MS, " ms"),
    ]
    out = [
        {
            "goal": goal,
            "at_moves": n,
            "value": case[key],
            "limit": limit,
            "unit": unit,
            "met": case[key] <= limit,
        }
        for goal, (n, case), key, limit, unit in measured
    ]
    out.append(
        {
            "goal": f"alias_history after {GOAL_READ_MOVES} moves <= {GOAL_READ_S:g} s",
            "at_moves": GOAL_READ_MOVES,
            "value": None if read is None else read["ms_per_op"] / 1000,
            "limit": GOAL_READ_S,
            "unit": " s",
            "met": None if read is None else read["ms_per_op"] / 1000 <= GOAL_READ_S,
        }
    )
    return out


def print_table(report: dict[str, Any]) -> None:
    from tracking_overhead import markdown_table  # the same table as the other benchmarks

    """A Markdown table: one row per case and N (its median round), the ratio to its baseline."""
    columns = [
        "case",
        "N moves",
        "ops",
        "requests/op",
        "ms/op",
        "min-max ms/op",
        "median ms",
        "slowest ms",
        "client CPU ms/op",
        "case / baseline",
    ]
    rows = [
        [
            case,
            n,
            str(s["operations"]),
            f"{s['requests_per_op']:.1f}",
            f"{s['ms_per_op']:.2f}",
            f"{s['ms_per_op_min']:.2f}-{s['ms_per_op_max']:.2f}",
            f"{s['ms_median']:.2f}",
            f"{s['ms_slowest']:.1f}",
            f"{s['client_cpu_ms_per_op']:.2f}",
            f"{s['ratio_to_baseline']:.1f}x" if "ratio_to_baseline" in s else "baseline",
        ]
        for n, cases in report["summary"].items()
        for case, s in cases.items()
    ]
    print()
    print(
        f"Alias history ({report['server']}; Python {report['python']}, {report['machine']}; "
        f"median of {report['rounds']} rounds, {report['reads']} reads each; load average before "
        f"the run {', '.join(f'{x:.2f}' for x in report['load_average_before'])})"
    )
    print()
    print("\n".join(markdown_table(columns, rows)))
    print()
    for n, cases in report["summary"].items():
        print(
            f"N={n}: provider move_alias / set alias {cases[CASES[1]]['ratio_to_baseline']:.1f}x; "
            f"alias_history / get_registered_model {cases[CASES[3]]['ratio_to_baseline']:.1f}x"
        )
    for goal in report["goals"]:
        if goal["value"] is None:
            print(f"goal {goal['goal']}: not measured (add {goal['at_moves']} to --moves)")
            continue
        print(
            f"goal {goal['goal']}: {goal['value']:.{1 if goal['unit'] != ' s' else 3}f}{goal['unit']} "
            f"at N={goal['at_moves']} ({goal['value'] / goal['limit']:.2f} of it) -> "
            f"{'PASS' if goal['met'] else 'FAIL'}"
        )
    if not report["all_verified"]:
        print("FAIL: some case's data was wrong (see NOT VERIFIED above)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--moves", type=int, nargs="+", default=[10, 100], help="history lengths N (default 10 100)"
    )
    parser.add_argument("--reads", type=int, default=5, help="timed reads per case after the moves")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds on fresh models; the table shows medians"
    )
    parser.add_argument("--workers", type=int, default=2, help="mlflow server workers (default 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    if min(args.moves) < 2:
        parser.error("--moves must be at least 2 (the second move is the first to keep a previous_champion)")
    if args.rounds < 1 or args.reads < 1:
        parser.error("--rounds and --reads must be at least 1")
    args.moves = sorted(set(args.moves))
    args.load_before = os.getloadavg()  # the figures are wall times: other work on the machine shows

    workdir = Path(tempfile.mkdtemp(prefix="ml-provider-bench-alias-"))
    # Before anything imports Airflow: an isolated AIRFLOW_HOME, no ambient MLflow settings.
    (workdir / "airflow_home").mkdir()
    os.environ["AIRFLOW_HOME"] = str(workdir / "airflow_home")
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{workdir / 'airflow.db'}"
    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        del os.environ[name]
    try:
        results = run_benchmark(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = summarise(results, args)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.json}")
    met = all(g["met"] is not False for g in report["goals"])
    return 0 if report["all_verified"] and met else 1


if __name__ == "__main__":
    sys.exit(main())
