"""How much longer Airflow takes to parse a DAG built from this provider's operators.

Measured the way the DAG processor parses: a warm parent process (Airflow, ``airflow.sdk`` and
``airflow.dag_processing.processor`` imported, ``gc.freeze()`` called, as in
``DagFileProcessorManager``) forks one child per parse; the child times
``DagBag(dag_folder=<file>, load_op_links=False)`` (the file's own imports included) and then the
serialization of its DAGs, and sends the times back through a pipe. The parent imports neither
this provider's operators nor the standard provider's ``PythonOperator``.

Cases:
  provider        dags_examples/example_ml_tracking.py (MLStepOperator)
  plain           benchmarks/dags/plain_tracking_equivalent.py (same shape, PythonOperator)
  tensorflow      the plain DAG plus a top-level ``import tensorflow`` (temporary file), for scale

Goal: median(provider) / median(plain) <= 1.15.

Run from the repository root: ``.venv/bin/python benchmarks/parse_overhead.py [--repeat N]
[--tf-repeat N] [--skip-tensorflow] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parent.parent
PROVIDER_DAG = REPO / "dags_examples" / "example_ml_tracking.py"
PLAIN_DAG = REPO / "benchmarks" / "dags" / "plain_tracking_equivalent.py"
GOAL = 1.15
# Modules the warm parent must not hold, or the comparison would hide their import cost.
NOT_PRELOADED = ("airflow_ml_provider.operators", "airflow.providers.standard.operators", "tensorflow")


def configure_environment(home: Path) -> None:
    """Isolate Airflow before it is imported."""
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(home / "dags")
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    # Importing TensorFlow takes seconds; the default 30 s DagBag import timeout is too close.
    os.environ["AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT"] = "600"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # google.api_core (pulled in by TensorFlow) warns about Python 3.11 on import: noise here.
    warnings.filterwarnings("ignore", message="You are using a Python version", category=UserWarning)
    (home / "dags").mkdir(parents=True, exist_ok=True)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def warm_parent() -> None:
    """Import what the DAG processor's manager holds before it forks, then freeze the heap."""
    # The processor module brings DagBag and DagSerialization.
    for name in ("airflow", "airflow.sdk", "airflow.dag_processing.processor"):
        importlib.import_module(name)

    preloaded = [m for m in sys.modules if m.startswith(NOT_PRELOADED)]
    if preloaded:
        raise SystemExit(f"the warm parent already imported {preloaded}; the comparison would be unfair")
    gc.freeze()


def _parse_in_child(path: Path) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    modules_before = len(sys.modules)
    started = time.perf_counter()
    bag = DagBag(dag_folder=str(path), load_op_links=False)
    parsed = time.perf_counter()
    for dag in bag.dags.values():
        DagSerialization.to_dict(dag)
    serialized = time.perf_counter()
    return {
        "parse_s": parsed - started,
        "serialize_s": serialized - parsed,
        "dags": sorted(bag.dags),
        "tasks": sum(len(dag.tasks) for dag in bag.dags.values()),
        "new_modules": len(sys.modules) - modules_before,
        "import_errors": {str(k): v for k, v in bag.import_errors.items()},
    }


def _child_main(path: Path, write_fd: int) -> NoReturn:
    """Body of the forked child: parse, write the measurements to the pipe, never return."""
    try:
        payload = _parse_in_child(path)
    except BaseException as err:
        payload = {"error": f"{type(err).__name__}: {err}"}
    with os.fdopen(write_fd, "w") as out:
        json.dump(payload, out)
    os._exit(0)


