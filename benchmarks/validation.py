"""Data validation: the ``validate_data`` step against TFDV's Beam default and pandas, on 1M rows.

Run from the repository root::

    .venv/bin/python benchmarks/validation.py [--repeat 3] [--workdir DIR] [--skip-beam]
                                              [--skip-5m] [--json FILE]

Data: the demo generator (``generate_dataset``, seed 0, ``extra_features=11``): 8 standard
features + 11 extra (``num_00``..``num_05`` floats, ``cat_00``..``cat_04`` strings) + ``label`` =
20 columns, one CSV per version. The 1M-row version (about 117 MB) and the 5M-row one are
generated under ``--workdir`` (default: ``<tmp>/airflow_ml_provider_bench_validation``) and reused
by later runs when their ``_SUCCESS`` marker is there.

Every measurement runs in a fresh ``python`` subprocess that reads the file itself (no result or
cache shared between cases; the file does sit in the OS page cache, warm for every case alike).
The child first imports what its case needs (timed, reported as "import s") and then times only
the call on the data ("compute s"); ratios compare compute times. Modules the call still imports
lazily are counted in its compute time and listed.

Cases (median of ``--repeat`` runs, step and pandas interleaved; the Beam case once):

* ``step``: ``validate_data({"data_uri": <version dir>, "format": "csv", "output_dir": <tmp>,
  "engine": "in_memory"})``: chunked pyarrow CSV reading, TFDV in-memory statistics generators,
  schema inference (no ``schema_uri``), validation, the artifacts (statistics, anomalies, schema,
  HTML report) written;
* ``tfdv beam``: ``tfdv.generate_statistics_from_csv(data_location=<csv>)`` with default options
  (Beam DirectRunner);
* ``pandas``: ``pd.read_csv(<csv>)`` then ``df.describe(include="all")``.

Checks: the step's ``example_count`` equals the row count; for every numeric column its statistics
(``statistics.pb``) give the same count, min, max and mean as pandas (relative difference
<= 1e-6); for every string column the same number of distinct values and the same most frequent
value. Goals: the step is >= 25x faster than the Beam default; step / pandas <= 1.0; peak RSS of
the step on 5M rows x 20 columns < 1.5 GB (the child's ``VmHWM`` from ``/proc/self/status`` at its
end; ``ru_maxrss`` from ``os.wait4`` is not used, since Linux carries the parent's size at the fork
over into it).

One more child runs the step on the 1M file with timers wrapped around its phases (CSV parsing,
TFDV generators, merging, schema inference, validation, artifacts/report) to show where the time
goes. Exit status 0 when the checks pass and every goal measured is met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ROWS_1M = 1_000_000
ROWS_5M = 5_000_000
EXTRA_FEATURES = 11
SEED = 0
GOAL_BEAM_SPEEDUP = 25.0
GOAL_PANDAS_RATIO = 1.0
GOAL_RSS_BYTES = 1.5e9  # 1.5 GB
REL_TOL = 1e-6

# What each case imports before its clock starts (the call's own lazy imports stay in its time).
CASE_IMPORTS = {
    "step": [
        "numpy",
        "pyarrow",
        "pyarrow.csv",
        "pyarrow.parquet",
        "fsspec",
        "fsspec.implementations.local",
        "tensorflow_data_validation",
        "tensorflow_data_validation.statistics.stats_impl",
        "tfx_bsl.arrow.table_util",
        "google.protobuf.json_format",
        "google.protobuf.text_format",
        "airflow_ml_provider.ml.validation",
        "airflow_ml_provider.ml.validation.report",
    ],
    "tfdv beam": ["tensorflow_data_validation", "apache_beam"],
    "pandas": ["numpy", "pandas"],
}
CASE_IMPORTS["step profile"] = CASE_IMPORTS["step"]


# --------------------------------------------------------------------------- child side


def _lookup(module: Any, name: str) -> Any:
    """``module.name`` for the profiler to wrap, or None (said on stderr) when it is not there."""
    original = getattr(module, name, None)
    if original is None:
        print(f"profile: {getattr(module, '__name__', module)}.{name} not found; not timed", file=sys.stderr)
    return original


class _Timers:
    """Wall time per label, collected by wrapping functions of the step's modules (thread-safe)."""

    def __init__(self) -> None:
        import threading

        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def add(self, label: str, seconds: float) -> None:
        with self.lock:
            self.seconds[label] = self.seconds.get(label, 0.0) + seconds
            self.calls[label] = self.calls.get(label, 0) + 1

    def wrap(self, module: Any, name: str, label: str) -> None:
        original = _lookup(module, name)
        if original is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(label, time.perf_counter() - start)

        setattr(module, name, timed)

    def wrap_generator(self, module: Any, name: str, label: str) -> None:
        """Time every ``next()`` of the generator function ``module.name`` (e.g. CSV batches)."""
        original = _lookup(module, name)
        if original is None:
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            iterator = iter(original(*args, **kwargs))
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    self.add(label, time.perf_counter() - start)
                    return
                self.add(label, time.perf_counter() - start)
                yield item

        setattr(module, name, timed)


