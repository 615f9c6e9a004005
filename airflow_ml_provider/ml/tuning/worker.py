"""
The ``tune`` step: one worker of a study. Every worker (a local process, a mapped Airflow task, a
pod) runs this same loop against the shared study until the budget is spent.

Spec: :class:`~airflow_ml_provider.ml.specs.TuneSpec`, as a JSON dict.

Exactly ``n_trials`` trials are started across all workers: a worker decides under a lock shared
by the study's workers (see :class:`~airflow_ml_provider.ml.tuning.storage.StudyLock`). A trial
that raises is recorded as failed and the study goes on, until ``max_failed_trials`` failures.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
import warnings
from typing import Any, cast

from airflow_ml_provider.ml.specs.tuning import TuneSpec
from airflow_ml_provider.ml.tuning.config import StudySettings
from airflow_ml_provider.ml.tuning.objective import Objective, Reporter, build_objective
from airflow_ml_provider.ml.tuning.storage import StudyLock, make_storage, redact, storage_url
from airflow_ml_provider.ml.tuning.trial_runs import RunHandle, TrialRuns
from airflow_ml_provider.vocabulary import (
    TRIAL_ATTR_ERROR,
    TRIAL_ATTR_OWNER,
    TRIAL_ATTR_RETRY_HISTORY,
    TRIAL_ATTR_RETRY_OF,
    TRIAL_ATTR_RUN_ID,
    TRIAL_ATTR_STEPS,
    TRIAL_ATTR_TRY,
    TRIAL_ATTR_WORKER,
)

log = logging.getLogger(__name__)

WORKER_ENV = "AIRFLOW_ML_TUNING_WORKER"
MAX_STALE_RETRIES = 2


def worker_index(spec: TuneSpec) -> int:
    """The spec's ``worker``, else ``AIRFLOW_ML_TUNING_WORKER``, else a pod's completion index, else 0."""
    for value in (spec.worker, os.environ.get(WORKER_ENV), os.environ.get("JOB_COMPLETION_INDEX")):
        if value is not None and str(value).strip() != "":
            return int(value)
    return 0


class _Heartbeat:
    """Records the running trial's heartbeat every ``interval`` seconds from a thread."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="trial-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as err:  # the storage may blink; the next beat tries again
                log.warning("Could not record the heartbeat of trial id %s: %s", self.trial_id, err)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _Retry:
    """
    Fail a dead worker's trial, close its MLflow run, queue its params again.

    Every worker looks for dead trials under the study's lock before it asks for a new one, so a
    trial is failed once, by whoever looks first. Three signs of a dead worker: the trial's
    heartbeat is older than the grace period; the trial belongs to an earlier try of the task
    instance now running (its workers are gone); the trial was never claimed (its worker died
    between asking for it and claiming it, which happens under the lock this worker now holds).
    """

    def __init__(self, runs: TrialRuns) -> None:
        self.runs = runs
        self.recovered: list[int] = []

    def fail(self, study: Any, trial: Any, reason: str) -> None:
        """Record the trial's run in it, fail it, close the run FAILED, queue the params again."""
        import optuna
        from optuna.trial import TrialState

        storage = study._storage
        try:
            run_id = self.runs.run_of(trial)
            if run_id and trial.system_attrs.get(TRIAL_ATTR_RUN_ID) != run_id:
                storage.set_trial_system_attr(trial._trial_id, TRIAL_ATTR_RUN_ID, run_id)
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                return
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # it ended meanwhile: its worker was alive after all
        log.warning("Trial %d failed: %s; queueing it again with the same params", trial.number, reason)
        if run_id:
            self.runs.close_stale(run_id, trial, reason)
        self.requeue(study, trial)
        self.recovered.append(int(trial.number))

    @staticmethod
    def requeue(study: Any, frozen: Any) -> None:
        """Queue the trial's params again, as Optuna's RetryFailedTrialCallback does, but without
        the failed trial's worker, owner and run attributes: the new trial is claimed afresh."""
        import optuna

        history = [*frozen.system_attrs.get(TRIAL_ATTR_RETRY_HISTORY, []), frozen.number]
        if len(history) > MAX_STALE_RETRIES:
            log.warning("Trial %d is not queued again: it failed %d times", frozen.number, len(history))
            return
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=frozen.params,
                distributions=frozen.distributions,
                system_attrs={
                    TRIAL_ATTR_RETRY_OF: frozen.system_attrs.get(TRIAL_ATTR_RETRY_OF, frozen.number),
                    TRIAL_ATTR_RETRY_HISTORY: history,
                },
            )
        )

    def fail_dead(self, study: Any, owner: dict[str, Any] | None, *, earlier_tries: bool) -> None:
        """Fail the trials whose workers are dead. The caller holds the study's lock."""
        from optuna.trial import TrialState

        storage = study._storage
        # Optuna's own test (the one optuna.storages.fail_stale_trials uses), without its callback,
        # which runs only after the trial is failed, too late to note the trial's run in it.
        stale = set(storage._get_stale_trial_ids(study._study_id))
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = trial.system_attrs
            if trial._trial_id in stale:
                reason = "its worker stopped sending heartbeats"
            elif TRIAL_ATTR_WORKER not in attrs:
                reason = "its worker stopped while starting it"
            elif (
                earlier_tries
                and owner
                and attrs.get(TRIAL_ATTR_OWNER) == owner["key"]
                and int(attrs.get(TRIAL_ATTR_TRY, 0)) < int(owner["try_number"])
            ):
                reason = f"try {attrs.get(TRIAL_ATTR_TRY)} of its task ended while it ran"
            else:
                continue
            self.fail(study, trial, reason)


