"""
One MLflow child run per Optuna trial, under the tuning task's run.

A trial's run holds its params, every intermediate value (``<metric>`` at step = epoch), its final
value, and its state as a tag (``COMPLETE``, ``PRUNED``, ``FAIL``). The run is tagged with the
trial's number, and its id is stored in the trial (system attribute ``mlflow_run_id``) when the
trial ends, or when another worker fails the trial of a dead worker after finding its run by those
tags: trials and child runs stay one to one.

Every request goes out from one background thread, in the order the trial loop made it, so that
the loop does not wait for MLflow (nor for MLflow's import, about 5 s, which the first request
pays). A trial's run is a :class:`RunHandle` whose ``run_id`` waits for the run to exist.
:meth:`TrialRuns.drain` waits for everything queued (the worker calls it before it ends) and
raises the first error a request met, as every later call does.

Credentials come from the process environment (``MLFLOW_TRACKING_*``), which the launcher sets.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from airflow_ml_provider.vocabulary import (
    ROLE_TRIAL,
    TAG_PARENT_RUN,
    TAG_ROLE,
    TAG_STUDY,
    TAG_TRIAL_ERROR,
    TAG_TRIAL_NUMBER,
    TAG_TRIAL_RETRY_OF,
    TAG_TRIAL_STATE,
    TAG_TRIAL_WORKER,
    TRIAL_ATTR_RETRY_OF,
    TRIAL_ATTR_RUN_ID,
)

log = logging.getLogger(__name__)

# Their earlier names here, which operators/tuning.py imports.
TAG_PARENT = TAG_PARENT_RUN
TAG_STATE = TAG_TRIAL_STATE
# Intermediate values go out at most this often (and when the trial ends).
FLUSH_SECONDS = 2.0
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
CREATE_TIMEOUT_SECONDS = 600.0


class RunHandle:
    """A trial's MLflow run, created in the background; ``run_id`` waits until it exists."""

    def __init__(self, runs: TrialRuns) -> None:
        self._runs = runs
        self._id: str | None = None
        self._ready = threading.Event()

    def _set(self, run_id: str | None) -> None:
        self._id = run_id
        self._ready.set()

    @property
    def run_id(self) -> str:
        if not self._ready.wait(CREATE_TIMEOUT_SECONDS):
            raise TimeoutError(
                f"The trial's MLflow run was not created within {CREATE_TIMEOUT_SECONDS:.0f} s."
            )
        self._runs.raise_error()
        assert self._id is not None
        return self._id


def _run_id(run: RunHandle | str) -> str:
    return run if isinstance(run, str) else run.run_id


