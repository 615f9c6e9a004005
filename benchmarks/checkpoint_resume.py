"""Checkpoints and resume: what checkpointing every epoch costs, and what resuming after a crash saves.

Run from the repository root, with Airflow's interpreter (the training runs in the step environment)::

    .venv/bin/python benchmarks/checkpoint_resume.py [--rows 40000] [--epochs 6] [--kill-epoch 3]
                                                     [--rounds 2] [--json FILE]

The fixed job: one version of the demo dataset (``generate_dataset``, seed 0, ``--rows`` rows), the
demo model (``airflow_ml_provider.ml.training.demo``: 20 % held out, normalization and one-hot
inputs, 32 hidden units, Adam 0.01, batch 256), ``--epochs`` epochs, seed 7, one worker under
``MirroredStrategy`` in every case (so that only the checkpoints differ: with checkpoints the
``one_device`` strategy becomes TensorFlow's default one, which tf_keras' ``BackupAndRestore``
supports), run by the ``train_model`` step itself (``airflow_ml_provider.ml.training.step.train``)
against a real ``mlflow server`` (SQLite backend, the test harness's ``MlflowServer``). The runs of a
round share one process of the step environment, which imports TensorFlow once before anything is
timed, so the import (5-30 s here) is in no case, and first trains one untimed epoch (TensorFlow's
first ``fit`` in a process pays for tracing that later ones do not). Cases, each timed around the whole ``train`` call
(the restore before ``run_fn``, training, the upload of every checkpoint, export and the model
logged to MLflow), interleaved over ``--rounds`` rounds, each on a fresh MLflow run:

* ``baseline: no checkpoints``: the spec without ``checkpoint`` (what a task did before);
* ``every epoch -> MLflow run``: ``checkpoint: {"every": "epoch"}``, the store a pod uses by default
  (the task's run, under ``checkpoints/``, through the server's artifact proxy);
* ``every epoch -> local folder``: ``checkpoint: {"every": "epoch", "uri": <a folder>}``, a shared
  volume;
* ``resume after a crash``: first, untimed, a separate process of the step environment runs the same
  job with MLflow checkpoints and SIGKILLs itself at the first batch of epoch ``--kill-epoch``
  (0-based: the checkpoints of epochs 0 .. kill-epoch - 1 are in the run); then the timed ``train``
  call on the same run resumes there (it downloads the checkpoint and trains the remaining epochs).
  Without checkpoints the same crash costs a whole baseline run again.

Reported per case: the median seconds over the rounds and the ratio to the baseline; for the resume,
also the ideal ratio (remaining epochs / epochs) and the final validation accuracy next to the
baseline's. Checked in the same run, so that no time is reported for a wrong run: every case
trained all its epochs (``epochs`` in the result), the checkpointed runs left a finished store (no
``latest.json`` to resume from), the resumed run says it resumed at ``--kill-epoch``, and its
validation accuracy is within 0.02 of the baseline's.

Goals (exit status 0 when every check held and both are met): checkpointing every epoch to the
MLflow run costs at most 25 % over the baseline; the resumed run takes at most the ideal ratio
plus 0.2 of the baseline (the restore and the model's export and logging are paid again).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CASES = (
    "baseline: no checkpoints",
    "every epoch -> MLflow run",
    "every epoch -> local folder",
    "resume after a crash",
)
OVERHEAD_GOAL = 0.25
RESUME_SLACK = 0.2
ACCURACY_TOLERANCE = 0.02
HYPERPARAMETERS = {"batch_size": 256, "learning_rate": 0.01, "hidden_units": 32}


# --------------------------------------------------------------------------- step environment


def run_fn(ctx: Any) -> Any:
    """The demo ``run_fn``, plus a SIGKILL of this process at ``custom_config["kill_epoch"]``."""
    from airflow_ml_provider.ml.training.demo import DEFAULTS, _split, build_model, make_dataset

    hp = {**DEFAULTS, **ctx.hyperparameters}
    train, evaluation = _split(ctx)
    with ctx.strategy.scope():
        model = build_model(ctx, train, hp)
    kill_epoch = ctx.custom_config.get("kill_epoch")

    class Kill(ctx.keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if kill_epoch is not None and epoch == int(kill_epoch):
                os.kill(os.getpid(), signal.SIGKILL)

    batch_size = int(hp["batch_size"])
    model.fit(
        make_dataset(train, batch_size, shuffle=True),
        validation_data=make_dataset(evaluation, batch_size, shuffle=False),
        epochs=int(hp["epochs"]),
        callbacks=[*ctx.callbacks(), Kill()],
        verbose=0,
    )
    return model


def child_main(plan_file: Path, out: Path) -> None:
    """Run the plan's ``train`` calls in this process (TensorFlow imported first, untimed)."""
    import logging

    from airflow_ml_provider.ml.training.step import import_tensorflow, train

    logging.basicConfig(level=logging.WARNING)
    import_tensorflow()
    plan = json.loads(plan_file.read_text())
    warm_up = {**plan[0]["spec"], "hyperparameters": {**plan[0]["spec"]["hyperparameters"], "epochs": 1}}
    warm_up.pop("checkpoint", None)
    warm_up.pop("mlflow", None)  # nothing logged
    train(warm_up)  # untimed
    results = []
    for item in plan:
        started = time.perf_counter()
        result = train(item["spec"])
        seconds = time.perf_counter() - started
        results.append({"case": item["case"], "seconds": seconds, "result": result})
        print(f"  {item['case']}: {seconds:.1f} s", flush=True)
    out.write_text(json.dumps(results))


