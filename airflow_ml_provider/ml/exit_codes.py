"""
The exit codes of the step entrypoint (``python -m airflow_ml_provider.ml``), one vocabulary for the
launchers: the local gang restarts on a transient one, a Kubernetes Job's pod failure policy fails
the Job at once on an application error and retries the index otherwise.
"""

from __future__ import annotations

EXIT_OK = 0
#: the step failed: bad data, or the user's code raised (retrying would fail again)
EXIT_FAILED = 1
#: bad arguments or spec, unknown step, user code that does not resolve
EXIT_USAGE = 2
#: transient: the gang lost a peer (a collective op was aborted); a restarted gang resumes
EXIT_RETRY = 75  # EX_TEMPFAIL of sysexits.h
#: the codes on which retrying is pointless: a Job fails at once, a local gang stops
APPLICATION_ERROR_EXIT_CODES = (EXIT_FAILED, EXIT_USAGE)


def is_retriable(returncode: int | None) -> bool:
    """
    Whether a worker that ended with ``returncode`` may be restarted: :data:`EXIT_RETRY`, or killed
    by a signal (a negative code from :mod:`subprocess`, or 128+N from a shell or a container).
    """
    if returncode is None or returncode == EXIT_OK:
        return False
    return returncode == EXIT_RETRY or returncode < 0 or returncode > 128