# (kind, module, attribute, label); labels starting with two spaces are parts of the one above.
PROFILE_POINTS = [
    ("call", "step", "compute_statistics", "statistics (total)"),
    ("gen", "statistics", "_prefetch", "  main thread waiting for the next batch"),
    ("gen", "statistics", "_csv_batches", "  CSV parsing (pyarrow; reader thread if prefetched)"),
    ("call", "statistics", "canonical_batch", "  canonicalize record batch"),
    ("call", "stats_impl", "generate_partial_statistics_in_memory", "  TFDV generators (add_input)"),
    ("call", "accumulator", "_merge_partial", "  merge accumulators"),
    ("call", "stats_impl", "extract_statistics_output", "  extract statistics output"),
    ("call", "schema", "infer_schema_from_stats", "schema inference"),
    ("call", "schema", "schema_for_validation", "schema for validation"),
    ("call", "tfdv", "validate_statistics", "tfdv.validate_statistics"),
    ("call", "step", "_write_artifacts", "artifacts (total)"),
    ("call", "report", "write_report", "  HTML report + plots"),
]


def _install_profile() -> _Timers:
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl

    from airflow_ml_provider.ml.validation import report, schema, statistics, step

    modules = {
        "step": step,
        "statistics": statistics,
        "stats_impl": stats_impl,
        "accumulator": getattr(statistics, "_Accumulator", None),
        "schema": schema,
        "tfdv": tfdv,
        "report": report,
    }
    timers = _Timers()
    get_generators = stats_impl.get_generators

    def timed_generators(*args: Any, **kwargs: Any) -> Any:
        generators = get_generators(*args, **kwargs)
        for generator in generators:  # one line per TFDV generator, under "TFDV generators"
            timers.wrap(generator, "add_input", f"    {type(generator).__name__}.add_input")
        return generators

    stats_impl.get_generators = timed_generators
    for kind, module, name, label in PROFILE_POINTS:
        target = modules[module]
        if target is None or not hasattr(target, name):
            print(f"profile: {module}.{name} not found; not timed", file=sys.stderr)
            continue
        if kind == "gen":
            timers.wrap_generator(target, name, label)
        else:
            timers.wrap(target, name, label)
    return timers


def _run_step(data: Path, workdir: Path, profile: bool) -> dict[str, Any]:
    from airflow_ml_provider.ml.validation import validate_data

    timers = _install_profile() if profile else None
    output_dir = Path(tempfile.mkdtemp(prefix="step-out-", dir=workdir))
    try:
        spec = {
            "data_uri": str(data.parent),
            "format": "csv",
            "output_dir": str(output_dir),
            "engine": "in_memory",
        }
        start = time.perf_counter()
        result = validate_data(spec)
        seconds = time.perf_counter() - start
        kept = workdir / f"step_statistics_{data.parent.parent.name}.pb"
        shutil.copyfile(result["artifacts"]["statistics"], kept)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    out: dict[str, Any] = {
        "seconds": seconds,
        "example_count": result["example_count"],
        "anomaly_count": result["anomaly_count"],
        "statistics": str(kept),
    }
    if timers is not None:
        out["profile"] = timers.seconds
        out["profile_calls"] = timers.calls
    return out


def _run_beam(data: Path, workdir: Path) -> dict[str, Any]:
    import tensorflow_data_validation as tfdv

    start = time.perf_counter()
    stats = tfdv.generate_statistics_from_csv(data_location=str(data))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "example_count": int(stats.datasets[0].num_examples)}


