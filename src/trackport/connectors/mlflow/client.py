"""The only module of the MLflow connector that imports the MLflow SDK.

`Tracking` wraps one `mlflow.tracking.MlflowClient` (plus its store, for the
calls the client wraps with side effects we do not want: printing run URLs on
`set_terminated`, re-wrapping every metric in `log_batch`, collecting a whole
metric history in memory) and translates MLflow's errors into trackport's
TransientError / RunError.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

# MLflow 3 reports usage to an outside host unless told not to; a migration tool
# must not phone home (mlflow/telemetry/utils.py reads this at import).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import requests  # noqa: E402
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.file_utils import local_file_uri_to_path  # noqa: E402

from trackport.core.errors import RunError, TransientError  # noqa: E402


log = logging.getLogger(__name__)

HISTORY_PAGE = 25_000     # what MlflowClient itself asks per page
SEARCH_PAGE = 1_000

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


def classify(exc: BaseException, project_id: str = "", run_id: str = "", file: str | None = None
             ) -> Exception:
    """The trackport error for an exception raised by MLflow (or by requests under it)."""
    text = str(exc)
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


def is_missing(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


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

    @property
    def client(self) -> MlflowClient:
        """Made on first use: a local store is created by MLflow only when something is written."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

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
            with errors():
                exp = self.client.get_experiment_by_name(name)
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
                    with errors():
                        eid = self.client.create_experiment(name, artifact_location=location)
                except RunError as exc:
                    # Created meanwhile by another process: use that one.
                    with errors():
                        exp = self.client.get_experiment_by_name(name)
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
            with errors():
                page = self.client.search_experiments(view_type=ViewType.ACTIVE_ONLY,
                                                      max_results=SEARCH_PAGE, page_token=token)
            out.extend(page)
            token = page.token
            if not token:
                return out

    # -- runs --------------------------------------------------------------

    def search_runs(self, experiment_ids: list[str], filter_string: str = "") -> Iterator[Any]:
        token = None
        while True:
            with errors():
                page = self.client.search_runs(
                    experiment_ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=SEARCH_PAGE, page_token=token,
                )
            yield from page
            token = page.token
            if not token:
                return

    def get_run(self, run_id: str, project_id: str = "", origin_run: str = ""):
        with errors(project_id, origin_run):
            return self.client.get_run(run_id)

    def create_run(self, experiment_id: str, start_time: int | None, run_name: str,
                   tags: dict[str, str], project_id: str, origin_run: str):
        with errors(project_id, origin_run):
            return self.client.create_run(experiment_id, start_time=start_time, tags=tags,
                                          run_name=run_name)

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self.store.log_batch(run_id=run_id, metrics=list(metrics), params=list(params),
                             tags=list(tags))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.store.set_tag(run_id, RunTag(key, value))

    def terminate(self, run_id: str, status: str, end_time: int | None, run_name: str | None) -> None:
        self.store.update_run_info(run_id, run_status=RunStatus.from_string(status),
                                   end_time=end_time, run_name=run_name)

    def metric_history(self, run_id: str, key: str) -> Iterator[list]:
        """Every point of a metric, page by page (nothing capped, nothing sampled)."""
        token = None
        while True:
            page = self.store.get_metric_history(run_id=run_id, metric_key=key,
                                                 max_results=HISTORY_PAGE, page_token=token)
            if len(page):
                yield list(page)
            token = page.token
            if not token:
                return

    # -- artifacts ---------------------------------------------------------

    def upload_file(self, run_id: str, local: Path, artifact_path: str) -> None:
        """Upload one file to exactly `artifact_path` (its name need not match the local one)."""
        directory, _, name = artifact_path.rpartition("/")
        if local.name == name:
            self.client.log_artifact(run_id, str(local), directory or None)
            return
        with tempfile.TemporaryDirectory(prefix="trackport-mlflow-up-") as tmp:
            link = Path(tmp) / name
            try:
                link.symlink_to(local.resolve())
            except OSError:
                shutil.copyfile(local, link)
            self.client.log_artifact(run_id, str(link), directory or None)

    def upload_dir(self, run_id: str, local: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local), artifact_path)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list:
        return self.client.list_artifacts(run_id, path)

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
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst)))


def _safe(name: str) -> str:
    from trackport.core.layout import safe

    return safe(name)


def env_for_file_store() -> None:
    """MLflow 3 refuses the file store (./mlruns) unless this is set (store/tracking/file_store.py)."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