def parse_once(path: Path) -> dict[str, Any]:
    """Fork a child from this (warm) process, parse ``path`` there, return its measurements."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child_main(path, write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd) as result:
        data = result.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"parse child for {path} died without a result (wait status {status})")
    payload: dict[str, Any] = json.loads(data)
    if payload.get("error") or payload.get("import_errors") or not payload.get("dags"):
        raise RuntimeError(f"parsing {path} failed: {payload}")
    return payload


def p90(values: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def summarize(name: str, path: Path, samples: list[dict[str, Any]]) -> dict[str, Any]:
    parse_ms = [s["parse_s"] * 1000 for s in samples]
    serialize_ms = [s["serialize_s"] * 1000 for s in samples]
    return {
        "case": name,
        "file": str(path),
        "n": len(samples),
        "median_ms": statistics.median(parse_ms),
        "p90_ms": p90(parse_ms),
        "min_ms": min(parse_ms),
        "serialize_median_ms": statistics.median(serialize_ms),
        "tasks": samples[0]["tasks"],
        "new_modules": samples[0]["new_modules"],
        "samples_ms": [round(v, 3) for v in parse_ms],
    }


def measure(cases: dict[str, Path], repeat: int) -> dict[str, dict[str, Any]]:
    """One discarded warm-up parse per case, then ``repeat`` rounds, cases interleaved."""
    for path in cases.values():
        parse_once(path)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for _ in range(repeat):
        for name, path in cases.items():
            samples[name].append(parse_once(path))
    return {name: summarize(name, cases[name], samples[name]) for name in cases}


def tensorflow_dag(directory: Path) -> Path:
    """The plain DAG with a top-level ``import tensorflow``, in a temporary file."""
    source = PLAIN_DAG.read_text()
    source = source.replace(
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\nimport tensorflow  # noqa: F401\n",
        1,
    ).replace('dag_id="plain_tracking_equivalent"', 'dag_id="plain_tracking_with_tensorflow"')
    path = directory / "plain_tracking_with_tensorflow.py"
    path.write_text(source)
    return path


def print_table(results: dict[str, dict[str, Any]]) -> None:
    header = f"{'case':<12} {'median ms':>10} {'p90 ms':>10} {'n':>4} {'+serialize ms':>14} {'tasks':>6} {'new modules':>12}"
    print(header)
    print("-" * len(header))
    for r in results.values():
        print(
            f"{r['case']:<12} {r['median_ms']:>10.1f} {r['p90_ms']:>10.1f} {r['n']:>4} "
            f"{r['serialize_median_ms']:>14.1f} {r['tasks']:>6} {r['new_modules']:>12}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=25, help="parses per case (default 25, minimum 20)")
    parser.add_argument("--tf-repeat", type=int, default=3, help="parses of the tensorflow case (default 3)")
    parser.add_argument("--skip-tensorflow", action="store_true", help="do not measure the tensorflow case")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    if args.repeat < 20:
        parser.error("--repeat must be at least 20")

    with tempfile.TemporaryDirectory(prefix="parse-overhead-") as tmp:
        tmpdir = Path(tmp)
        configure_environment(tmpdir / "airflow_home")
        started = time.perf_counter()
        warm_parent()
        warm_s = time.perf_counter() - started
        print(f"warm parent: Airflow imported in {warm_s:.1f} s; {len(sys.modules)} modules; gc frozen")

        results = measure({"provider": PROVIDER_DAG, "plain": PLAIN_DAG}, args.repeat)
        with_tf = not args.skip_tensorflow and importlib.util.find_spec("tensorflow") is not None
        if with_tf:
            results.update(measure({"tensorflow": tensorflow_dag(tmpdir)}, args.tf_repeat))

    print()
    print_table(results)
    ratio = results["provider"]["median_ms"] / results["plain"]["median_ms"]
    verdict = "PASS" if ratio <= GOAL else "FAIL"
    print()
    print(f"provider / plain (median parse): {ratio:.3f}  goal <= {GOAL}  {verdict}")
    tf_ratio = None
    if with_tf:
        tf_ratio = results["tensorflow"]["median_ms"] / results["plain"]["median_ms"]
        print(f"tensorflow / plain (median parse, for scale): {tf_ratio:.1f}x")
    elif not args.skip_tensorflow:
        print("tensorflow is not importable: tensorflow case skipped")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "method": "os.fork() per parse from a warm parent (Airflow imported, gc.freeze()); "
                    "child times DagBag(dag_folder=file, load_op_links=False)",
                    "python": sys.version.split()[0],
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "repeat": args.repeat,
                    "results": results,
                    "ratio_provider_plain": ratio,
                    "goal": GOAL,
                    "verdict": verdict,
                    "ratio_tensorflow_plain": tf_ratio,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"results written to {args.json}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
