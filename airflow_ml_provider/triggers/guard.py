"""Watch a live metric of a new champion in the triggerer, for ``ChampionGuardOperator``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent
from asgiref.sync import sync_to_async

from airflow_ml_provider.hooks.live_metric import ChampionWatch, GuardSpec
from airflow_ml_provider.triggers.model_alias import describe_error


class ChampionGuardTrigger(BaseTrigger):
    """
    Check a model version's live metric every ``check_interval`` seconds until a verdict.

    Each check (in a worker thread) looks the alias up, then reads the metric; the judging is
    :class:`~airflow_ml_provider.hooks.live_metric.ChampionWatch`'s, as in the operator's
    non-deferrable mode. Yields one event and ends: ``status`` is ``breached`` (N consecutive
    values out of bounds), ``moved`` (the alias left the guarded version), ``healthy`` or
    ``no_data`` (the window ended at ``end_at``), or ``error`` (a check raised: the message says
    which). The event also carries the checks made and their values. It decides nothing else:
    the rollback happens in the worker, in the operator's ``execute_complete``.

    A restarted triggerer starts the trigger again from its arguments: the window still ends at
    ``end_at``, the count of consecutive breaches starts from zero.

    :param guard: what to watch, :meth:`GuardSpec.to_dict` (JSON).
    :param check_interval: seconds between checks.
    :param end_at: the end of the window, in seconds since the epoch.
    """

    def __init__(self, guard: dict[str, Any], check_interval: float, end_at: float) -> None:
        super().__init__()
        self.guard = guard
        self.check_interval = check_interval
        self.end_at = end_at

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"guard": dict(self.guard), "check_interval": self.check_interval, "end_at": self.end_at},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            watch = ChampionWatch(GuardSpec.from_dict(self.guard))
        except Exception as err:
            yield TriggerEvent({"status": "error", "message": describe_error(err)})
            return
        spec = watch.spec
        # thread_sensitive=False: a check hanging on a dead server must not hold up the shared
        # thread other triggers' sync_to_async calls use.
        check = sync_to_async(watch.check, thread_sensitive=False)
        self.log.info(
            "Guarding %s v%s (%s): %s every %g s until %s.",
            spec.model_name,
            spec.version,
            spec.alias,
            spec.metric,
            float(self.check_interval),
            time.strftime("%H:%M:%S", time.localtime(float(self.end_at))),
        )
        while True:
            try:
                event = await check()
            except Exception as err:
                yield TriggerEvent(watch.error(describe_error(err)))
                return
            if event is not None:
                yield TriggerEvent(event)
                return
            self.log.info("%s", watch.last_check())
            remaining = float(self.end_at) - time.time()
            if remaining <= 0:
                yield TriggerEvent(watch.finish())
                return
            await asyncio.sleep(min(float(self.check_interval), remaining))