def _run_pandas(data: Path, workdir: Path) -> dict[str, Any]:
    import pandas as pd

    start = time.perf_counter()
    df = pd.read_csv(data)
    described = df.describe(include="all")
    seconds = time.perf_counter() - start
    numeric = {
        str(c): {
            "count": float(described.at["count", c]),
            "min": float(described.at["min", c]),
            "max": float(described.at["max", c]),
            "mean": float(described.at["mean", c]),
        }
        for c in df.columns
        if df[c].dtype.kind in "iuf"
    }
    text = {
        str(c): {
            "count": float(described.at["count", c]),
            "unique": int(described.at["unique", c]),
            "top": str(described.at["top", c]),
        }
        for c in df.columns
        if df[c].dtype.kind == "O"
    }
    return {"seconds": seconds, "example_count": len(df), "numeric": numeric, "text": text}


def _vm_hwm() -> int:
    """This process's peak resident set (``VmHWM``, bytes): its own memory only, reset by exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def child_main(case: str, data: Path, workdir: Path, out: Path) -> None:
    """Import the case's modules (timed), run it once on ``data`` (timed), write JSON to ``out``."""
    import importlib
    import warnings

    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    for module in CASE_IMPORTS[case]:
        importlib.import_module(module)
    import_seconds = time.perf_counter() - start
    rss_after_import = _vm_hwm()
    before = set(sys.modules)
    if case in ("step", "step profile"):
        result = _run_step(data, workdir, profile=case == "step profile")
    elif case == "tfdv beam":
        result = _run_beam(data, workdir)
    else:
        result = _run_pandas(data, workdir)
    result["import_seconds"] = import_seconds
    result["rss_after_import"] = rss_after_import
    result["vm_hwm"] = _vm_hwm()
    result["lazy_imports"] = sorted(set(sys.modules) - before)
    result["lazy_import_count"] = len(set(sys.modules) - before)
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- parent side


def run_child(case: str, data: Path, workdir: Path) -> dict[str, Any]:
    """Run one case in a fresh interpreter; add its peak RSS (``os.wait4``) to its JSON result."""
    out = Path(tempfile.mkstemp(prefix="result-", suffix=".json", dir=workdir)[1])
    log = workdir / f"child-{case.replace(' ', '_')}.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO_ROOT), "MPLBACKEND": "Agg"}
    command = [
        sys.executable,
        __file__,
        "--child",
        case,
        "--data",
        str(data),
        "--workdir",
        str(workdir),
        "--out",
        str(out),
    ]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(
            f"case {case!r} failed (exit {process.returncode}); see {log}:\n{log.read_text()[-3000:]}"
        )
    result = json.loads(out.read_text())
    out.unlink()
    # The peak is the child's VmHWM. ru_maxrss from wait4 is kept for reference only: Linux carries
    # over the high-water mark of the image that exec replaced (this process's size at the fork).
    result["ru_maxrss"] = usage.ru_maxrss * 1024  # Linux reports KiB
    result["peak_rss"] = result["vm_hwm"]
    return result


def ensure_data(workdir: Path, rows: int) -> Path:
    """Generate (once) the ``rows``-row, 20-column CSV version under ``workdir``; return the CSV."""
    root = workdir / f"data_{rows // 1_000_000}m"
    version = root / "version=0001"
    csv = version / "part-00000.csv"
    if (version / "_SUCCESS").is_file() and csv.is_file():
        print(f"data: reusing {csv} ({csv.stat().st_size / 1e6:.0f} MB)")
        return csv
    start = time.perf_counter()
    spec = {
        "root": str(root),
        "rows": rows,
        "seed": SEED,
        "extra_features": EXTRA_FEATURES,
        "overwrite": True,
    }
    code = "import json, sys; from airflow_ml_provider.ml.datagen import generate_dataset as g; g(json.loads(sys.argv[1]))"
    # In a child of its own, so this process stays small (its children inherit its RSS at fork).
    subprocess.run([sys.executable, "-c", code, json.dumps(spec)], check=True, cwd=REPO_ROOT)
    print(f"data: generated {csv} ({csv.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s")
    return csv


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= REL_TOL * max(abs(a), abs(b))


