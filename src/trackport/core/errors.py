"""Error kinds the pipeline acts on.

- TransientError: retry with backoff (rate limits, dropped connections).
- RunError: terminal for one run: report it, go on with the next run.
- UsageError: the command itself is wrong (exit code 2).
"""

from __future__ import annotations

import contextlib


class TrackportError(Exception):
    """Base of all errors raised on purpose by trackport."""


class UsageError(TrackportError):
    """Bad command line, URI or option: nothing was attempted."""


class MissingExtraError(UsageError):
    """A connector's SDK is not installed."""


class TransientError(TrackportError):
    """Worth retrying: the same call may succeed later.

    `retry_after`: seconds the server asked to wait.  `throttled`: the server is rate
    limiting or overloaded (429/503), so every worker hitting it should pause, not only
    this one (default: whenever it gave a Retry-After).  `exhausted`: a retry loop already
    gave up on it (core/retry.py): outer loops pass it on instead of retrying it again.
    """

    def __init__(self, message: str, retry_after: float | None = None, throttled: bool | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.throttled = retry_after is not None if throttled is None else throttled
        self.exhausted = False


class RunError(TrackportError):
    """Terminal for one run; names the run (and the file, when there is one)."""

    def __init__(self, message: str, *, project_id: str = "", run_id: str = "", file: str | None = None):
        self.project_id = project_id
        self.run_id = run_id
        self.file = file
        where = f"run {project_id}/{run_id}" if run_id else ""
        if file:
            where = f"{where}, file {file}" if where else f"file {file}"
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = message


@contextlib.contextmanager
def translated(classify, *context):
    """Run a block that calls an SDK; an exception `classify(exc, *context)` maps to a
    trackport error is raised as that error (our own errors pass through unchanged)."""
    try:
        yield
    except (RunError, TransientError, UsageError):
        raise
    except Exception as exc:
        mapped = classify(exc, *context)
        if mapped is exc:
            raise
        raise mapped from None
