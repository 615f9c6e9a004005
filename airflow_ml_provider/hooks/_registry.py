"""
The model registry side of :class:`~airflow_ml_provider.hooks.mlflow.MlflowHook`.

MLflow has no transactions, so moving an alias ("champion") cannot be a compare-and-set on its
own: two promotions evaluated against the same champion would both move it, and the last writer
wins even when it is the worse model (mlflow/mlflow#3016). Every alias move here goes through an
*epoch*: the registered model carries a tag ``airflow_ml.alias_epoch.<alias>`` = n, and whoever
wants to move the alias claims "epoch n of <model>/<alias>" with :meth:`MlflowHook.claim` (an
MLflow experiment name, unique in the store). Exactly one claimant wins an epoch; it checks the
alias still points where its evaluation says, moves it, and sets the epoch to n + 1. A retry of
the winner finds its own claim and finishes the move; every other claimant is refused and told to
re-evaluate against the new champion.

Each move's record (from, to, when, why, by which DAG run) rides on its epoch's claim: the alias
history, in :mod:`airflow_ml_provider.hooks._alias_history`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timezone
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.exceptions import PromotionRefused
from airflow_ml_provider.hooks._alias_history import (
    AliasHistoryEntry,
    AliasHistoryMixin,
    MoveRecord,
    epoch_claim_key,
    record_tags,
)
from airflow_ml_provider.vocabulary import (
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS_CHAMPION,
    HISTORY_OUTCOME_DONE,
    HISTORY_OUTCOME_RELEASED,
    MOVE_ROLLBACK,
    TAG_ALIAS_EPOCH_PREFIX,
    TAG_CANDIDATE_MODEL_URI,
    TAG_REGISTRATION_KEY,
    TAG_REPLACED_VERSION,
    TAG_ROLLED_BACK_AT,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

__all__ = ["AliasHistoryEntry", "AliasMove", "ModelRegistryMixin", "MoveRecord"]

_UNSET: Any = object()

TAG_EPOCH_PREFIX = TAG_ALIAS_EPOCH_PREFIX  # its earlier name, which the tests import


@dataclass(frozen=True)
class AliasMove:
    """What :meth:`ModelRegistryMixin.move_alias` did."""

    model_name: str
    alias: str
    version: str
    previous_version: str | None
    epoch: int
    already_done: bool = False  # a retry found the alias already moved by this owner


class ModelRegistryMixin(AliasHistoryMixin):
    """Registration and race-safe alias moves; mixed into MlflowHook (needs ``client``, ``claim``)."""

    client: Any

    if TYPE_CHECKING:  # provided by MlflowHook

        def read_claim(self, key: str) -> str | None: ...

        def get_alias_version(self, model_name: str, alias: str) -> ModelVersion | None: ...

    # -- what an evaluation compares with ------------------------------------------------------

    def alias_baseline(self, model_name: str, alias: str) -> dict[str, Any] | None:
        """
        The version holding ``alias`` as an evaluation's baseline (name, alias, version, URI,
        source, run id), or None when the alias is not set (the first model).
        """
        version = self.get_alias_version(model_name, alias)
        if version is None:
            return None
        return {
            "model_name": model_name,
            "alias": alias,
            "version": str(version.version),
            "model_uri": f"models:/{model_name}/{version.version}",
            "source": version.source,
            "run_id": version.run_id,
        }

    def version_replaced_by(self, model_name: str, version: str, candidate_model_uri: str) -> str | None:
        """
        When ``version`` was registered from ``candidate_model_uri`` (a re-run on the same data that
        made the same model): the version it replaced under its alias (``"none"`` for the first);
        else None.
        """
        try:
            found = self.client.get_model_version(model_name, version)
        except Exception:
            return None
        tags = found.tags or {}
        # MLflow may store a logged model's artifact location as the source; the tag keeps the URI.
        if candidate_model_uri not in (found.source, tags.get(TAG_CANDIDATE_MODEL_URI)):
            return None
        return tags.get(TAG_REPLACED_VERSION)

    def training_run_id(self, model_uri: str) -> str | None:
        """The run that logged a model (an MLflow 3 logged model knows it), for lineage; None if unknown."""
        try:
            if model_uri.startswith("models:/m-"):
                return str(self.client.get_logged_model(model_uri[len("models:/") :]).source_run_id)
            if model_uri.startswith("runs:/"):
                return model_uri[len("runs:/") :].split("/", 1)[0]
        except Exception:
            log.warning("Could not find the run that logged %s", model_uri, exc_info=True)
        return None

    # -- registration ---------------------------------------------------------------------------

    def ensure_registered_model(self, model_name: str, *, description: str | None = None) -> None:
        """Create the registered model ``model_name`` unless it exists (race-safe)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(model_name, description=description)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def find_version_by_key(self, model_name: str, registration_key: str) -> ModelVersion | None:
        """The version of ``model_name`` registered with ``registration_key``, if any."""
        quoted = registration_key.replace("'", "\\'")
        name = model_name.replace("'", "\\'")
        found = self.client.search_model_versions(
            filter_string=f"name = '{name}' and tags.`{TAG_REGISTRATION_KEY}` = '{quoted}'",
            max_results=10,
        )
        versions = sorted(found, key=lambda v: int(v.version))
        return versions[0] if versions else None

    def register_version(
        self,
        model_name: str,
        model_uri: str,
        *,
        registration_key: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        description: str | None = None,
    ) -> tuple[ModelVersion, bool]:
        """
        Register ``model_uri`` as a version of ``model_name``, once per ``registration_key``.

        A retry (same key) gets the version the first try made instead of a second one. Returns
        the version and whether it was created now.

        :param model_name: the registered model (created when missing).
        :param model_uri: ``models:/m-<id>`` (an MLflow 3 logged model), ``runs:/...`` or a path.
        :param registration_key: identifies the registering task instance.
        :param run_id: the run that produced the model (lineage).
        """
        existing = self.find_version_by_key(model_name, registration_key)
        if existing is not None:
            return existing, False
        self.ensure_registered_model(model_name)
        model_id = model_uri[len("models:/") :] if model_uri.startswith("models:/m-") else None
        version = self.client.create_model_version(
            model_name,
            source=model_uri,
            run_id=run_id,
            tags={**(tags or {}), TAG_REGISTRATION_KEY: registration_key},
            description=description,
            model_id=model_id,
        )
        return version, True

    # -- aliases ----------------------------------------------------------------------------------

    def alias_epoch(self, model_name: str, alias: str) -> int:
        """How many protected moves ``alias`` of ``model_name`` has had (0 when none)."""
        model = self.client.get_registered_model(model_name)
        raw = (model.tags or {}).get(TAG_ALIAS_EPOCH_PREFIX + alias, "0")
        try:
            return int(raw)
        except ValueError:
            raise PromotionRefused(
                f"Registered model {model_name!r} has tag {TAG_ALIAS_EPOCH_PREFIX + alias}={raw!r}, which "
                "is not an integer; it is written by airflow-ml-provider only. Set it back to the "
                "last integer value."
            ) from None

    def _alias_version_str(self, model_name: str, alias: str) -> str | None:
        version = self.get_alias_version(model_name, alias)
        return None if version is None else str(version.version)

    def move_alias(
        self,
        model_name: str,
        version: str,
        *,
        expected: str | None,
        owner: str,
        alias: str = ALIAS_CHAMPION,
        previous_alias: str | None = ALIAS_PREVIOUS_CHAMPION,
        record: MoveRecord | None = None,
    ) -> AliasMove:
        """
        Point ``alias`` at ``version`` only if it still points at ``expected`` (compare-and-set).

        The move is recorded in the alias history (:meth:`alias_history`) with ``record``; a move
        made by hand since the last recorded one is recorded first, as ``manual``.

        :param model_name: the registered model.
        :param version: the version to promote.
        :param expected: the version ``alias`` pointed at when the candidate was evaluated (None:
            the alias was not set).
        :param owner: a stable identity of the caller (the same on a retry).
        :param alias: the alias to move.
        :param previous_alias: alias that keeps the version ``alias`` pointed at before (None: none).
        :param record: what the history says about this move (kind, reason, DAG run, dataset
            version, evaluation run); default: a promotion with no details.
        :raises PromotionRefused: the alias moved since the evaluation, or another promotion
            from the same state won.
        """
        version = str(version)
        self.record_manual_move(model_name, alias)
        epoch = self.alias_epoch(model_name, alias)
        current = self._alias_version_str(model_name, alias)
        claim_key = epoch_claim_key(model_name, alias, epoch)
        if current == version and current != expected:
            # A retry after the alias was moved: finish the epoch if this owner holds its claim.
            if self.read_claim(claim_key) == owner:
                self.finish_epoch(model_name, alias, epoch, HISTORY_OUTCOME_DONE)
                self._set_epoch(model_name, alias, epoch + 1)
            return AliasMove(model_name, alias, version, expected, epoch, already_done=True)
        if current != expected:
            raise alias_changed(model_name, alias, version, expected, current)
        tags = record_tags(
            model_name, alias, epoch, from_version=expected, to_version=version, record=record or MoveRecord()
        )
        winner = self.claim(
            claim_key,
            owner,
            description=f"{alias} of {model_name}: epoch {epoch}, v{expected} -> v{version} by {owner}",
            tags=tags,
        )
        if winner != owner:
            raise PromotionRefused(
                f"Not moving {alias!r} of {model_name!r} to version {version}: another promotion "
                f"({winner}) moved it from version {expected} first. Re-evaluate this candidate "
                f"against the new {alias} and promote again if it is still blessed."
            )
        current = self._alias_version_str(model_name, alias)
        if current != expected and current != version:
            # Changed outside this protocol (by hand) after the first check: release the epoch.
            self.finish_epoch(model_name, alias, epoch, HISTORY_OUTCOME_RELEASED)
            self._set_epoch(model_name, alias, epoch + 1)
            raise alias_changed(model_name, alias, version, expected, current)
        if previous_alias and expected is not None:
            self.client.set_registered_model_alias(model_name, previous_alias, expected)
        self.client.set_registered_model_alias(model_name, alias, version)
        self.finish_epoch(model_name, alias, epoch, HISTORY_OUTCOME_DONE)
        self._set_epoch(model_name, alias, epoch + 1)
        log.info("Moved %s of %s: version %s -> %s (epoch %d)", alias, model_name, expected, version, epoch)
        return AliasMove(model_name, alias, version, expected, epoch)

    def rollback_alias(
        self,
        model_name: str,
        *,
        alias: str = ALIAS_CHAMPION,
        previous_alias: str = ALIAS_PREVIOUS_CHAMPION,
        owner: str | None = None,
        expected: str | None = _UNSET,
        record: MoveRecord | None = None,
    ) -> AliasMove:
        """
        Put ``alias`` back on the version ``previous_alias`` holds (one call, race-safe).

        The demoted version takes ``previous_alias``, so a second rollback undoes the first, and
        is tagged ``airflow_ml.rolled_back_at``. The move is in the alias history as a rollback.

        :param model_name: the registered model.
        :param alias: the alias to roll back (``champion``).
        :param previous_alias: where the previous holder is kept (``previous_champion``).
        :param owner: identity recorded in the claim (default: a fresh id); give a stable one
            (a task instance's key) to make a retried rollback finish the first try's.
        :param expected: roll back only if ``alias`` still points at this version (a guard passes
            the version it watched: a newer promotion is never rolled back). Default: whatever
            ``alias`` points at now.
        :param record: what the history says (reason, DAG run ...); its kind is ``rollback``.
        :raises PromotionRefused: no ``previous_alias`` to go back to, or ``alias`` is not on
            ``expected`` any more.
        """
        import dataclasses
        import uuid
        from datetime import datetime

        previous = self._alias_version_str(model_name, previous_alias)
        current = self._alias_version_str(model_name, alias)
        guarded = current if expected is _UNSET else (None if expected is None else str(expected))
        if previous is None:
            raise PromotionRefused(
                f"Cannot roll back {alias!r} of {model_name!r}: alias {previous_alias!r} is not set "
                "(there was no earlier champion). Set the alias by hand or promote a version."
            )
        target = previous
        if current != guarded:
            if not self._rolled_back_by(model_name, alias, owner, guarded, current):
                raise alias_changed(model_name, alias, f"{previous} (a rollback)", guarded, current)
            target = str(current)  # this owner's earlier try did it: finish, move nothing
        move = self.move_alias(
            model_name,
            target,
            expected=guarded,
            owner=owner or f"rollback/{uuid.uuid4().hex}",
            alias=alias,
            previous_alias=previous_alias,
            record=dataclasses.replace(record or MoveRecord(), kind=MOVE_ROLLBACK),
        )
        if guarded is not None:
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.client.set_model_version_tag(model_name, guarded, TAG_ROLLED_BACK_AT, now)
        return move

    def _rolled_back_by(
        self, model_name: str, alias: str, owner: str | None, guarded: str | None, current: str | None
    ) -> bool:
        """Whether the alias's last move is ``owner``'s rollback of ``guarded`` (a retry's first try)."""
        if not owner or current is None:
            return False
        history = self.alias_history(model_name, alias)
        last = history[-1] if history else None
        return (
            last is not None
            and last.kind == MOVE_ROLLBACK
            and last.actor == owner
            and (last.from_version, last.to_version) == (guarded, current)
        )

    def _set_epoch(self, model_name: str, alias: str, epoch: int) -> None:
        self.client.set_registered_model_tag(model_name, TAG_ALIAS_EPOCH_PREFIX + alias, str(epoch))


def alias_changed(
    model_name: str, alias: str, version: str, expected: str | None, current: str | None
) -> PromotionRefused:
    was = "not set" if expected is None else f"version {expected}"
    now = "not set" if current is None else f"version {current}"
    return PromotionRefused(
        f"Not moving {alias!r} of {model_name!r} to version {version}: the candidate was "
        f"evaluated against {alias} = {was}, but {alias} is now {now}. Moving it would skip "
        f"that comparison (possibly a regression). Re-evaluate the candidate against the "
        f"current {alias} and promote again if it is still blessed."
    )
