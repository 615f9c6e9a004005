"""The alias history's records: what rides on an epoch's claim (no server)."""

from __future__ import annotations

import json

import pytest

from airflow_ml_provider.hooks._alias_history import (
    AliasHistoryMixin,
    MoveRecord,
    history_key,
    record_tags,
)
from airflow_ml_provider.vocabulary import TAG_HISTORY_ENTRY, TAG_HISTORY_EPOCH, TAG_HISTORY_KEY

pytestmark = pytest.mark.unit


def test_a_record_round_trips_through_its_tags():
    record = MoveRecord(kind="rollback", reason="live auc 0.4", dag_id="d", run_id="r", task_id="guard")
    tags = record_tags("churn", "champion", 3, from_version="2", to_version="1", record=record)
    assert tags[TAG_HISTORY_EPOCH] == "3" and tags[TAG_HISTORY_KEY] == history_key("churn", "champion")
    entry = AliasHistoryMixin._entry("churn", "champion", 3, "ti-key", tags[TAG_HISTORY_ENTRY])
    assert (entry.from_version, entry.to_version, entry.kind, entry.reason, entry.actor) == (
        "2",
        "1",
        "rollback",
        "live auc 0.4",
        "ti-key",
    )
    assert (entry.dag_id, entry.run_id, entry.task_id, entry.dataset_version) == ("d", "r", "guard", None)
    assert entry.at.tzinfo is not None
    assert json.loads(json.dumps(entry.as_dict()))["epoch"] == 3


def test_a_long_reason_is_shortened_to_fit_an_mlflow_tag():
    tags = record_tags(
        "m", "champion", 0, from_version=None, to_version="1", record=MoveRecord(reason="x" * 20000)
    )
    assert len(tags[TAG_HISTORY_ENTRY]) <= 5000
    assert json.loads(tags[TAG_HISTORY_ENTRY])["reason"].endswith("[...]")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("m", "champion"), ("m", "challenger")),
        (("m'1", "champion"), ("m", "1champion")),
        (("a/b", "c"), ("a", "b/c")),
    ],
)
def test_history_keys_keep_models_and_aliases_apart(a, b):
    assert history_key(*a) != history_key(*b)
    assert all(c in "0123456789abcdef" for c in history_key(*a))  # safe inside a search filter