class TrialRuns:
    """
    Creates and closes the child runs of a study's trials; a no-op without a parent run.

    :param parent_run_id: the tuning task's MLflow run.
    :param experiment_id: its experiment.
    :param study_name: tagged on every child run.
    :param tracking_uri: the tracking server (default: ``MLFLOW_TRACKING_URI``).
    """

    def __init__(
        self,
        parent_run_id: str | None,
        experiment_id: str | None,
        study_name: str,
        tracking_uri: str | None = None,
    ) -> None:
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id
        self.study_name = study_name
        self.tracking_uri = tracking_uri
        self.enabled = bool(parent_run_id and experiment_id)
        self._client: Any = None
        self._pending: list[tuple[RunHandle | str, str, float, int, int]] = []
        self._last_flush = time.monotonic()
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- the background writer ------------------------------------------------------------------

    def _submit(self, request: Callable[[], None]) -> None:
        """Send ``request`` from the background thread, after the ones before it."""
        self.raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="mlflow-trial-runs", daemon=True)
            self._thread.start()
        self._queue.put(request)

    def _write(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            if self._error is None:  # after an error, later requests would only fail too
                try:
                    request()
                except BaseException as err:  # reported to the worker by its next call
                    self._error = err

    def raise_error(self) -> None:
        """Raise the first error a background request met."""
        if self._error is not None:
            raise RuntimeError(f"Recording the trials in MLflow failed: {self._error}") from self._error

    def drain(self) -> None:
        """Send what is waiting; wait until it is sent; raise the first error a request met."""
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self.raise_error()

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def connect(self) -> None:
        """Import MLflow and build the client in the background, while the first trial starts."""
        if self.enabled:
            self._submit(lambda: self.client)

    # -- a trial's run --------------------------------------------------------------------------

    def start(self, trial: Any, worker: int) -> RunHandle | None:
        """Create the trial's run with its params (in the background); the worker notes its id in the trial."""
        if not self.enabled:
            return None
        tags = {
            TAG_PARENT_RUN: str(self.parent_run_id),
            TAG_ROLE: ROLE_TRIAL,
            TAG_STUDY: self.study_name,
            TAG_TRIAL_NUMBER: str(trial.number),
            TAG_TRIAL_STATE: "RUNNING",
            TAG_TRIAL_WORKER: str(worker),
        }
        storage, trial_id, number, params = trial.storage, trial._trial_id, trial.number, dict(trial.params)
        # ``storage`` is Optuna's thread-safe storage; this thread only reads the trial.
        handle = RunHandle(self)

        def create() -> None:
            try:
                retry_of = storage.get_trial_system_attrs(trial_id).get(TRIAL_ATTR_RETRY_OF)
                if retry_of is not None:
                    tags[TAG_TRIAL_RETRY_OF] = str(retry_of)
                run = self.client.create_run(str(self.experiment_id), tags=tags, run_name=f"trial {number}")
            except BaseException as err:
                self._error = err
                handle._set(None)  # run_id raises the error
                raise
            run_id = str(run.info.run_id)
            handle._set(run_id)
            self._log_params(run_id, params)

        self._submit(create)
        return handle

    def _log_params(self, run_id: str, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(str(k), str(v)[:6000]) for k, v in values.items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start : start + 100], synchronous=True)

    def report(self, run: RunHandle | str | None, metric: str, value: float, step: int) -> None:
        """Queue an intermediate value; sent every few seconds and when the trial ends."""
        if run is None:
            return
        self._pending.append((run, metric, float(value), int(time.time() * 1000), int(step)))
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def log_metrics(self, run: RunHandle | str | None, metrics: dict[str, float], step: int = 0) -> None:
        for key, value in metrics.items():
            self.report(run, key, value, step)

    def flush(self) -> None:
        """Hand the queued intermediate values to the background writer."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        pending, self._pending = self._pending, []

        def send() -> None:
            from mlflow.entities import Metric

            by_run: dict[str, list[Any]] = {}
            for run, key, value, timestamp, step in pending:
                by_run.setdefault(_run_id(run), []).append(Metric(key, value, timestamp, step))
            for run_id, metrics in by_run.items():
                for start in range(0, len(metrics), 1000):
                    self.client.log_batch(run_id, metrics=metrics[start : start + 1000], synchronous=True)

        self._submit(send)

    def end(
        self,
        run: RunHandle | str | None,
        state: str,
        *,
        metric: str | None = None,
        value: float | None = None,
        step: int = 0,
        error: str | None = None,
    ) -> None:
        """Flush, log the final value, tag the state and close the run (FINISHED, or FAILED for FAIL)."""
        if run is None:
            return
        ended = int(time.time() * 1000)
        if value is not None and metric:
            self._pending.append((run, metric, float(value), ended, int(step)))
        mine = [p for p in self._pending if p[0] is run]  # sent with the tags, in one request
        self._pending = [p for p in self._pending if p[0] is not run]
        self.flush()
        tags = {TAG_TRIAL_STATE: state, **({TAG_TRIAL_ERROR: error[:5000]} if error else {})}

        def close() -> None:
            from mlflow.entities import Metric, RunTag

            run_id = _run_id(run)
            metrics = [Metric(key, value, timestamp, step) for _, key, value, timestamp, step in mine]
            for start in range(0, max(len(metrics), 1), 900):
                batch = metrics[start : start + 900]
                self.client.log_batch(
                    run_id,
                    metrics=batch,
                    tags=[RunTag(k, v) for k, v in tags.items()] if start == 0 else [],
                    synchronous=True,
                )
            self.client.set_terminated(run_id, status=MLFLOW_STATUS.get(state, "FAILED"), end_time=ended)

        self._submit(close)

    def _find(self, number: int) -> str | None:
        """The run a worker created for trial ``number`` before it could note the run's id in the trial."""
        runs = self.client.search_runs(
            [str(self.experiment_id)],
            f"tags.`{TAG_PARENT_RUN}` = '{self.parent_run_id}' and tags.`{TAG_TRIAL_NUMBER}` = '{number}' "
            f"and tags.`{TAG_STUDY}` = '{self.study_name.replace(chr(39), chr(39) * 2)}'",
            max_results=1,
        )
        return str(runs[0].info.run_id) if runs else None

    def run_of(self, trial: Any) -> str | None:
        """
        The run of a trial whose worker died (None without tracking).

        The worker may have died at any point of :meth:`start`: the run is found by its id in the
        trial, else by its tags, else created now, so that every trial has exactly one run.
        """
        if not self.enabled:
            return None
        run_id = trial.system_attrs.get(TRIAL_ATTR_RUN_ID) or self._find(trial.number)
        if run_id is None:
            run = self.client.create_run(
                str(self.experiment_id),
                tags={
                    TAG_PARENT_RUN: str(self.parent_run_id),
                    TAG_ROLE: ROLE_TRIAL,
                    TAG_STUDY: self.study_name,
                    TAG_TRIAL_NUMBER: str(trial.number),
                },
                run_name=f"trial {trial.number}",
            )
            run_id = str(run.info.run_id)
        return str(run_id)

    def close_stale(self, run_id: str, trial: Any, reason: str) -> None:
        """Close the run of a trial whose worker died: its params (again), FAILED, the reason."""
        self._log_params(run_id, trial.params)
        self.end(run_id, "FAIL", error=reason)


def close_left_open(client: Any, experiment_id: str, parent_run_id: str, ended: dict[str, str]) -> list[str]:
    """
    Close the trial runs still RUNNING in MLflow although their trial ended: a worker killed at
    once (SIGKILL, OOM) loses what its MLflow writer still held, often a run's end. They get their
    state tag and status; intermediate values that were lost stay lost (Optuna has them).

    :param client: an ``MlflowClient``.
    :param ended: run id -> state (COMPLETE, PRUNED, FAIL) of every trial that ended.
    :return: the run ids closed.
    """
    if not ended:
        return []
    open_runs = client.search_runs(
        [experiment_id],
        f"tags.`{TAG_PARENT_RUN}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    closed = []
    for child in open_runs:
        state = ended.get(child.info.run_id)
        if state is None:
            continue  # its trial has not ended (a worker of another task may still run it)
        log.warning(
            "Closing trial run %s (%s), left open by a worker that was killed", child.info.run_id, state
        )
        client.set_tag(child.info.run_id, TAG_TRIAL_STATE, state)
        client.set_terminated(child.info.run_id, status=MLFLOW_STATUS[state])
        closed.append(child.info.run_id)
    return closed