def retried_numbers(trials: list[Any]) -> set[int]:
    """The numbers of failed trials that were queued again (they do not count as failures)."""
    return {int(n) for t in trials for n in t.system_attrs.get(TRIAL_ATTR_RETRY_HISTORY, [])}


def _stop_reason(study: Any, settings: StudySettings, deadline: float | None) -> str | None:
    """Why no further trial should start, or None to start one. Call under the study's lock."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    failed = sum(1 for t in trials if t.state == TrialState.FAIL and t.number not in retried)
    if settings.max_failed_trials is not None and failed >= settings.max_failed_trials:
        return "max_failed_trials"
    if deadline is not None and time.monotonic() >= deadline:
        return "timeout"
    if any(t.state == TrialState.WAITING for t in trials):
        return None  # a queued trial (a retry) is taken first, whatever the budget
    started = failed + sum(
        1 for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    )
    budget = settings.trial_budget  # the grid's points start once each: trial i takes point i
    if budget is not None and started >= budget:
        return "n_trials" if budget == settings.n_trials else "grid_done"
    return None


def _claim(trial: Any, owner: dict[str, Any] | None, worker: int) -> None:
    """Mark a new trial as this worker's, under the study's lock: a first heartbeat (from now on a
    dead worker's trial goes stale), the owner task's try, and the worker last (the claim)."""
    storage = trial.storage
    storage.record_heartbeat(trial._trial_id)
    for key, value in (
        (TRIAL_ATTR_OWNER, (owner or {}).get("key")),
        (TRIAL_ATTR_TRY, (owner or {}).get("try_number")),
    ):
        if value is not None:
            storage.set_trial_system_attr(trial._trial_id, key, value)
    storage.set_trial_system_attr(trial._trial_id, TRIAL_ATTR_WORKER, worker)


def _tell(study: Any, trial: Any, attrs: dict[str, Any], run: RunHandle | None, **kwargs: Any) -> bool:
    """Record the trial's attributes, its MLflow run and its end; False when another worker ended it first."""
    import optuna

    try:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if run is not None:  # while the trial still runs: Optuna refuses changes to a finished one
            trial.storage.set_trial_system_attr(trial._trial_id, TRIAL_ATTR_RUN_ID, run.run_id)
        study.tell(trial, **kwargs)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker found this trial stale (no heartbeat within the grace period) and failed it.
        log.warning("Trial %d was failed by another worker as stale before it ended here", trial.number)
        return False
    return True


def run_trial(
    study: Any,
    trial: Any,
    objective: Objective,
    runs: TrialRuns,
    settings: StudySettings,
    *,
    fixed: dict[str, Any],
    worker: int,
    heartbeat_interval: float,
) -> dict[str, Any]:
    """Run one trial to COMPLETE, PRUNED or FAIL; record it in Optuna and in its MLflow run."""
    import optuna
    from optuna.trial import TrialState

    run = runs.start(trial, worker)
    reporter = Reporter(trial, runs, run, settings.metric, prune=settings.pruner != "none")
    log.info("Trial %d (worker %d): %s", trial.number, worker, trial.params)
    started = time.monotonic()
    value: float | None = None
    error: str | None = None
    with _Heartbeat(trial.storage, trial._trial_id, heartbeat_interval):
        try:
            value = objective(trial, reporter, {**fixed, **trial.params})
            state = TrialState.COMPLETE
        except optuna.TrialPruned as pruned:
            state = TrialState.PRUNED
            log.info("%s", pruned)
        except Exception as err:
            state = TrialState.FAIL
            error = f"{type(err).__name__}: {err}"
            log.warning("Trial %d failed: %s\n%s", trial.number, error, traceback.format_exc())
    attrs: dict[str, Any] = {TRIAL_ATTR_STEPS: reporter.steps}
    if error:
        attrs[TRIAL_ATTR_ERROR] = error[:2000]
    told = (
        _tell(study, trial, attrs, run, values=value, state=state)
        if value is not None
        else _tell(study, trial, attrs, run, state=state)
    )
    if told:
        # The value goes after the intermediate values, unless it is the last of them (a run_fn's).
        final = None if value == reporter.last_value else value
        runs.end(
            run,
            state.name,
            metric=settings.metric,
            value=final,
            step=reporter.last_step + 1,
            error=error,
        )
    seconds = time.monotonic() - started
    log.info(
        "Trial %d %s in %.1f s%s",
        trial.number,
        state.name,
        seconds,
        f": {settings.metric}={value:g}" if value is not None else "",
    )
    return {
        "number": trial.number,
        "state": state.name,
        "value": value,
        "steps": reporter.steps,
        "seconds": round(seconds, 3),
    }


def open_study(spec: TuneSpec, settings: StudySettings, url: str, worker: int) -> Any:
    """Create the study, or load it when another worker or an earlier try created it."""
    import optuna

    storage = make_storage(url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_seconds)
    name = spec.study_name
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=settings.build_sampler(worker, parallel=spec.parallel),
        pruner=settings.build_pruner(),
        direction=cast(Any, settings.direction),
        load_if_exists=True,
    )
    existing = study.direction.name.lower()
    if existing != settings.direction:
        raise ValueError(
            f"Study {name!r} in {redact(url)} was created to {existing}, but this task asks to "
            f"{settings.direction}; use another study_name or the same direction."
        )
    return study


