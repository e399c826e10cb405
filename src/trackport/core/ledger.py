"""The local ledger: per run, what happened last time, kept in SQLite.

The destination (origin tags and completion marks) is the truth; the ledger
is a record of attempts and errors, so a lost ledger loses history but never
causes a duplicate or a skipped partial run.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from .report import RunReport

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
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def record(self, source: str, destination: str, run: RunReport, attempts: int) -> None:
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

    def get(self, source: str, destination: str, project_id: str, run_id: str) -> dict | None:
        with self._lock:
            cur = self._db.execute(
                "SELECT * FROM runs WHERE source=? AND destination=? AND project_id=? AND run_id=?",
                (source, destination, project_id, run_id),
            )
            row = cur.fetchone()
            if row is None:
                return None
            return dict(zip([d[0] for d in cur.description], row))

    def close(self) -> None:
        with self._lock:
            self._db.close()
