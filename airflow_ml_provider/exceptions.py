"""Exceptions raised by the provider; each message names the input and where the report is."""

from __future__ import annotations


class MLProviderError(Exception):
    """Base class of the provider's own errors."""


class StepFailed(MLProviderError):
    """
    A step ended with an error in the interpreter (or pod) that ran it.

    Raised without exception chaining, so that a failure prints one traceback: ``original`` holds
    the step's own exception when it ran in this interpreter (its traceback is the one printed), or
    the worker's ``StepFailed`` for a gang.
    """

    def __init__(
        self,
        step: str,
        message: str,
        *,
        last_lines: list[str] | None = None,
        returncode: int | None = None,
        original: BaseException | None = None,
    ) -> None:
        self.step = step
        self.last_lines = list(last_lines or [])
        self.returncode = returncode
        self.original = original
        super().__init__(message)


class StepTimeout(StepFailed):
    """A step ran past its timeout and was killed together with its children."""


class StepEnvironmentError(MLProviderError):
    """
    The interpreter running a step lacks what the step needs (the TensorFlow stack), or holds another
    version of this provider than Airflow's environment. The message names the way out.
    """


class MlflowConnectionError(MLProviderError):
    """The MLflow tracking server could not be reached or refused the credentials."""


class DataValidationFailed(MLProviderError):
    """A dataset version has anomalies against its schema (or drift / skew past a threshold)."""

    def __init__(self, data_uri: str, anomalies: list[dict[str, str]], report: str | None = None) -> None:
        self.data_uri = data_uri
        self.anomalies = list(anomalies)
        self.report = report
        lines = [
            f"  - {a.get('feature', '?')}: {a.get('kind', '?')}: {a.get('short_description', '')}"
            for a in self.anomalies
        ]
        where = f"\nFull report: {report}" if report else ""
        super().__init__(
            f"Data validation of {data_uri} found {len(self.anomalies)} anomal"
            f"{'y' if len(self.anomalies) == 1 else 'ies'}:\n" + "\n".join(lines) + where
        )


class DatasetVersionIncomplete(MLProviderError):
    """A dataset version a task reads has no completion marker yet (or its storage cannot tell)."""

    def __init__(self, folder: str, marker: str, message: str) -> None:
        self.folder = folder
        self.marker = marker
        super().__init__(message)


class TrainingJobFailed(MLProviderError):
    """A training gang failed, or did not fully start in time; carries the failing workers' last lines."""

    def __init__(
        self,
        what: str,
        message: str,
        *,
        log_tails: dict[str, list[str]] | None = None,
        report: str | None = None,
    ) -> None:
        self.what = what
        self.log_tails = dict(log_tails or {})
        self.report = report
        parts = [f"{what}: {message}"]
        for source, lines in self.log_tails.items():
            if lines:
                parts.append(f"Last lines of {source}:\n" + "\n".join(f"  {line}" for line in lines))
        if report:
            parts.append(f"MLflow run: {report}")
        super().__init__("\n".join(parts))


class ModelNotBlessed(MLProviderError):
    """A candidate model failed its evaluation thresholds (or its infra validation)."""

    def __init__(
        self, model_uri: str, failures: list[str], *, what: str = "evaluation", report: str | None = None
    ) -> None:
        self.model_uri = model_uri
        self.failures = list(failures)
        self.what = what
        self.report = report
        lines = "\n".join(f"  - {failure}" for failure in self.failures)
        where = f"\nFull report: {report}" if report else ""
        super().__init__(
            f"Model {model_uri} is not blessed by {what}: {len(self.failures)} failed "
            f"check{'s' if len(self.failures) != 1 else ''}:\n{lines}{where}"
        )


class PromotionRefused(MLProviderError):
    """The registry alias was not moved: the champion changed since the evaluation, or a blessing is missing."""


class ChampionGuardFailed(MLProviderError):
    """
    A guarded champion's live metric breached its bounds and there is nothing safe to roll back
    to, or the guard saw no value of the metric in its whole window.
    """

    def __init__(self, model_name: str, version: str, message: str, *, report: str | None = None) -> None:
        self.model_name = model_name
        self.version = version
        self.report = report
        where = f"\nMLflow run: {report}" if report else ""
        super().__init__(f"{message}{where}")


class TuningFailed(MLProviderError):
    """A tuning study ended without a usable result: no trial completed, or too many trials failed."""

    def __init__(
        self,
        study: str,
        reason: str,
        failed_trials: list[dict[str, object]] | None = None,
        report: str | None = None,
    ) -> None:
        self.study = study
        self.reason = reason
        self.failed_trials = list(failed_trials or [])
        self.report = report
        lines = [
            f"  - trial {t.get('number')} {t.get('params')}: {t.get('error')}"
            for t in self.failed_trials[:10]
        ]
        if len(self.failed_trials) > 10:
            lines.append(f"  ... and {len(self.failed_trials) - 10} more (trials.csv in the MLflow run)")
        where = f"\nMLflow run: {report}" if report else ""
        failed = "\nFailed trials:\n" + "\n".join(lines) if lines else ""
        super().__init__(f"Tuning study {study!r}: {reason}.{failed}{where}")
