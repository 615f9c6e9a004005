"""Model evaluation: the fast engine against TFMA's own ``analyze_raw_data`` and Beam pipeline.

Run from the repository root::

    .venv/bin/python benchmarks/evaluation.py [--rows 100000] [--large-rows 1000000] [--repeat 3]
                                              [--skip-tfma] [--skip-beam] [--json FILE]

Data (numpy, seed 0): a 0/1 ``label``, a candidate and a baseline positive-class probability (the
candidate the better one), a ``weight`` and a ``region`` string with 7 values. Config: slices
Overall and ``feature_keys: [region]`` (8 slices), metrics ExampleCount, AUC, BinaryAccuracy,
Precision, Recall (5), an AUC ``value_threshold``.

Cases, all in this one process after the imports (timed apart as "import s"):

* ``tfma analyze_raw_data``: ``tfma.analyze_raw_data(df, eval_config)`` on ``--rows`` rows, single
  model, default options, as TFMA documents it (one record batch, Beam DirectRunner), once;
* ``fast``: ``evaluate_frame(df, config, engine="fast")`` with the same config on the same rows
  (``prepare_eval_config`` without a baseline), median of ``--repeat``;
* ``fast 1M + baseline``: the fast engine on ``--large-rows`` rows with candidate, baseline and
  weights (both models' metrics, the diffs and the thresholds), median of ``--repeat``;
* ``beam engine``: ``evaluate_frame(..., engine="beam")`` on ``--rows`` rows, single model, once, for
  reference (TFMA's pipeline fed 10,000-row record batches).

Times include everything the call does: column checks, slicing, metrics, validation. Checks: every
metric of every slice of the fast engine equals ``analyze_raw_data``'s and the Beam engine's
(relative difference <= 1e-6). Goals: the 1M-row fast case <= 20 s; the fast engine >= 10x faster
than ``analyze_raw_data``. Exit status 0 when the checks pass and the goals measured are met.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
GOAL_LARGE_S = 20.0
GOAL_SPEEDUP = 10.0
REGIONS = ["north", "south", "east", "west", "centre", "islands", "abroad"]
METRICS = ["ExampleCount", "AUC", "BinaryAccuracy", "Precision", "Recall"]


def make_frame(rows: int, seed: int = 0) -> Any:
    """Label, candidate/baseline probabilities, weight and a 7-valued region, seeded."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    signal = rng.normal(size=rows)

    def sigmoid(x: Any) -> Any:
        return 1 / (1 + np.exp(-x))

    return pd.DataFrame(
        {
            "label": (rng.random(rows) < sigmoid(2 * signal)).astype("int64"),
            "candidate": sigmoid(2 * signal + rng.normal(scale=0.6, size=rows)),
            "baseline": sigmoid(1.5 * signal + rng.normal(scale=1.0, size=rows)),
            "weight": rng.uniform(0.5, 2.0, rows),
            "region": rng.choice(REGIONS, rows),
        }
    )


def raw_config() -> dict[str, Any]:
    metrics: list[dict[str, Any]] = [{"class_name": name} for name in METRICS]
    metrics[1]["threshold"] = {"value_threshold": {"lower_bound": 0.7}}
    return {
        "model_specs": [{"label_key": "label", "prediction_key": "candidate"}],
        "slicing_specs": [{}, {"feature_keys": ["region"]}],
        "metrics_specs": [{"metrics": metrics}],
    }


def prepared(baseline: bool) -> Any:
    from airflow_ml_provider.ml.evaluation.config import parse_eval_config, prepare_eval_config

    return prepare_eval_config(
        parse_eval_config(raw_config()),
        label_key="label",
        candidate_column="candidate",
        baseline_column="baseline" if baseline else None,
        example_weight_key="weight" if baseline else None,
    )


def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def tfma_metrics(result: Any) -> dict[str, dict[str, float]]:
    """``analyze_raw_data``'s EvalResult as {slice name: {metric: value}}."""
    from airflow_ml_provider.ml.evaluation.results import slice_name

    out: dict[str, dict[str, float]] = {}
    for key, per_output in result.slicing_metrics:
        values = per_output[""][""]
        out[slice_name(key)] = {
            name: float(v["doubleValue"]) for name, v in values.items() if "doubleValue" in v
        }
    return out


