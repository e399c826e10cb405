"""The local ledger: per run, what happened last time, kept in SQLite.

The destination (origin tags and completion marks) is the truth; the ledger
is a record of attempts and errors, so a lost ledger loses history but never
causes a duplicate or a skipped partial run.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from .report import RunReport

log = logging.getLogger("trackport")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    source TEXT NOT NULL, destination TEXT NOT NULL,
    project_id TEXT NOT NULL, run_id TEXT NOT NULL,
    status TEXT, dest_id TEXT, rows INTEGER, points INTEGER, files INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, updated_at REAL,
    PRIMARY KEY (source, destination, project_id, run_id)
)
"""


class Ledger:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # Processes sharing one --state-dir wait for each other's short writes (SQLite's busy
        # timeout) rather than failing at once with "database is locked".
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
        self._db.execute("PRAGMA busy_timeout=60000")
        # Switching a new database to WAL, or opening one while another process recovers its
        # WAL, answers SQLITE_BUSY without calling the busy handler
        # (https://www.sqlite.org/wal.html#sometimes_queries_return_sqlite_busy_in_wal_mode):
        # processes starting together take turns here instead.
        deadline = time.monotonic() + 60
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                # A record, not the truth: in WAL mode NORMAL syncs at checkpoints, not at each
                # run's commit (a power cut may lose the last entries, never corrupt the file).
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(_SCHEMA)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    self._db.close()
                    raise
                time.sleep(0.05)

    def record(self, source: str, destination: str, run: RunReport, attempts: int) -> None:
        """Best effort: the ledger is a history, the destination is the truth, so a ledger that
        cannot be written (locked past the timeout, disk full) costs a warning, never the run."""
        try:
            self._record(source, destination, run, attempts)
        except sqlite3.Error as exc:
            log.warning("run %s/%s: the local ledger %s could not be updated (%s); the destination "
                        "still records the run", run.project_id, run.run_id, self.path, exc)

    def _record(self, source: str, destination: str, run: RunReport, attempts: int) -> None:
        with self._lock:
            self._db.execute(
                """INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT (source, destination, project_id, run_id) DO UPDATE SET
                     status=excluded.status, dest_id=COALESCE(excluded.dest_id, runs.dest_id),
                     rows=excluded.rows, points=excluded.points, files=excluded.files,
                     attempts=runs.attempts + excluded.attempts, last_error=excluded.last_error,
                     updated_at=excluded.updated_at""",
                (source, destination, run.project_id, run.run_id, run.status, run.dest_id,
                 run.rows, run.points, run.files, attempts, run.error, time.time()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