# --------------------------------------------------------------------------- parent


def step_python() -> str:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from support.step_env import step_python as tests_step_python

    return str(os.environ.get("AIRFLOW__ML_PROVIDER__STEP_PYTHON") or tests_step_python())


def child_env(server_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIRFLOW"))}
    path = os.pathsep.join(
        filter(None, [str(REPO_ROOT / "benchmarks"), str(REPO_ROOT), env.get("PYTHONPATH")])
    )
    env.update(
        {
            "MLFLOW_TRACKING_URI": server_url,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "PYTHONPATH": path,
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    return env


def make_data(python: str, workdir: Path, rows: int, env: dict[str, str]) -> str:
    code = (
        "import json,sys; from airflow_ml_provider.ml.datagen import generate_dataset; "
        "r = generate_dataset({'root': sys.argv[1], 'rows': int(sys.argv[2]), 'versions': [1], 'seed': 0}); "
        "print(json.dumps(r['versions'][0]['uri']))"
    )
    out = subprocess.run(
        [python, "-c", code, str(workdir / "data"), str(rows)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return str(json.loads(out.stdout.strip().splitlines()[-1]))


def spec_for(
    data: str, epochs: int, run: Any, checkpoint: dict[str, Any] | None, **config: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "run_fn": "checkpoint_resume:run_fn",
        "train_uri": data,
        "hyperparameters": {**HYPERPARAMETERS, "epochs": epochs},
        "custom_config": config,
        "strategy": "mirrored",
        "seed": 7,
        "mlflow": {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id},
    }
    if checkpoint is not None:
        spec["checkpoint"] = checkpoint
    return spec


def crash(python: str, spec: dict[str, Any], workdir: Path, env: dict[str, str]) -> int:
    """Run ``spec`` as the step entrypoint until it SIGKILLs itself; its exit code."""
    spec_file = workdir / f"crash-{time.monotonic_ns()}.json"
    spec_file.write_text(json.dumps(spec))
    command = [python, "-m", "airflow_ml_provider.ml", "train_model", "--spec", str(spec_file)]
    command += ["--result", str(workdir / "crash-result.json")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != -signal.SIGKILL:
        tail = "\n".join(done.stderr.splitlines()[-15:])
        raise RuntimeError(f"the crash run ended with exit code {done.returncode}, not SIGKILL:\n{tail}")
    return done.returncode


def check(case: str, item: dict[str, Any], args: argparse.Namespace, client: Any) -> list[str]:
    result, problems = item["result"], []
    if result.get("epochs") != args.epochs:
        problems.append(f"{case}: trained {result.get('epochs')} epochs, not {args.epochs}")
    if case != CASES[0] and case != CASES[2]:
        run_id = item["run_id"]
        names = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
        if "checkpoints/latest.json" in names:
            marker = json.loads(
                Path(client.download_artifacts(run_id, "checkpoints/latest.json")).read_text()
            )
            if not marker.get("finished"):
                problems.append(f"{case}: the MLflow store was left resumable: {marker}")
    if case == CASES[3]:
        resumed = result.get("resumed_from") or {}
        if resumed.get("epoch") != args.kill_epoch:
            problems.append(f"{case}: resumed from {resumed}, not epoch {args.kill_epoch}")
    return problems


def run_round(
    args: argparse.Namespace, python: str, data: str, workdir: Path, server: Any, round_no: int
) -> list[dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("bench-checkpoints") or client.get_experiment(
        client.create_experiment("bench-checkpoints")
    )
    env = child_env(server.url)

    def new_run(case: str) -> Any:
        return client.create_run(experiment.experiment_id, run_name=f"r{round_no} {case}")

    runs = {case: new_run(case) for case in CASES}
    folder = workdir / f"checkpoints-r{round_no}"
    crash_spec = spec_for(data, args.epochs, runs[CASES[3]], {"every": "epoch"}, kill_epoch=args.kill_epoch)
    crash(python, crash_spec, workdir, env)
    plan = [
        {"case": CASES[0], "spec": spec_for(data, args.epochs, runs[CASES[0]], None)},
        {"case": CASES[1], "spec": spec_for(data, args.epochs, runs[CASES[1]], {"every": "epoch"})},
        {
            "case": CASES[2],
            "spec": spec_for(data, args.epochs, runs[CASES[2]], {"every": "epoch", "uri": str(folder)}),
        },
        {"case": CASES[3], "spec": {**crash_spec, "custom_config": {}}},
    ]
    if round_no % 2 == 0:  # interleave: the order of the first three changes every round
        plan = [plan[2], plan[1], plan[0], plan[3]]
    plan_file, out = workdir / f"plan-r{round_no}.json", workdir / f"out-r{round_no}.json"
    plan_file.write_text(json.dumps(plan))
    print(f"round {round_no}:", flush=True)
    subprocess.run([python, __file__, "--child", str(plan_file), str(out)], env=env, check=True, timeout=1800)
    items = json.loads(out.read_text())
    for item in items:
        item["run_id"] = runs[item["case"]].info.run_id
        item["problems"] = check(item["case"], item, args, client)
        if item["case"] == CASES[2] and folder.exists() and any(folder.rglob("latest.json")):
            item["problems"].append(f"{CASES[2]}: the folder store was left behind")
    return items


def summarise(items: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    by_case = {case: [i for i in items if i["case"] == case] for case in CASES}
    seconds = {case: statistics.median(i["seconds"] for i in runs) for case, runs in by_case.items()}
    accuracy = {
        case: statistics.median(
            float(i["result"].get("final_metrics", {}).get("val_accuracy", "nan")) for i in runs
        )
        for case, runs in by_case.items()
    }
    base = seconds[CASES[0]]
    ideal = (args.epochs - args.kill_epoch) / args.epochs
    problems = [p for i in items for p in i["problems"]]
    if abs(accuracy[CASES[3]] - accuracy[CASES[0]]) > ACCURACY_TOLERANCE:
        problems.append(
            f"resumed val_accuracy {accuracy[CASES[3]]:.4f} is not within {ACCURACY_TOLERANCE} of the baseline's "
            f"{accuracy[CASES[0]]:.4f}"
        )
    overhead = seconds[CASES[1]] / base - 1
    resume_ratio = seconds[CASES[3]] / base
    return {
        "seconds": seconds,
        "accuracy": accuracy,
        "ratios": {case: seconds[case] / base for case in CASES},
        "ideal_resume_ratio": ideal,
        "goals": {
            "mlflow_overhead": {"value": overhead, "goal": OVERHEAD_GOAL, "met": overhead <= OVERHEAD_GOAL},
            "resume_ratio": {
                "value": resume_ratio,
                "goal": ideal + RESUME_SLACK,
                "met": resume_ratio <= ideal + RESUME_SLACK,
            },
        },
        "problems": problems,
    }


def print_report(summary: dict[str, Any], args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from tracking_overhead import markdown_table  # the same table as the other benchmarks

    rows = [
        [
            case,
            f"{summary['seconds'][case]:.1f}",
            f"{summary['ratios'][case]:.2f}",
            f"{summary['accuracy'][case]:.4f}",
        ]
        for case in CASES
    ]
    print()
    print(
        f"{args.rows} rows, {args.epochs} epochs, one worker, crash at the start of epoch {args.kill_epoch}; "
        f"median of {args.rounds} round(s); {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print()
    for line in markdown_table(["case", "seconds", "x baseline", "val_accuracy"], rows):
        print(line)
    print()
    goals = summary["goals"]
    overhead = goals["mlflow_overhead"]
    print(
        f"{'PASS' if overhead['met'] else 'FAIL'} checkpointing every epoch to the MLflow run costs "
        f"{overhead['value']:+.0%} (goal <= +{OVERHEAD_GOAL:.0%})"
    )
    resume = goals["resume_ratio"]
    print(
        f"{'PASS' if resume['met'] else 'FAIL'} the resumed run takes {resume['value']:.2f}x the baseline "
        f"(ideal {summary['ideal_resume_ratio']:.2f}x, goal <= {resume['goal']:.2f}x); a restart from "
        "scratch takes 1.00x"
    )
    for problem in summary["problems"]:
        print(f"FAIL check: {problem}")
    if not summary["problems"]:
        print(
            "PASS checks: every run trained all its epochs, no store was left resumable, the resume was at the crash's epoch"
        )


def parent_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from support.harness import MlflowServer
    from tracking_overhead import wait_until_idle

    if not 0 < args.kill_epoch < args.epochs:
        raise SystemExit(f"--kill-epoch must be in 1..{args.epochs - 1}, got {args.kill_epoch}")
    python = step_python()
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # the checks' downloads
    with tempfile.TemporaryDirectory(prefix="bench-checkpoints-") as tmp:
        workdir = Path(tmp)
        server = MlflowServer(workdir / "mlflow")
        print(f"Starting mlflow server; step environment {python}", flush=True)
        server.start()
        try:
            wait_until_idle(server)
            data = make_data(python, workdir, args.rows, child_env(server.url))
            items: list[dict[str, Any]] = []
            for round_no in range(1, args.rounds + 1):
                items += run_round(args, python, data, workdir, server, round_no)
        finally:
            server.stop()
    summary = summarise(items, args)
    print_report(summary, args)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "summary": summary, "runs": items}, indent=1, default=str)
        )
    ok = not summary["problems"] and all(g["met"] for g in summary["goals"].values())
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--kill-epoch", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--child", nargs=2, metavar=("PLAN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(Path(args.child[0]), Path(args.child[1]))
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
