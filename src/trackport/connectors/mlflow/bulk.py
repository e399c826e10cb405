"""`--mlflow-bulk`: metric points go straight into an MLflow SQL store's tables.

Everything else of a run (creation, params, tags, artifacts, the completion
mark) stays on the SDK path of sink.py; the writer prepares the metric points
exactly as for the SDK (keys, int64 steps, filled timestamps, counted
transformations, points already there on resume left out) and hands them to
`BulkRun.add` instead of building `Metric` objects.  Rows are buffered as
arrays and written `FLUSH_ROWS` at a time, each flush one transaction that
inserts into `metrics` and brings `latest_metrics` up to date.

What is written is what MLflow's own SQL store writes for the same points
(mlflow/store/tracking/sqlalchemy_store.py `sanitize_metric_value`,
`_log_metrics_once`, `_update_latest_metrics_if_necessary`;
mlflow/store/tracking/dbmodels/models.py `SqlMetric`, `SqlLatestMetric`):
- `metrics` (key, value, timestamp, run_uuid, step, is_nan): NaN is stored as
  value 0 with is_nan true, +-inf as +-1.7976931348623157e308; the primary key
  is every column (`metric_pk`), so a point sent twice is kept once: MLflow
  drops such duplicates itself, here INSERT OR IGNORE / ON CONFLICT DO NOTHING
  does, which also makes a resumed load safe;
- `latest_metrics` (one row per run and key): replaced only by a point strictly
  greater in (step, timestamp, stored value); on a tie the earlier point stays.

The tables' layout is checked through the store's schema revision
(`alembic_version.version_num`) and the metrics table's primary key before
anything is written; an unknown revision is refused.

This module imports SQLAlchemy (MLflow's own dependency), never the MLflow SDK.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trackport.core.errors import RunError, TransientError, UsageError

from .points import FLOAT_MAX

log = logging.getLogger(__name__)

# Schema revisions whose `metrics` and `latest_metrics` tables were checked to be the ones
# this module writes: the head of mlflow 3.17.2 (dc11669786a5) and every revision back to
# a5b4c3d2e1f0, the last migration that touched either table (it added the index
# metrics(run_uuid, key, step)); the migrations in between (mlflow/store/db_migrations/versions/)
# change other tables only.  MLflow 3.17 itself opens only its head revision.
SUPPORTED_REVISIONS = (
    "dc11669786a5",  # head of mlflow 3.17.2: add_job_executor_persistence_model
    "75868b020152",
    "b7e2c1a4d9f3",
    "17e22815139b",
    "1971f2d9a75b",
    "6f8d9c3b2a1e",
    "c3d9e7f1a2b4",
    "c1d2e3f4a5b6",
    "a8b9c0d1e2f3",
    "b7e4c1a90f23",
    "89d3d66ed43f",
    "da6fb0208061",
    "7d34483879f0",
    "ae8bbe7743c9",
    "a5b4c3d2e1f0",  # add_metrics_run_key_step_index
)
METRIC_COLUMNS = ("key", "value", "timestamp", "run_uuid", "step", "is_nan")
LATEST_COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")
# Points per transaction (one executemany).  Bigger amortises the commit; smaller keeps the
# SQLite write lock short for the SDK calls of other runs (they wait at most 5 s for it).
FLUSH_ROWS = 100_000
# Chunks waiting for the writer thread: bounds the memory a fast reader can fill.
QUEUE_CHUNKS = 2
IDLE_SECONDS = 1.0
# Keys per `IN (...)` query on latest_metrics (MLflow uses 500 too).
KEYS_PER_QUERY = 500
# How long a SQLite connection of ours waits for the write lock of another writer.
SQLITE_BUSY_SECONDS = 120
DIALECTS = ("sqlite", "postgresql", "mysql")


@dataclass(frozen=True)
class _Statements:
    insert_metrics: str
    select_latest: str          # format with {keys}: the placeholders of one key batch
    insert_latest: str
    update_latest: str
    placeholder: str


def _statements(dialect: str, paramstyle: str) -> _Statements:
    mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(paramstyle)
    if mark is None:
        raise UsageError(f"--mlflow-bulk: unsupported database driver parameter style {paramstyle!r}")
    key = "`key`" if dialect == "mysql" else "key"     # KEY is a reserved word in MySQL

    def columns(names: tuple[str, ...]) -> str:
        return ", ".join(key if n == "key" else n for n in names)

    def marks(n: int) -> str:
        return ", ".join([mark] * n)

    insert = f"INSERT INTO metrics ({columns(METRIC_COLUMNS)}) VALUES ({marks(len(METRIC_COLUMNS))})"
    if dialect == "sqlite":
        insert = insert.replace("INSERT INTO", "INSERT OR IGNORE INTO", 1)
    elif dialect == "postgresql":
        insert += " ON CONFLICT ON CONSTRAINT metric_pk DO NOTHING"
    else:  # mysql: a no-op update on a duplicate key (INSERT IGNORE would also hide other errors)
        insert += " ON DUPLICATE KEY UPDATE step = step"
    return _Statements(
        insert_metrics=insert,
        select_latest=(f"SELECT {key}, step, timestamp, value FROM latest_metrics "
                       f"WHERE run_uuid = {mark} AND {key} IN ({{keys}})"),
        insert_latest=(f"INSERT INTO latest_metrics ({columns(LATEST_COLUMNS)}) "
                       f"VALUES ({marks(len(LATEST_COLUMNS))})"),
        update_latest=(f"UPDATE latest_metrics SET value = {mark}, timestamp = {mark}, step = {mark}, "
                       f"is_nan = {mark} WHERE run_uuid = {mark} AND {key} = {mark}"),
        placeholder=mark,
    )


def dialect_of(db_uri: str) -> str:
    name = db_uri.split(":", 1)[0].split("+", 1)[0].lower()
    return "postgresql" if name == "postgres" else name


def stored_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value column, is_nan column) as MLflow's SQL store keeps float values."""
    values = np.asarray(values, dtype=np.float64)
    is_nan = np.isnan(values)
    stored = np.where(is_nan, 0.0, values)
    stored = np.where(np.isposinf(stored), FLOAT_MAX, stored)
    stored = np.where(np.isneginf(stored), -FLOAT_MAX, stored)
    return stored, is_nan