def tune(spec: dict[str, Any]) -> dict[str, Any]:
    """
    Run trials of the shared study until its budget is spent; return what this worker ran.

    :param spec: a :class:`~airflow_ml_provider.ml.specs.TuneSpec` as a JSON dict.
    """
    parsed = TuneSpec.parse(spec)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own log says what each trial did
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # one line per trial is ours
    settings = StudySettings.of(parsed)
    url = storage_url(parsed.storage)
    worker = worker_index(parsed)
    runs = TrialRuns(parsed.mlflow.run_id, parsed.mlflow.experiment_id, parsed.study_name)
    runs.connect()
    retry = _Retry(runs)
    lock = StudyLock(url, parsed.study_name)
    with lock.hold():  # the first worker creates the tables and the study; the others wait for it
        study = open_study(parsed, settings, url, worker)
    objective = build_objective(parsed, worker=worker)
    from airflow_ml_provider.ml.tuning.space import distributions

    space = distributions(settings.search_space)
    fixed = dict(parsed.hyperparameters)
    owner = parsed.owner
    interval = float(parsed.heartbeat_interval)
    deadline = time.monotonic() + settings.timeout if settings.timeout else None
    ran: list[dict[str, Any]] = []
    log.info("Worker %d joins study %s in %s", worker, study.study_name, redact(url))
    joined = time.monotonic()
    try:
        while True:
            with lock.hold():
                # An earlier try's trials are all there when this worker starts.
                retry.fail_dead(study, owner, earlier_tries=not ran)
                stopped = _stop_reason(study, settings, deadline)
                if stopped:
                    break
                trial = study.ask(space)
                _claim(trial, owner, worker)
            ran.append(
                run_trial(
                    study,
                    trial,
                    objective,
                    runs,
                    settings,
                    fixed=fixed,
                    worker=worker,
                    heartbeat_interval=interval,
                )
            )
    except BaseException:
        with contextlib.suppress(Exception):
            runs.drain()  # what finished before the error still reaches MLflow
        raise
    finally:
        lock.close()
    runs.drain()  # every trial's run complete in MLflow before the worker says it is done
    seconds = time.monotonic() - joined
    log.info("Worker %d stops (%s) after %d trial(s) in %.1f s", worker, stopped, len(ran), seconds)
    return {
        "worker": worker,
        "study_name": study.study_name,
        "stopped": stopped,
        "trials": ran,
        "recovered": retry.recovered,
        "seconds": round(seconds, 3),
    }
