"""The only module importing the trackio package (tested with trackio 0.43; pinned
`>=0.43,<0.44` in the `trackio` extra).

Why its storage class and not `trackio.log`: `trackio.log(metrics, step)` stamps each
call with the current time (trackio/run.py Run.log -> `datetime.now(timezone.utc)`), so
a copied point would lose its timestamp.  `SQLiteStorage.bulk_log(project, run,
metrics_list, steps, timestamps, run_id=...)` is the call Trackio's own sender and
server write every batch with (trackio/run.py _local_batch_sender, trackio/server.py
bulk_log), and it takes steps and timestamps as given:
https://github.com/gradio-app/trackio/blob/main/trackio/sqlite_storage.py

Two quirks handled here:
- `TRACKIO_DIR` is read once, when trackio is imported (trackio/utils.py
  `TRACKIO_DIR = _get_trackio_dir()`, copied into trackio/sqlite_storage.py by
  `from trackio.utils import TRACKIO_DIR`).  `store(root)` points both module globals at
  the destination folder for the duration of one call, under a process-wide lock, so
  `--trackio-dir` works whatever the environment said at import time.
- `SQLiteStorage.init_db` first calls `_ensure_hub_loaded`, which downloads a Hub
  bucket or dataset when TRACKIO_BUCKET_ID / TRACKIO_DATASET_ID are set.  trackport
  writes a local store only: `_dataset_import_attempted` is set first, the flag that
  method itself sets once it has run, so no network is touched.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_LOCK = threading.RLock()


def import_storage():
    try:
        import trackio.sqlite_storage as storage_module
        import trackio.utils as utils_module
    except ImportError as exc:   # pragma: no cover - the registry checks `requires` first
        from trackport.core.errors import UsageError

        raise UsageError(f"the trackio connector needs the trackio package ({exc}); "
                         f"fix: pip install 'trackport[trackio]'") from None
    return storage_module, utils_module


def trackio_version() -> str:
    from importlib.metadata import version

    return version("trackio")


@contextmanager
def store(root: Path) -> Iterator[object]:
    """trackio's SQLiteStorage class, writing under `root` (see the module docstring)."""
    storage_module, utils_module = import_storage()
    with _LOCK:
        saved = (utils_module.TRACKIO_DIR, utils_module.MEDIA_DIR, storage_module.TRACKIO_DIR)
        utils_module.TRACKIO_DIR = root
        utils_module.MEDIA_DIR = root / "media"
        storage_module.TRACKIO_DIR = root
        storage = storage_module.SQLiteStorage
        storage._dataset_import_attempted = True
        try:
            yield storage
        finally:
            utils_module.TRACKIO_DIR, utils_module.MEDIA_DIR, storage_module.TRACKIO_DIR = saved


def validate_project(project: str) -> None:
    """Trackio's own check (reserved `registry-` prefix and sidecar suffixes); ValueError."""
    storage_module, _ = import_storage()
    storage_module.SQLiteStorage.validate_project_name(project)


def init_project(root: Path, project: str) -> Path:
    with store(root) as storage:
        return storage.init_db(project)


def bulk_log(root: Path, project: str, run_name: str, run_id: str, rows: list[dict],
             steps: list[int], timestamps: list[str]) -> None:
    if not rows:
        return
    with store(root) as storage:
        storage.bulk_log(project, run_name, rows, steps=steps, timestamps=timestamps, run_id=run_id)


def write_config(root: Path, project: str, run_name: str, run_id: str, config_json: bytes,
                 created_at: str) -> None:
    """The run's config row, as bulk_log writes it (`INSERT OR REPLACE INTO configs`), under
    Trackio's own cross-process lock.  bulk_log writes a config only together with metrics,
    and trackport rewrites it at commit (the completion mark) when no metric is left."""
    with store(root) as storage:
        db_path = storage.init_db(project)
        with storage._get_process_lock(project):
            conn = sqlite3.connect(str(db_path), timeout=30.0)
            try:
                with conn:
                    conn.execute("INSERT OR REPLACE INTO configs (run_id, run_name, config, created_at) "
                                 "VALUES (?, ?, ?, ?)", (run_id, run_name, config_json.decode("utf-8"),
                                                         created_at))
            finally:
                conn.close()


def existing_rows(root: Path, project: str, run_id: str) -> Iterator[tuple[int, str, str]]:
    """(step, timestamp, metrics JSON) of a run already in the destination."""
    with store(root) as storage:
        db_path = storage.get_project_db_path(project)
    if not db_path.exists():
        return
    conn = sqlite3.connect(str(db_path), timeout=30.0)
    try:
        yield from conn.execute("SELECT step, timestamp, metrics FROM metrics WHERE run_id = ? ORDER BY id",
                                (run_id,))
    finally:
        conn.close()
