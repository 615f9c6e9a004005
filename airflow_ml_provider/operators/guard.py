"""Guard a new champion: watch its live metric for a while, roll the alias back on a breach."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf
from airflow.sdk import Asset, AssetAlias

from airflow_ml_provider.hooks.live_metric import (
    BREACHED,
    DEFAULT_SERVING_RUN_FILTER,
    ERROR,
    HEALTHY,
    MOVED,
    NO_DATA,
    ROLLED_BACK,
    SUPERSEDED,
    ChampionWatch,
    GuardSpec,
    describe_bounds,
    reason,
    run_watch,
    source_to_dict,
)
from airflow_ml_provider.operators._guard_arguments import check_arguments, guarded_version_argument
from airflow_ml_provider.operators.base import MLflowTrackedOperator
from airflow_ml_provider.triggers.guard import ChampionGuardTrigger
from airflow_ml_provider.vocabulary import (
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS_CHAMPION,
    MOVE_ROLLBACK,
    TAG_GUARD_OUTCOME,
    TAG_GUARD_REASON,
    TAG_GUARD_ROLLED_BACK_TO,
    TAG_GUARD_VERSION,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.hooks.mlflow import MlflowHook
    from airflow_ml_provider.tracking import TaskIdentity, TaskRun

# The task's run param that keeps the guarded version for a retry (the champion may have moved).
PARAM_GUARDED_VERSION = "guarded_version"
# The alias through which an event reaches a rollback asset (only when the guard rolls back).
ROLLBACK_ALIAS_PREFIX = "champion_guard_rollback."


class ChampionGuardOperator(MLflowTrackedOperator):
    """
    Watch a live metric of the champion for ``window`` seconds; roll back on a sustained breach.

    Every ``check_interval`` seconds the guard checks that ``alias`` still points at the guarded
    version, then reads the metric. When the value is out of bounds (below ``lower_bound``,
    above ``upper_bound``) in ``consecutive_breaches`` checks in a row, it moves ``alias`` back
    to the version ``previous_alias`` holds, with compare-and-set: only if ``alias`` still points
    at the guarded version, so it never undoes a newer promotion. The move is recorded in the
    alias history (kind ``rollback``, with the reason: metric, values, bounds) and in the task's
    MLflow run (tags ``airflow_ml.guard.*``, the values as the metric's history).

    The metric comes from exactly one source:

    - ``metric_callable="package.module:function"``: called as ``function(model_name, version)``,
      returns a float (None: no value yet). It must be importable where the guard runs (the
      worker, and the triggerer when deferrable);
    - ``serving_experiment="churn_serving"``: the metric ``metric`` that serving logs to that
      MLflow experiment, in runs tagged ``model_name`` and ``model_version`` (or as
      ``serving_run_filter`` says); the latest value of the newest such run;
    - ``sql="SELECT ... WHERE version = %(version)s"`` with ``sql_conn_id``: the first column of
      the first row, through the connection's ``DbApiHook``; parameters ``model_name`` and
      ``version``.

    Outcomes (the XCom ``outcome``): ``rolled_back``; ``healthy`` (the window ended without a
    sustained breach); ``moved`` (the alias left the guarded version during the window: a newer
    promotion or a manual move, nothing more to guard); ``superseded`` (a breach, but a newer
    promotion moved the alias first: no rollback); ``no_data`` (no value in the whole window:
    fails the task unless ``on_no_data="warn"``). A breach with nothing to roll back to (no
    ``previous_alias``: the first champion, or a previous champion that was itself rolled back)
    fails the task with :class:`~airflow_ml_provider.exceptions.ChampionGuardFailed`.

    Asset events: the ``outlets`` (plain assets) get an event whenever the task succeeds, as
    always in Airflow, with extra ``{"model_name", "from_version", "to_version", "reason",
    "outcome", "metric"}``; each of ``rollback_assets`` gets an event with that extra only when
    the guard rolls back (through an asset alias outlet), for example the asset a deployment DAG
    is scheduled on.

    A retry finds the rollback its earlier try made (the alias history's actor is the task
    instance) and finishes the record instead of guarding again; otherwise it guards the same
    version again, for a new window.

    :param model_name: the registered model (templated).
    :param metric: the metric's name, as the records say it; for ``serving_experiment``, the
        metric key serving logs (templated).
    :param lower_bound: a value below it is a breach (for metrics where higher is better: AUC,
        accuracy) (templated).
    :param upper_bound: a value above it is a breach (lower is better: error rate, latency)
        (templated). At least one bound.
    :param metric_callable: ``"package.module:function"`` (templated).
    :param serving_experiment: the MLflow experiment serving logs ``metric`` to (templated).
    :param serving_run_filter: which runs of ``serving_experiment`` belong to the guarded version:
        a ``search_runs`` filter where ``{model_name}`` and ``{version}`` stand for it (templated).
    :param sql: a query returning the metric (templated).
    :param sql_conn_id: the Airflow connection ``sql`` runs on (templated).
    :param version: the version to guard (templated; for example the promote task's
        ``version``). Default: the version ``alias`` points at when the task starts.
    :param window: seconds to watch (templated).
    :param check_interval: seconds between checks (templated).
    :param consecutive_breaches: checks in a row out of bounds that trigger the rollback; a check
        without a value breaks the run (templated).
    :param alias: the alias guarded (``champion``).
    :param previous_alias: the alias holding the version to roll back to (``previous_champion``).
    :param on_no_data: ``"fail"`` (default) or ``"warn"`` when the window saw no value at all
        (templated).
    :param rollback_assets: assets that get an event only when the guard rolls back.
    :param deferrable: watch in the triggerer instead of a worker slot; defaults to
        ``[operators] default_deferrable``.

    .. seealso:: :class:`~airflow_ml_provider.triggers.guard.ChampionGuardTrigger`,
        ``MlflowHook.alias_history``
    """

    template_fields: Sequence[str] = (
        "model_name",
        "metric",
        "lower_bound",
        "upper_bound",
        "metric_callable",
        "serving_experiment",
        "serving_run_filter",
        "sql",
        "sql_conn_id",
        "version",
        "window",
        "check_interval",
        "consecutive_breaches",
        "on_no_data",
        *MLflowTrackedOperator.template_fields,
    )
    template_fields_renderers = {"sql": "sql"}
    ui_color = "#f3d9d9"

    def __init__(
        self,
        *,
        model_name: str,
        metric: str,
        lower_bound: float | str | None = None,
        upper_bound: float | str | None = None,
        metric_callable: str | None = None,
        serving_experiment: str | None = None,
        serving_run_filter: str = DEFAULT_SERVING_RUN_FILTER,
        sql: str | None = None,
        sql_conn_id: str | None = None,
        version: str | int | None = None,
        window: float | str = 3600,
        check_interval: float | str = 60,
        consecutive_breaches: int | str = 3,
        alias: str = ALIAS_CHAMPION,
        previous_alias: str = ALIAS_PREVIOUS_CHAMPION,
        on_no_data: str = "fail",
        rollback_assets: Sequence[Asset] = (),
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        self.rollback_assets = list(rollback_assets)
        aliases = [AssetAlias(f"{ROLLBACK_ALIAS_PREFIX}{a.name}") for a in self.rollback_assets]
        outlets = kwargs.pop("outlets", None) or []
        outlets = list(outlets) if isinstance(outlets, list | tuple) else [outlets]
        super().__init__(outlets=[*outlets, *aliases] if aliases else outlets, **kwargs)
        self.model_name = model_name
        self.metric = metric
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        self.metric_callable = metric_callable
        self.serving_experiment = serving_experiment
        self.serving_run_filter = serving_run_filter
        self.sql = sql
        self.sql_conn_id = sql_conn_id
        self.version = version
        self.window = window
        self.check_interval = check_interval
        self.consecutive_breaches = consecutive_breaches
        self.alias = alias
        self.previous_alias = previous_alias
        self.on_no_data = on_no_data
        self.deferrable = deferrable

    # -- arguments --------------------------------------------------------------------------------

    def _check_arguments(self) -> dict[str, Any]:
        """The rendered arguments, checked and as numbers; ValueError naming the bad one."""
        return check_arguments(self)

    @staticmethod
    def _version(value: Any) -> str | None:
        return guarded_version_argument(value)

    # -- guarding ---------------------------------------------------------------------------------

    def execute_tracked(self, context: Context, run: TaskRun) -> Any:
        from airflow_ml_provider.tracking import TaskIdentity

        args = self._check_arguments()
        hook = run.hook
        identity = TaskIdentity.from_context(context)
        earlier = self._own_rollback(hook, identity)
        if earlier is not None:
            self.log.info(
                "An earlier try of this task already rolled %s of %s back from v%s to v%s: recording it.",
                self.alias,
                self.model_name,
                earlier.from_version,
                earlier.to_version,
            )
            result = {
                "outcome": ROLLED_BACK,
                "version": str(earlier.from_version),
                "rolled_back_to": earlier.to_version,
                "reason": earlier.reason,
                "epoch": earlier.epoch,
            }
            return self._finish(context, run, result, {"checks": 0, "values": []})
        version = self._guarded_version(hook, run)
        spec = GuardSpec(
            model_name=self.model_name,
            version=version,
            metric=self.metric,
            source=source_to_dict(args["source"]),
            lower_bound=args["lower_bound"],
            upper_bound=args["upper_bound"],
            consecutive_breaches=args["consecutive_breaches"],
            alias=self.alias,
            mlflow_conn_id=self.mlflow_conn_id,
        )
        self._log_setup(run, spec, args)
        self._say_what_a_breach_does(hook, spec)
        end_at = time.time() + args["window"]
        if self.deferrable:
            run.flush()
            self.defer(
                trigger=ChampionGuardTrigger(spec.to_dict(), args["check_interval"], end_at),
                method_name="execute_complete",
                # The trigger ends by itself at end_at; the timeout only catches a lost trigger.
                timeout=timedelta(seconds=args["window"] + max(300.0, 2 * args["check_interval"])),
            )
        event = run_watch(ChampionWatch(spec), end_at, args["check_interval"], log=self.log.info)
        return self._conclude(context, run, spec, event, args["check_interval"])

    def complete_tracked(self, context: Context, run: TaskRun, event: dict[str, Any], **kwargs: Any) -> Any:
        from airflow.sdk.exceptions import AirflowException

        args = self._check_arguments()
        if not isinstance(event, dict) or not isinstance(event.get("guard"), dict):
            message = event.get("message") if isinstance(event, dict) else event
            raise AirflowException(f"Task {self.task_id!r}: the guard's trigger failed: {message}")
        return self._conclude(
            context, run, GuardSpec.from_dict(event["guard"]), event, args["check_interval"]
        )

    def _guarded_version(self, hook: MlflowHook, run: TaskRun) -> str:
        explicit = self._version(self.version)
        if explicit is not None:
            return explicit
        if run.resumed:  # a retry guards what the first try guarded, wherever the alias is now
            recorded = hook.client.get_run(run.run_id).data.params.get(PARAM_GUARDED_VERSION)
            if recorded:
                return str(recorded)
        current = hook.get_alias_version(self.model_name, self.alias)
        if current is None:
            raise ValueError(
                f"Task {self.task_id!r}: MLflow model {self.model_name!r} has no {self.alias!r} alias: "
                "there is no champion to guard."
            )
        return str(current.version)

    def _log_setup(self, run: TaskRun, spec: GuardSpec, args: dict[str, Any]) -> None:
        params = {
            "model_name": spec.model_name,
            "alias": spec.alias,
            PARAM_GUARDED_VERSION: spec.version,
            "metric": spec.metric,
            "metric_source": args["source"].describe(),
            "lower_bound": "none" if spec.lower_bound is None else spec.lower_bound,
            "upper_bound": "none" if spec.upper_bound is None else spec.upper_bound,
            "window_seconds": args["window"],
            "check_interval_seconds": args["check_interval"],
            "consecutive_breaches": spec.consecutive_breaches,
        }
        if run.resumed:  # params are written once; a retry keeps the first try's
            params = {
                k: v for k, v in params.items() if k not in run.hook.client.get_run(run.run_id).data.params
            }
        run.log_params(params)
        run.set_tags({TAG_GUARD_VERSION: spec.version})
        run.flush()  # the guarded version must survive a crash of this try

    def _say_what_a_breach_does(self, hook: MlflowHook, spec: GuardSpec) -> None:
        previous = hook.get_alias_version(spec.model_name, self.previous_alias)
        bounds = describe_bounds(spec.lower_bound, spec.upper_bound)
        problem = self._no_way_back(hook, spec, previous)
        if problem is not None:
            self.log.warning(
                "Guarding %s v%s's %s, but a breach (%s) has nothing to roll back to and will fail "
                "this task: %s.",
                spec.model_name,
                spec.version,
                spec.metric,
                bounds,
                problem,
            )
        else:
            self.log.info(
                "Guarding %s v%s: %s %s in %d consecutive checks rolls %s back to v%s.",
                spec.model_name,
                spec.version,
                spec.metric,
                bounds,
                spec.consecutive_breaches,
                spec.alias,
                previous.version if previous is not None else "?",
            )

    def _no_way_back(self, hook: MlflowHook, spec: GuardSpec, previous: Any) -> str | None:
        """Why a rollback from the guarded version is impossible (None: it goes to ``previous``)."""
        if previous is None:
            return f"{self.previous_alias!r} is not set (v{spec.version} is the first champion)"
        target = str(previous.version)
        # Never back to a version that left the alias by a rollback (its own live metric breached).
        history = hook.alias_history(spec.model_name, alias=spec.alias)
        left = [e for e in history if e.from_version is not None and str(e.from_version) == target]
        if left and left[-1].kind == MOVE_ROLLBACK:
            return (
                f"{self.previous_alias} v{target} was itself rolled back at "
                f"{left[-1].at:%Y-%m-%d %H:%M:%S} UTC ({left[-1].reason})"
            )
        return None

    # -- the verdict ------------------------------------------------------------------------------

    def _conclude(
        self, context: Context, run: TaskRun, spec: GuardSpec, event: dict[str, Any], interval: float
    ) -> dict[str, Any]:
        from airflow_ml_provider.exceptions import ChampionGuardFailed

        status = event.get("status")
        for step, value in enumerate(event.get("values") or []):
            if value is not None:
                run.log_metric(spec.metric, value, step=step)
        if status == ERROR:
            from airflow.sdk.exceptions import AirflowException

            raise AirflowException(
                f"Task {self.task_id!r}: guarding {spec.model_name} v{spec.version} failed after "
                f"{event.get('checks')} checks: {event.get('message')}"
            )
        result: dict[str, Any] = {
            "version": spec.version,
            "rolled_back_to": None,
            "reason": "",
            "epoch": None,
        }
        if status == BREACHED:
            result.update(self._roll_back(context, run, spec, reason(event, spec, interval)))
        elif status == MOVED:
            result["outcome"] = MOVED
            result["reason"] = (
                f"{spec.alias} of {spec.model_name} moved from v{spec.version} to "
                f"{'v' + str(event['current_version']) if event.get('current_version') else 'nothing'} "
                "during the window (a newer promotion or a manual move): stopped guarding, no rollback."
            )
            self.log.info("%s", result["reason"])
        elif status == HEALTHY:
            result["outcome"] = HEALTHY
            self.log.info(
                "%s of %s v%s stayed healthy over %d checks (out of bounds: %s); %s stays v%s.",
                spec.metric,
                spec.model_name,
                spec.version,
                event.get("checks"),
                describe_bounds(spec.lower_bound, spec.upper_bound),
                spec.alias,
                spec.version,
            )
        elif status == NO_DATA:
            result["outcome"] = NO_DATA
            result["reason"] = (
                f"No value of {spec.metric} for {spec.model_name} v{spec.version} in {event.get('checks')} "
                f"checks over the whole window ({spec.metric_source().describe()}): is it being recorded?"
            )
            if self.on_no_data == "fail":
                run.set_tags({TAG_GUARD_OUTCOME: NO_DATA, TAG_GUARD_REASON: result["reason"]})
                raise ChampionGuardFailed(spec.model_name, spec.version, result["reason"], report=run.url)
            self.log.warning("%s Not judged (on_no_data='warn').", result["reason"])
        else:
            raise ValueError(f"Task {self.task_id!r}: the guard's trigger sent an unknown event {event!r}.")
        return self._finish(context, run, result, event)

    def _roll_back(self, context: Context, run: TaskRun, spec: GuardSpec, why: str) -> dict[str, Any]:
        from airflow_ml_provider.exceptions import ChampionGuardFailed, PromotionRefused
        from airflow_ml_provider.hooks._registry import MoveRecord
        from airflow_ml_provider.tracking import TaskIdentity

        hook = run.hook
        self.log.warning("Breach: %s.", why)
        problem = self._no_way_back(hook, spec, hook.get_alias_version(spec.model_name, self.previous_alias))
        if problem is not None:
            run.set_tags({TAG_GUARD_OUTCOME: BREACHED, TAG_GUARD_REASON: why[:5000]})
            raise ChampionGuardFailed(
                spec.model_name,
                spec.version,
                f"{why}. Nothing to roll back to: {problem}. {spec.alias} stays v{spec.version}: "
                "take it out of service by hand, or promote a better version.",
                report=run.url,
            )
        identity = TaskIdentity.from_context(context)
        record = MoveRecord(
            kind=MOVE_ROLLBACK,
            reason=why,
            dag_id=identity.dag_id,
            run_id=identity.run_id,
            task_id=identity.task_id,
        )
        try:
            move = hook.rollback_alias(
                spec.model_name,
                alias=spec.alias,
                previous_alias=self.previous_alias,
                owner=identity.ti_key,
                expected=spec.version,
                record=record,
            )
        except PromotionRefused as err:
            current = hook.get_alias_version(spec.model_name, spec.alias)
            if current is not None and str(current.version) == spec.version:
                raise  # refused for another reason than a newer move: say so
            self.log.info("Not rolling back: %s", err)
            return {"outcome": SUPERSEDED, "reason": f"{why}; not rolled back: {err}"}
        self.log.info(
            "Rolled %s of %s back from v%s to v%s (epoch %d).",
            spec.alias,
            spec.model_name,
            spec.version,
            move.version,
            move.epoch,
        )
        return {
            "outcome": ROLLED_BACK,
            "rolled_back_to": str(move.version),
            "reason": why,
            "epoch": move.epoch,
        }

    def _own_rollback(self, hook: MlflowHook, identity: TaskIdentity) -> Any:
        """The rollback an earlier try of this task instance made, from the alias history."""
        for entry in reversed(hook.alias_history(self.model_name, alias=self.alias)):
            if entry.kind == MOVE_ROLLBACK and entry.actor == identity.ti_key:
                return entry
        return None

    def _finish(
        self, context: Context, run: TaskRun, result: dict[str, Any], event: dict[str, Any]
    ) -> dict[str, Any]:
        outcome = result["outcome"]
        tags = {TAG_GUARD_OUTCOME: outcome, TAG_GUARD_VERSION: result["version"]}
        if result.get("reason"):
            tags[TAG_GUARD_REASON] = str(result["reason"])[:5000]
        if result.get("rolled_back_to"):
            tags[TAG_GUARD_ROLLED_BACK_TO] = result["rolled_back_to"]
        run.set_tags(tags)
        extra = {
            "model_name": self.model_name,
            "from_version": result["version"],
            "to_version": result.get("rolled_back_to"),
            "reason": result.get("reason") or "",
            "outcome": outcome,
            "metric": self.metric,
        }
        events = context["outlet_events"]
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                events[outlet].extra.update(extra)
        if outcome == ROLLED_BACK:
            for asset in self.rollback_assets:
                events[AssetAlias(f"{ROLLBACK_ALIAS_PREFIX}{asset.name}")].add(asset, extra=extra)
        return {
            "model_name": self.model_name,
            "alias": self.alias,
            "metric": self.metric,
            **result,
            "checks": event.get("checks", 0),
            "values": event.get("values") or [],
            "mlflow_run_id": run.run_id,
        }
