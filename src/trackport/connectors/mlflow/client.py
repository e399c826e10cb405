"""The only module of the MLflow connector that imports the MLflow SDK.

`Tracking` wraps one `mlflow.tracking.MlflowClient` (plus its store, for the
calls the client wraps with side effects we do not want: printing run URLs on
`set_terminated`, re-wrapping every metric in `log_batch`, collecting a whole
metric history in memory) and translates MLflow's errors into trackport's
TransientError / RunError.

Retries (see docs/reliability.md): MLflow's REST client retries 429/5xx/connection
errors by itself, POSTs included (urllib3 Retry with allowed_methods=None in
mlflow/utils/request_utils.py `_cached_get_request_session`), for minutes, without
telling us and blind to non-idempotent calls (a create_run whose answer was lost
is sent again: two runs).  For a tracking server we take that over: the session
MLflow uses gets, for our server's URL only, an adapter that does not retry and
turns 429/5xx/connection failures into TransientError (with Retry-After).  GETs are
retried right there (idempotent); every other call is retried by `Tracking._call`
with trackport's bounded, per-endpoint shared Backoff, and `create_run` callers
look the run up before creating it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

# MLflow 3 reports usage to an outside host unless told not to; a migration tool
# must not phone home (mlflow/telemetry/utils.py reads this at import).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import requests  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException, RestException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository  # noqa: E402
from mlflow.store.tracking.file_store import FileStore  # noqa: E402
from mlflow.utils.file_utils import local_file_uri_to_path  # noqa: E402
from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri  # noqa: E402

from trackport.core.connector import check_output_folder, probe_write  # noqa: E402
from trackport.core.errors import RunError, TransientError, UsageError  # noqa: E402
from trackport.core.model import RunRef  # noqa: E402
from trackport.core.retry import Backoff, parse_retry_after, request_timeout  # noqa: E402


log = logging.getLogger(__name__)

HISTORY_PAGE = 25_000     # what MlflowClient itself asks per page
SEARCH_PAGE = 1_000
ARTIFACT_REPOS_KEPT = 1_024   # as many as MLflow's own cache keeps

_TRANSIENT_CODES = {
    "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED", "ABORTED", "UNAVAILABLE",
}
# A server's INTERNAL_ERROR (HTTP 500) may pass; the same code raised inside this process
# is MlflowException's default for any failure (an `mlflow-artifacts:/` URI with no server
# to resolve it, mlflow/store/artifact/mlflow_artifacts_repo.py) and never passes.
_SERVER_TRANSIENT_CODES = _TRANSIENT_CODES | {"INTERNAL_ERROR"}

__all__ = ["Metric", "Param", "RunTag", "Tracking", "errors"]


def _status(exc: MlflowException) -> int:
    try:
        return int(exc.get_http_status_code())
    except Exception:  # noqa: BLE001 - a malformed error still has to be classified
        return 500


def _ours(exc: BaseException | None) -> TransientError | RunError | None:
    """A TransientError / RunError of ours that MLflow wrapped (its http_request re-raises
    every exception as MlflowException("API request ... failed with exception ..."))."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (TransientError, RunError)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def classify(exc: BaseException, project_id: str = "", run_id: str = "", file: str | None = None
             ) -> Exception:
    """The trackport error for an exception raised by MLflow (or by requests under it)."""
    text = str(exc)
    inner = _ours(exc)
    if isinstance(inner, TransientError):
        copy = TransientError(str(inner), retry_after=inner.retry_after, throttled=inner.throttled)
        copy.exhausted = inner.exhausted
        copy.run_level = inner.run_level
        return copy
    if isinstance(inner, RunError):
        return RunError(inner.reason, project_id=project_id or inner.project_id,
                        run_id=run_id or inner.run_id, file=file or inner.file)
    if isinstance(exc, MlflowException):
        code = getattr(exc, "error_code", "") or ""
        # A server's answer: RestException, or the text verify_rest_response makes of a
        # body that is not JSON (mlflow/utils/rest_utils.py).
        if isinstance(exc, RestException) or text.startswith("API request to"):
            status = _status(exc)
            if status == 429 or status >= 500 or code in _SERVER_TRANSIENT_CODES:
                return TransientError(f"MLflow: {text}")
        elif code in _TRANSIENT_CODES:       # raised here: only what says it may pass
            return TransientError(f"MLflow: {text}")
        if "IntegrityError" in text and code != "RESOURCE_ALREADY_EXISTS":   # that one callers handle
            # A unique key of the store broken: trackport's own writes are idempotent, so another
            # writer inserted the same row between MLflow's check and its insert (MLflow's
            # _log_params / _set_tags check, then insert; the SQL store wraps the database's
            # error as BAD_REQUEST, mlflow/store/db/utils.py make_managed_session).  Asked again,
            # MLflow finds the row and accepts an equal value.
            return TransientError(f"MLflow: a concurrent writer: {text[:300]}")
        if "must be in the 'active' state" in text:
            # Another writer of the same origin lost its claim and deleted the run this one was
            # resuming (mlflow/store/tracking/sqlalchemy_store.py _check_run_is_active): the
            # retry asks the destination again and goes on with the run that stays.
            deleted = TransientError(f"MLflow: the run was deleted by a concurrent writer: {text[:300]}")
            deleted.run_level = True
            return deleted
        return RunError(f"MLflow refused: {text}", project_id=project_id, run_id=run_id, file=file)
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        ConnectionError, TimeoutError)):
        return TransientError(f"MLflow connection failed: {text}")
    if isinstance(exc, FileNotFoundError):
        return RunError(f"file not found: {text}", project_id=project_id, run_id=run_id, file=file)
    if isinstance(exc, OSError):
        return RunError(f"I/O error: {text}", project_id=project_id, run_id=run_id, file=file)
    return exc  # type: ignore[return-value]


