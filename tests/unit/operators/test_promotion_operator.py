"""PromoteModelOperator's checks that need no registry: blessing and a person's approval."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_ml_provider.exceptions import PromotionRefused
from airflow_ml_provider.operators.promotion import PromoteModelOperator

pytestmark = pytest.mark.unit

EVALUATION = {"blessed": True, "candidate_model_uri": "models:/m-1", "metrics": {"auc": 0.81234}}
ANSWER = {
    "chosen_options": ["Approve"],
    "responded_by_user": {"id": "7", "name": "alice"},
    "responded_at": "2026-12-07T19:00:00+00:00",
}


def _promote(approval: Any) -> PromoteModelOperator:
    return PromoteModelOperator(
        task_id="promote", model_name="churn", evaluation=EVALUATION, approval=approval
    )


def test_an_approval_goes_on_the_record():
    operator = _promote(ANSWER)
    operator._check_arguments()
    operator._require_blessings(EVALUATION)
    assert operator._approver() == ("alice", "2026-12-07T19:00:00+00:00")
    identity = type("Identity", (), {"dag_id": "d", "run_id": "r", "task_id": "promote"})()
    record = operator._move_record(identity, EVALUATION, "3")
    assert record.reason == (
        "Blessed against champion version 3 (auc 0.8123). Approved by alice at 2026-12-07T19:00:00+00:00."
    )


@pytest.mark.parametrize("options", [["Reject"], [], None])
def test_an_answer_other_than_approve_refuses(options):
    with pytest.raises(PromotionRefused, match="approval task answered .*not 'Approve'"):
        _promote({**ANSWER, "chosen_options": options})._require_blessings(EVALUATION)


def test_an_approval_that_is_not_the_tasks_output_is_a_type_error():
    with pytest.raises(TypeError, match="approval must be the dict"):
        _promote("yes")._check_arguments()


def test_without_an_approval_nothing_is_asked():
    operator = _promote(None)
    operator._require_blessings(EVALUATION)
    assert operator._approver() is None
