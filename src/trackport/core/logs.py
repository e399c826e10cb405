"""Logging with secrets scrubbed: no token value ever reaches a log line."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

_SECRET_NAME = re.compile(r"(?i)(TOKEN|API_?KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL)")


def secret_values() -> list[str]:
    """Values of environment variables whose names say they are secrets."""
    return sorted(
        (v for k, v in os.environ.items() if _SECRET_NAME.search(k) and v and len(v) >= 6),
        key=len, reverse=True,
    )


def scrub(text: str, secrets: list[str] | None = None) -> str:
    for value in secrets if secrets is not None else secret_values():
        if value in text:
            text = text.replace(value, "***")
    return text


class ScrubSecrets(logging.Filter):
    def __init__(self):
        super().__init__()
        self.secrets = secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = scrub(record.getMessage(), self.secrets)
            record.args = None
        return True


def setup_logging(log_file: Path | None) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_trackport", False):
            root.removeHandler(handler)
    scrubber = ScrubSecrets()
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("trackport: %(levelname)s: %(message)s"))
    console.addFilter(scrubber)
    console._trackport = True
    root.addHandler(console)
    root.setLevel(logging.DEBUG if log_file else logging.INFO)
    if log_file:
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
        fh.addFilter(scrubber)
        fh._trackport = True
        root.addHandler(fh)
    # SDKs are chatty; their warnings still reach the log file.
    for noisy in ("mlflow", "alembic", "urllib3", "botocore", "git"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if log_file else logging.ERROR)
