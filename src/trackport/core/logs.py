"""Logging with secrets scrubbed: no token value ever reaches a log line.

Secrets are (1) the values of environment variables whose names say they are
secrets (MLFLOW_TRACKING_TOKEN, WANDB_API_KEY, NEPTUNE_API_TOKEN, PLUTO_API_KEY,
..., and the `api_key` inside a Neptune token, which is base64 JSON), and
(2) values a connector found elsewhere and handed to `remember_secret` (a key
read from `~/.netrc` or a keyring, a password in a database URI).  `scrub`
replaces them, raw and URL-encoded, by `***`; the log handlers scrub whole
formatted records (tracebacks included) and the report scrubs its errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
from pathlib import Path
from urllib.parse import quote, quote_plus

_SECRET_NAME = re.compile(r"(?i)(TOKEN|API_?KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)")
_MIN_LEN = 6
_remembered: set[str] = set()
_cache: list[str] | None = None
_lock = threading.Lock()


def remember_secret(value: str | None) -> None:
    """Scrub `value` from every log line and report of this process from now on."""
    global _cache
    if value and len(value) >= _MIN_LEN:
        with _lock:
            if value not in _remembered:
                _remembered.add(value)
                _cache = None


def _inner_secrets(value: str) -> list[str]:
    """Secret-named string fields of a base64 JSON token (Neptune's API token carries its api_key)."""
    try:
        decoded = json.loads(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return []
    if not isinstance(decoded, dict):
        return []
    return [v for k, v in decoded.items() if isinstance(v, str) and _SECRET_NAME.search(k)]


def secret_values() -> list[str]:
    """Every secret known now, in every form that is scrubbed, longest first."""
    global _cache
    with _lock:
        if _cache is not None:
            return _cache
        found = set(_remembered)
        for name, value in os.environ.items():
            if _SECRET_NAME.search(name) and value and len(value) >= _MIN_LEN:
                found.add(value)
                found.update(v for v in _inner_secrets(value) if len(v) >= _MIN_LEN)
        forms = set()
        for value in found:
            forms.update((value, quote(value, safe=""), quote_plus(value)))
        _cache = sorted(forms, key=len, reverse=True)
        return _cache


def forget_cached_secrets() -> None:
    """Read the environment again at the next scrub (a new command in the same process)."""
    global _cache
    with _lock:
        _cache = None


def scrub(text: str, secrets: list[str] | None = None) -> str:
    for value in secrets if secrets is not None else secret_values():
        if value in text:
            text = text.replace(value, "***")
    return text


class ScrubSecrets(logging.Filter):
    """Scrubs the message of a record (for handlers that do not use ScrubbingFormatter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values()
        if secrets:
            record.msg = scrub(record.getMessage(), secrets)
            record.args = None
        return True


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Control characters (a run named with an escape sequence) shown as `\\xNN`, never sent
    to the terminal raw; newlines and tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class ScrubbingFormatter(logging.Formatter):
    """Scrubs the whole formatted record: message, traceback and stack; escapes control characters."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(scrub(super().format(record)))


def setup_logging(log_file: Path | None) -> None:
    forget_cached_secrets()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_trackport", False):
            root.removeHandler(handler)
            handler.close()
    scrubber = ScrubSecrets()
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(ScrubbingFormatter("trackport: %(levelname)s: %(message)s"))
    console.addFilter(scrubber)
    console._trackport = True
    root.addHandler(console)
    root.setLevel(logging.DEBUG if log_file else logging.INFO)
    if log_file:
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(ScrubbingFormatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
        fh.addFilter(scrubber)
        fh._trackport = True
        root.addHandler(fh)
    # SDKs are chatty; their warnings still reach the log file.
    for noisy in ("mlflow", "alembic", "urllib3", "botocore", "git"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if log_file else logging.ERROR)
