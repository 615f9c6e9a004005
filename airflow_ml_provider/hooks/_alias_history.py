"""
The history of a registered model's alias: which version held ``champion`` when, and why.

MLflow keeps only where an alias points now (mlflow/mlflow#2169). The provider already moves an
alias through *epochs* (see :mod:`airflow_ml_provider.hooks._registry`): the mover of epoch n
claims "epoch n of <model>/<alias>" (an MLflow experiment, unique by name and created with its tags
in one transaction). The history rides on those claims, so it is as durable as the tracking store
and needs no other storage:

- the epoch's claim carries the move's record (from, to, when, kind, reason, the DAG run and task,
  the dataset version, the evaluation run), written in the same create as the claim itself;
- a second claim, "epoch n outcome", says ``done`` once the alias has moved, or ``released`` when
  the mover found the alias moved by hand and gave the epoch up.

A record is in the history only when its outcome is ``done``, or when it is the newest epoch's and
the alias already points where it says (the mover has not written its outcome yet; the reader
writes it on its behalf: the move did happen). So the history never claims a move that did not
happen. A move made outside the provider (by hand in the MLflow UI) is recorded as ``manual``, from
the last recorded holder to the one found, the first time the history is read or the alias moved:
it claims the current epoch like any other move, so it cannot be recorded twice nor slip between a
promotion's claim and its move.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.vocabulary import (
    HISTORY_OUTCOME_DONE,
    MOVE_MANUAL,
    MOVE_PROMOTION,
    TAG_CLAIM_VALUE,
    TAG_HISTORY_ENTRY,
    TAG_HISTORY_EPOCH,
    TAG_HISTORY_KEY,
    TAG_HISTORY_OUTCOME,
)

if TYPE_CHECKING:
    from mlflow.entities import Experiment

log = logging.getLogger(__name__)

MAX_ENTRY_CHARS = 4500  # MLflow experiment tag values hold 5000 characters
MAX_MANUAL_ATTEMPTS = 3


@dataclass(frozen=True)
class MoveRecord:
    """What a caller of ``move_alias`` says about its move, for the alias history."""

    kind: str = MOVE_PROMOTION  # "promotion" | "rollback" | "manual"
    reason: str = ""
    dag_id: str | None = None
    run_id: str | None = None  # the Airflow DAG run
    task_id: str | None = None
    dataset_version: str | None = None
    evaluation_run_id: str | None = None  # the MLflow run of the evaluation that blessed it


@dataclass(frozen=True)
class AliasHistoryEntry:
    """One move of an alias, as :meth:`AliasHistoryMixin.alias_history` returns it."""

    model_name: str
    alias: str
    epoch: int
    from_version: str | None
    to_version: str | None  # None: the alias was removed (by hand)
    at: datetime  # UTC; when the move was claimed (a manual move: when it was first seen)
    kind: str
    reason: str
    actor: str  # who moved it: a task instance's key, rollback/<id>, observed/<id>
    dag_id: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    dataset_version: str | None = None
    evaluation_run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able (``at`` in ISO 8601)."""
        data = asdict(self)
        data["at"] = self.at.isoformat(timespec="seconds")
        return data


def history_key(model_name: str, alias: str) -> str:
    """The tag value the history's claims are found by (names may hold any character)."""
    return hashlib.sha256(f"{model_name}\0{alias}".encode()).hexdigest()[:40]


def epoch_claim_key(model_name: str, alias: str, epoch: int) -> str:
    return f"registry/{model_name}/{alias}/epoch/{epoch}"


def outcome_claim_key(model_name: str, alias: str, epoch: int) -> str:
    return f"{epoch_claim_key(model_name, alias, epoch)}/outcome"


