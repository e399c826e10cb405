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
    """Worth retrying: the same call may succeed later."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


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
