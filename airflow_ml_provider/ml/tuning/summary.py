"""
The ``tuning_summary`` step: read a finished study and say what came of it.

The result holds the best trial (number, value, params, its MLflow run), the hyperparameters for
the training task (the fixed ones and the best params), counts per state, the failed trials with
their errors, what pruning saved (steps, i.e. epochs, run against the steps the same trials would
have run in full), and parameter importances. With ``output_dir`` it writes ``trials.csv``,
``summary.json`` and, where matplotlib is installed, the optimization history, the intermediate
values and the parameter importances as PNG.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from typing import Any

from airflow_ml_provider.ml.specs.tuning import TuningSummarySpec
from airflow_ml_provider.ml.tuning.storage import redact, storage_url
from airflow_ml_provider.ml.tuning.worker import retried_numbers
from airflow_ml_provider.vocabulary import (
    TAG_BEST_TRIAL,
    TAG_BEST_TRIAL_RUN_ID,
    TRIAL_ATTR_ERROR,
    TRIAL_ATTR_RUN_ID,
    TRIAL_ATTR_STEPS,
)

log = logging.getLogger(__name__)

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    return value


def _pruning_savings(trials: list[Any]) -> dict[str, Any]:
    """Steps run, against the steps the same trials would have run without pruning."""
    steps = {t.number: int(t.user_attrs.get(TRIAL_ATTR_STEPS, len(t.intermediate_values))) for t in trials}
    complete = [steps[t.number] for t in trials if t.state.name == "COMPLETE"]
    full = max(complete, default=max(steps.values(), default=0))
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    run = sum(steps[t.number] for t in finished)
    without = full * len(finished)
    return {
        "steps_run": run,
        "steps_without_pruning": without,
        "saved_fraction": round(1 - run / without, 4) if without else 0.0,
    }


def _importances(study: Any) -> dict[str, float]:
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: round(float(v), 6) for k, v in optuna.importance.get_param_importances(study).items()}
    except Exception as err:  # too few trials, a single value per parameter ...
        log.info("No parameter importances: %s", err)
        return {}


def _write_csv(trials: list[Any], path: str) -> None:
    names = sorted({name for t in trials for name in t.params})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "value", "steps", "seconds", *names, "mlflow_run_id", "error"])
        for t in trials:
            seconds = (
                (t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start
                else ""
            )
            writer.writerow(
                [
                    t.number,
                    t.state.name,
                    "" if t.value is None else t.value,
                    t.user_attrs.get(TRIAL_ATTR_STEPS, ""),
                    seconds,
                    *[t.params.get(n, "") for n in names],
                    t.system_attrs.get(TRIAL_ATTR_RUN_ID, ""),
                    t.user_attrs.get(TRIAL_ATTR_ERROR, ""),
                ]
            )


def _plots(study: Any, output_dir: str, importances: dict[str, float]) -> list[str]:
    """PNG plots of the study; none (and a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as optuna_plots
    except ImportError:
        log.info("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    made = []
    drawings = {
        "optimization_history.png": optuna_plots.plot_optimization_history,
        "intermediate_values.png": optuna_plots.plot_intermediate_values,
    }
    if importances:
        drawings["param_importances.png"] = optuna_plots.plot_param_importances
    for name, draw in drawings.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                draw(study)
            figure = plt.gcf()
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(os.path.join(output_dir, name), dpi=100)
            made.append(name)
        except Exception as err:
            log.info("No %s: %s", name, err)
        finally:
            plt.close("all")
    return made


def summarize(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Summarize the study named in the spec.

    :param spec: a :class:`~airflow_ml_provider.ml.specs.TuningSummarySpec` as a JSON dict (the
        ``tune`` spec of the study, plus ``output_dir``).
    """
    settings = TuningSummarySpec.parse(spec)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(settings.storage)
    name = settings.study_name
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        raise ValueError(
            f"Study {name!r} does not exist in {redact(url)}: no worker has started it."
        ) from None
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(1 for t in trials if t.state.name == state) for state in STATES}
    retried = retried_numbers(trials)
    failed = [
        {
            "number": t.number,
            "params": t.params,
            "error": t.user_attrs.get(TRIAL_ATTR_ERROR, "the worker running it died"),
        }
        for t in trials
        if t.state.name == "FAIL" and t.number not in retried
    ]
    importances = _importances(study) if counts["COMPLETE"] > 1 else {}
    summary: dict[str, Any] = {
        "study_name": name,
        "storage": redact(url),
        "metric": settings.metric,
        "direction": settings.direction,
        "trials": {
            **{k.lower(): v for k, v in counts.items()},
            "total": len(trials),
            "retried": len(retried),
        },
        "failed_trials": failed,
        "pruning": _pruning_savings(trials),
        "importances": importances,
        "best": None,
        "hyperparameters": None,
    }
    if counts["COMPLETE"]:
        best = study.best_trial
        summary["best"] = {
            "number": best.number,
            "value": _jsonable(best.value),
            "params": best.params,
            "mlflow_run_id": best.system_attrs.get(TRIAL_ATTR_RUN_ID),
        }
        summary["hyperparameters"] = {**settings.hyperparameters, **best.params}
    # Every ended trial's run and state: the operator closes runs a killed worker left open.
    summary["ended_runs"] = {
        str(t.system_attrs[TRIAL_ATTR_RUN_ID]): t.state.name
        for t in trials
        if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and t.system_attrs.get(TRIAL_ATTR_RUN_ID)
    }
    output_dir = settings.output_dir
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        _write_csv(trials, os.path.join(output_dir, "trials.csv"))
        summary["plots"] = _plots(study, output_dir, importances) if counts["COMPLETE"] else []
        with open(os.path.join(output_dir, "summary.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2, sort_keys=True, default=str)
    return summary


def mlflow_records(summary: dict[str, Any]) -> tuple[dict[str, float], dict[str, str], dict[str, Any]]:
    """What a study's summary puts on the tuning task's MLflow run: metrics, tags and the best params."""
    trials, pruning, best = summary["trials"], summary["pruning"], summary["best"]
    metrics = {
        "trials_complete": trials["complete"],
        "trials_pruned": trials["pruned"],
        "trials_failed": len(summary["failed_trials"]),
        "pruning_saved_fraction": pruning["saved_fraction"],
        "steps_run": pruning["steps_run"],
    }
    if best is None:
        return {k: float(v) for k, v in metrics.items() if v is not None}, {}, {}
    metrics[f"best_{summary['metric']}"] = best["value"]
    tags = {TAG_BEST_TRIAL: str(best["number"]), TAG_BEST_TRIAL_RUN_ID: best["mlflow_run_id"] or ""}
    params = {f"best.{k}": v for k, v in best["params"].items()}
    return {k: float(v) for k, v in metrics.items() if v is not None}, tags, params
