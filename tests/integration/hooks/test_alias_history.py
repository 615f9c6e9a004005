"""
The alias history (MlflowHook.alias_history) against a real mlflow server.

The session's server, whose store is a PostgreSQL database when ML_PROVIDER_TEST_DATABASE_URL is
set (as in CI): the race test needs the store a cluster runs. The restart test stops and starts
that server (on the same port and store), as an upgrade or a crash would.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from support.harness import MlflowServer

from airflow_ml_provider.exceptions import PromotionRefused
from airflow_ml_provider.hooks._alias_history import MoveRecord, epoch_claim_key, record_tags
from airflow_ml_provider.hooks.mlflow import MlflowHook

pytestmark = pytest.mark.integration


@pytest.fixture
def hook(mlflow_conn: MlflowServer) -> MlflowHook:
    return MlflowHook()


@pytest.fixture
def model_name() -> str:
    return f"history_{uuid.uuid4().hex[:8]}"


def _versions(hook: MlflowHook, name: str, count: int) -> list[str]:
    return [
        str(hook.register_version(name, f"s3://bucket/{name}/{i}", registration_key=f"k{i}")[0].version)
        for i in range(count)
    ]


def _champion(hook: MlflowHook, name: str) -> str | None:
    version = hook.get_alias_version(name, "champion")
    return None if version is None else str(version.version)


def _moves(hook: MlflowHook, name: str) -> list[tuple[str | None, str | None, str]]:
    return [(e.from_version, e.to_version, e.kind) for e in hook.alias_history(name)]


def test_history_records_promotions_and_rollbacks_with_their_context(hook, model_name):
    v1, v2 = _versions(hook, model_name, 2)
    assert hook.alias_history(model_name) == []
    hook.move_alias(
        model_name,
        v1,
        expected=None,
        owner="ti-1",
        record=MoveRecord(
            reason="first model",
            dag_id="ct",
            run_id="run-1",
            task_id="promote",
            dataset_version="0001",
            evaluation_run_id="eval-run-1",
        ),
    )
    hook.move_alias(model_name, v2, expected=v1, owner="ti-2", record=MoveRecord(dataset_version="0002"))
    hook.rollback_alias(
        model_name, expected=v2, owner="guard-1", record=MoveRecord(reason="live auc 0.41 < 0.6")
    )

    history = hook.alias_history(model_name)
    assert [(e.from_version, e.to_version, e.kind, e.actor) for e in history] == [
        (None, v1, "promotion", "ti-1"),
        (v1, v2, "promotion", "ti-2"),
        (v2, v1, "rollback", "guard-1"),
    ]
    first = history[0]
    assert (first.dag_id, first.run_id, first.task_id, first.dataset_version, first.evaluation_run_id) == (
        "ct",
        "run-1",
        "promote",
        "0001",
        "eval-run-1",
    )
    assert history[2].reason == "live auc 0.41 < 0.6"
    assert [e.epoch for e in history] == [0, 1, 2]
    assert history[0].at <= history[1].at <= history[2].at and history[0].at.tzinfo is not None
    assert json.loads(json.dumps(history[2].as_dict()))["to_version"] == v1
    assert "airflow_ml.rolled_back_at" in hook.client.get_model_version(model_name, v2).tags


def test_a_manual_move_is_recorded_once_when_seen(hook, model_name):
    v1, v2, v3 = _versions(hook, model_name, 3)
    hook.move_alias(model_name, v1, expected=None, owner="ti-1")
    hook.client.set_registered_model_alias(model_name, "champion", v3)  # by hand, in the MLflow UI

    history = hook.alias_history(model_name)
    assert [(e.from_version, e.to_version, e.kind) for e in history] == [
        (None, v1, "promotion"),
        (v1, v3, "manual"),
    ]
    assert "outside airflow-ml-provider" in history[1].reason
    assert _moves(hook, model_name) == _moves(hook, model_name)  # read twice, recorded once

    # A promotion evaluated against v3 goes on from the manual move.
    hook.move_alias(model_name, v2, expected=v3, owner="ti-2")
    assert _moves(hook, model_name)[-1] == (v3, v2, "promotion")


def test_a_promotion_finds_the_manual_move_first(hook, model_name):
    v1, v2, v3 = _versions(hook, model_name, 3)
    hook.move_alias(model_name, v1, expected=None, owner="ti-1")
    hook.client.set_registered_model_alias(model_name, "champion", v3)
    with pytest.raises(PromotionRefused, match="now version"):
        hook.move_alias(model_name, v2, expected=v1, owner="ti-2")
    assert _moves(hook, model_name) == [(None, v1, "promotion"), (v1, v3, "manual")]
    assert _champion(hook, model_name) == v3


def test_history_begun_on_a_model_promoted_before_it_had_one(hook, model_name):
    (v1,) = _versions(hook, model_name, 1)
    hook.client.set_registered_model_alias(model_name, "champion", v1)
    hook.client.set_registered_model_tag(model_name, "airflow_ml.alias_epoch.champion", "4")
    history = hook.alias_history(model_name)
    assert [(e.from_version, e.to_version, e.kind, e.epoch) for e in history] == [(None, v1, "manual", 4)]
    assert "already on version" in history[0].reason


def test_history_never_claims_a_move_that_did_not_happen(hook, model_name):
    v1, v2, v3 = _versions(hook, model_name, 3)
    hook.move_alias(model_name, v1, expected=None, owner="ti-1")

    # A promotion that claimed epoch 1 and crashed before moving: not in the history.
    tags = record_tags(model_name, "champion", 1, from_version=v1, to_version=v2, record=MoveRecord())
    assert hook.claim(epoch_claim_key(model_name, "champion", 1), "ti-2", tags=tags) == "ti-2"
    assert _moves(hook, model_name) == [(None, v1, "promotion")]
    with pytest.raises(PromotionRefused, match="another promotion"):
        hook.move_alias(model_name, v3, expected=v1, owner="ti-3")

    # Its retry moves the alias and crashes before saying so: the move happened, the history has it.
    hook.client.set_registered_model_alias(model_name, "champion", v2)
    assert _moves(hook, model_name) == [(None, v1, "promotion"), (v1, v2, "promotion")]
    again = hook.move_alias(model_name, v2, expected=v1, owner="ti-2")  # the retry finishes the epoch
    assert again.already_done and hook.alias_epoch(model_name, "champion") == 2
    hook.move_alias(model_name, v3, expected=v2, owner="ti-3")
    assert _moves(hook, model_name) == [(None, v1, "promotion"), (v1, v2, "promotion"), (v2, v3, "promotion")]


def test_a_guarded_rollback_never_undoes_a_newer_promotion(hook, model_name):
    v1, v2, v3 = _versions(hook, model_name, 3)
    hook.move_alias(model_name, v1, expected=None, owner="ti-1")
    hook.move_alias(model_name, v2, expected=v1, owner="ti-2")
    hook.move_alias(model_name, v3, expected=v2, owner="ti-3")
    with pytest.raises(PromotionRefused, match="now version 3"):
        hook.rollback_alias(model_name, expected=v2, owner="guard-of-v2")
    assert _champion(hook, model_name) == v3
    assert "airflow_ml.rolled_back_at" not in hook.client.get_model_version(model_name, v2).tags

    # The guard of v3 rolls back; its retry finds its own rollback done and moves nothing more.
    first = hook.rollback_alias(model_name, expected=v3, owner="guard-of-v3")
    retry = hook.rollback_alias(model_name, expected=v3, owner="guard-of-v3")
    assert (first.already_done, retry.already_done) == (False, True)
    assert _champion(hook, model_name) == v2
    assert _moves(hook, model_name)[-1] == (v3, v2, "rollback")
    assert len(hook.alias_history(model_name)) == 4
    with pytest.raises(PromotionRefused):  # another guard of v3 does not roll back twice
        hook.rollback_alias(model_name, expected=v3, owner="guard-of-v3-other")


def _race(model_name: str, champion: str | None, candidates: list[str], guard: str) -> dict[str, str]:
    """Promote every candidate and roll back, all at once from ``champion``; who won, who was refused."""
    barrier = threading.Barrier(len(candidates) + 1)
    outcomes: dict[str, str] = {}

    def move(name: str, action: Callable[[MlflowHook], object]) -> None:
        own = MlflowHook()  # its own client, as in another worker
        barrier.wait(timeout=30)
        try:
            action(own)
            outcomes[name] = "won"
        except PromotionRefused:
            outcomes[name] = "refused"

    threads = [
        threading.Thread(
            target=move,
            args=(v, lambda own, v=v: own.move_alias(model_name, v, expected=champion, owner=f"ti-{v}")),
        )
        for v in candidates
    ]
    threads.append(
        threading.Thread(
            target=move,
            args=("rollback", lambda own: own.rollback_alias(model_name, expected=champion, owner=guard)),
        )
    )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def test_concurrent_promotions_and_a_rollback_leave_a_history_that_matches_the_moves(hook, model_name):
    contenders, rounds = 4, 3
    versions = _versions(hook, model_name, 2 + rounds * contenders)
    hook.move_alias(model_name, versions[0], expected=None, owner="seed-0")
    hook.move_alias(model_name, versions[1], expected=versions[0], owner="seed-1")
    successful = 2
    spare = iter(versions[2:])
    for round_ in range(rounds):
        candidates = [next(spare) for _ in range(contenders)]
        outcomes = _race(model_name, _champion(hook, model_name), candidates, f"guard-{round_}")
        assert len(outcomes) == contenders + 1, outcomes
        assert list(outcomes.values()).count("won") == 1, outcomes
        successful += 1

    history = hook.alias_history(model_name)
    assert len(history) == successful
    assert [e.epoch for e in history] == list(range(successful))
    for before, after in zip(history, history[1:], strict=False):
        assert after.from_version == before.to_version, history
    assert history[-1].to_version == _champion(hook, model_name)
    assert hook.alias_epoch(model_name, "champion") == successful
    assert all(e.kind in ("promotion", "rollback") for e in history)


def test_history_survives_a_restart_of_the_mlflow_server(hook, model_name, mlflow_conn):
    v1, v2 = _versions(hook, model_name, 2)
    hook.move_alias(model_name, v1, expected=None, owner="ti-1", record=MoveRecord(reason="first"))
    hook.move_alias(model_name, v2, expected=v1, owner="ti-2")
    before = [e.as_dict() for e in hook.alias_history(model_name)]
    mlflow_conn.stop()
    mlflow_conn.start()
    assert [e.as_dict() for e in MlflowHook().alias_history(model_name)] == before
    assert len(before) == 2 and before[0]["reason"] == "first"


def test_history_is_kept_per_alias_and_model(hook, model_name, tmp_path: Path):
    v1, v2 = _versions(hook, model_name, 2)
    hook.move_alias(model_name, v1, expected=None, owner="a", alias="champion")
    hook.move_alias(model_name, v2, expected=None, owner="b", alias="challenger", previous_alias=None)
    assert _moves(hook, model_name) == [(None, v1, "promotion")]
    assert [(e.to_version, e.alias) for e in hook.alias_history(model_name, "challenger")] == [
        (v2, "challenger")
    ]
    assert hook.alias_history(f"{model_name}_other") == []
