"""Retrying transient errors: jittered exponential backoff shared by the workers of one command."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable

from .errors import RunError, TransientError
from .model import RunRef

log = logging.getLogger("trackport")


class Backoff:
    """Jittered exponential backoff, shared by all workers of one pipeline."""

    def __init__(self, budget_s: float, max_attempts: int):
        self.budget_s = budget_s
        self.max_attempts = max_attempts
        self._pause_until = 0.0
        self._lock = threading.Lock()

    def call(self, what: str, fn: Callable[[], Any], ref: RunRef | None = None) -> Any:
        """`fn()`, retried on TransientError; RunError (naming `ref`) once attempts or time run out."""
        ids = {"project_id": ref.project_id, "run_id": ref.run_id} if ref is not None else {}
        where = f"run {ref.project_id}/{ref.run_id}: {what}" if ref is not None else what
        started = time.monotonic()
        attempt = 0
        while True:
            self._wait_shared()
            try:
                return fn()
            except TransientError as exc:
                attempt += 1
                elapsed = time.monotonic() - started
                if attempt >= self.max_attempts or elapsed >= self.budget_s:
                    raise RunError(f"{what}: gave up after {attempt} attempts in {elapsed:.0f}s: {exc}", **ids) from None
                delay = exc.retry_after if exc.retry_after is not None else min(60.0, 0.5 * 2 ** attempt)
                delay *= random.uniform(0.8, 1.2)
                with self._lock:
                    self._pause_until = max(self._pause_until, time.monotonic() + delay)
                log.warning("%s: %s; retrying in %.1fs (attempt %d)", where, exc, delay, attempt + 1)

    def _wait_shared(self) -> None:
        while True:
            with self._lock:
                pause = self._pause_until - time.monotonic()
            if pause <= 0:
                return
            time.sleep(min(pause, 1.0))
