"""`--mlflow-bulk`: a run's rows go straight into an MLflow SQL store's tables.

The writer of sink.py prepares everything exactly as for the SDK (keys, int64
steps, filled timestamps, counted transformations, points already there on
resume left out, params and tags checked by MLflow's own validators) and hands
it to a `BulkRun` instead of the SDK: the run's row (`runs`) and its first
tags, its params (`params`), its tags (`tags`), its metric points (`metrics`,
`latest_metrics`), its end (status, end time, name) and the completion mark.
Points are buffered as arrays; a run with more than `FLUSH_ROWS` points writes
them `FLUSH_ROWS` at a time (the first such transaction also creates the run's
row), and everything else of the run, the completion mark included, goes in
its last transaction: the mark never lands without the data.  Small runs
committing at the same time share one transaction (`GROUP_ROWS`); should such
a group fail, each of its runs is written again alone, so one bad run never
fails another.  Artifacts (files, the manifest) still go to the artifact store
through MLflow's artifact repositories, dataset inputs through the SDK.

A run's row mirrors MLflow's own `SqlAlchemyStore.create_run`
(mlflow/store/tracking/sqlalchemy_store.py): run_uuid `uuid.uuid4().hex`,
status RUNNING, source_type UNKNOWN, source_name, entry_point_name and
source_version "", lifecycle_stage "active", end_time and deleted_time NULL,
artifact_uri = `append_to_uri_path(experiment.artifact_location, run_uuid,
"artifacts")`, user_id the `mlflow.user` tag or "unknown"
(`TrackingServiceClient.create_run`), and a `mlflow.runName` tag; the end is
MLflow's `update_run_info` (status; end_time when known; name and the
`mlflow.runName` tag when renamed).  Params are MLflow's `_log_params`: one
already stored with the same value is left alone, with another value it is an
error naming the run; tags are `_set_tags`: inserted or overwritten.

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
(`alembic_version.version_num`) and the primary keys of every table written
(`runs`, `tags`, `params`, `metrics`, `latest_metrics`) before anything is
written; an unknown revision is refused.

This module imports SQLAlchemy (MLflow's own dependency), never the MLflow SDK.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trackport.core.errors import RunError, TransientError, UsageError

from .origin_sql import driver_reason as _reason
from .points import FLOAT_MAX

log = logging.getLogger(__name__)

# Schema revisions whose `runs`, `tags`, `params`, `metrics` and `latest_metrics` tables were
# checked to be the ones this module writes: the head of mlflow 3.17.2 (dc11669786a5) and every
# revision back to a5b4c3d2e1f0, the last migration that touched any of them (it added the index
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
RUN_COLUMNS = ("run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id", "status",
               "start_time", "end_time", "deleted_time", "source_version", "lifecycle_stage",
               "artifact_uri", "experiment_id")
# The primary key of every table written, as mlflow/store/tracking/dbmodels/models.py declares it.
PRIMARY_KEYS = {
    "runs": {"run_uuid"},
    "tags": {"key", "run_uuid"},
    "params": {"key", "run_uuid"},
    "metrics": set(METRIC_COLUMNS),
    "latest_metrics": {"key", "run_uuid"},
}
# Points per transaction (one executemany).  Bigger amortises the commit; smaller keeps the
# SQLite write lock short for the SDK calls of other runs (they wait at most 5 s for it).
FLUSH_ROWS = 100_000
# Jobs waiting for the writer thread: bounds the memory a fast reader can fill (a job holds
# at most FLUSH_ROWS points).
QUEUE_CHUNKS = 8
# Jobs of several runs taken into one transaction while their points stay under this many.
GROUP_ROWS = 20_000
GROUP_JOBS = 64
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
    insert_run: str
    insert_tags: str             # a new run's tags
    upsert_tags: str             # MLflow's _set_tags: insert or overwrite
    insert_params: str
    select_params: str           # format with {keys}
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
    tag_insert = f"INSERT INTO tags ({key}, value, run_uuid) VALUES ({marks(3)})"
    if dialect == "sqlite":
        tag_upsert = tag_insert + f" ON CONFLICT ({key}, run_uuid) DO UPDATE SET value = excluded.value"
    elif dialect == "postgresql":
        tag_upsert = tag_insert + " ON CONFLICT ON CONSTRAINT tag_pk DO UPDATE SET value = EXCLUDED.value"
    else:
        tag_upsert = tag_insert + " ON DUPLICATE KEY UPDATE value = VALUES(value)"
    return _Statements(
        insert_metrics=insert,
        select_latest=(f"SELECT {key}, step, timestamp, value FROM latest_metrics "
                       f"WHERE run_uuid = {mark} AND {key} IN ({{keys}})"),
        insert_latest=(f"INSERT INTO latest_metrics ({columns(LATEST_COLUMNS)}) "
                       f"VALUES ({marks(len(LATEST_COLUMNS))})"),
        update_latest=(f"UPDATE latest_metrics SET value = {mark}, timestamp = {mark}, step = {mark}, "
                       f"is_nan = {mark} WHERE run_uuid = {mark} AND {key} = {mark}"),
        insert_run=f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({marks(len(RUN_COLUMNS))})",
        insert_tags=tag_insert,
        upsert_tags=tag_upsert,
        insert_params=f"INSERT INTO params ({key}, value, run_uuid) VALUES ({marks(3)})",
        select_params=f"SELECT {key}, value FROM params WHERE run_uuid = {mark} AND {key} IN ({{keys}})",
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


@dataclass(frozen=True)
class RunRow:
    """A new run's `runs` row, as MLflow's SqlAlchemyStore.create_run fills it (see the module doc)."""
    run_uuid: str
    name: str
    experiment_id: str
    user_id: str
    start_time: int
    artifact_uri: str

    def values(self) -> tuple:
        # RUN_COLUMNS order; SourceType.to_string(SourceType.UNKNOWN), RunStatus RUNNING,
        # LifecycleStage.ACTIVE as mlflow/entities spell them
        return (self.run_uuid, self.name, "UNKNOWN", "", "", self.user_id, "RUNNING", self.start_time, None,
                None, "", "active", self.artifact_uri, int(self.experiment_id))


def new_run_uuid() -> str:
    return uuid.uuid4().hex    # SqlAlchemyStore.create_run: run_id = uuid.uuid4().hex


def now_ms() -> int:
    return int(time.time() * 1000)   # mlflow.utils.time.get_current_time_millis


@dataclass
class _Final:
    """The last transaction of a run: params, tags, end (status, end_time, new name)."""
    params: list[tuple[str, str]]
    tags: list[tuple[str, str]]
    status: str
    end_time: int | None
    name: str | None


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
            elif sqlalchemy.engine.make_url(self.db_uri).get_driver_name() == "psycopg2":
                # psycopg2's executemany sends one statement per row; SQLAlchemy's psycopg2
                # dialect sends them through psycopg2.extras.execute_batch instead, many per round
                # trip (https://docs.sqlalchemy.org/en/20/dialects/postgresql.html, "Psycopg2 Fast
                # Execution Helpers").
                kwargs["executemany_mode"] = "values_plus_batch"
                kwargs["executemany_batch_page_size"] = 1000
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
                keys = {table: set((inspector.get_pk_constraint(table) if table in tables else {})
                                   .get("constrained_columns") or ())
                        for table in PRIMARY_KEYS}
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise UsageError(f"--mlflow-bulk cannot read the schema of {self.display_uri}: "
                             f"{type(exc).__name__}: {_reason(exc)}") from None
        revision = found[0] if len(found) == 1 else ", ".join(found) or "none"
        if revision not in SUPPORTED_REVISIONS:
            raise UsageError(
                f"--mlflow-bulk: the MLflow store {self.display_uri} is at schema revision {revision}, "
                f"which this trackport has not checked; it writes MLflow's run tables only at "
                f"revisions {', '.join(SUPPORTED_REVISIONS)} (MLflow 3.17). Upgrade the store with "
                f"`mlflow db upgrade <database uri>` (after a backup), or drop --mlflow-bulk to load "
                f"through the MLflow SDK"
            )
        wrong = sorted(table for table, want in PRIMARY_KEYS.items() if keys[table] != want)
        if wrong:
            raise UsageError(f"--mlflow-bulk: the tables {', '.join(wrong)} of {self.display_uri} do not "
                             f"have the primary keys of schema revision {revision}; drop --mlflow-bulk")
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

    def run(self, project_id: str, run_id: str) -> "BulkRun":
        """The bulk writer of one run (`create` a new MLflow run or `existing` one, then add to it)."""
        self.ensure_checked(project_id, run_id)
        return BulkRun(self, project_id, run_id)

    def submit(self, run: "BulkRun", chunk: tuple | None, final: _Final | None = None) -> None:
        """Queue one job of `run` for the writer thread (blocks while QUEUE_CHUNKS are waiting)."""
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_loop, name="trackport-mlflow-bulk",
                                                daemon=True)
                self._thread.start()
            # Under the lock, so the thread cannot decide it is idle between the check and the put.
            self._jobs.put((run, chunk, final))

    def _write_loop(self) -> None:
        """The writer thread: jobs in arrival order, several small ones per transaction; it ends
        after IDLE_SECONDS without work."""
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
            group, rows, stop = [job], _job_rows(job), False
            while rows < GROUP_ROWS and len(group) < GROUP_JOBS:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                group.append(more)
                rows += _job_rows(more)
            self._write_group(group)
            if stop:
                return

    def _write_group(self, group: list[tuple]) -> None:
        """One transaction for the group; should it fail, each job again in its own, so that a
        run the store refuses fails alone."""
        live = []
        for job in group:      # a run that failed already writes nothing more
            if job[0]._error is None:
                live.append(job)
            else:
                job[0]._done_one(None)
        group = live
        if len(group) > 1:
            try:
                self._transaction(group)
            except Exception:  # noqa: BLE001 - each job is tried alone below, its error kept there
                log.debug("a grouped bulk transaction failed; writing its runs one by one", exc_info=True)
            else:
                for run, _, _ in group:
                    run._done_one(None)
                return
        for job in group:
            run = job[0]
            try:
                if run._error is None:
                    self._transaction([job])
            except BaseException as exc:  # noqa: BLE001 - handed to the run's thread, raised there
                run._done_one(exc)
            else:
                run._done_one(None)

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

    def _transaction(self, jobs: list[tuple]) -> None:
        """Every job of `jobs` (run, points or None, final or None) in one transaction; the runs
        whose rows it creates are marked created once it is committed."""
        made: list[BulkRun] = []
        with self._lock, self.engine.begin() as conn:
            for run, chunk, final in jobs:
                existed = run.created or run in made
                if not existed:
                    self._create(conn, run)
                    made.append(run)
                if chunk is not None:
                    self._metrics(conn, run.run_uuid, *chunk)
                if final is not None:
                    self._finish(conn, run, final, check_params=existed)
        for run in made:
            run.created = True

    def _create(self, conn, run: "BulkRun") -> None:
        """SqlAlchemyStore.create_run: the run's row, then its tags (their foreign key is the row)."""
        st = self._statements
        row = run.row
        if row is None:
            raise RunError("bulk: no MLflow run to write into", project_id=run.project_id, run_id=run.source_run)
        conn.exec_driver_sql(st.insert_run, row.values())
        if run.start_tags:
            conn.exec_driver_sql(st.insert_tags, [(k, v, row.run_uuid) for k, v in run.start_tags])

    def _finish(self, conn, run: "BulkRun", final: _Final, check_params: bool) -> None:
        """log_batch's params and tags (SqlAlchemyStore._log_params, _set_tags), then
        update_run_info (status, end_time, name) and the active check MLflow makes first."""
        st = self._statements
        run_uuid = run.run_uuid
        params = final.params
        if params and check_params:
            old: dict[str, str] = {}
            names = [k for k, _ in params]
            for i in range(0, len(names), KEYS_PER_QUERY):
                batch = names[i:i + KEYS_PER_QUERY]
                sql = st.select_params.format(keys=", ".join([st.placeholder] * len(batch)))
                old.update((k, v) for k, v in conn.exec_driver_sql(sql, (run_uuid, *batch)))
            changed = [{"key": k, "old_value": old[k], "new_value": v} for k, v in params
                       if k in old and old[k] != v]
            if changed:
                # the message of SqlAlchemyStore._log_params
                raise RunError(f"Changing param values is not allowed. Params were already logged="
                               f"'{changed}' for run ID='{run_uuid}'.", project_id=run.project_id,
                               run_id=run.source_run)
            params = [(k, v) for k, v in params if k not in old]
        if params:
            conn.exec_driver_sql(st.insert_params, [(k, v, run_uuid) for k, v in params])
        tags = dict(final.tags)          # the last value of a key, as _set_tags keeps it
        if final.name:
            tags["mlflow.runName"] = final.name
        if tags:
            conn.exec_driver_sql(st.upsert_tags, [(k, v, run_uuid) for k, v in tags.items()])
        sets, args = ["status = " + st.placeholder], [final.status]
        if final.end_time is not None:
            sets.append("end_time = " + st.placeholder)
            args.append(final.end_time)
        if final.name:
            sets.append("name = " + st.placeholder)
            args.append(final.name)
        result = conn.exec_driver_sql(
            f"UPDATE runs SET {', '.join(sets)} WHERE run_uuid = {st.placeholder} "
            f"AND lifecycle_stage = 'active'", (*args, run_uuid))
        if result.rowcount == 0:
            raise RunError(f"MLflow run {run_uuid} is not active any more (deleted while it was written)",
                           project_id=run.project_id, run_id=run.source_run)

    def write(self, run_uuid: str, keys: list[str], codes: np.ndarray, values: np.ndarray,
              timestamps: np.ndarray, steps: np.ndarray) -> None:
        """Insert points (codes index `keys`) of an existing run and update latest_metrics, in one
        transaction."""
        with self._lock, self.engine.begin() as conn:
            self._metrics(conn, run_uuid, keys, codes, values, timestamps, steps)

    def _metrics(self, conn, run_uuid: str, keys: list[str], codes: np.ndarray, values: np.ndarray,
                 timestamps: np.ndarray, steps: np.ndarray) -> None:
        from itertools import repeat

        stored, is_nan = stored_values(values)
        key_column = np.array(keys, dtype=object)[codes].tolist()
        rows = list(zip(key_column, stored.tolist(), timestamps.tolist(), repeat(run_uuid, codes.size),
                        steps.tolist(), is_nan.tolist()))
        latest = latest_points(codes, steps, timestamps, stored)
        candidates = {keys[codes[i]]: (int(steps[i]), int(timestamps[i]), float(stored[i]), bool(is_nan[i]))
                      for i in latest.tolist()}
        st = self._statements
        assert st is not None
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


