"""Hyperparameter tuning: TPE with median pruning against random search, and 2 workers against 1.

Run from the repository root::

    .venv/bin/python benchmarks/tuning.py [--seeds 5] [--trials 30] [--rows 40000]
                                          [--storage URL] [--json FILE]

The fixed problem (``benchmarks/tuning_problem.py``): a one-hidden-layer network on the demo churn
data (``generate_dataset``, seed 0, ``--rows`` rows, 80/20 split), minibatch SGD in NumPy on one
thread, 20 epochs, objective = validation log loss (minimized), reported after every epoch. Four
hyperparameters over wide ranges: learning rate (1e-5..10, log), hidden units (2..256, log), L2
(1e-7..1, log), momentum (0..0.99). The value is a deterministic function of them.

1. **Search** (per seed, ``--trials`` trials, one worker running the ``tune`` step in this process,
   a fresh SQLite study each): ``random`` (random sampler, no pruning, seed s) against
   ``tpe+median`` (the operator's defaults: TPE, median pruner with 5 startup trials and 3 warm-up
   epochs; seed s + 1000, so that TPE's 10 random startup trials are not random search's first 10).
   Reported: best value after 15 and after 30 trials; the trial at which TPE+pruning first reaches
   random search's best of 30, and the wall time it took to get there against random search's
   wall time for its 30 trials (what random search costs to deliver that value: nobody knows it is
   the best before the budget is spent) and, for reference, against the time random search took
   to happen upon it; the epochs pruning saved (epochs run / epochs of the same trials in full).
   Goals: reached within 15 trials, in <= 1/3 of the time (median over the seeds); >= 40 % of
   epochs saved.
2. **Parallel workers** (one run each): the same 24-point grid of configurations (grid sampler, no
   pruning: every case does the same work) run by the operator's local launcher (``GangRunner``
   worker processes of ``python -m airflow_ml_provider.ml tune``), with a real ``mlflow server``
   recording a child run per trial, the study in ``--storage`` (default: PostgreSQL from
   ``ML_PROVIDER_TEST_DATABASE_URL``, else an SQLite file). Every process gets one thread
   (``OMP_NUM_THREADS=1``): CPU-bound trials, one core each. Baseline: the same 24 trials in a
   plain ``optuna.create_study().optimize()`` loop in one process (in-memory study, no MLflow).
   Reported: wall time of 1 and 2 workers (from starting the processes to their exit, imports
   included); speed-up (goal >= 1.7x on 2 cores); orchestration overhead per trial = the worker
   loop's time minus the model's own compute, against that compute (goal <= 5 %, judged in steady
   state: without each worker's first trial, which also waits for MLflow's import); the same for
   plain Optuna loops (in memory, and with the study in the same database: what Optuna's storage
   alone costs); and the 1-worker run against the in-memory plain loop.

Exit status 0 when every goal is met.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(REPO_ROOT), str(BENCH_DIR), str(REPO_ROOT / "tests")]

import tuning_problem  # noqa: E402

DEFAULT_ROWS = 40_000  # search: about 0.8 s a full trial here
DEFAULT_PARALLEL_ROWS = 150_000  # parallel workers: about 3 s a trial here
DEFAULT_TRIALS = 30
DEFAULT_SEEDS = 5
EARLY = 15
GOAL_TRIALS = 15
GOAL_TIME_RATIO = 1 / 3
GOAL_EPOCHS_SAVED = 0.40
GOAL_OVERHEAD = 0.05
GOAL_SPEEDUP = 1.7
TPE_MEDIAN = {"sampler": "tpe", "pruner": {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 3}}
RANDOM = {"sampler": "random", "pruner": "none"}


def _spec(data: Path, records: Path, study: str, storage: str | None, **kwargs: Any) -> dict[str, Any]:
    spec = {
        "study_name": study,
        "metric": "val_loss",
        "search_space": tuning_problem.SPACE,
        "objective": {"kind": "function", "ref": "tuning_problem:objective"},
        "custom_config": {"data": str(data), "record_dir": str(records)},
        "max_failed_trials": None,
        **kwargs,
    }
    if storage:
        spec["storage"] = storage
    return spec


def _records(folder: Path) -> dict[int, dict[str, Any]]:
    found = {}
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            found[entry["number"]] = entry
    return found


# --------------------------------------------------------------------------- 1. search quality


TPE_SEED_OFFSET = 1000


def _search_run(
    data: Path, work: Path, seed: int, case: str, config: dict[str, Any], trials: int
) -> dict[str, Any]:
    import optuna

    from airflow_ml_provider.ml.tuning.worker import tune

    folder = work / f"{case}-{seed}"
    folder.mkdir()
    url = f"sqlite:///{folder / 'study.db'}"
    tune(_spec(data, folder, "search", url, n_trials=trials, seed=seed, **config))
    study = optuna.load_study(study_name="search", storage=url)
    ordered = sorted(study.trials, key=lambda t: t.number)
    records = _records(folder)
    elapsed, values, best = 0.0, [], float("inf")
    for trial in ordered:
        elapsed += (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.state.name == "COMPLETE":
            best = min(best, float(trial.value))
        values.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "best": best,
                "elapsed": elapsed,
            }
        )
    epochs = sum(records[t.number]["epochs"] for t in ordered)
    return {
        "trials": values,
        "best_15": values[min(EARLY, len(values)) - 1]["best"],
        "best_30": values[-1]["best"],
        "epochs_run": epochs,
        "epochs_full": len(ordered) * tuning_problem.EPOCHS,
        "pruned": sum(t.state.name == "PRUNED" for t in ordered),
    }


def _time_to(values: list[dict[str, Any]], target: float) -> tuple[int | None, float | None]:
    """The first trial (1-based count) whose best-so-far reaches ``target``, and the time by then."""
    for index, entry in enumerate(values, start=1):
        if entry["best"] <= target + 1e-12:
            return index, entry["elapsed"]
    return None, None


def search(data: Path, work: Path, seeds: int, trials: int) -> dict[str, Any]:
    per_seed = []
    for seed in range(seeds):
        rnd = _search_run(data, work, seed, "random", RANDOM, trials)
        # Another seed for TPE: its first 10 trials are random too, and with the same seed they would
        # be random search's first 10, points and values alike (a target reached for free).
        tpe = _search_run(data, work, seed + TPE_SEED_OFFSET, "tpe", TPE_MEDIAN, trials)
        target = rnd["best_30"]
        random_count, random_time = _time_to(rnd["trials"], target)
        tpe_count, tpe_time = _time_to(tpe["trials"], target)
        row = {
            "seed": seed,
            "random_best_15": rnd["best_15"],
            "random_best_30": target,
            "tpe_best_15": tpe["best_15"],
            "tpe_best_30": tpe["best_30"],
            "tpe_trials_to_target": tpe_count,
            "tpe_seconds_to_target": tpe_time,
            "random_seconds_to_best": random_time,
            "time_ratio": (tpe_time / rnd["trials"][-1]["elapsed"]) if tpe_time is not None else None,
            "time_ratio_to_random_best": (tpe_time / random_time)
            if tpe_time is not None and random_time
            else None,
            "epochs_saved": 1 - tpe["epochs_run"] / tpe["epochs_full"],
            "tpe_pruned": tpe["pruned"],
            "random_seconds": rnd["trials"][-1]["elapsed"],
            "tpe_seconds": tpe["trials"][-1]["elapsed"],
        }
        per_seed.append(row)
        print(
            f"  seed {seed}: random best15 {row['random_best_15']:.4f} best30 {target:.4f} ({row['random_seconds']:.0f} s) | "
            f"tpe+median best15 {row['tpe_best_15']:.4f} best30 {row['tpe_best_30']:.4f} ({row['tpe_seconds']:.0f} s), "
            f"reaches random's best30 at trial {tpe_count} in {tpe_time if tpe_time is None else round(tpe_time, 1)} s "
            f"(random: {random_time:.1f} s to happen upon it, {row['random_seconds']:.1f} s for its {trials}), "
            f"{row['tpe_pruned']} pruned, epochs saved {row['epochs_saved']:.0%}",
            flush=True,
        )
    counts = [
        r["tpe_trials_to_target"] if r["tpe_trials_to_target"] is not None else trials + 1 for r in per_seed
    ]
    ratios = [r["time_ratio"] if r["time_ratio"] is not None else float("inf") for r in per_seed]
    return {
        "per_seed": per_seed,
        "median_trials_to_target": statistics.median(counts),
        "seeds_within_15": sum(c <= GOAL_TRIALS for c in counts),
        "median_time_ratio": statistics.median(ratios),
        "epochs_saved": statistics.mean(r["epochs_saved"] for r in per_seed),
    }


# --------------------------------------------------------------------------- 2. parallel workers


def _grid_spec(data: Path, records: Path, study: str) -> dict[str, Any]:
    grid_size = 1
    for values in tuning_problem.GRID_SPACE.values():
        grid_size *= len(values)
    return {
        **_spec(data, records, study, None, n_trials=grid_size, seed=0, sampler="grid", pruner="none"),
        "search_space": tuning_problem.GRID_SPACE,
    }


def _gang_run(data: Path, work: Path, storage: str, mlflow: Any, workers: int) -> dict[str, Any]:
    import optuna
    from mlflow import MlflowClient

    from airflow_ml_provider.ml.tuning.storage import STORAGE_ENV
    from airflow_ml_provider.ml.tuning.worker import WORKER_ENV
    from airflow_ml_provider.runners.gang import GangRunner

    folder = work / f"gang-{workers}"
    folder.mkdir()
    client = MlflowClient(mlflow.url)
    experiment = client.create_experiment(f"bench-tuning-{workers}-{time.time_ns()}")
    parent = client.create_run(experiment).info.run_id
    spec = {
        **_grid_spec(data, folder, f"gang-{workers}-{time.time_ns()}"),
        "parallel": workers > 1,
        "mlflow": {"run_id": parent, "experiment_id": experiment},
    }
    env = {
        STORAGE_ENV: storage,
        "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), str(REPO_ROOT)]),
        "MLFLOW_TRACKING_URI": mlflow.url,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    gang = GangRunner([{WORKER_ENV: str(i)} for i in range(workers)], env=env)
    started = time.perf_counter()
    results = gang.run_all("tune", spec)
    wall = time.perf_counter() - started
    records = _records(folder)
    trials = [t for r in results for t in r["trials"]]
    compute = sum(records[t["number"]]["compute_seconds"] for t in trials)
    in_trials = sum(t["seconds"] for t in trials)
    loops = sum(r["seconds"] for r in results)
    # Steady state: without each worker's first trial, which also waits for MLflow's import (it
    # runs in the background from the worker's start) before it can note its run's id.
    firsts = [r["trials"][0] for r in results if r["trials"]]
    steady_trials = len(trials) - len(firsts)
    steady_overhead = (loops - sum(t["seconds"] for t in firsts)) - (
        compute - sum(records[t["number"]]["compute_seconds"] for t in firsts)
    )
    steady_compute = compute - sum(records[t["number"]]["compute_seconds"] for t in firsts)
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000)
    return {
        "workers": workers,
        "wall_seconds": wall,
        "trials": len(trials),
        "distinct_configs": len(
            {
                json.dumps(t.params, sort_keys=True)
                for t in optuna.load_study(study_name=spec["study_name"], storage=storage).trials
            }
        ),
        "compute_seconds": compute,
        "trial_seconds": in_trials,
        "loop_seconds": loops,
        "overhead_per_trial_ms": 1000 * (loops - compute) / len(trials),
        "overhead_fraction": (loops - compute) / compute,
        "steady_overhead_per_trial_ms": 1000 * steady_overhead / steady_trials,
        "steady_overhead_fraction": steady_overhead / steady_compute,
        "first_trial_extra_seconds": sum(
            t["seconds"] - records[t["number"]]["compute_seconds"] for t in firsts
        ),
        "child_runs": len(children),
    }


def _plain_run(data: Path, work: Path, storage: str | None) -> dict[str, Any]:
    """The same grid in a plain Optuna loop in this process (no MLflow, no workers); one thread."""
    import optuna

    folder = work / f"plain-{'db' if storage else 'memory'}"
    folder.mkdir()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = _grid_spec(data, folder, "plain")
    sampler = optuna.samplers.GridSampler(spec["search_space"], seed=0)
    study = optuna.create_study(
        sampler=sampler, direction="minimize", storage=storage, study_name=f"plain-{time.time_ns()}"
    )

    class Ctx:
        def __init__(self, trial: Any) -> None:
            self.trial, self.number = trial, trial.number
            self.hyperparameters = {
                k: trial.suggest_categorical(k, v) for k, v in spec["search_space"].items()
            }
            self.custom_config = spec["custom_config"]

        def report(self, value: float, step: int) -> None:
            self.trial.report(value, step)

    tuning_problem.load(spec["custom_config"]["data"])  # as a worker's first trial does, not timed there
    started = time.perf_counter()
    study.optimize(lambda trial: tuning_problem.objective(Ctx(trial)), n_trials=spec["n_trials"])
    wall = time.perf_counter() - started
    compute = sum(r["compute_seconds"] for r in _records(folder).values())
    trials = len(study.trials)
    return {
        "wall_seconds": wall,
        "compute_seconds": compute,
        "trials": trials,
        "overhead_per_trial_ms": 1000 * (wall - compute) / trials,
        "overhead_fraction": (wall - compute) / compute,
    }


def parallel(data: Path, work: Path, storage: str) -> dict[str, Any]:
    from support.harness import MlflowServer

    os.environ["OMP_NUM_THREADS"] = "1"  # the plain loop runs in this process (NumPy is loaded already)
    server = MlflowServer(work / "mlflow").start()
    try:
        plain = _plain_run(data, work, None)
        plain_db = _plain_run(data, work, storage)
        for name, run in (("in-memory study", plain), ("study in the same DB", plain_db)):
            print(
                f"  plain Optuna loop, 1 process, {name}: {run['wall_seconds']:.1f} s "
                f"({run['compute_seconds']:.1f} s model compute; {run['overhead_per_trial_ms']:.0f} ms/trial, "
                f"{run['overhead_fraction']:.1%})",
                flush=True,
            )
        runs = {}
        for workers in (1, 2):
            runs[workers] = _gang_run(data, work, storage, server, workers)
            r = runs[workers]
            print(
                f"  tune step, {workers} worker(s): {r['wall_seconds']:.1f} s wall, {r['trials']} trials, "
                f"{r['distinct_configs']} distinct configurations, {r['child_runs']} MLflow child runs; "
                f"overhead {r['overhead_per_trial_ms']:.0f} ms/trial ({r['overhead_fraction']:.1%} of the model's "
                f"compute), steady state {r['steady_overhead_per_trial_ms']:.0f} ms/trial "
                f"({r['steady_overhead_fraction']:.1%}); first trials +{r['first_trial_extra_seconds']:.1f} s",
                flush=True,
            )
    finally:
        server.stop()
    return {
        "plain": plain,
        "plain_db": plain_db,
        "one": runs[1],
        "two": runs[2],
        "speedup": runs[1]["wall_seconds"] / runs[2]["wall_seconds"],
        "one_vs_plain": runs[1]["wall_seconds"] / plain["wall_seconds"],
    }


# --------------------------------------------------------------------------- main


def _dataset(root: Path, rows: int) -> Path:
    from airflow_ml_provider.ml.datagen import generate_dataset

    version = generate_dataset({"root": str(root), "versions": 1, "rows": rows, "seed": 0})
    return Path(version["versions"][0]["uri"])


def _storage(arg: str | None, work: Path) -> tuple[str, Any]:
    if arg:
        return arg, None
    from support.harness import create_database, drop_database, postgres_base_url, sqlalchemy_url

    if postgres_base_url():
        url = create_database("bench_tuning")
        return sqlalchemy_url(url), lambda: drop_database(url)
    return f"sqlite:///{work / 'gang.db'}", None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS)
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows of the search part")
    parser.add_argument(
        "--parallel-rows", type=int, default=DEFAULT_PARALLEL_ROWS, help="rows of the parallel part"
    )
    parser.add_argument("--storage", help="study database of the parallel runs (SQLAlchemy URL)")
    parser.add_argument("--skip-search", action="store_true", help="only the parallel-workers part")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-tuning-"))
    cleanup = None
    try:
        data = _dataset(work / "search", args.rows)
        parallel_data = _dataset(work / "parallel", args.parallel_rows)
        storage, cleanup = _storage(args.storage, work)
        print(
            f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, {args.rows} rows, study DB {storage.split('://')[0]}"
        )
        report: dict[str, Any] = {
            "date": datetime.date.today().isoformat(),
            "rows": args.rows,
            "cpus": os.cpu_count(),
        }
        ok = True
        if not args.skip_search:
            print(f"1. Search: {args.trials} trials x {args.seeds} seeds, random vs tpe+median", flush=True)
            found = search(data, work, args.seeds, args.trials)
            report["search"] = found
            checks = [
                (
                    f"TPE+pruning reaches random's best-of-{args.trials} within {GOAL_TRIALS} trials (median trial)",
                    found["median_trials_to_target"] <= GOAL_TRIALS,
                    f"{found['median_trials_to_target']} ({found['seeds_within_15']}/{args.seeds} seeds)",
                ),
                (
                    f"... in <= 1/3 of random search's time for its {args.trials} trials (median ratio)",
                    found["median_time_ratio"] <= GOAL_TIME_RATIO,
                    f"{found['median_time_ratio']:.2f}",
                ),
                (
                    f"pruning saves >= {GOAL_EPOCHS_SAVED:.0%} of epochs",
                    found["epochs_saved"] >= GOAL_EPOCHS_SAVED,
                    f"{found['epochs_saved']:.0%}",
                ),
            ]
        else:
            checks = []
        print("2. Parallel workers: 24-point grid, 1 thread per process", flush=True)
        speed = parallel(parallel_data, work, storage)
        report["parallel"] = speed
        checks += [
            ("2 workers >= 1.7x faster than 1", speed["speedup"] >= GOAL_SPEEDUP, f"{speed['speedup']:.2f}x"),
            (
                "orchestration overhead <= 5% of trial compute (1 worker, steady state)",
                speed["one"]["steady_overhead_fraction"] <= GOAL_OVERHEAD,
                f"{speed['one']['steady_overhead_fraction']:.1%} ({speed['one']['steady_overhead_per_trial_ms']:.0f} "
                f"ms/trial; plain Optuna with the study in the same DB: {speed['plain_db']['overhead_fraction']:.1%}, "
                f"{speed['plain_db']['overhead_per_trial_ms']:.0f} ms/trial)",
            ),
        ]
        print(
            f"  1 worker / plain loop: {speed['one_vs_plain']:.2f} (process start, imports, study DB, MLflow child runs)"
        )
        print("Goals:")
        for name, passed, value in checks:
            print(f"  {'PASS' if passed else 'FAIL'}  {name}: {value}")
            ok = ok and passed
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))
        return 0 if ok else 1
    finally:
        if cleanup:
            cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
