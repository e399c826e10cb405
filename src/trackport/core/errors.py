"""Error kinds the pipeline acts on.

- TransientError: retry with backoff (rate limits, dropped connections).
- RunError: terminal for one run: report it, go on with the next run.
- UsageError: the command itself is wrong (exit code 2).
- RunsFailedError: raised by the Python API when a command's report has exit code 1.
- Cancelled: the Python API's caller cancelled the command.
"""

from __future__ import annotations

import contextlib
from typing import Any


class TrackportError(Exception):
    """Base of all errors raised on purpose by trackport."""


class UsageError(TrackportError):
    """Bad command line, URI or option: nothing was attempted."""


class MissingExtraError(UsageError):
    """A connector's SDK is not installed."""


class RunsFailedError(TrackportError):
    """A command ran, but not everything requested moved (or verified): a run failed, data was
    dropped without `allow_drops`, or a filter selected nothing.  `report` holds what happened,
    run by run (`CommandReport`), the partial work included."""

    def __init__(self, report):
        self.report = report
        failed = [r for r in report.runs if r.error]
        first = f"; first: {failed[0].error}" if failed else ""
        notes = f"; {report.unmatched[0]}" if not failed and report.unmatched else ""
        super().__init__(f"trackport {report.command}: exit code {report.exit_code} "
                         f"({len(failed)} run(s) with errors{first}{notes})")


class Cancelled(BaseException):
    """The caller cancelled the command (`cancel.set()` from another thread).  Like Ctrl-C, it
    is not an ordinary error (a BaseException, as asyncio.CancelledError): runs already written
    stay, the run being written stays incomplete in the destination, and the same command run
    again resumes it.  `report` holds what happened until then."""

    def __init__(self, report=None):
        super().__init__("cancelled")
        self.report = report


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
        # The request cannot succeed as it is, but the whole run can (what the run was written
        # into changed under it): request-level loops pass it on, the pipeline retries the run.
        self.run_level = False


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



class RunScoped:
    """Mixin for a class working on one run (a run writer, a run reader): it sets
    `self.err_run` to that run (anything with `project_id` and `run_id`: a RunRef, an
    Origin), and `self._err(message, file)` is the RunError naming the run and the file.
    The message says what went wrong and the fix."""

    err_run: Any

    def _err(self, message: str, file: str | None = None) -> RunError:
        return RunError(message, project_id=self.err_run.project_id, run_id=self.err_run.run_id, file=file)

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
