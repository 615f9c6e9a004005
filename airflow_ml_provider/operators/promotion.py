"""Promote a blessed model in the MLflow registry: register it and move ``champion`` race-safely."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timezone
from typing import TYPE_CHECKING, Any

from airflow_ml_provider.links.mlflow import RegisteredModelVersionLink
from airflow_ml_provider.operators.base import MLflowTrackedOperator
from airflow_ml_provider.vocabulary import (
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS_CHAMPION,
    MOVE_PROMOTION,
    PROMOTION_ALREADY_CHAMPION,
    PROMOTION_PROMOTED,
    PROMOTION_REFUSED,
    STEP_PROMOTE,
    STEP_VALIDATE_DATA,
    TAG_APPROVED_AT,
    TAG_APPROVED_BY,
    TAG_CANDIDATE_MODEL_URI,
    TAG_DAG_RUN_KEY,
    TAG_EVALUATED_AGAINST,
    TAG_MODEL_VERSION,
    TAG_PROMOTED_AT,
    TAG_PROMOTED_TO,
    TAG_PROMOTION,
    TAG_PROMOTION_REFUSED,
    TAG_REPLACED_VERSION,
    TAG_STEP,
    TAG_VERSION_DAG_ID,
    TAG_VERSION_DAG_RUN,
    TAG_VERSION_DATASET_VERSION,
    TAG_VERSION_METRIC_PREFIX,
    TAG_VERSION_RUN_PREFIX,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_ml_provider.hooks._alias_history import MoveRecord
    from airflow_ml_provider.tracking import TaskRun

ON_REFUSED = ("fail", "skip")
APPROVE = "Approve"  # the option of Airflow's ApprovalOperator that lets the promotion go on
MAX_METRIC_TAGS = 20


class PromoteModelOperator(MLflowTrackedOperator):
    """
    Register a blessed candidate as a model version and make it the ``champion``.

    The candidate and its blessing come from a :class:`ModelEvaluationOperator`'s output (pass
    ``evaluation=evaluate.output``), and optionally an :class:`InfraValidationOperator`'s
    (``infra_validation=infra.output``, then required). Nothing changes in the registry unless the
    candidate is blessed (and infra-blessed when given).

    Registration is idempotent: the version carries the task instance's key, so a retry finds the
    version its first try made. The alias moves with compare-and-set: only if it still points at
    the version the candidate was evaluated against; if another promotion moved it meanwhile, the
    task refuses (no regression) and says to re-evaluate. The replaced champion keeps the alias
    ``previous_champion``. The version is tagged with its lineage: DAG run, dataset version, key
    metrics, and the MLflow runs of data validation, training, evaluation and infra validation.

    Every move is recorded in the alias's history (``MlflowHook().alias_history("churn")``) with
    the DAG run, task, dataset version, evaluation run and why. Roll back with one call:
    ``MlflowHook().rollback_alias("churn")``, or let a :class:`ChampionGuardOperator` do it.

    :param model_name: the registered model (templated); created on the first promotion.
    :param evaluation: the evaluation task's output (templated; an XComArg such as
        ``evaluate.output``): ``blessed``, ``candidate_model_uri``, ``baseline`` ...
    :param infra_validation: the infra validation task's output (templated), or None.
    :param approval: the output of an Airflow ``ApprovalOperator`` (or ``HITLOperator``) that asked
        a person (templated; ``approve.output``), or None. Required to hold the option
        ``Approve``; who approved, and when, goes into the version's tags and the alias history.
    :param alias: the alias to move (default ``champion``).
    :param previous_alias: the alias the replaced version keeps (default ``previous_champion``;
        None: none).
    :param key_metrics: overall metrics recorded as version tags (default: all, up to 20).
    :param on_refused: ``"fail"`` raises :class:`PromotionRefused`; ``"skip"`` skips the task.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "evaluation",
        "infra_validation",
        "approval",
        "alias",
        *MLflowTrackedOperator.template_fields,
    )
    template_fields_renderers = {"evaluation": "json", "infra_validation": "json", "approval": "json"}
    ui_color = "#f6e7c8"
    operator_extra_links = (*MLflowTrackedOperator.operator_extra_links, RegisteredModelVersionLink())

    def __init__(
        self,
        *,
        model_name: str,
        evaluation: Any,
        infra_validation: Any = None,
        approval: Any = None,
        alias: str = ALIAS_CHAMPION,
        previous_alias: str | None = ALIAS_PREVIOUS_CHAMPION,
        key_metrics: list[str] | None = None,
        on_refused: str = "fail",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.evaluation = evaluation
        self.infra_validation = infra_validation
        self.approval = approval
        self.alias = alias
        self.previous_alias = previous_alias
        self.key_metrics = key_metrics
        self.on_refused = on_refused

    def _check_arguments(self) -> None:
        if self.on_refused not in ON_REFUSED:
            raise ValueError(
                f"Task {self.task_id!r}: on_refused={self.on_refused!r} is not one of {', '.join(ON_REFUSED)}."
            )
        if not self.model_name or not isinstance(self.model_name, str):
            raise ValueError(f"Task {self.task_id!r}: model_name is empty (after rendering the template).")
        for name, value in (
            ("evaluation", self.evaluation),
            ("infra_validation", self.infra_validation),
            ("approval", self.approval),
        ):
            if value is not None and not isinstance(value, dict):
                raise TypeError(
                    f"Task {self.task_id!r}: {name} must be the dict the {name} task returned "
                    f"(pass its .output), got {type(value).__name__}: {str(value)[:200]!r}."
                )
        if not self.evaluation or not self.evaluation.get("candidate_model_uri"):
            raise ValueError(
                f"Task {self.task_id!r}: evaluation has no candidate_model_uri; pass the "
                "ModelEvaluationOperator's output (evaluation=evaluate.output)."
            )

    def execute_tracked(self, context: Context, run: TaskRun) -> Any:
        from airflow_ml_provider import freshness
        from airflow_ml_provider.exceptions import PromotionRefused

        self._check_arguments()
        evaluation: dict[str, Any] = self.evaluation
        run.log_params({"model_name": self.model_name, "alias": self.alias})
        run.set_tags({TAG_STEP: STEP_PROMOTE})  # how the Airflow UI's ML lineage view finds it
        try:
            expected = self._expected_version(evaluation)
            self._require_blessings(evaluation)
            summary = self._promote(context, run, evaluation, expected)
        except PromotionRefused as err:
            run.set_tags({TAG_PROMOTION: PROMOTION_REFUSED, TAG_PROMOTION_REFUSED: str(err)[:5000]})
            run.flush()
            freshness.record(context, run, "decided", decision="not promoted: the promotion was refused")
            if self.on_refused == "skip":
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(f"{err} -- skipping (on_refused='skip').") from err
            raise
        freshness.record(context, run, "promoted", decision="promoted")
        return summary

    def _expected_version(self, evaluation: dict[str, Any]) -> str | None:
        """The version of ``alias`` the candidate was evaluated against (None: alias was unset)."""
        from airflow_ml_provider.exceptions import PromotionRefused

        baseline = evaluation.get("baseline")
        evaluated_model = evaluation.get("registered_model_name")
        if evaluated_model != self.model_name:
            raise PromotionRefused(
                f"Task {self.task_id!r}: the candidate was evaluated against registered model "
                f"{evaluated_model!r}, not {self.model_name!r}; set registered_model_name="
                f"{self.model_name!r} on the evaluation task so that it compares with the {self.alias}."
            )
        if baseline is None:
            return None
        if baseline.get("alias") != self.alias or baseline.get("version") is None:
            raise PromotionRefused(
                f"Task {self.task_id!r}: the candidate was evaluated against {baseline.get('model_uri')!r}, "
                f"not against alias {self.alias!r} of {self.model_name!r}; promotion needs an "
                f"evaluation against the current {self.alias}."
            )
        return str(baseline["version"])

    def _require_blessings(self, evaluation: dict[str, Any]) -> None:
        from airflow_ml_provider.exceptions import PromotionRefused

        uri = evaluation["candidate_model_uri"]
        if evaluation.get("blessed") is not True:
            failures = evaluation.get("failed_thresholds") or ["(no failures recorded)"]
            raise PromotionRefused(
                f"Not promoting {uri}: it is not blessed by its evaluation. Failed thresholds:\n"
                + "\n".join(f"  - {f}" for f in failures)
            )
        if self.approval is not None and APPROVE not in (self.approval.get("chosen_options") or []):
            raise PromotionRefused(
                f"Not promoting {uri}: the approval task answered "
                f"{self.approval.get('chosen_options')!r}, not {APPROVE!r}."
            )
        infra = self.infra_validation
        if infra is None:
            return
        if infra.get("model_uri") != uri:
            raise PromotionRefused(
                f"Not promoting {uri}: the infra validation checked {infra.get('model_uri')!r}, "
                "another model. Infra-validate the candidate the evaluation blessed."
            )
        if infra.get("blessed") is not True:
            failures = infra.get("failures") or ["(no failures recorded)"]
            raise PromotionRefused(
                f"Not promoting {uri}: it is not blessed by infra validation:\n"
                + "\n".join(f"  - {f}" for f in failures)
            )

    def _promote(
        self, context: Context, run: TaskRun, evaluation: dict[str, Any], expected: str | None
    ) -> dict[str, Any]:
        from datetime import datetime

        from airflow_ml_provider.exceptions import PromotionRefused
        from airflow_ml_provider.hooks._registry import alias_changed
        from airflow_ml_provider.tracking import TaskIdentity

        hook = run.hook
        identity = TaskIdentity.from_context(context)
        current = hook.get_alias_version(self.model_name, self.alias)
        current_version = None if current is None else str(current.version)
        uri = evaluation["candidate_model_uri"]
        if current is not None and uri in (
            current.source,
            (current.tags or {}).get(TAG_CANDIDATE_MODEL_URI),
        ):
            # The same model again (a re-run on the same data): nothing to register or move.
            self.log.info(
                "%s of %s is already %s (version %s): nothing to do.",
                self.alias,
                self.model_name,
                uri,
                current_version,
            )
            run.set_tags({TAG_PROMOTION: PROMOTION_ALREADY_CHAMPION, TAG_MODEL_VERSION: str(current_version)})
            return {
                "model_name": self.model_name,
                "version": str(current_version),
                "alias": self.alias,
                "previous_version": expected,
                "model_uri": f"models:/{self.model_name}/{current_version}",
                "candidate_model_uri": uri,
                "registered_now": False,
                "already_champion": True,
                "epoch": None,
                "mlflow_run_id": run.run_id,
            }
        if current_version != expected:
            # Checked before registering, so a stale candidate leaves no version behind.
            raise alias_changed(self.model_name, self.alias, "(not registered)", expected, current_version)
        version, created = hook.register_version(
            self.model_name,
            uri,
            registration_key=identity.ti_key,
            run_id=evaluation.get("training_run_id"),
            tags=self._lineage_tags(run, identity, evaluation, expected),
            description=f"Candidate {uri}, promoted by {identity.dag_id}/{identity.run_id}.",
        )
        self.log.info(
            "%s version %s of %s for %s",
            "Registered" if created else "Found",
            version.version,
            self.model_name,
            uri,
        )
        # Before the alias moves, so that a validation against the new champion finds its baseline.
        from airflow_ml_provider.operators._baselines import attach_baseline

        attach_baseline(
            run,
            self.model_name,
            str(version.version),
            identity.dag_run_key,
            evaluation.get("training_run_id"),
        )
        try:
            move = hook.move_alias(
                self.model_name,
                str(version.version),
                expected=expected,
                owner=identity.ti_key,
                alias=self.alias,
                previous_alias=self.previous_alias,
                record=self._move_record(identity, evaluation, expected),
            )
        except PromotionRefused as err:
            hook.client.set_model_version_tag(
                self.model_name, version.version, TAG_PROMOTION_REFUSED, str(err)[:5000]
            )
            raise
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key, value in {
            TAG_PROMOTED_AT: now,
            TAG_PROMOTED_TO: self.alias,
            TAG_REPLACED_VERSION: expected or "none",
        }.items():
            hook.client.set_model_version_tag(self.model_name, version.version, key, value)
        summary = {
            "model_name": self.model_name,
            "version": str(version.version),
            "alias": self.alias,
            "previous_version": expected,
            "model_uri": f"models:/{self.model_name}/{version.version}",
            "candidate_model_uri": uri,
            "registered_now": created,
            "already_champion": False,
            "epoch": move.epoch,
            "mlflow_run_id": run.run_id,
        }
        run.set_tags({TAG_PROMOTION: PROMOTION_PROMOTED, TAG_MODEL_VERSION: str(version.version)})
        run.log_params({"version": version.version, "previous_version": expected or "none"})
        self.log.info(
            "%s of %s is now version %s (was %s).", self.alias, self.model_name, version.version, expected
        )
        return summary

    def _move_record(self, identity: Any, evaluation: dict[str, Any], expected: str | None) -> MoveRecord:
        """What the alias history says about this promotion."""
        from airflow_ml_provider.hooks._alias_history import MoveRecord

        against = f"champion version {expected}" if expected else "no champion (the first model)"
        if self.alias != ALIAS_CHAMPION:
            against = f"{self.alias} version {expected}" if expected else f"no {self.alias}"
        metrics = evaluation.get("metrics") or {}
        shown = ", ".join(f"{name} {metrics[name]:.4g}" for name in sorted(metrics)[:5])
        approved = self._approver()
        return MoveRecord(
            kind=MOVE_PROMOTION,
            reason=f"Blessed against {against}"
            + (f" ({shown})." if shown else ".")
            + (f" Approved by {approved[0]} at {approved[1]}." if approved else ""),
            dag_id=identity.dag_id,
            run_id=identity.run_id,
            task_id=identity.task_id,
            dataset_version=str(evaluation.get("dataset_version") or "") or None,
            evaluation_run_id=evaluation.get("mlflow_run_id"),
        )

    def _approver(self) -> tuple[str, str] | None:
        """Who approved (name or id) and when, from the approval task's output."""
        if not self.approval:
            return None
        user = self.approval.get("responded_by_user") or {}
        who = (user.get("name") or user.get("id") or "unknown") if isinstance(user, dict) else str(user)
        return str(who), str(self.approval.get("responded_at") or "")

    def _lineage_tags(
        self, run: TaskRun, identity: Any, evaluation: dict[str, Any], expected: str | None
    ) -> dict[str, str]:
        tags = {
            TAG_VERSION_DAG_ID: identity.dag_id,
            TAG_VERSION_DAG_RUN: identity.run_id,
            TAG_CANDIDATE_MODEL_URI: str(evaluation["candidate_model_uri"]),
            TAG_VERSION_DATASET_VERSION: str(evaluation.get("dataset_version") or ""),
            TAG_EVALUATED_AGAINST: expected or "none",
            f"{TAG_VERSION_RUN_PREFIX}promotion": run.run_id,
        }
        runs = {
            "training": evaluation.get("training_run_id"),
            "evaluation": evaluation.get("mlflow_run_id"),
            "infra_validation": (self.infra_validation or {}).get("mlflow_run_id"),
        }
        validation = run.hook.find_runs(
            run.experiment_id, {TAG_DAG_RUN_KEY: identity.dag_run_key, TAG_STEP: STEP_VALIDATE_DATA}
        )
        if validation:
            runs["validation"] = ",".join(r.info.run_id for r in validation)
        tags.update({f"{TAG_VERSION_RUN_PREFIX}{k}": str(v) for k, v in runs.items() if v})
        approved = self._approver()
        if approved:
            tags.update({TAG_APPROVED_BY: approved[0], TAG_APPROVED_AT: approved[1]})
        metrics = evaluation.get("metrics") or {}
        names = self.key_metrics or sorted(metrics)[:MAX_METRIC_TAGS]
        tags.update({f"{TAG_VERSION_METRIC_PREFIX}{n}": f"{metrics[n]:.6g}" for n in names if n in metrics})
        return {k: v for k, v in tags.items() if v}
