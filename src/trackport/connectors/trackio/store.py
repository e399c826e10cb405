"""Opening a Trackio project database without changing a byte of it (stdlib only).

Trackio keeps its SQLite files in WAL mode (trackio/sqlite_storage.py
_configure_sqlite_pragmas).  A read-only connection to a WAL database may still
create `-wal`/`-shm` files beside it, and a reader writes read marks into `-shm`
(https://www.sqlite.org/wal.html#readonly).  So:

- no `-wal` file (Trackio checkpoints and removes it when its last connection
  closes): the file is opened with `immutable=1`: no lock, no sidecar file;
- a `-wal` file (a training is writing, or one crashed): the database and its WAL
  are copied to a temporary folder and the copy is opened, so what is still
  only in the WAL is read too and nothing beside the source changes.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import quote


def _uri(path: Path, params: str) -> str:
    return f"file:{quote(str(path.resolve()))}?{params}"


@contextmanager
def open_read_only(db_path: Path) -> Iterator[sqlite3.Connection]:
    scratch = None
    try:
        for attempt in range(5):
            wal = db_path.with_name(db_path.name + "-wal")
            if not (wal.exists() and wal.stat().st_size > 0):
                conn = sqlite3.connect(_uri(db_path, "immutable=1"), uri=True)
                break
            scratch = scratch or tempfile.mkdtemp(prefix="trackport-trackio-")
            copy = Path(scratch) / db_path.name
            try:
                shutil.copyfile(db_path, copy)
                shutil.copyfile(wal, Path(scratch) / wal.name)
            except FileNotFoundError:     # the writer checkpointed meanwhile: look again
                continue
            conn = sqlite3.connect(str(copy))
            break
        else:
            raise OSError(f"{db_path}: its write-ahead log kept changing while being read; "
                          f"fix: read it again once the training writing it has stopped")
        try:
            conn.execute("PRAGMA query_only = 1")
            yield conn
        finally:
            conn.close()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def open_writable(db_path: Path) -> Iterator[sqlite3.Connection]:
    """The destination's own lookups while trackport writes it (may add -wal/-shm there)."""
    conn = sqlite3.connect(str(db_path), timeout=30.0)
    try:
        yield conn
    finally:
        conn.close()


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def default_dir() -> Path:
    """trackio/utils.py _get_trackio_dir: $TRACKIO_DIR, else huggingface_hub's HF_HOME/trackio."""
    if os.environ.get("TRACKIO_DIR"):
        return Path(os.environ["TRACKIO_DIR"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(hf_home).expanduser() / "trackio"