def _job_rows(job: tuple) -> int:
    chunk = job[1]
    return 1 + (chunk[1].size if chunk is not None else 0)


class BulkRun:
    """One MLflow run written in bulk: its row, points buffered as arrays, its last transaction.

    The transactions run on the store's writer thread, so reading and preparing the next
    points overlaps with the database work; `flush` and `commit` wait for all of them and
    raise the first error.
    """

    def __init__(self, store: BulkStore, project_id: str, run_id: str):
        self.store = store
        self.run_uuid = ""
        self.project_id = project_id
        self.source_run = run_id
        self.row: RunRow | None = None
        self.start_tags: list[tuple[str, str]] = []
        self.created = False                  # the run's row is in the store
        self.points = 0                       # points handed over (written or on their way)
        self._keys: list[str] = []
        self._key_ids: dict[str, int] = {}
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._pending = 0                     # jobs handed to the writer thread, not done yet
        self._done = threading.Condition()
        self._error: BaseException | None = None

    def create(self, row: RunRow, tags: list[tuple[str, str]]) -> None:
        """A new MLflow run: its row and tags go with its first transaction."""
        self.row, self.run_uuid, self.start_tags = row, row.run_uuid, list(tags)

    def existing(self, run_uuid: str) -> None:
        """An MLflow run already in the store (resumed)."""
        self.run_uuid, self.created = run_uuid, True

    def ensure_created(self) -> None:
        """The run's row in the store now (for what other writers or the SDK must see)."""
        if not self.created:
            self._submit(None, None)
            self._wait()

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
            self._send()

    def _key_id(self, key: str) -> int:
        got = self._key_ids.get(key)
        if got is None:
            got = self._key_ids[key] = len(self._keys)
            self._keys.append(key)
        return got

    def flush(self) -> None:
        """Write every point handed over so far, and wait until it is in the store."""
        self._send()
        rest = self._take_rest()
        if rest is not None:
            self._submit(rest, None)
        self._wait()

    def commit(self, params: list[tuple[str, str]], tags: list[tuple[str, str]], status: str,
               end_time: int | None, name: str | None) -> None:
        """The run's last transaction: the points not written yet, params, tags (the completion
        mark among them), the end; returns once it is committed."""
        self._send()
        self._submit(self._take_rest(), _Final(list(params), list(tags), status, end_time, name))
        self._wait()

    def cancel(self) -> None:
        """The run failed elsewhere: its jobs still queued write nothing; wait for the one under way."""
        self._fail(RunError("the run was abandoned", project_id=self.project_id, run_id=self.source_run))
        with self._done:
            self._done.wait_for(lambda: self._pending == 0)

    def _wait(self) -> None:
        with self._done:
            self._done.wait_for(lambda: self._pending == 0)
        self._raise_failure()

    def _submit(self, chunk: tuple | None, final: _Final | None) -> None:
        self._raise_failure()
        with self._done:
            self._pending += 1
        self.store.submit(self, chunk, final)

    def _take_rest(self) -> tuple | None:
        if not self._parts:
            return None
        codes, values, stamps, steps = (np.concatenate(c) for c in zip(*self._parts))
        self._parts, self._buffered = [], 0
        return (list(self._keys), codes, values, stamps, steps)

    def _send(self) -> None:
        """Hand whole FLUSH_ROWS chunks of the buffer to the writer thread (blocks while it is
        behind); the rest stays for the next call or the last transaction."""
        if self._buffered < FLUSH_ROWS:
            return
        codes, values, stamps, steps = (np.concatenate(c) for c in zip(*self._parts))
        self._parts, self._buffered = [], 0
        keys = list(self._keys)
        for start in range(0, codes.size, FLUSH_ROWS):
            part = slice(start, start + FLUSH_ROWS)
            if start + FLUSH_ROWS > codes.size:
                self._parts.append((codes[part], values[part], stamps[part], steps[part]))
                self._buffered = codes.size - start
                break
            self._submit((keys, codes[part], values[part], stamps[part], steps[part]), None)

    def _done_one(self, exc: BaseException | None) -> None:
        """On the writer thread: one job of this run ended; an error is kept for the run's thread."""
        if exc is not None:
            self._fail(self._translated(exc))
        with self._done:
            self._pending -= 1
            self._done.notify_all()

    def _translated(self, exc: BaseException) -> BaseException:
        import sqlalchemy

        if isinstance(exc, sqlalchemy.exc.OperationalError):
            # Locked, connection lost, server going away: worth another attempt of the run.
            return TransientError(f"MLflow store (bulk): {_reason(exc)}")
        if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
            return RunError(f"writing run {self.run_uuid} in bulk into {self.store.display_uri} failed: "
                            f"{type(exc).__name__}: {_reason(exc)}", project_id=self.project_id,
                            run_id=self.source_run)
        return exc

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
