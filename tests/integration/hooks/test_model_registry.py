"""Registration and race-safe alias moves of MlflowHook against a real mlflow server."""

from __future__ import annotations

import threading
import uuid

import pytest

from airflow_ml_provider.exceptions import PromotionRefused
from airflow_ml_provider.hooks._alias_history import MoveRecord, record_tags
from airflow_ml_provider.hooks._registry import TAG_EPOCH_PREFIX
from airflow_ml_provider.hooks.mlflow import MlflowHook

pytestmark = pytest.mark.integration


@pytest.fixture
def hook(mlflow_conn) -> MlflowHook:
    return MlflowHook()


@pytest.fixture
def model_name() -> str:
    return f"registry_{uuid.uuid4().hex[:8]}"


def _version(hook: MlflowHook, name: str, key: str) -> str:
    version, _ = hook.register_version(name, f"s3://bucket/models/{key}", registration_key=key)
    return str(version.version)


def _champion(hook: MlflowHook, name: str, alias: str = "champion") -> str | None:
    version = hook.get_alias_version(name, alias)
    return None if version is None else str(version.version)


def test_register_version_is_idempotent_per_key(hook, model_name):
    first, created = hook.register_version(model_name, "s3://bucket/m1", registration_key="ti-1")
    again, created_again = hook.register_version(model_name, "s3://bucket/m1", registration_key="ti-1")
    other, _ = hook.register_version(model_name, "s3://bucket/m1", registration_key="ti-2")
    assert (created, created_again) == (True, False)
    assert again.version == first.version
    assert other.version != first.version
    assert len(hook.client.search_model_versions(f"name = '{model_name}'")) == 2


def test_move_alias_is_a_compare_and_set(hook, model_name):
    v1, v2, v3 = (_version(hook, model_name, k) for k in ("a", "b", "c"))
    hook.move_alias(model_name, v1, expected=None, owner="a")
    move = hook.move_alias(model_name, v2, expected=v1, owner="b")
    assert (move.previous_version, move.epoch) == (v1, 1)
    assert (_champion(hook, model_name), _champion(hook, model_name, "previous_champion")) == (v2, v1)

    # v3 was evaluated against v1, which is no longer the champion: refused, nothing moves.
    with pytest.raises(PromotionRefused, match="evaluated against champion = version 1.*now version 2"):
        hook.move_alias(model_name, v3, expected=v1, owner="c")
    assert _champion(hook, model_name) == v2
    assert hook.alias_epoch(model_name, "champion") == 2


def test_concurrent_moves_from_the_same_champion_have_one_winner(hook, model_name, mlflow_conn):
    base = _version(hook, model_name, "base")
    hook.move_alias(model_name, base, expected=None, owner="base")
    contenders = 6
    versions = [_version(hook, model_name, f"c{i}") for i in range(contenders)]
    barrier = threading.Barrier(contenders)
    outcomes: dict[str, str] = {}

    def promote(version: str) -> None:
        own = MlflowHook()  # its own client, as in another worker
        own.client.get_registered_model(model_name)
        barrier.wait(timeout=30)
        try:
            own.move_alias(model_name, version, expected=base, owner=f"owner-{version}")
            outcomes[version] = "won"
        except PromotionRefused:
            outcomes[version] = "refused"

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [v for v, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == contenders and len(winners) == 1, outcomes
    assert _champion(hook, model_name) == winners[0]
    assert _champion(hook, model_name, "previous_champion") == base


def test_a_retry_finishes_its_own_claimed_move(hook, model_name):
    v1, v2, v3 = (_version(hook, model_name, k) for k in ("a", "b", "c"))
    hook.move_alias(model_name, v1, expected=None, owner="a")
    # Crash right after claiming epoch 1: nothing moved yet.
    tags = record_tags(model_name, "champion", 1, from_version=v1, to_version=v2, record=MoveRecord())
    assert hook.claim(f"registry/{model_name}/champion/epoch/1", "owner-b", tags=tags) == "owner-b"
    with pytest.raises(PromotionRefused, match="another promotion"):
        hook.move_alias(model_name, v3, expected=v1, owner="owner-c")
    move = hook.move_alias(model_name, v2, expected=v1, owner="owner-b")
    assert not move.already_done and _champion(hook, model_name) == v2

    # Crash after moving the alias but before the epoch advanced: the retry only finishes the epoch.
    hook.client.set_registered_model_tag(model_name, TAG_EPOCH_PREFIX + "champion", "1")
    again = hook.move_alias(model_name, v2, expected=v1, owner="owner-b")
    assert again.already_done and hook.alias_epoch(model_name, "champion") == 2
    hook.move_alias(model_name, v3, expected=v2, owner="owner-c")
    assert _champion(hook, model_name) == v3


def test_rollback_is_one_call_and_can_be_undone(hook, model_name):
    hook.ensure_registered_model(model_name)
    with pytest.raises(PromotionRefused, match="previous_champion' is not set"):
        hook.rollback_alias(model_name)
    v1, v2 = (_version(hook, model_name, k) for k in ("a", "b"))
    hook.move_alias(model_name, v1, expected=None, owner="a")
    hook.move_alias(model_name, v2, expected=v1, owner="b")

    hook.rollback_alias(model_name)
    assert (_champion(hook, model_name), _champion(hook, model_name, "previous_champion")) == (v1, v2)
    assert "airflow_ml.rolled_back_at" in hook.client.get_model_version(model_name, v2).tags
    hook.rollback_alias(model_name)
    assert _champion(hook, model_name) == v2
