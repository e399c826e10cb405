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
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

# MLflow 3 reports usage to an outside host unless told not to; a migration tool
# must not phone home (mlflow/telemetry/utils.py reads this at import).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import requests  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository  # noqa: E402
from mlflow.utils.file_utils import local_file_uri_to_path  # noqa: E402
from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri  # noqa: E402

from trackport.core.errors import RunError, TransientError  # noqa: E402
from trackport.core.model import RunRef  # noqa: E402
from trackport.core.retry import Backoff, parse_retry_after  # noqa: E402


log = logging.getLogger(__name__)

HISTORY_PAGE = 25_000     # what MlflowClient itself asks per page
SEARCH_PAGE = 1_000
ARTIFACT_REPOS_KEPT = 1_024   # as many as MLflow's own cache keeps

_TRANSIENT_CODES = {
    "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED", "ABORTED", "UNAVAILABLE",
}

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
        return copy
    if isinstance(inner, RunError):
        return RunError(inner.reason, project_id=project_id or inner.project_id,
                        run_id=run_id or inner.run_id, file=file or inner.file)
    if isinstance(exc, MlflowException):
        code = getattr(exc, "error_code", "") or ""
        status = _status(exc)
        if status == 429 or status >= 500 or code in _TRANSIENT_CODES:
            return TransientError(f"MLflow: {text}")
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
        try:
            response = super().send(request, **kwargs)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
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


def is_missing(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _create_sqlite_store_atomically(db: Path) -> None:
    """A new SQLite store is made by MLflow's migrations under a temporary name, then renamed.

    MLflow creates a missing store's tables migration by migration; a process killed
    half-way leaves a file every later MLflow call refuses ("table ... already exists").
    """
    if db.exists():
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.creating")
    tmp.unlink(missing_ok=True)
    store = MlflowClient(tracking_uri=f"sqlite:///{tmp}")._tracking_client.store
    store.engine.dispose()
    if db.exists():   # made meanwhile by another process: use theirs
        tmp.unlink(missing_ok=True)
    else:
        os.replace(tmp, db)


class Tracking:
    """One MLflow tracking store (server, SQL database or file store)."""

    def __init__(self, tracking_uri: str, display_uri: str, artifact_root: str | None = None,
                 local_store: Path | None = None):
        self.tracking_uri = tracking_uri
        self.display_uri = display_uri
        self.artifact_root = artifact_root   # file:// root for experiments we create (SQL stores)
        self.local_store = local_store       # the SQLite file / mlruns directory, when local
        self._client: MlflowClient | None = None
        self._client_lock = threading.Lock()
        self._lock = threading.Lock()        # the experiment cache (held while the client is made)
        self._experiments: dict[str, str] = {}
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
                    elif self.tracking_uri.startswith("sqlite:") and self.local_store is not None:
                        _create_sqlite_store_atomically(self.local_store)
                    self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _call(self, what: str, fn, project_id: str = "", run_id: str = "", file: str | None = None):
        """`fn()` with MLflow's errors translated; against a server, transient failures are
        retried (bounded, shared per server).  Local stores are called once: a failing
        SQLite or file store does not get better by asking again soon."""
        if not self.is_server:
            return self._classified(fn, project_id, run_id, file)
        ref = RunRef(project_id, run_id) if run_id else None
        return _backoff(self.endpoint).call(
            f"MLflow: {what}", lambda: self._classified(fn, project_id, run_id, file), ref, final=False)

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

    def experiments(self) -> list[Any]:
        out = []
        token = None
        while True:
            page = self._call("listing experiments", lambda: self.client.search_experiments(
                view_type=ViewType.ACTIVE_ONLY, max_results=SEARCH_PAGE, page_token=token))
            out.extend(page)
            token = page.token
            if not token:
                return out

    # -- runs --------------------------------------------------------------

    def search_runs(self, experiment_ids: list[str], filter_string: str = "") -> Iterator[Any]:
        token = None
        while True:
            page = self._call("searching runs", lambda: self.client.search_runs(
                experiment_ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                max_results=SEARCH_PAGE, page_token=token,
            ))
            yield from page
            token = page.token
            if not token:
                return

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

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._retried(f"tagging run {run_id}", lambda: self.store.set_tag(run_id, RunTag(key, value)))

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
        uri = add_databricks_profile_info_to_artifact_uri(run.info.artifact_uri, self.tracking_uri)
        repo = get_artifact_repository(uri, tracking_uri=self.tracking_uri)
        with self._lock:
            self._artifact_repos[run.info.run_id] = repo
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

    def local_artifact_dir(self, artifact_uri: str) -> Path | None:
        """The run's artifact directory when it is on this machine (no download needed)."""
        if artifact_uri.startswith("file:"):
            return Path(local_file_uri_to_path(artifact_uri))
        if "://" not in artifact_uri and ":" not in artifact_uri.split("/", 1)[0]:
            return Path(artifact_uri)
        return None

    def download(self, run_id: str, artifact_path: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(self._retried(f"downloading {artifact_path} of run {run_id}",
                                  lambda: self.client.download_artifacts(run_id, artifact_path, str(dst))))


def _safe(name: str) -> str:
    from trackport.core.layout import safe

    return safe(name)


def env_for_file_store() -> None:
    """MLflow 3 refuses the file store (./mlruns) unless this is set (store/tracking/file_store.py)."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