def latest_points(codes: np.ndarray, steps: np.ndarray, timestamps: np.ndarray,
                  stored: np.ndarray) -> np.ndarray:
    """Index of each key's latest point: max (step, timestamp, stored value), the first on a tie.

    MLflow replaces a key's latest row only by a point strictly greater in that order, in
    arrival order, so among equal maxima the first one stays.
    """
    n = codes.size
    order = np.lexsort((-np.arange(n), stored, timestamps, steps, codes))
    sorted_codes = codes[order]
    last = np.ones(n, dtype=bool)
    last[:-1] = sorted_codes[1:] != sorted_codes[:-1]
    return order[last]


class BulkStore:
    """One MLflow SQL store written in bulk: one engine, one writer at a time, the schema guard."""

    def __init__(self, db_uri: str, display_uri: str, local_file: Path | None = None):
        self.db_uri = db_uri              # may hold a password: never printed
        self.display_uri = display_uri    # secret-free, for messages
        self.dialect = dialect_of(db_uri)
        if self.dialect not in DIALECTS:
            raise UsageError(f"--mlflow-bulk supports SQLite, PostgreSQL and MySQL stores, not "
                             f"{self.dialect}: drop --mlflow-bulk to load {display_uri} through the SDK")
        self.local_file = local_file
        self.revision: str | None = None
        self._engine = None
        self._statements: _Statements | None = None
        self._lock = threading.Lock()     # one bulk transaction at a time (SQLite has one writer)
        self._jobs: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._checked = False
        if local_file is None or (local_file.exists() and local_file.stat().st_size > 0):
            self.check()
        # else: a store MLflow has not created yet; checked at the first run, once MLflow made it

    # -- engine and guard --------------------------------------------------------

    @property
    def engine(self):
        if self._engine is None:
            import sqlalchemy

            kwargs: dict = {"pool_pre_ping": True}
            if self.dialect == "sqlite":
                kwargs["connect_args"] = {"timeout": SQLITE_BUSY_SECONDS}
            engine = sqlalchemy.create_engine(self.db_uri, **kwargs)
            if self.dialect == "sqlite":
                sqlalchemy.event.listen(engine, "connect", _sqlite_connection)
            self._statements = _statements(self.dialect, engine.dialect.paramstyle)
            weakref.finalize(self, engine.dispose)
            self._engine = engine
        return self._engine

    def check(self) -> str | None:
        """The store's schema revision, refused unless supported; None for a store with no tables yet."""
        import sqlalchemy

        try:
            with self.engine.connect() as conn:
                inspector = sqlalchemy.inspect(conn)
                tables = set(inspector.get_table_names())
                if not tables:
                    return None
                if "alembic_version" not in tables:
                    raise UsageError(f"{self.display_uri} is not an MLflow store (no alembic_version "
                                     f"table); --mlflow-bulk writes only MLflow's own tables")
                found = [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
                pk = inspector.get_pk_constraint("metrics") if "metrics" in tables else {}
                latest_pk = inspector.get_pk_constraint("latest_metrics") if "latest_metrics" in tables else {}
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise UsageError(f"--mlflow-bulk cannot read the schema of {self.display_uri}: "
                             f"{type(exc).__name__}: {_reason(exc)}") from None
        revision = found[0] if len(found) == 1 else ", ".join(found) or "none"
        if revision not in SUPPORTED_REVISIONS:
            raise UsageError(
                f"--mlflow-bulk: the MLflow store {self.display_uri} is at schema revision {revision}, "
                f"which this trackport has not checked; it writes MLflow's metric tables only at "
                f"revisions {', '.join(SUPPORTED_REVISIONS)} (MLflow 3.17). Upgrade the store with "
                f"`mlflow db upgrade <database uri>` (after a backup), or drop --mlflow-bulk to load "
                f"through the MLflow SDK"
            )
        want_pk = set(METRIC_COLUMNS)
        if set(pk.get("constrained_columns") or ()) != want_pk or \
                set(latest_pk.get("constrained_columns") or ()) != {"key", "run_uuid"}:
            raise UsageError(f"--mlflow-bulk: the metrics tables of {self.display_uri} do not have the "
                             f"primary keys of schema revision {revision}; drop --mlflow-bulk")
        self.revision = revision
        self._checked = True
        return revision

    def ensure_checked(self, project_id: str = "", run_id: str = "") -> None:
        if self._checked:
            return
        with self._lock:
            if self._checked:
                return
            try:
                got = self.check()
            except UsageError as exc:
                raise RunError(str(exc), project_id=project_id, run_id=run_id) from None
            if got is None:
                raise RunError(f"--mlflow-bulk: {self.display_uri} has no MLflow tables after the run "
                               f"was created", project_id=project_id, run_id=run_id)

    def run(self, run_uuid: str, project_id: str, run_id: str) -> "BulkRun":
        """The bulk writer of one MLflow run (created, and checked active, by the SDK path)."""
        self.ensure_checked(project_id, run_id)
        return BulkRun(self, run_uuid, project_id, run_id)

    def submit(self, run: "BulkRun", chunk: tuple) -> None:
        """Queue one chunk of `run` for the writer thread (blocks while QUEUE_CHUNKS are waiting)."""
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_loop, name="trackport-mlflow-bulk",
                                                daemon=True)
                self._thread.start()
            # Under the lock, so the thread cannot decide it is idle between the check and the put.
            self._jobs.put((run, chunk))

    def _write_loop(self) -> None:
        """The writer thread: chunks in arrival order; it ends after IDLE_SECONDS without work."""
        while True:
            try:
                job = self._jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._thread_lock:
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            if job is None:
                return
            run, chunk = job
            run._write(chunk)

    def close(self) -> None:
        with self._thread_lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._jobs.put(None)
        if thread is not None:
            thread.join()
        if self._engine is not None:
            self._engine.dispose()

    # -- one transaction -----------------------------------------------------------

    def write(self, run_uuid: str, keys: list[str], codes: np.ndarray, values: np.ndarray,
              timestamps: np.ndarray, steps: np.ndarray) -> None:
        """Insert points (codes index `keys`) and update latest_metrics, in one transaction."""
        from itertools import repeat

        stored, is_nan = stored_values(values)
        key_column = np.array(keys, dtype=object)[codes].tolist()
        rows = list(zip(key_column, stored.tolist(), timestamps.tolist(), repeat(run_uuid, codes.size),
                        steps.tolist(), is_nan.tolist()))
        latest = latest_points(codes, steps, timestamps, stored)
        candidates = {keys[codes[i]]: (int(steps[i]), int(timestamps[i]), float(stored[i]), bool(is_nan[i]))
                      for i in latest.tolist()}
        st = self._statements
        engine = self.engine
        assert st is not None
        with self._lock, engine.begin() as conn:
            # The insert first: on SQLite it takes the write lock (waiting for it), so the
            # latest_metrics read below cannot be overtaken by another writer.
            conn.exec_driver_sql(st.insert_metrics, rows)
            names = sorted(candidates)
            old: dict[str, tuple] = {}
            for i in range(0, len(names), KEYS_PER_QUERY):
                batch = names[i:i + KEYS_PER_QUERY]
                sql = st.select_latest.format(keys=", ".join([st.placeholder] * len(batch)))
                for key, step, ts, value in conn.exec_driver_sql(sql, (run_uuid, *batch)):
                    old[key] = (int(step), int(ts), float(value))
            inserts, updates = [], []
            for key in names:
                step, ts, value, nan = candidates[key]
                before = old.get(key)
                if before is None:
                    inserts.append((key, value, ts, step, nan, run_uuid))
                elif (step, ts, value) > before:
                    updates.append((value, ts, step, nan, run_uuid, key))
            if inserts:
                conn.exec_driver_sql(st.insert_latest, inserts)
            if updates:
                conn.exec_driver_sql(st.update_latest, updates)