def record_tags(
    model_name: str,
    alias: str,
    epoch: int,
    *,
    from_version: str | None,
    to_version: str | None,
    record: MoveRecord,
) -> dict[str, str]:
    """The tags an epoch's claim is created with: the move's record."""
    entry: dict[str, Any] = {
        "from": from_version,
        "to": to_version,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: v for k, v in asdict(record).items() if v not in (None, "")},
    }
    text = json.dumps(entry, sort_keys=True)
    if len(text) > MAX_ENTRY_CHARS:  # only the reason is free text: shorten it
        over = len(text) - MAX_ENTRY_CHARS + 20
        entry["reason"] = entry.get("reason", "")[: max(0, len(entry.get("reason", "")) - over)] + " [...]"
        text = json.dumps(entry, sort_keys=True)
    return {
        TAG_HISTORY_KEY: history_key(model_name, alias),
        TAG_HISTORY_EPOCH: str(epoch),
        TAG_HISTORY_ENTRY: text,
    }


class AliasHistoryMixin:
    """Reads and completes the alias history; mixed into MlflowHook with the registry mixin."""

    client: Any

    if TYPE_CHECKING:  # provided by MlflowHook and ModelRegistryMixin

        def claim(
            self, key: str, value: str, *, description: str = "", tags: Mapping[str, str] | None = None
        ) -> str: ...

        def alias_epoch(self, model_name: str, alias: str) -> int: ...

        def _alias_version_str(self, model_name: str, alias: str) -> str | None: ...

        def _set_epoch(self, model_name: str, alias: str, epoch: int) -> None: ...

    def alias_history(self, model_name: str, alias: str = "champion") -> list[AliasHistoryEntry]:
        """
        Every move of ``alias`` of ``model_name``, oldest first.

        Promotions and rollbacks made through the provider are recorded with their DAG run, task,
        dataset version, evaluation run and reason. A move made by hand is recorded as ``manual``
        the first time it is seen (here, or when the provider next moves the alias); reading the
        history may therefore write that record. Moves made before the provider kept a history
        show up as one ``manual`` entry to the version holding the alias when it was first read.

        :param model_name: the registered model.
        :param alias: the alias (default ``champion``).
        """
        entries, _ = self._settled_history(model_name, alias)
        return entries

    def record_manual_move(self, model_name: str, alias: str) -> AliasHistoryEntry | None:
        """
        Record a move of ``alias`` made outside the provider, if the alias is not where the history
        last put it; return the new entry (None when there was nothing to record).
        """
        for _ in range(MAX_MANUAL_ATTEMPTS):
            # The epoch first, then the history and the alias: a move claimed after this read holds
            # this epoch, so the claim below loses to it instead of recording its move as manual.
            epoch = self.alias_epoch(model_name, alias)
            entries, current = self._settled_history(model_name, alias, record_manual=False)
            last = entries[-1].to_version if entries else None
            if current == last:
                return None
            owner = f"observed/{uuid.uuid4().hex}"
            was = "not set" if last is None else f"version {last}"
            reason = (
                f"{alias} was found on version {current}, moved outside airflow-ml-provider (the "
                f"history had it on {was})."
                if entries
                else f"{alias} was already on version {current} when its history was first read."
            )
            if current is None:
                reason = f"{alias} was removed outside airflow-ml-provider (the history had it on {was})."
            tags = record_tags(
                model_name,
                alias,
                epoch,
                from_version=last,
                to_version=current,
                record=MoveRecord(kind=MOVE_MANUAL, reason=reason),
            )
            key = epoch_claim_key(model_name, alias, epoch)
            if self.claim(key, owner, description=reason, tags=tags) != owner:
                continue  # another move holds this epoch: look again
            if self._alias_version_str(model_name, alias) != current:
                # Moved again (by hand) while recording: this record did happen too, keep it.
                log.info("%s of %s moved again while its manual move was recorded", alias, model_name)
            self.finish_epoch(model_name, alias, epoch, HISTORY_OUTCOME_DONE)
            self._set_epoch(model_name, alias, epoch + 1)
            log.info("Recorded a manual move of %s of %s: %s -> %s", alias, model_name, last, current)
            return self._entry(model_name, alias, epoch, owner, tags[TAG_HISTORY_ENTRY])
        log.warning(
            "Could not record the manual move of %s of %s: other moves kept claiming its epoch; "
            "the next read of its history will.",
            alias,
            model_name,
        )
        return None

    def finish_epoch(self, model_name: str, alias: str, epoch: int, outcome: str) -> str:
        """Say what came of epoch ``epoch`` (done / released); the first word stands. Returns it."""
        return self.claim(
            outcome_claim_key(model_name, alias, epoch),
            outcome,
            tags={
                TAG_HISTORY_KEY: history_key(model_name, alias),
                TAG_HISTORY_EPOCH: str(epoch),
                TAG_HISTORY_OUTCOME: outcome,
            },
        )

    # -- reading --------------------------------------------------------------------------------

    def _settled_history(
        self, model_name: str, alias: str, *, record_manual: bool = True
    ) -> tuple[list[AliasHistoryEntry], str | None]:
        """The history and the alias's current version, with a finished-but-unsaid move settled."""
        records, outcomes = self._history_claims(model_name, alias)
        current = self._alias_version_str(model_name, alias)
        entries: list[AliasHistoryEntry] = []
        newest = max(records, default=-1)
        for epoch in sorted(records):
            owner, text = records[epoch]
            outcome = outcomes.get(epoch)
            entry = self._entry(model_name, alias, epoch, owner, text)
            if outcome is None and epoch == newest and current is not None and entry.to_version == current:
                # The mover moved the alias and has not said so yet: the move happened.
                outcome = self.finish_epoch(model_name, alias, epoch, HISTORY_OUTCOME_DONE)
            if outcome == HISTORY_OUTCOME_DONE:
                entries.append(entry)
        last = entries[-1].to_version if entries else None
        if record_manual and current != last and not self._in_flight(records, outcomes, newest, last):
            manual = self.record_manual_move(model_name, alias)
            if manual is not None:
                return self._settled_history(model_name, alias, record_manual=False)
        return entries, current

    @staticmethod
    def _in_flight(
        records: Mapping[int, tuple[str, str]], outcomes: Mapping[int, str], newest: int, last: str | None
    ) -> bool:
        """Whether the newest epoch is claimed, unsettled, and moves from ``last`` (still moving)."""
        if newest < 0 or newest in outcomes:
            return False
        return json.loads(records[newest][1]).get("from") == last

    def _history_claims(
        self, model_name: str, alias: str
    ) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
        """The records (epoch -> (owner, entry JSON)) and outcomes (epoch -> outcome) on record."""
        from mlflow.entities import ViewType

        records: dict[int, tuple[str, str]] = {}
        outcomes: dict[int, str] = {}
        token = None
        while True:
            page = self.client.search_experiments(
                view_type=ViewType.ALL,
                filter_string=f"tags.`{TAG_HISTORY_KEY}` = '{history_key(model_name, alias)}'",
                max_results=1000,
                page_token=token,
            )
            for experiment in page:
                self._collect(experiment, records, outcomes)
            token = page.token
            if not token:
                return records, outcomes

    @staticmethod
    def _collect(
        experiment: Experiment,
        records: dict[int, tuple[str, str]],
        outcomes: dict[int, str],
    ) -> None:
        tags = experiment.tags or {}
        try:
            epoch = int(tags.get(TAG_HISTORY_EPOCH, ""))
        except ValueError:
            return
        if TAG_HISTORY_OUTCOME in tags:
            outcomes[epoch] = tags[TAG_HISTORY_OUTCOME]
        elif TAG_HISTORY_ENTRY in tags:
            records[epoch] = (tags.get(TAG_CLAIM_VALUE, ""), tags[TAG_HISTORY_ENTRY])

    @staticmethod
    def _entry(model_name: str, alias: str, epoch: int, owner: str, text: str) -> AliasHistoryEntry:
        data = json.loads(text)
        return AliasHistoryEntry(
            model_name=model_name,
            alias=alias,
            epoch=epoch,
            from_version=data.get("from"),
            to_version=data.get("to"),
            at=datetime.fromisoformat(data["at"]),
            kind=data.get("kind", MOVE_PROMOTION),
            reason=data.get("reason", ""),
            actor=owner,
            dag_id=data.get("dag_id"),
            run_id=data.get("run_id"),
            task_id=data.get("task_id"),
            dataset_version=data.get("dataset_version"),
            evaluation_run_id=data.get("evaluation_run_id"),
        )


__all__ = [
    "AliasHistoryEntry",
    "AliasHistoryMixin",
    "MoveRecord",
]
