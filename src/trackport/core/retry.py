"""Retrying transient errors: jittered exponential backoff, bounded, shared per endpoint.

- What is retried: TransientError (rate limits, 5xx, dropped connections), raised by
  connectors; everything else passes through at once.
- Bound: at most `max_attempts` calls, and no retry later than `budget_s` seconds after
  the call's first failure; then a RunError naming the run, the attempts, the time, the
  limits and the last error (or, with `final=False`, as connectors use it, the last
  TransientError marked `exhausted`, which no outer loop retries again: nested loops never
  multiply the bound).
- Dead endpoints: every endpoint keeps the time of the first failure of its current failure
  streak (reset by any success).  Once an endpoint has failed for longer than `budget_s`
  without one success, a new call to it is not tried: it gives up at once, naming the
  endpoint.  With a server gone silent a command ends after about one bound plus two
  request timeouts, not one bound (of timeouts) per run.
- Delay: the server's Retry-After when it gave one (capped at RETRY_AFTER_CAP_S), else
  BASE_DELAY_S * 2**(attempt-1) capped at MAX_DELAY_S, both jittered.
- Sharing: a *throttled* error (429/503, or any error carrying Retry-After) pauses every
  caller of the same endpoint key (e.g. "mlflow 127.0.0.1:5000") in this process until the
  delay is over, so parallel workers back off together instead of hammering a limit (and,
  with `share_pauses`, every worker of a Ray cluster: core/ray_executor.py).
  Other transient errors (a dropped connection, a 500) delay only the caller that hit them.
- Settings: process-wide defaults (`configure`, set by the CLI from --retry-max-attempts /
  --retry-max-seconds / --request-timeout) used by connectors; the pipeline passes its own
  values explicitly.  `request_timeout_s` bounds one request's wait for an answer (read
  timeout); connecting is bounded by `connect_timeout()`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .errors import RunError, TransientError
from .model import RunRef

log = logging.getLogger("trackport")

BASE_DELAY_S = 0.5
MAX_DELAY_S = 30.0
RETRY_AFTER_CAP_S = 300.0
DEFAULT_ENDPOINT = "default"


DEFAULT_REQUEST_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_CAP_S = 10.0


@dataclass
class RetrySettings:
    max_attempts: int = 8
    budget_s: float = 600.0
    request_timeout_s: float | None = None     # None: the tracker's own setting, else the default


_settings = RetrySettings()


def configure(max_attempts: int | None = None, budget_s: float | None = None,
              request_timeout_s: float | None = None) -> RetrySettings:
    """Set the process-wide retry bound (None keeps the current value); returns the settings."""
    global _settings
    _settings = RetrySettings(
        max_attempts if max_attempts is not None else _settings.max_attempts,
        budget_s if budget_s is not None else _settings.budget_s,
        request_timeout_s if request_timeout_s is not None else _settings.request_timeout_s,
    )
    return _settings


def settings() -> RetrySettings:
    return _settings


def request_timeout(tracker_setting: float | None = None) -> tuple[float, float]:
    """(connect, read) seconds for one HTTP request, as `requests` takes them: --request-timeout
    when given, else the tracker's own setting (e.g. MLFLOW_HTTP_REQUEST_TIMEOUT) when the
    user set one, else DEFAULT_REQUEST_TIMEOUT_S."""
    read = _settings.request_timeout_s
    if read is None:
        read = tracker_setting if tracker_setting else DEFAULT_REQUEST_TIMEOUT_S
    return min(read, CONNECT_TIMEOUT_CAP_S), read


class _Gate:
    """The shared pause of one endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pause_until = 0.0
        self.failing_since: float | None = None   # start of the current failure streak

    def failed(self, since: float) -> None:
        with self.lock:
            if self.failing_since is None or since < self.failing_since:
                self.failing_since = since

    def succeeded(self) -> None:
        with self.lock:
            self.failing_since = None

    def down_for(self) -> float:
        with self.lock:
            return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since


_gates: dict[str, _Gate] = {}
_gates_lock = threading.Lock()


def _gate(endpoint: str) -> _Gate:
    with _gates_lock:
        gate = _gates.get(endpoint)
        if gate is None:
            gate = _gates[endpoint] = _Gate()
        return gate


def forget_failures() -> None:
    """Start a command with no endpoint counted as down: an outage an earlier command of this
    process saw (the previous round of `sync`, a caller's earlier `copy`) is not this one's."""
    with _gates_lock:
        gates = list(_gates.values())
    for gate in gates:
        gate.succeeded()


class SharedPauses:
    """Pauses shared beyond this process (the Ray executor's coordinator actor)."""

    def pause(self, endpoint: str, seconds: float) -> None: ...
    def remaining(self, endpoint: str) -> float: ...


_shared: SharedPauses | None = None


