"""
A live metric of a model version, and the watch that judges it: what ``ChampionGuardOperator`` and
its trigger share.

A metric comes from one of three sources, each read by ``read(model_name, version)`` (a float, or
None when there is no value yet):

- :class:`CallableMetric`: a function of the user's, ``"package.module:function"``, called with
  the model's name and version;
- :class:`ServingRunMetric`: a metric that serving logs to MLflow, in runs tagged with the model
  version (the newest matching run's latest value);
- :class:`SqlMetric`: the first column of the first row of a query through an Airflow connection
  (any ``DbApiHook``), with the model name and version as parameters.

:class:`ChampionWatch` runs one check (is the alias still on the guarded version? what is the
metric? is it out of bounds?) and keeps the count of consecutive breaches; :func:`run_watch` (in a worker)
and ``ChampionGuardTrigger.run`` (in the triggerer) repeat it until a verdict or the end of the
window; both judge through it, so the two modes cannot disagree.
"""

from __future__ import annotations

import importlib
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, Literal, Protocol

from airflow_ml_provider.hooks.mlflow import MlflowHook

# How a guard ended (the event's ``status`` and the task's outcome).
BREACHED = "breached"  # out of bounds for N consecutive checks: roll back
HEALTHY = "healthy"  # the window ended without N consecutive breaches
NO_DATA = "no_data"  # the window ended without a single value
MOVED = "moved"  # the alias left the guarded version during the window: nothing to guard
ERROR = "error"  # a check raised; the message says which
# Outcomes only the operator reaches, after a breach.
ROLLED_BACK = "rolled_back"
SUPERSEDED = "superseded"  # a breach, but a newer promotion won the alias first: no rollback

# The MLflow source's default run filter: the tags an MLflow user puts on serving's runs.
DEFAULT_SERVING_RUN_FILTER = "tags.model_name = '{model_name}' and tags.model_version = '{version}'"
# The values an event carries (and the task's run logs): the latest ones.
MAX_VALUES = 500

_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
SourceKind = Literal["callable", "mlflow", "sql"]


class MetricSource(Protocol):
    @property
    def kind(self) -> SourceKind: ...

    def read(self, model_name: str, version: str) -> float | None: ...

    def describe(self) -> str: ...


def as_value(raw: Any, what: str) -> float | None:
    """``raw`` as a float; None (and NaN) mean no value. TypeError for anything else."""
    if raw is None:
        return None
    try:
        if isinstance(raw, bool):
            raise TypeError
        value = float(raw)  # int, float, Decimal (a SQL numeric), numpy's scalars, "0.8"
    except (TypeError, ValueError):
        raise TypeError(f"{what} returned {type(raw).__name__} {str(raw)[:100]!r}, not a number.") from None
    return None if math.isnan(value) else value


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


