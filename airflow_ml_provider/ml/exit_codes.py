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
#: TensorFlow's errors of a collective op whose peer is gone (the classes of ``tf.errors``); the
#: entrypoint tells them by name and module, without importing TensorFlow
COLLECTIVE_ERRORS = frozenset({"UnavailableError", "AbortedError", "CancelledError", "DeadlineExceededError"})


class GangRestart(Exception):
    """
    Raise it from a ``run_fn`` to restart the whole gang from its last checkpoint.

    The worker exits with :data:`EXIT_RETRY`: the local gang restarts (up to its ``restarts``), a
    Kubernetes Job replaces the pod (up to ``backoffLimitPerIndex``), and every worker resumes from
    the last complete checkpoint. For a condition the gang cannot survive (a peer that stopped
    answering, a device that went away); an error of the code or the data should just raise.
    """


def is_retriable(returncode: int | None) -> bool:
    """
    Whether a worker that ended with ``returncode`` may be restarted: :data:`EXIT_RETRY`, or killed
    by a signal (a negative code from :mod:`subprocess`, or 128+N from a shell or a container).
    """
    if returncode is None or returncode == EXIT_OK:
        return False
    return returncode == EXIT_RETRY or returncode < 0 or returncode > 128


def lost_peer(error: BaseException) -> BaseException | None:
    """
    The error in ``error``'s chain that means the gang must restart, or None.

    That is a :class:`GangRestart`, or one of TensorFlow's :data:`COLLECTIVE_ERRORS` (told by its
    class name and a ``tensorflow`` module, so that TensorFlow is not imported here). The chain is
    followed through ``original`` (a wrapped step error), ``__cause__`` and ``__context__``.

    :param error: the step's exception.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, GangRestart) or _is_collective_error(current):
            return current
        pending += [getattr(current, "original", None), current.__cause__, current.__context__]
    return None


def _is_collective_error(error: BaseException) -> bool:
    return any(
        kind.__name__ in COLLECTIVE_ERRORS and kind.__module__.partition(".")[0] == "tensorflow"
        for kind in type(error).__mro__
    )