def share_pauses(shared: SharedPauses | None) -> None:
    """Also pause (and wait for) `endpoint` wherever `shared` reaches (None: this process only)."""
    global _shared
    _shared = shared


def pause_endpoint(endpoint: str, seconds: float) -> None:
    """Make every caller of `endpoint` wait `seconds` from now (extends, never shortens)."""
    gate = _gate(endpoint)
    with gate.lock:
        gate.pause_until = max(gate.pause_until, time.monotonic() + seconds)
    if _shared is not None:
        _shared.pause(endpoint, seconds)


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (RFC 9110 section 10.2.3: delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def retry_delay(exc: TransientError, attempt: int) -> float:
    """Seconds to wait before attempt `attempt + 1` after `exc` (jittered)."""
    if exc.retry_after is not None:
        # Never earlier than the server asked; a little later so that waiters spread out.
        return min(max(exc.retry_after, 0.0), RETRY_AFTER_CAP_S) * random.uniform(1.0, 1.2)
    base = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** max(0, attempt - 1))
    return base * random.uniform(0.5, 1.0)


class Backoff:
    """Retries of TransientError, bounded in attempts and time, sharing pauses per endpoint."""

    def __init__(self, budget_s: float | None = None, max_attempts: int | None = None,
                 endpoint: str = DEFAULT_ENDPOINT):
        self.budget_s = budget_s if budget_s is not None else _settings.budget_s
        self.max_attempts = max(1, max_attempts if max_attempts is not None else _settings.max_attempts)
        self.endpoint = endpoint

    def call(self, what: str, fn: Callable[[], Any], ref: RunRef | None = None,
             endpoint: str | None = None, final: bool = True) -> Any:
        """`fn()`, retried on TransientError.  Once attempts or time run out: RunError naming
        `ref` (`final`), or the last TransientError, marked exhausted (`final=False`)."""
        endpoint = endpoint or self.endpoint
        ids = {"project_id": ref.project_id, "run_id": ref.run_id} if ref is not None else {}
        where = f"run {ref.project_id}/{ref.run_id}: {what}" if ref is not None else what
        # The time bound counts from the first failure: a long run (the pipeline retries whole
        # runs) that fails late still gets its retries.
        failing_since: float | None = None
        attempt = 0
        gate = _gate(endpoint)
        while True:
            self._wait_shared(endpoint, failing_since)
            dead = gate.down_for()
            if attempt == 0 and dead > self.budget_s:
                # Every request to this endpoint has failed for the whole bound: the command
                # gives up on it instead of letting each run wait out timeouts of its own.
                message = (f"{what}: not tried: every request to {endpoint} has failed for {dead:.0f}s "
                           f"without one success (limit --retry-max-seconds {self.budget_s:g}); "
                           f"rerun the same command once it answers")
                if final:
                    raise RunError(message, **ids)
                given_up = TransientError(message)
                given_up.exhausted = True
                raise given_up
            try:
                result = fn()
            except TransientError as exc:
                if exc.run_level and not final:
                    raise
                attempt += 1
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if not exc.exhausted:   # an inner loop's give-up was counted by that loop
                    gate.failed(now)
                elapsed = now - failing_since
                delay = retry_delay(exc, attempt)
                if exc.exhausted or attempt >= self.max_attempts or elapsed + delay > self.budget_s:
                    if exc.exhausted:   # an inner loop gave up already and said so
                        message = f"{what}: {exc}"
                    else:
                        message = (f"{what}: gave up after {attempt} attempt{'s' if attempt > 1 else ''}, "
                                   f"{elapsed:.1f}s after the first failure (limits: {self.max_attempts} "
                                   f"attempts, {self.budget_s:g}s; "
                                   f"raise --retry-max-attempts / --retry-max-seconds to wait longer): {exc}")
                    if final:
                        raise RunError(message, **ids) from None
                    given_up = TransientError(message, exc.retry_after, exc.throttled)
                    given_up.exhausted = True
                    raise given_up from None
                if exc.throttled:
                    pause_endpoint(endpoint, delay)
                    log.info("%s: %s; %s paused for %.1fs (attempt %d)", where, exc, endpoint, delay, attempt + 1)
                else:
                    log.info("%s: %s; retrying in %.1fs (attempt %d)", where, exc, delay, attempt + 1)
                    time.sleep(delay)
            else:
                gate.succeeded()
                return result

    def _wait_shared(self, endpoint: str, failing_since: float | None) -> None:
        """Sleep while the endpoint is paused (never past this call's time bound)."""
        gate = _gate(endpoint)
        since = failing_since if failing_since is not None else time.monotonic()
        while True:
            with gate.lock:
                pause = gate.pause_until - time.monotonic()
            if _shared is not None:
                pause = max(pause, _shared.remaining(endpoint))
            left = self.budget_s - (time.monotonic() - since)
            if pause <= 0 or left <= 0:
                return
            time.sleep(min(pause, left, 1.0))