@dataclass(frozen=True)
class CallableMetric:
    """``function(model_name, version) -> float | None``, named ``"package.module:function"``."""

    path: str
    kind: SourceKind = field(default="callable", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not _CALLABLE.fullmatch(self.path):
            raise ValueError(
                f"metric_callable must name a function as 'package.module:function', got {self.path!r}."
            )

    def function(self) -> Callable[[str, str], Any]:
        module_name, _, name = self.path.partition(":")
        module = importlib.import_module(module_name)
        function = getattr(module, name, None)
        if not callable(function):
            raise TypeError(f"metric_callable {self.path!r}: {module_name} has no function {name!r}.")
        return function

    def read(self, model_name: str, version: str) -> float | None:
        return as_value(self.function()(model_name, version), f"metric_callable {self.path}")

    def describe(self) -> str:
        return f"{self.path}(model_name, version)"


@dataclass(frozen=True)
class ServingRunMetric:
    """
    The metric ``key`` that serving logs to MLflow experiment ``experiment``.

    Runs are selected with ``run_filter``, a ``search_runs`` filter in which ``{model_name}`` and
    ``{version}`` stand for the guarded version (quoted); the value is the latest one logged in
    the newest selected run (by start time) that has the metric.
    """

    key: str
    experiment: str
    run_filter: str = DEFAULT_SERVING_RUN_FILTER
    mlflow_conn_id: str = MlflowHook.default_conn_name
    kind: SourceKind = field(default="mlflow", init=False)

    def __post_init__(self) -> None:
        for name, value in (("metric", self.key), ("serving_experiment", self.experiment)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty name, got {value!r}.")
        if not isinstance(self.run_filter, str):
            raise ValueError(f"serving_run_filter must be a search_runs filter, got {self.run_filter!r}.")
        try:
            self.run_filter.format(model_name="m", version="1")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"serving_run_filter {self.run_filter!r} may use only {{model_name}} and {{version}} "
                f"as placeholders ({type(err).__name__}: {err})."
            ) from None

    def filter_for(self, model_name: str, version: str) -> str:
        return self.run_filter.format(model_name=_quote(model_name), version=_quote(version))

    @cached_property
    def hook(self) -> MlflowHook:
        return MlflowHook(self.mlflow_conn_id)

    def read(self, model_name: str, version: str) -> float | None:
        client = self.hook.client
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return None  # serving has not logged anything yet
        runs = client.search_runs(
            [experiment.experiment_id],
            self.filter_for(model_name, version),
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
        for run in runs:
            if self.key in run.data.metrics:
                return as_value(run.data.metrics[self.key], f"metric {self.key!r}")
        return None

    def describe(self) -> str:
        return f"metric {self.key!r} in MLflow experiment {self.experiment!r} ({self.run_filter})"


@dataclass(frozen=True)
class SqlMetric:
    """
    The first column of the first row of ``sql`` through connection ``conn_id`` (a ``DbApiHook``).

    The query gets ``{"model_name": ..., "version": ...}`` as parameters, in the driver's style:
    ``%(version)s`` for PostgreSQL and MySQL, ``:version`` for SQLite and Oracle.
    """

    sql: str
    conn_id: str
    kind: SourceKind = field(default="sql", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.sql, str) or not self.sql.strip():
            raise ValueError(f"sql must be a query, got {self.sql!r}.")
        if not isinstance(self.conn_id, str) or not self.conn_id:
            raise ValueError(f"sql needs sql_conn_id, the Airflow connection to query; got {self.conn_id!r}.")

    def read(self, model_name: str, version: str) -> float | None:
        from airflow.sdk import BaseHook

        hook = BaseHook.get_connection(self.conn_id).get_hook()
        if not callable(getattr(hook, "get_first", None)):
            raise TypeError(
                f"Connection {self.conn_id!r} gives a {type(hook).__name__}, not a SQL hook (DbApiHook); "
                "the sql metric source needs a database connection."
            )
        row = hook.get_first(self.sql, parameters={"model_name": model_name, "version": version})
        if not row:
            return None
        return as_value(row[0], f"the sql query on {self.conn_id!r}")

    def describe(self) -> str:
        return f"sql on connection {self.conn_id!r}"


def source_to_dict(source: MetricSource) -> dict[str, Any]:
    """``source`` as JSON, its ``kind`` included (:func:`source_from_dict` reads it back)."""
    return {"kind": source.kind, **{f.name: getattr(source, f.name) for f in fields(source) if f.init}}  # type: ignore[arg-type]


def source_from_dict(data: dict[str, Any]) -> MetricSource:
    """The source a :meth:`GuardSpec.to_dict` holds (JSON, for the trigger)."""
    kwargs = {k: v for k, v in data.items() if k != "kind"}
    kinds: dict[str, Any] = {"callable": CallableMetric, "mlflow": ServingRunMetric, "sql": SqlMetric}
    if data.get("kind") not in kinds:
        raise ValueError(f"Unknown metric source {data.get('kind')!r}; one of {', '.join(kinds)}.")
    return kinds[data["kind"]](**kwargs)


def breaches(value: float, lower_bound: float | None, upper_bound: float | None) -> bool:
    """Whether ``value`` is out of bounds: below ``lower_bound`` or above ``upper_bound``."""
    return (lower_bound is not None and value < lower_bound) or (
        upper_bound is not None and value > upper_bound
    )


def describe_bounds(lower_bound: float | None, upper_bound: float | None) -> str:
    """``"< 0.6 (lower_bound)"``: what counts as a breach."""
    parts = []
    if lower_bound is not None:
        parts.append(f"< {lower_bound:g} (lower_bound)")
    if upper_bound is not None:
        parts.append(f"> {upper_bound:g} (upper_bound)")
    return " or ".join(parts)


@dataclass(frozen=True)
class GuardSpec:
    """What one guard watches; JSON-able (:meth:`to_dict`), so that the trigger can carry it."""

    model_name: str
    version: str
    metric: str
    source: dict[str, Any]  # the source's fields and its "kind"
    lower_bound: float | None = None
    upper_bound: float | None = None
    consecutive_breaches: int = 3
    alias: str = "champion"
    mlflow_conn_id: str = MlflowHook.default_conn_name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GuardSpec:
        return cls(**data)

    def metric_source(self) -> MetricSource:
        return source_from_dict(self.source)


@dataclass
class ChampionWatch:
    """
    The state of one guard: checks made, their values, the current run of consecutive breaches.

    A check without a value (no data yet) breaks a run of breaches: only N checks in a row that
    each saw a value out of bounds count.
    """

    spec: GuardSpec
    checks: int = 0
    values: list[float | None] = field(default_factory=list)
    streak: list[float] = field(default_factory=list)
    _source: MetricSource | None = field(default=None, repr=False)
    _hook: MlflowHook | None = field(default=None, repr=False)

    def source(self) -> MetricSource:
        if self._source is None:
            self._source = self.spec.metric_source()
        return self._source

    def hook(self) -> MlflowHook:
        if self._hook is None:
            self._hook = MlflowHook(self.spec.mlflow_conn_id)
        return self._hook

    def check(self) -> dict[str, Any] | None:
        """One check (blocking): the event that ends the watch, or None to go on."""
        spec = self.spec
        current = self.hook().get_alias_version(spec.model_name, spec.alias)
        current_version = None if current is None else str(current.version)
        if current_version != spec.version:
            return self.event(MOVED, current_version=current_version)
        value = self.source().read(spec.model_name, spec.version)
        self.checks += 1
        self.values = [*self.values, value][-MAX_VALUES:]
        if value is not None and breaches(value, spec.lower_bound, spec.upper_bound):
            self.streak.append(value)
        else:
            self.streak = []
        if len(self.streak) >= spec.consecutive_breaches:
            return self.event(BREACHED, current_version=current_version)
        return None

    def last_check(self) -> str:
        """One line on the latest check, for the log."""
        value = self.values[-1] if self.values else None
        return (
            f"Check {self.checks}: {self.spec.metric} = {'no value' if value is None else f'{value:.4g}'} "
            f"({len(self.streak)} in a row out of bounds, {self.spec.consecutive_breaches} roll back)."
        )

    def finish(self) -> dict[str, Any]:
        """The event at the end of the window."""
        seen = any(v is not None for v in self.values)
        return self.event(HEALTHY if seen else NO_DATA, current_version=self.spec.version)

    def error(self, message: str) -> dict[str, Any]:
        return self.event(ERROR, current_version=None, message=message)

    def event(self, status: str, *, current_version: str | None, message: str = "") -> dict[str, Any]:
        return {
            "status": status,
            "model_name": self.spec.model_name,
            "alias": self.spec.alias,
            "version": self.spec.version,
            "metric": self.spec.metric,
            "current_version": current_version,
            "checks": self.checks,
            "values": list(self.values),
            "breach_values": list(self.streak),
            "message": message,
            "guard": self.spec.to_dict(),  # what was watched: the event is all the worker needs
        }


def reason(event: dict[str, Any], spec: GuardSpec, check_interval: float) -> str:
    """Why a guard rolls back, in one line: the metric, its values, the bound, the version."""
    values = ", ".join(f"{v:.4g}" for v in event.get("breach_values") or [])
    return (
        f"{spec.metric} of {spec.model_name} v{spec.version} was {values} in "
        f"{len(event.get('breach_values') or [])} consecutive checks (every {check_interval:g} s), "
        f"out of bounds: {describe_bounds(spec.lower_bound, spec.upper_bound)}"
    )


def run_watch(
    watch: ChampionWatch,
    end_at: float,
    check_interval: float,
    log: Callable[[str], None] = lambda line: None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Check every ``check_interval`` seconds until a verdict or ``end_at`` (epoch seconds)."""
    while True:
        event = watch.check()
        if event is not None:
            return event
        log(watch.last_check())
        remaining = end_at - time.time()
        if remaining <= 0:
            return watch.finish()
        sleep(min(check_interval, remaining))