class BulkRun:
    """Metric points of one MLflow run, buffered as arrays and written FLUSH_ROWS at a time.

    The transactions run on the store's writer thread, so reading and preparing the next
    points overlaps with the database work; `flush` (at commit) waits for all of them and
    raises the first error.
    """

    def __init__(self, store: BulkStore, run_uuid: str, project_id: str, run_id: str):
        self.store = store
        self.run_uuid = run_uuid
        self.project_id = project_id
        self.source_run = run_id
        self.points = 0                       # points handed over (written or on their way)
        self._keys: list[str] = []
        self._key_ids: dict[str, int] = {}
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._pending = 0                     # chunks handed to the writer thread, not done yet
        self._done = threading.Condition()
        self._error: BaseException | None = None

    def add(self, keys: list[str], codes: np.ndarray, values: np.ndarray, timestamps: np.ndarray,
            steps: np.ndarray) -> None:
        """Points prepared by the SDK path: MLflow keys, key index per point, float64, int64 ms, int64."""
        self._raise_failure()
        if codes.size == 0:
            return
        ids = np.fromiter((self._key_id(k) for k in keys), np.int64, len(keys))
        self._parts.append((ids[codes], np.asarray(values, np.float64), np.asarray(timestamps, np.int64),
                            np.asarray(steps, np.int64)))
        self._buffered += codes.size
        self.points += codes.size
        if self._buffered >= FLUSH_ROWS:
            self._send(whole_chunks_only=True)

    def _key_id(self, key: str) -> int:
        got = self._key_ids.get(key)
        if got is None:
            got = self._key_ids[key] = len(self._keys)
            self._keys.append(key)
        return got

    def flush(self) -> None:
        """Write everything handed over so far, and wait until it is in the store."""
        self._send(whole_chunks_only=False)
        with self._done:
            self._done.wait_for(lambda: self._pending == 0)
        self._raise_failure()

    def _send(self, whole_chunks_only: bool) -> None:
        """Hand the buffer to the writer thread in FLUSH_ROWS chunks (blocks while it is behind)."""
        if not self._parts:
            return
        if len(self._parts) == 1:
            codes, values, stamps, steps = self._parts[0]
        else:
            codes, values, stamps, steps = (np.concatenate(c) for c in zip(*self._parts))
        self._parts, self._buffered = [], 0
        keys = list(self._keys)
        for start in range(0, codes.size, FLUSH_ROWS):
            part = slice(start, start + FLUSH_ROWS)
            if whole_chunks_only and start + FLUSH_ROWS > codes.size:
                self._parts.append((codes[part], values[part], stamps[part], steps[part]))
                self._buffered = codes.size - start
                break
            with self._done:
                self._pending += 1
            self.store.submit(self, (keys, codes[part], values[part], stamps[part], steps[part]))

    def _write(self, chunk: tuple) -> None:
        """On the writer thread: one transaction; an error is kept for the run's thread."""
        import sqlalchemy

        try:
            if self._error is None:
                self.store.write(self.run_uuid, *chunk)
        except sqlalchemy.exc.OperationalError as exc:
            # Locked, connection lost, server going away: worth another attempt of the run.
            self._fail(TransientError(f"MLflow store (bulk): {_reason(exc)}"))
        except sqlalchemy.exc.SQLAlchemyError as exc:
            self._fail(RunError(f"writing metrics in bulk into {self.store.display_uri} failed: "
                                f"{type(exc).__name__}: {_reason(exc)}", project_id=self.project_id,
                                run_id=self.source_run))
        except BaseException as exc:  # noqa: BLE001 - handed to the run's thread, raised there
            self._fail(exc)
        finally:
            with self._done:
                self._pending -= 1
                self._done.notify_all()

    def _fail(self, exc: BaseException) -> None:
        with self._done:
            if self._error is None:
                self._error = exc

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error


def _sqlite_connection(dbapi_connection, connection_record) -> None:
    # A bigger page cache (16 MB, default 2 MB) for the index inserts: this connection only,
    # nothing about durability.  More bought little (+5% at 64 MB) for the memory it holds.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA cache_size = -16384")
    cursor.close()


def _reason(exc: BaseException) -> str:
    """The driver's message without SQLAlchemy's echo of the statement and its parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.splitlines()[0][:500] if text else type(exc).__name__