def check_statistics(step: dict[str, Any], pandas: dict[str, Any], rows: int) -> list[str]:
    """Compare the step's statistics.pb with pandas' describe; return the problems found."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    problems = []
    if step["example_count"] != rows:
        problems.append(f"step example_count {step['example_count']} != {rows} rows")
    if pandas["example_count"] != rows:
        problems.append(f"pandas read {pandas['example_count']} rows, not {rows}")
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.ParseFromString(Path(step["statistics"]).read_bytes())
    features = {f.path.step[0] if f.path.step else f.name: f for f in stats.datasets[0].features}
    for name, want in pandas["numeric"].items():
        feature = features.get(name)
        if feature is None or not feature.HasField("num_stats"):
            problems.append(f"{name}: no numeric statistics from the step")
            continue
        got = {
            "count": float(feature.num_stats.common_stats.num_non_missing),
            "min": feature.num_stats.min,
            "max": feature.num_stats.max,
            "mean": feature.num_stats.mean,
        }
        problems += [
            f"{name}.{k}: step {got[k]!r} vs pandas {v!r}" for k, v in want.items() if not _close(got[k], v)
        ]
    for name, want in pandas["text"].items():
        feature = features.get(name)
        if feature is None or not feature.HasField("string_stats"):
            problems.append(f"{name}: no string statistics from the step")
            continue
        string = feature.string_stats
        got_text = {
            "count": float(string.common_stats.num_non_missing),
            "unique": int(string.unique),
            "top": string.top_values[0].value if string.top_values else None,
        }
        problems += [
            f"{name}.{k}: step {got_text[k]!r} vs pandas {v!r}" for k, v in want.items() if got_text[k] != v
        ]
    checked = len(pandas["numeric"]) + len(pandas["text"])
    if len(features) != checked:
        problems.append(f"the step describes {len(features)} features, pandas {checked} columns")
    return problems


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def _mb(value: float) -> str:
    return f"{value / 1024**2:,.0f}"


def print_table(cases: dict[str, list[dict[str, Any]]], step_seconds: float) -> None:
    print()
    print(
        f"{'case':<11} {'n':>2} {'import s':>9} {'compute s':>10} {'min s':>8} {'max s':>8} {'x step':>8} {'peak RSS MB':>12}"
    )
    for case, runs in cases.items():
        compute = _median(runs, "seconds")
        print(
            f"{case:<11} {len(runs):>2} {_median(runs, 'import_seconds'):>9.2f} {compute:>10.2f} "
            f"{min(r['seconds'] for r in runs):>8.2f} {max(r['seconds'] for r in runs):>8.2f} "
            f"{compute / step_seconds:>8.2f} {_mb(max(r['peak_rss'] for r in runs)):>12}"
        )
    print("(import s: the case's imports before its clock starts; compute s: the call on the file;")
    print(" x step: compute / the step's compute; peak RSS: the whole child, imports included)")


def print_profile(profile: dict[str, Any]) -> None:
    total = profile["seconds"]
    print(
        f"\nwhere the step's time goes (1M rows, one profiled run, compute {total:.2f} s, wall time per phase):"
    )
    timed = profile["profile"]
    for _, _, _, label in PROFILE_POINTS:
        if label in timed:
            seconds, calls = timed[label], profile["profile_calls"][label]
            print(f"  {label:<54} {seconds:>7.2f} s  {100 * seconds / total:>5.1f} %  ({calls} calls)")
        if label.strip().startswith("TFDV generators"):
            for name, seconds in sorted(timed.items(), key=lambda kv: -kv[1]):
                if name.startswith("    "):
                    share = 100 * seconds / total
                    print(
                        f"  {name:<54} {seconds:>7.2f} s  {share:>5.1f} %  ({profile['profile_calls'][name]} calls)"
                    )
    rest = total - sum(v for k, v in timed.items() if not k.startswith(" "))
    print(
        f"  {'rest (reading the spec, anomaly list, staging, commit)':<54} {rest:>7.2f} s  {100 * rest / total:>5.1f} %"
    )
    print("  (CSV parsing runs in a reader thread when the step prefetches: it overlaps the TFDV")
    print("   generators, and only the main thread's wait for a batch adds to the total)")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def measure_1m(csv: Path, workdir: Path, repeat: int, skip_beam: bool) -> dict[str, list[dict[str, Any]]]:
    """Run the step and pandas cases ``repeat`` times each, interleaved, then Beam once."""
    cases: dict[str, list[dict[str, Any]]] = {"step": [], "pandas": []}
    for i in range(repeat):  # interleaved, so a change of machine load hits both
        for case in ("step", "pandas"):
            run = run_child(case, csv, workdir)
            cases[case].append(run)
            print(
                f"  round {i + 1}: {case:<7} import {run['import_seconds']:.2f} s, compute {run['seconds']:.2f} s"
            )
    if not skip_beam:
        run = run_child("tfdv beam", csv, workdir)
        cases["tfdv beam"] = [run]
        print(f"  tfdv beam: import {run['import_seconds']:.2f} s, compute {run['seconds']:.2f} s")
    return cases


def parent_main(args: argparse.Namespace) -> int:
    workdir = Path(
        args.workdir or Path(tempfile.gettempdir()) / "airflow_ml_provider_bench_validation"
    ).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}; workdir {workdir}"
    )
    print(f"load average at the start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    csv_1m = ensure_data(workdir, ROWS_1M)

    cases = measure_1m(csv_1m, workdir, args.repeat, args.skip_beam)
    profile = run_child("step profile", csv_1m, workdir)

    step_seconds = _median(cases["step"], "seconds")
    pandas_seconds = _median(cases["pandas"], "seconds")
    print_table(cases, step_seconds)
    for case, runs in cases.items():
        lazy = runs[0]["lazy_imports"]
        shown = ", ".join(lazy[:8]) + (f", ... ({len(lazy)} in all)" if len(lazy) > 8 else "")
        print(f"modules {case} imported inside its clock: {shown or 'none'}")
    print_profile(profile)

    problems = check_statistics(cases["step"][0], cases["pandas"][0], ROWS_1M)
    if "tfdv beam" in cases and cases["tfdv beam"][0]["example_count"] != ROWS_1M:
        problems.append(f"beam counted {cases['tfdv beam'][0]['example_count']} rows")
    print(
        f"\nchecks (example count, numeric count/min/max/mean within {REL_TOL:g} relative, string unique/top):"
    )
    print("  PASS" if not problems else "\n".join(f"  FAIL {p}" for p in problems))

    goals: dict[str, dict[str, Any]] = {}
    ratio = step_seconds / pandas_seconds
    goals["step / pandas <= 1.0"] = {"value": ratio, "pass": ratio <= GOAL_PANDAS_RATIO}
    if "tfdv beam" in cases:
        speedup = _median(cases["tfdv beam"], "seconds") / step_seconds
        goals[f"beam / step >= {GOAL_BEAM_SPEEDUP:g}"] = {
            "value": speedup,
            "pass": speedup >= GOAL_BEAM_SPEEDUP,
        }
    rss_run = None
    if not args.skip_5m:
        csv_5m = ensure_data(workdir, ROWS_5M)
        rss_run = run_child("step", csv_5m, workdir)
        print(
            f"\nstep on 5M rows x 20 columns: compute {rss_run['seconds']:.2f} s, peak RSS {_mb(rss_run['peak_rss'])} MB "
            f"({_mb(rss_run['rss_after_import'])} MB after imports; wait4 ru_maxrss {_mb(rss_run['ru_maxrss'])} MB), "
            f"example_count {rss_run['example_count']}"
        )
        if rss_run["example_count"] != ROWS_5M:
            problems.append(f"5M: step example_count {rss_run['example_count']}")
        goals["peak RSS 5M < 1.5 GB"] = {
            "value": rss_run["peak_rss"] / 1e9,
            "pass": rss_run["peak_rss"] < GOAL_RSS_BYTES,
        }

    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("goals:")
    for name, goal in goals.items():
        print(f"  {name:<22} {goal['value']:>8.3f}  {_verdict(goal['pass'])}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"cases": cases, "profile": profile, "rss_5m": rss_run, "goals": goals, "problems": problems},
                indent=2,
            )
        )
    return 0 if not problems and all(g["pass"] for g in goals.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of the step and pandas cases (default 3)")
    parser.add_argument("--workdir", help="where the data is generated and cached")
    parser.add_argument("--skip-beam", action="store_true", help="do not run the Beam case (about 100 s)")
    parser.add_argument("--skip-5m", action="store_true", help="do not measure the peak RSS on 5M rows")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--child", choices=sorted(CASE_IMPORTS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.data, Path(args.workdir), args.out)
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return parent_main(args)


if __name__ == "__main__":
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