@contextlib.contextmanager
def errors(project_id: str = "", run_id: str = "", file: str | None = None):
    try:
        yield
    except (RunError, TransientError):
        raise
    except (MlflowException, requests.exceptions.RequestException, OSError) as exc:
        mapped = classify(exc, project_id, run_id, file)
        if mapped is exc:
            raise
        raise mapped from exc


class _SurfacingAdapter(HTTPAdapter):
    """Transport for our MLflow server: no hidden retries; 429/5xx and connection failures
    become TransientError at once; idempotent GET/HEAD requests are retried here."""

    def __init__(self, endpoint: str, pool_size: int):
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        self.endpoint = endpoint

    def send(self, request, **kwargs):
        if request.method in ("GET", "HEAD"):
            return _backoff(self.endpoint).call(
                f"MLflow {request.method} {request.path_url.split('?')[0]}",
                lambda: self._send_once(request, **kwargs), final=False)
        return self._send_once(request, **kwargs)

    def _send_once(self, request, **kwargs):
        what = f"{request.method} {request.path_url.split('?')[0]}"
        # MLflow passes its own 120 s (MLFLOW_HTTP_REQUEST_TIMEOUT) for connect and read alike;
        # ours: --request-timeout, else that variable when the user set it, else 60 s, with a
        # short connect timeout (docs/reliability.md).
        kwargs["timeout"] = request_timeout(_mlflow_timeout_setting())
        try:
            response = super().send(request, **kwargs)
        except requests.exceptions.Timeout as exc:
            kind = "connecting" if isinstance(exc, requests.exceptions.ConnectTimeout) else "waiting for an answer"
            raise TransientError(f"MLflow {what}: no answer ({kind} timed out after "
                                 f"{kwargs['timeout'][0 if kind == 'connecting' else 1]:g}s; "
                                 f"--request-timeout sets it)") from None
        except requests.exceptions.ConnectionError as exc:
            raise TransientError(f"MLflow {what}: connection failed ({type(exc).__name__})") from None
        status = response.status_code
        if status in (408, 429) or status >= 500:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            body = response.text[:200].strip()
            response.close()
            hint = f", Retry-After {wait:g}s" if wait is not None else ""
            raise TransientError(f"MLflow {what}: HTTP {status}{hint}{': ' + body if body else ''}",
                                 retry_after=wait, throttled=status in (429, 503) or wait is not None)
        return response


def _mlflow_timeout_setting() -> float | None:
    """MLFLOW_HTTP_REQUEST_TIMEOUT when the user set it (MLflow's own default is 120 s)."""
    own = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "").strip()
    try:
        return float(own) if own else None
    except ValueError:
        return None


def _backoff(endpoint: str) -> Backoff:
    """trackport's retry settings; MLflow's own MLFLOW_HTTP_REQUEST_MAX_RETRIES, when set, caps
    the attempts (1 + its value): its retries are ours now."""
    attempts = None
    own = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "").strip()
    if own.isdigit():
        from trackport.core.retry import settings

        attempts = min(settings().max_attempts, 1 + int(own))
    return Backoff(max_attempts=attempts, endpoint=endpoint)


_taken_over: set[tuple] = set()
_take_over_lock = threading.Lock()


def _take_over_retries(tracking_uri: str, endpoint: str) -> None:
    """Mount `_SurfacingAdapter` for `tracking_uri` on the requests session MLflow's
    http_request uses (`_get_request_session`, cached per its retry arguments, which
    http_request reads from these environment variables)."""
    from mlflow.environment_variables import (
        MLFLOW_HTTP_POOL_MAXSIZE, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR, MLFLOW_HTTP_REQUEST_BACKOFF_JITTER,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER,
    )
    from mlflow.utils import request_utils

    prefix = tracking_uri.rstrip("/") + "/"
    args = (MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(),
            MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get(), request_utils._TRANSIENT_FAILURE_RESPONSE_CODES,
            True, MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER.get())
    key = (os.getpid(), prefix, args)
    with _take_over_lock:
        if key in _taken_over:
            return
        session = request_utils._get_request_session(*args)
        session.mount(prefix, _SurfacingAdapter(endpoint, max(32, MLFLOW_HTTP_POOL_MAXSIZE.get())))
        _taken_over.add(key)


class ArtifactsUnreachable(Exception):
    """A run's `mlflow-artifacts:/` URI with no server or folder to resolve it."""

    def __init__(self, artifact_uri: str):
        super().__init__(artifact_uri)
        self.artifact_uri = artifact_uri