def compare(fast: dict[str, dict[str, float]], other: dict[str, dict[str, float]]) -> list[str]:
    """Differences beyond 1e-6 (relative) between two {slice: {metric: value}} maps."""
    problems = []
    if sorted(fast) != sorted(other):
        return [f"slices differ: {sorted(fast)} vs {sorted(other)}"]
    for slice_label, values in other.items():
        for name, value in values.items():
            mine = fast[slice_label].get(name)
            if mine is None or not math.isclose(mine, value, rel_tol=1e-6, abs_tol=1e-12):
                problems.append(f"{slice_label} {name}: {mine} vs {value}")
    return problems


def candidate_metrics(output: Any) -> dict[str, dict[str, float]]:
    return {s: models["candidate"] for s, models in output.metrics.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    import_s, _ = timed(lambda: __import__("tensorflow_model_analysis"))
    from airflow_ml_provider.ml.evaluation.engines import evaluate_frame

    small, large = make_frame(args.rows), make_frame(args.large_rows, seed=1)
    single, double = prepared(baseline=False), prepared(baseline=True)
    results: dict[str, Any] = {"import_s": import_s, "rows": args.rows, "large_rows": args.large_rows}
    problems: list[str] = []

    fast_runs = [
        timed(lambda: evaluate_frame(small, single, engine="fast", workdir="-")) for _ in range(args.repeat)
    ]
    results["fast_s"] = statistics.median(t for t, _ in fast_runs)
    fast_small = candidate_metrics(fast_runs[0][1])
    large_runs = [
        timed(lambda: evaluate_frame(large, double, engine="fast", workdir="-")) for _ in range(args.repeat)
    ]
    results["fast_large_s"] = statistics.median(t for t, _ in large_runs)
    results["fast_large_slices"] = len(large_runs[0][1].metrics)
    if not args.skip_tfma:
        import tensorflow_model_analysis as tfma
        from google.protobuf import json_format
        from tensorflow_model_analysis.proto import config_pb2

        config = json_format.ParseDict(raw_config(), config_pb2.EvalConfig())
        with tempfile.TemporaryDirectory() as out:
            seconds, result = timed(lambda: tfma.analyze_raw_data(small, config, output_path=out))
        results["tfma_s"] = seconds
        problems += [f"analyze_raw_data: {p}" for p in compare(fast_small, tfma_metrics(result))]
    if not args.skip_beam:
        with tempfile.TemporaryDirectory() as workdir:
            seconds, beam = timed(lambda: evaluate_frame(small, single, engine="beam", workdir=workdir))
        results["beam_s"] = seconds
        problems += [f"beam engine: {p}" for p in compare(fast_small, candidate_metrics(beam))]
    results["problems"] = problems
    return results


def report(results: dict[str, Any]) -> int:
    rows, large = results["rows"], results["large_rows"]
    fast = results["fast_s"]
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; imports (TFMA) {results['import_s']:.1f} s"
    )
    print(f"{'case':<44} {'rows':>9} {'seconds':>9} {'x fast':>8}")
    lines = [
        ("tfma.analyze_raw_data (default)", rows, results.get("tfma_s")),
        ("fast engine (same config)", rows, fast),
        ("beam engine (same config)", rows, results.get("beam_s")),
        (
            f"fast engine, baseline + weights, {results['fast_large_slices']} slices",
            large,
            results["fast_large_s"],
        ),
    ]
    for name, n, seconds in lines:
        if seconds is not None:
            ratio = f"{seconds / fast:8.1f}" if n == rows else "       -"
            print(f"{name:<44} {n:>9,} {seconds:>9.2f} {ratio}")
    ok = not results["problems"]
    print("checks (metrics equal, rel 1e-6):", "PASS" if ok else "FAIL")
    for problem in results["problems"][:20]:
        print("  ", problem)
    verdict = results["fast_large_s"] <= GOAL_LARGE_S
    ok &= verdict
    print(
        f"goal fast {large:,} rows <= {GOAL_LARGE_S:.0f} s: {results['fast_large_s']:.2f} s",
        "PASS" if verdict else "FAIL",
    )
    if "tfma_s" in results:
        speedup = results["tfma_s"] / fast
        verdict = speedup >= GOAL_SPEEDUP
        ok &= verdict
        print(
            f"goal analyze_raw_data / fast >= {GOAL_SPEEDUP:.0f}: {speedup:.1f}",
            "PASS" if verdict else "FAIL",
        )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the comparison cases")
    parser.add_argument("--large-rows", type=int, default=1_000_000, help="rows of the large fast case")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the fast cases (median)")
    parser.add_argument("--skip-tfma", action="store_true", help="do not run analyze_raw_data")
    parser.add_argument("--skip-beam", action="store_true", help="do not run the Beam engine")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