def is_missing(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def store_lock_dir(db: Path) -> Path:
    """The lock folder beside a SQLite store or file store (core/claims.py): `.<name>.trackport-locks`."""
    return db.with_name(f".{db.name}.trackport-locks")


def _create_sqlite_store_atomically(db: Path) -> None:
    """A new SQLite store is made by MLflow's migrations under a temporary name, then renamed.

    MLflow creates a missing store's tables migration by migration; a process killed
    half-way leaves a file every later MLflow call refuses ("table ... already exists").
    One process at a time creates (a lock beside the store); it first removes what a
    process killed while creating left: its `.<name>.<pid>.creating` file and that
    file's `-journal` (only files of processes that are gone).
    """
    if db.exists():
        return
    from trackport.core.claims import file_lock
    from trackport.core.scratch import _alive

    db.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(store_lock_dir(db) / "create.lock", f"creating the MLflow store {db}"):
        if db.exists():   # made meanwhile by another process: use theirs
            return
        prefix = f".{db.name}."
        for old in db.parent.glob(f"{glob_escape(prefix)}*.creating*"):
            pid = old.name[len(prefix):].split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            log.info("removing %s, left by a process interrupted while creating the store", old)
            old.unlink(missing_ok=True)
        tmp = db.with_name(f"{prefix}{os.getpid()}.creating")
        store = MlflowClient(tracking_uri=f"sqlite:///{tmp}")._tracking_client.store
        store.engine.dispose()
        os.replace(tmp, db)


def validated(params: list[tuple[str, str]], tags: list[tuple[str, str]], project_id: str = "",
              run_id: str = "") -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Params and tags as MLflow's log_batch checks them before it writes
    (mlflow/utils/validation.py `_validate_batch_log_data`, `_validate_param_keys_unique`): key
    names and lengths, values cut to MLflow's limits where MLflow cuts them; a RunError otherwise."""
    from mlflow.utils.validation import _validate_param, _validate_param_keys_unique, _validate_tag

    with errors(project_id, run_id):
        checked_params = [_validate_param(k, v, path=f"params[{i}]") for i, (k, v) in enumerate(params)]
        _validate_param_keys_unique(checked_params)
        checked_tags = [_validate_tag(k, v, path=f"tags[{i}]") for i, (k, v) in enumerate(tags)]
    return [(p.key, p.value) for p in checked_params], [(t.key, t.value) for t in checked_tags]


def glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


# -- reading a store without changing it ------------------------------------------------

def head_revision() -> str:
    """The schema revision this MLflow opens (alembic head)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def sqlite_revision(db: Path) -> str | None:
    """`alembic_version` of a SQLite store, read through a read-only connection (None: no table)."""
    import sqlite3

    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "alembic_version" not in tables:
            return None
        found = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]
        return ", ".join(found) if found else None
    finally:
        conn.close()


def snapshot_sqlite(db: Path, into: Path) -> Path:
    """A private copy of a SQLite store made with SQLite's online backup API: consistent even
    while a training writes, and the source is opened read-only (`mode=ro`)."""
    import sqlite3

    dst = into / "store.db"
    src = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(str(dst))
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()
    return dst


def check_database_revision(db_uri: str, display_uri: str) -> None:
    """A server database (PostgreSQL, MySQL...) read as a source must be at this MLflow's schema
    head: MLflow would otherwise migrate it in place on open (SqlAlchemyStore.__init__ runs
    every migration when a table of its head is missing), and a source is never changed."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(db_uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            if "alembic_version" not in tables:
                raise UsageError(f"{display_uri} is not an MLflow store (no alembic_version table)")
            found = [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver errors of any dialect
        raise UsageError(f"cannot read the MLflow store {display_uri}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        engine.dispose()
    revision = ", ".join(found) or "none"
    head = head_revision()
    if revision != head:
        raise UsageError(
            f"the MLflow store {display_uri} is at schema revision {revision}, not {head} (the head of "
            f"the installed MLflow); MLflow would migrate it in place on open, and trackport never "
            f"changes a source. Fix: read a copy (dump and restore it into a scratch database, run "
            f"`mlflow db upgrade <copy uri>` there, and point trackport at the copy), or run trackport "
            f"with the MLflow version that wrote the store"
        )


class ReadOnlyFileStore(FileStore):
    """MLflow's file store, read without writing to it.

    MLflow's FileStore creates the root, a default experiment and `.trash` when missing
    (FileStore.__init__ in mlflow/store/tracking/file_store.py), and finds a run only when its
    `metrics/`, `params/` and `artifacts/` folders all exist (`_is_valid_run_directory`): a
    store committed to git (which keeps no empty folder) loses runs it still lists.  Here a
    missing folder is an empty one, and nothing is created."""

    def __init__(self, root_directory: str):
        super(FileStore, self).__init__()   # AbstractStore: skip FileStore's mkdirs
        self.root_directory = root_directory
        self.artifact_root_uri = Path(root_directory).as_uri()
        self.trash_folder = os.path.join(root_directory, FileStore.TRASH_FOLDER_NAME)

    def _get_deleted_experiments(self, full_path=False):
        if not os.path.isdir(self.trash_folder):
            return []
        return super()._get_deleted_experiments(full_path)

    def _is_valid_run_directory(self, run_dir):
        parts = os.path.normpath(run_dir).split(os.sep)
        if FileStore.ARTIFACTS_FOLDER_NAME in parts[:-1]:   # MLflow's own path-traversal guard
            return False
        return os.path.isfile(os.path.join(run_dir, FileStore.META_DATA_FILE_NAME))


def _read_only_registry(root: str):
    """MLflow's file-store model registry (`<root>/models`), read without its constructor's
    mkdir; the caller reads it only when that folder exists."""
    from mlflow.store.model_registry.file_store import FileStore as RegistryFileStore

    class ReadOnlyRegistryFileStore(RegistryFileStore):
        def __init__(self, root_directory: str):
            super(RegistryFileStore, self).__init__()
            self.root_directory = root_directory

    return ReadOnlyRegistryFileStore(root)


_READ_ONLY_FILE_SCHEME = "trackport-readonly-file"
_registered = False


def _read_only_file_uri(root: Path) -> str:
    """A tracking URI MLflow resolves to `ReadOnlyFileStore` (a store plugin scheme, the way
    MLflow's entry-point plugins register theirs)."""
    global _registered
    with _take_over_lock:
        if not _registered:
            from mlflow.tracking._tracking_service.utils import _tracking_store_registry

            _tracking_store_registry.register(
                _READ_ONLY_FILE_SCHEME,
                lambda store_uri, artifact_uri=None: ReadOnlyFileStore(store_uri.split(":", 1)[1]))
            from mlflow.tracking._model_registry.utils import _get_store_registry

            _get_store_registry().register(
                _READ_ONLY_FILE_SCHEME, lambda store_uri, **_: _read_only_registry(store_uri.split(":", 1)[1]))
            _registered = True
    return f"{_READ_ONLY_FILE_SCHEME}:{root}"


_GLOBAL_URI_LOCK = threading.Lock()   # MLflow's global tracking URI, set for one call


class Tracking:
    """One MLflow tracking store (server, SQL database or file store)."""

    def __init__(self, tracking_uri: str, display_uri: str, artifact_root: str | None = None,
                 local_store: Path | None = None, read_only: bool = False):
        self.tracking_uri = tracking_uri
        self.display_uri = display_uri
        self.artifact_root = artifact_root   # file:// root for experiments we create (SQL stores)
        self.local_store = local_store       # the SQLite file / mlruns directory, when local
        self.read_only = read_only           # a source: its store is never written
        self.notes: list[str] = []           # what the command report must say about the store
        self._snapshot_dir: str | None = None
        self._client: MlflowClient | None = None
        self._client_lock = threading.Lock()
        self._lock = threading.Lock()        # the experiment cache (held while the client is made)
        self._experiments: dict[str, str] = {}
        self._artifact_locations: dict[str, str] = {}   # experiment id -> its artifact location
        self._artifact_repos: OrderedDict[str, Any] = OrderedDict()   # run id -> repository
        from urllib.parse import urlsplit

        # The key under which workers share a rate-limit pause (one per server).
        self.endpoint = f"mlflow {urlsplit(tracking_uri).netloc}" if self.is_server else f"mlflow {tracking_uri}"

    @property
    def client(self) -> MlflowClient:
        """Made on first use: a local store is created by MLflow only when something is written."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    if self.is_server:
                        _take_over_retries(self.tracking_uri, self.endpoint)
                    elif self.read_only and self.local_store is not None:
                        self.tracking_uri = self._read_only_uri()
                    elif self.tracking_uri.startswith("sqlite:") and self.local_store is not None:
                        _create_sqlite_store_atomically(self.local_store)
                    self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _read_only_uri(self) -> str:
        """Where MLflow reads a local source from, without touching it: a file store through
        `ReadOnlyFileStore`; a SQLite store from a private copy in this process's scratch
        folder (MLflow opens a SQLite store read-write, writes a default experiment when
        there is none, and migrates an older schema in place), upgraded there when its
        schema revision is not this MLflow's head."""
        store = self.local_store
        if not self.tracking_uri.startswith("sqlite:"):
            return _read_only_file_uri(store)
        self._snapshot_dir = tempfile.mkdtemp(prefix="trackport-mlflow-snapshot-")
        weakref.finalize(self, shutil.rmtree, self._snapshot_dir, True)
        import sqlite3

        try:
            copy = snapshot_sqlite(store, Path(self._snapshot_dir))
            revision = sqlite_revision(copy)
        except sqlite3.Error as exc:
            raise UsageError(f"cannot read the MLflow store {store}: {exc}") from None
        head = head_revision()
        if revision is not None and revision != head:
            import sqlalchemy
            from mlflow.store.db.utils import _upgrade_db

            engine = sqlalchemy.create_engine(f"sqlite:///{copy}")
            try:
                _upgrade_db(engine)
            finally:
                engine.dispose()
            note = (f"the MLflow store {store} is at schema revision {revision}, older than this "
                    f"MLflow's {head}: it was read from a private copy upgraded in trackport's scratch "
                    f"folder; the store itself was not changed")
            log.warning("%s", note)
            self.notes.append(note)
        return f"sqlite:///{copy}"

    def _call(self, what: str, fn, project_id: str = "", run_id: str = "", file: str | None = None):
        """`fn()` with MLflow's errors translated; against a server, transient failures are
        retried (bounded, shared per server).  Local stores are called once: a failing
        SQLite or file store does not get better by asking again soon."""
        if not self.is_server:
            return self._classified(fn, project_id, run_id, file)
        ref = RunRef(project_id, run_id) if run_id else None
        return _backoff(self.endpoint).call(
            f"MLflow: {what}", lambda: self._classified(fn, project_id, run_id, file), ref, final=False)

    def preflight(self, read_only: bool = False) -> None:
        """The store is there and is one (docs/mlflow.md, "Before the first run"): a server
        answers one experiments search, a SQLite file is a database in a writable folder, a
        file store is a writable folder, a database URI has its SQLAlchemy dialect and driver."""
        if self.is_server:
            _probe_server(self)
        elif self.tracking_uri.startswith("sqlite:") and self.local_store is not None:
            _check_sqlite(self.local_store, self.display_uri, read_only)
        elif self.local_store is not None:
            check_output_folder(self.local_store, self.display_uri, read_only,
                                "mlflow:./mlruns, or a database: "
                                f"mlflow:sqlite:///{self.local_store}.db")
        elif "://" in self.tracking_uri and not self.tracking_uri.startswith("databricks"):
            _check_database(self.tracking_uri, self.display_uri)

    def exists(self) -> bool:
        """False for a local store that is not there yet (nothing to find, nothing to read)."""
        return self.local_store is None or self.local_store.exists()

    @property
    def store(self):
        return self.client._tracking_client.store

    @property
    def is_server(self) -> bool:
        return self.tracking_uri.startswith(("http://", "https://"))

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        if self.is_server:
            return f"{self.display_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        return None

    # -- experiments -------------------------------------------------------

    def experiment_id(self, name: str, create: bool) -> str | None:
        with self._lock:
            got = self._experiments.get(name)
        if got is not None:
            return got
        with self._lock:
            got = self._experiments.get(name)
            if got is not None:
                return got
            exp = self._call(f"experiment {name!r}", lambda: self.client.get_experiment_by_name(name))
            if exp is not None and exp.lifecycle_stage != "active":
                raise RunError(
                    f"MLflow experiment {name!r} exists but is deleted; restore it "
                    f"(mlflow experiments restore) or remove it for good (mlflow gc)"
                )
            if exp is None:
                if not create:
                    return None
                location = None
                if self.artifact_root:
                    location = f"{self.artifact_root.rstrip('/')}/{_safe(name)}"
                try:
                    eid = self._call(f"creating experiment {name!r}",
                                     lambda: self.client.create_experiment(name, artifact_location=location))
                except RunError as exc:
                    # Created meanwhile by another process, or by our own earlier attempt whose
                    # answer was lost (RESOURCE_ALREADY_EXISTS): use that one.
                    exp = self._call(f"experiment {name!r}", lambda: self.client.get_experiment_by_name(name))
                    if exp is None:
                        raise exc
                    eid = exp.experiment_id
            else:
                eid = exp.experiment_id
            self._experiments[name] = eid
            return eid

    def new_run_artifact_uri(self, experiment_id: str, run_uuid: str) -> str:
        """The artifact_uri MLflow's SqlAlchemyStore.create_run gives a new run:
        append_to_uri_path(experiment.artifact_location, run_id, "artifacts")."""
        from mlflow.utils.uri import append_to_uri_path

        with self._lock:
            location = self._artifact_locations.get(experiment_id)
        if location is None:
            exp = self._call(f"experiment {experiment_id}", lambda: self.store.get_experiment(experiment_id))
            location = exp.artifact_location
            with self._lock:
                self._artifact_locations[experiment_id] = location
        return append_to_uri_path(location, run_uuid, "artifacts")

    def experiments(self, deleted: bool = False) -> list[Any]:
        """Active experiments (and deleted ones too when `deleted`)."""
        out = []
        token = None
        view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
        while True:
            page = self._call("listing experiments", lambda: self.client.search_experiments(
                view_type=view, max_results=SEARCH_PAGE, page_token=token))
            out.extend(page)
            token = page.token
            if not token:
                return out

    # -- runs --------------------------------------------------------------

    def search_runs(self, experiment_ids: list[str], filter_string: str = "", deleted: bool = False
                    ) -> Iterator[Any]:
        """Active runs (and deleted ones too when `deleted`)."""
        token = None
        view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
        while True:
            page = self._call("searching runs", lambda: self.client.search_runs(
                experiment_ids, filter_string=filter_string, run_view_type=view,
                max_results=SEARCH_PAGE, page_token=token,
            ))
            yield from page
            token = page.token
            if not token:
                return

    def database_engine(self):
        """MLflow's own SQLAlchemy engine when the store is a database (for origin_sql's one
        query where search_runs makes several); None against a server or a file store."""
        return None if self.is_server else getattr(self.store, "engine", None)

    def get_run(self, run_id: str, project_id: str = "", origin_run: str = ""):
        run = self._call(f"reading run {run_id}", lambda: self.client.get_run(run_id), project_id, origin_run)
        self.remember_artifact_uri(run)
        return run

    def create_run(self, experiment_id: str, start_time: int | None, run_name: str,
                   tags: dict[str, str], project_id: str, origin_run: str, existing=None):
        """Create a run.  Not idempotent: an attempt whose answer was lost may have created it
        already, so before every retry `existing()` (when given) looks it up; a run found
        that way is returned instead of creating a second one."""
        attempts = 0

        def create():
            nonlocal attempts
            attempts += 1
            if attempts > 1 and existing is not None:
                found = existing()
                if found is not None:
                    log.info("run %s/%s: MLflow run %s was created by an attempt whose answer was lost",
                             project_id, origin_run, found.info.run_id)
                    return found
            return self.client.create_run(experiment_id, start_time=start_time, tags=tags, run_name=run_name)

        if not self.is_server:
            with errors(project_id, origin_run):
                run = self.client.create_run(experiment_id, start_time=start_time, tags=tags,
                                             run_name=run_name)
        else:
            ref = RunRef(project_id, origin_run) if origin_run else None
            run = _backoff(self.endpoint).call(
                "MLflow: creating the run", lambda: self._classified(create, project_id, origin_run), ref,
                final=False)
        self.remember_artifact_uri(run)
        return run

    def _classified(self, fn, project_id: str = "", run_id: str = "", file: str | None = None):
        with errors(project_id, run_id, file):
            return fn()

    # Writes below are idempotent, so a retry after a lost answer is harmless: MLflow's SQL
    # store drops a metric point identical to a stored one (SqlAlchemyStore._log_metrics_once,
    # IntegrityError on the primary key), a param logged again with the same value is
    # accepted, tags and run info are overwritten, an artifact is written to the same path.
    # Callers translate errors (`errors()`); against a server they are retried here.

    def _retried(self, what: str, fn):
        if not self.is_server:
            return fn()
        return _backoff(self.endpoint).call(f"MLflow: {what}", lambda: self._classified(fn), final=False)

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        self._retried(f"log_batch to run {run_id}", lambda: self.store.log_batch(
            run_id=run_id, metrics=metrics, params=params, tags=tags))

    def log_dataset_inputs(self, run_id: str, inputs: list[dict]) -> None:
        """The run's dataset inputs, as `source_mapping.dataset_inputs_json` lists them.  MLflow
        links a (name, digest) dataset to a run once, so a repeated call adds nothing."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        datasets = [DatasetInput(
            Dataset(name=d["name"], digest=d["digest"], source_type=d["source_type"], source=d["source"],
                    schema=d.get("schema"), profile=d.get("profile")),
            tags=[InputTag(k, v) for k, v in sorted((d.get("tags") or {}).items())]) for d in inputs]
        self._retried(f"logging the dataset inputs of run {run_id}",
                      lambda: self.store.log_inputs(run_id, datasets=datasets))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._retried(f"tagging run {run_id}", lambda: self.store.set_tag(run_id, RunTag(key, value)))

    def delete_run(self, run_id: str) -> None:
        """Soft-delete a run (MLflow keeps it, hidden, until `mlflow gc`); already deleted is fine."""
        self._retried(f"deleting run {run_id}", lambda: self.store.delete_run(run_id))

    def delete_tag(self, run_id: str, key: str) -> None:
        """Delete a tag; already gone (a lost answer to an earlier attempt) is fine."""
        def delete():
            try:
                self.store.delete_tag(run_id, key)
            except MlflowException as exc:
                if not is_missing(exc):
                    raise

        self._retried(f"untagging run {run_id}", delete)

    def terminate(self, run_id: str, status: str, end_time: int | None, run_name: str | None) -> None:
        self._retried(f"ending run {run_id}", lambda: self.store.update_run_info(
            run_id, run_status=RunStatus.from_string(status), end_time=end_time, run_name=run_name))

    def metric_history(self, run_id: str, key: str) -> Iterator[list]:
        """Every point of a metric, page by page (nothing capped, nothing sampled)."""
        token = None
        while True:
            page = self._retried(f"metric history of run {run_id}", lambda: self.store.get_metric_history(
                run_id=run_id, metric_key=key, max_results=HISTORY_PAGE, page_token=token))
            if len(page):
                yield list(page)
            token = page.token
            if not token:
                return

    # -- artifacts ---------------------------------------------------------

    def remember_artifact_uri(self, run) -> None:
        """Keep the artifact repository of a run we created or read: MlflowClient.log_artifact
        would ask the server for the run again (a `runs/get`) to learn the same URI."""
        self.remember_artifact_location(run.info.run_id, run.info.artifact_uri)

    def remember_artifact_location(self, run_id: str, artifact_uri: str) -> None:
        """The artifact repository of run `run_id` at `artifact_uri` (also for a run --mlflow-bulk
        writes into the store only at its first transaction)."""
        uri = add_databricks_profile_info_to_artifact_uri(artifact_uri, self.tracking_uri)
        repo = get_artifact_repository(uri, tracking_uri=self.tracking_uri)
        with self._lock:
            self._artifact_repos[run_id] = repo
            while len(self._artifact_repos) > ARTIFACT_REPOS_KEPT:
                self._artifact_repos.popitem(last=False)

    def _artifact_repo(self, run_id: str):
        with self._lock:
            repo = self._artifact_repos.get(run_id)
        if repo is None:   # a run we did not create or read here
            self.get_run(run_id)
            with self._lock:
                repo = self._artifact_repos[run_id]
        return repo

    def upload_file(self, run_id: str, local: Path, artifact_path: str) -> None:
        """Upload one file to exactly `artifact_path` (its name need not match the local one)."""
        directory, _, name = artifact_path.rpartition("/")
        what = f"uploading {artifact_path} to run {run_id}"
        if local.name == name:
            self._retried(what, lambda: self._artifact_repo(run_id).log_artifact(str(local), directory or None))
            return
        with tempfile.TemporaryDirectory(prefix="trackport-mlflow-up-") as tmp:
            link = Path(tmp) / name
            try:
                link.symlink_to(local.resolve())
            except OSError:
                shutil.copyfile(local, link)
            self._retried(what, lambda: self._artifact_repo(run_id).log_artifact(str(link), directory or None))

    def upload_dir(self, run_id: str, local: Path, artifact_path: str) -> None:
        self._retried(f"uploading {artifact_path}/ to run {run_id}",
                      lambda: self._artifact_repo(run_id).log_artifacts(str(local), artifact_path))

    def list_artifacts(self, run_id: str, path: str | None = None) -> list:
        return self._retried(f"listing artifacts of run {run_id}",
                             lambda: self.client.list_artifacts(run_id, path))

    def walk_artifacts(self, run_id: str, path: str | None = None) -> Iterator[Any]:
        """Every artifact file of a run under `path`, depth first, sorted."""
        for info in sorted(self.list_artifacts(run_id, path), key=lambda i: i.path):
            if info.is_dir:
                yield from self.walk_artifacts(run_id, info.path)
            else:
                yield info

    def logged_models(self, experiment_id: str) -> list[Any]:
        """MLflow 3 logged models of an experiment (none before MLflow 3's schema)."""
        out: list[Any] = []
        token = None
        search = getattr(self.client, "search_logged_models", None)
        if search is None:
            return out
        while True:
            page = self._call("listing logged models", lambda: search(
                experiment_ids=[experiment_id], max_results=SEARCH_PAGE, page_token=token))
            out.extend(page)
            token = page.token
            if not token:
                return out

    def logged_model_metrics(self, model) -> list[Any]:
        """Every metric point of a logged model.  A file store's LoggedModel carries only the
        latest point per key and dataset (FileStore._get_model_metrics_from_file keeps the max
        of each group); its metric files hold every point, read here line by line.  Other stores
        give every point."""
        store = self.store
        if not isinstance(store, FileStore):
            return list(model.metrics or [])
        from mlflow.utils.file_utils import read_file_lines

        model_dir = store._get_model_dir(model.experiment_id, model.model_id)
        if model_dir is None:
            return list(model.metrics or [])
        parent, names = store._get_resource_files(model_dir, FileStore.METRICS_FOLDER_NAME)
        return [FileStore._get_model_metric_from_line(model.model_id, name, line)
                for name in sorted(names) for line in read_file_lines(parent, name) if line.strip()]

    def search_logged_models(self, experiment_ids: list[str], filter_string: str) -> list[Any]:
        """Every active logged model of `experiment_ids` matching `filter_string`, paged."""
        out: list[Any] = []
        token = None
        for i in range(0, len(experiment_ids), 100):
            ids = experiment_ids[i:i + 100]
            while True:
                page = self._call("searching logged models", lambda: self.client.search_logged_models(
                    experiment_ids=ids, filter_string=filter_string, max_results=SEARCH_PAGE,
                    page_token=token))
                out.extend(page)
                token = page.token
                if not token:
                    break
        return out

    def log_model_metrics(self, experiment_id: str, run_id: str, metrics: list) -> None:
        """A logged model's metric points (each `Metric` names its model), logged from `run_id`.
        MLflow's API (log_batch) writes such a point to the run's own metrics as well; against a
        SQL or file store only the model's table is written (the store's own helper for it), so
        a run trackport completed is never changed.  A server gets log_batch (its SQL store keeps
        a point identical to one the run holds once)."""
        store = self.store
        if hasattr(store, "_log_model_metrics"):            # SqlAlchemyStore
            self._retried(f"logging model metrics from run {run_id}",
                          lambda: store._log_model_metrics(run_id, metrics, experiment_id=experiment_id))
        elif hasattr(store, "_log_model_metric"):           # FileStore
            for metric in metrics:
                store._log_model_metric(experiment_id=experiment_id, model_id=metric.model_id,
                                        run_id=run_id, metric=metric)
        else:
            self._retried(f"logging model metrics from run {run_id}",
                          lambda: store.log_batch(run_id=run_id, metrics=metrics, params=[], tags=[]))

    def create_model_version_of_model(self, name: str, model_id: str, **kwargs):
        """create_model_version with source `models:/<model_id>`.  MLflow's SQL and file registry
        stores look the logged model up through a client of the *global* tracking URI
        (model_registry/sqlalchemy_store.py, create_model_version: "relying on global URI"), so
        for a local or database store that URI is this store's for the call (one at a time in
        this process; the module's variable only, never MLFLOW_TRACKING_URI, so a database URI
        does not reach the environment); a server resolves it itself."""
        source = f"models:/{model_id}"
        if self.is_server:
            return self.client.create_model_version(name, source, model_id=model_id, **kwargs)
        from mlflow.tracking._tracking_service import utils as tracking_utils

        with _GLOBAL_URI_LOCK:
            before = tracking_utils._tracking_uri
            tracking_utils._tracking_uri = self.tracking_uri
            try:
                return self.client.create_model_version(name, source, model_id=model_id, **kwargs)
            finally:
                tracking_utils._tracking_uri = before

    # -- artifacts of a source's runs ------------------------------------------------
    # A run logged through a tracking server whose store is read directly has artifact URIs
    # `mlflow-artifacts:/<path>`, which only that server resolves (MlflowArtifactsRepository
    # needs an http(s) tracking URI, mlflow/store/artifact/mlflow_artifacts_repo.py):
    # `artifacts_root` is the server's --artifacts-destination folder or the server's URL.

    artifacts_root: str | None = None

    def _resolved(self, artifact_uri: str) -> tuple[str, str | None]:
        """(artifact URI, tracking URI to resolve it against); ArtifactsUnreachable when none can."""
        if not artifact_uri.startswith("mlflow-artifacts:") or self.is_server:
            return artifact_uri, self.tracking_uri
        root = (self.artifacts_root or "").strip()
        if not root:
            raise ArtifactsUnreachable(artifact_uri)
        from urllib.parse import urlsplit

        parts = urlsplit(artifact_uri)
        if root.startswith(("http://", "https://")):
            return f"mlflow-artifacts:{parts.path}", root.rstrip("/")
        base = Path(local_file_uri_to_path(root) if root.startswith("file:") else root).expanduser()
        return (base.resolve() / parts.path.lstrip("/")).as_uri(), None

    def run_artifact_repo(self, artifact_uri: str):
        uri, tracking = self._resolved(artifact_uri)
        if tracking is not None and tracking.startswith(("http://", "https://")) and tracking != self.tracking_uri:
            _take_over_retries(tracking, self.endpoint)
        return get_artifact_repository(uri, tracking_uri=tracking or self.tracking_uri)

    def walk_run_artifacts(self, artifact_uri: str, path: str | None = None) -> Iterator[Any]:
        """Every artifact file under a run's artifact URI, depth first, sorted."""
        repo = self.run_artifact_repo(artifact_uri)

        def walk(sub):
            listed = self._retried(f"listing artifacts of {artifact_uri}", lambda: repo.list_artifacts(sub))
            for info in sorted(listed, key=lambda i: i.path):
                if info.is_dir:
                    yield from walk(info.path)
                else:
                    yield info

        yield from walk(path)

    def download_run_artifact(self, artifact_uri: str, artifact_path: str, dst: Path) -> Path:
        repo = self.run_artifact_repo(artifact_uri)
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self._retried(f"downloading {artifact_path} of {artifact_uri}",
                                  lambda: repo.download_artifacts(artifact_path, str(dst))))

    def upload_to(self, location: str, local_dir: Path) -> None:
        """Upload the files under `local_dir` to the artifact location `location` (a model
        version's files, outside any run's artifact repository cache)."""
        repo = get_artifact_repository(location, tracking_uri=self.tracking_uri)
        self._retried(f"uploading to {location}", lambda: repo.log_artifacts(str(local_dir)))

    def has_registry(self) -> bool:
        """False for a file store without a `models/` folder (no registered model; MLflow's
        registry would create the folder)."""
        if self.local_store is not None and self.local_store.is_dir():
            return (self.local_store / "models").is_dir()
        return True

    def local_artifact_dir(self, artifact_uri: str) -> Path | None:
        """The run's artifact directory when it is on this machine (no download needed)."""
        if artifact_uri.startswith("mlflow-artifacts:") and not self.is_server:
            uri, tracking = self._resolved(artifact_uri)
            return Path(local_file_uri_to_path(uri)) if tracking is None else None
        if artifact_uri.startswith("file:"):
            return Path(local_file_uri_to_path(artifact_uri))
        if "://" not in artifact_uri and ":" not in artifact_uri.split("/", 1)[0]:
            return Path(artifact_uri)
        return None

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self._retried(f"downloading {artifact_path} of run {run_id}",
                                  lambda: self.client.download_artifacts(run_id, artifact_path, str(dst))))


PREFLIGHT_READ_S = 5.0


def _never_connected(exc: BaseException) -> bool:
    """requests' ConnectionError for a connection that was never made (refused, unknown host)."""
    from urllib3.exceptions import NewConnectionError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, NewConnectionError):
            return True
        nxt = getattr(exc, "reason", None)
        if nxt is None and exc.args and isinstance(exc.args[0], BaseException):
            nxt = exc.args[0]
        exc, seen = nxt, seen + 1
    return False


def _probe_server(tracking: Tracking) -> None:
    """One GET experiments/search, not retried (a refused connection at the start means
    nothing is there), with MLflow's own credentials and TLS settings."""
    from trackport.core.errors import UsageError

    url = f"{tracking.tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search"
    shown = tracking.display_uri
    creds = tracking.store.get_host_creds()
    headers, auth = {}, None
    if creds.token:
        headers["Authorization"] = f"Bearer {creds.token}"
    elif creds.username and creds.password:
        auth = (creds.username, creds.password)
    verify = False if creds.ignore_tls_verification else (creds.server_cert_path or True)
    connect, read = request_timeout(_mlflow_timeout_setting())
    timeout = (connect, min(read, PREFLIGHT_READ_S))   # a slow first answer is only a warning
    try:
        with requests.Session() as session:
            response = session.get(url, params={"max_results": 1}, headers=headers, auth=auth,
                                   verify=verify, cert=creds.client_cert_path, timeout=timeout)
    except requests.exceptions.Timeout:
        log.warning("MLflow server %s did not answer within %gs; going on (each run retries within "
                    "--retry-max-seconds)", shown, timeout[1])
        return
    except requests.exceptions.SSLError as exc:
        raise UsageError(f"MLflow server {shown}: TLS failed ({type(exc).__name__}); fix: "
                         f"MLFLOW_TRACKING_SERVER_CERT_PATH, or MLFLOW_TRACKING_INSECURE_TLS=true") from None
    except requests.exceptions.ConnectionError as exc:
        if not _never_connected(exc):   # connected, then cut off: the runs' retries decide
            log.warning("MLflow server %s dropped a first check (%s); going on (each run retries "
                        "within --retry-max-seconds)", shown, type(exc).__name__)
            return
        raise UsageError(f"nothing answers at {shown} (connection refused or host unknown); nothing "
                         f"was moved. Fix: start the MLflow server (mlflow server --host ... --port ...) "
                         f"or correct the URI") from None
    status = response.status_code
    if status in (401, 403):
        raise UsageError(f"MLflow server {shown} refused the credentials (HTTP {status}); fix: set "
                         f"MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    if status in (408, 429) or status >= 500:
        log.warning("MLflow server %s answered HTTP %d to a first check; going on (each run retries "
                    "within --retry-max-seconds)", shown, status)
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if status != 200 or not isinstance(body, dict):
        kind = response.headers.get("Content-Type", "?").split(";")[0]
        raise UsageError(f"{shown} answers (HTTP {status}, {kind}) but is not an MLflow tracking server; "
                         f"fix: point at the server's base URL, as given to `mlflow server`")




_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_sqlite(db: Path, shown: str, read_only: bool) -> None:
    from trackport.core.errors import UsageError

    if db.is_dir():
        raise UsageError(f"{shown}: {db} is a folder, not a SQLite file; fix: name a .db file "
                         f"(mlflow:sqlite:///{db / 'mlflow.db'}) or use the folder as a file store "
                         f"(mlflow:{db})")
    if db.exists():
        try:
            with open(db, "rb") as fh:
                head = fh.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise UsageError(f"{shown}: cannot read {db} ({exc.strerror or type(exc).__name__})") from None
        if head and head != _SQLITE_MAGIC:
            raise UsageError(f"{shown}: {db} is not a SQLite database; fix: name a new file or an "
                             f"MLflow SQLite store")
    if read_only:
        return
    if not db.parent.exists():
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{shown}: cannot create folder {db.parent} ({exc.strerror or type(exc).__name__}); "
                             f"fix: choose a path you can write to") from None
    try:
        # SQLite writes its journal next to the database: the folder must take files too.
        probe_write(db.parent)
        if db.exists():
            with open(db, "r+b"):
                pass
    except OSError as exc:
        raise UsageError(f"{shown}: cannot write {db} ({exc.strerror or type(exc).__name__}); fix: choose "
                         f"a file in a folder you can write to") from None


def _check_database(uri: str, shown: str) -> None:
    """The SQLAlchemy dialect and its driver are there (connecting is left to the first run)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from trackport.core.errors import UsageError

    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except NoSuchModuleError:
        name = uri.split("://", 1)[0]
        hint = " (write postgresql://, not postgres://)" if name.lower().startswith("postgres+") or \
            name.lower() == "postgres" else ""
        raise UsageError(f"{shown}: SQLAlchemy knows no database kind {name!r}{hint}; fix: use "
                         f"postgresql://, mysql://, mssql:// or sqlite:///") from None
    except ArgumentError:
        raise UsageError(f"{shown}: not a database URL; fix: e.g. mlflow:postgresql://USER@HOST/DB") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = getattr(exc, "name", None) or str(exc)
        package = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient",
                   "pymysql": "pymysql", "pyodbc": "pyodbc"}.get(module, module)
        raise UsageError(f"{shown}: SQLAlchemy's {url.drivername} driver needs the Python module "
                         f"{module!r}, which is not installed; fix: pip install '{package}', or name a "
                         f"driver you have in the URI (postgresql+psycopg2://, mysql+pymysql://)") from None




def _safe(name: str) -> str:
    from trackport.core.layout import safe

    return safe(name)


def env_for_file_store() -> None:
    """MLflow 3 refuses the file store (./mlruns) unless this is set (store/tracking/file_store.py)."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
