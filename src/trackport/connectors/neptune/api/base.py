"""What the `neptune2://` and `neptune3://` sources share (no SDK import).

A run is read class by class (params, metrics, series, files, as selected);
a class that fails makes the whole run fail with a RunError naming the run
and the class, so a run is never exported with a class silently missing
(neptune-exporter logs such errors and still marks the run exported).
Transient errors (rate limits, 5xx) propagate as TransientError: the
pipeline retries the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa

from trackport.core.capabilities import Capabilities
from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError, TransientError, UsageError
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.schema import ARTIFACTS_CLASS

from . import mapping as am
from .. import mapping as mp

log = logging.getLogger(__name__)

CLASS_ORDER = ("params", "metrics", "series", "files")
TOKEN_ENV = "NEPTUNE_API_TOKEN"


def api_token(scheme: str) -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(f"{scheme}: set {TOKEN_ENV} to your Neptune API token (it is read only from "
                         f"the environment, never from the command line)")
    return token


def option_list(value: Any) -> list[str]:
    """A CLI option that may be given as one comma-separated string or a list."""
    if not value:
        return []
    if isinstance(value, str):
        return [v for v in (p.strip() for p in value.split(",")) if v]
    return [str(v) for v in value]


class DownloadedFiles(FileAccess):
    """Files a run's rows point at, downloaded under the source's root."""

    def __init__(self, root: Path):
        self.root = root

    def local_path(self, path: str) -> Path | None:
        local = (self.root / path).resolve()
        if self.root.resolve() not in local.parents:
            raise ValueError(f"file path {path!r} leaves the download directory")
        return local

    def open(self, path: str) -> BinaryIO:
        return open(self.local_path(path), "rb")


class ApiReader:
    """One client generation: listing and per-class reads (implemented in reader2.py / reader3.py)."""

    def discover_projects(self, workspace: str) -> list[str]:
        raise NotImplementedError

    def list_runs(self, project_id: str) -> list[am.ApiRun]:
        raise NotImplementedError

    def list_models(self, project_id: str) -> list[am.ApiRun]:
        """The project's model registry: its models, then their versions (2.x only; the 3.x
        API has no model registry)."""
        return []

    def find_run(self, project_id: str, run_id: str) -> am.ApiRun | None:
        for run in self.list_runs(project_id):
            if run.run_id == run_id:
                return run
        for entity in self.list_models(project_id):
            if entity.run_id == run_id:
                return entity
        return None

    def open_run(self, run: am.ApiRun, select: Selection) -> "RunSession":
        raise NotImplementedError

    def close(self) -> None:
        pass


class RunSession:
    """The classes of one run; each method yields canonical tables."""

    def classes(self) -> dict[str, int]:
        """class -> number of wanted attributes of that class."""
        raise NotImplementedError

    def read(self, cls: str, root: Path) -> Iterator[pa.Table]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class NeptuneApiSource(Source):
    capabilities = Capabilities(transformations={
        mp.STEP_LESS: mp.SOURCE_TRANSFORMATIONS[mp.STEP_LESS],
        "container_as_run": mp.SOURCE_TRANSFORMATIONS["container_as_run"]})

    def __init__(self, target: am.ApiTarget, reader: ApiReader, options: dict[str, Any]):
        self.target = target
        self.reader = reader
        self.options = dict(options or {})
        self.uri = target.uri
        self._lock = threading.Lock()
        self._root: Path | None = None
        self._finalizer = None
        self._step_less: dict[tuple[str, str], int] = {}

    # -- listing -----------------------------------------------------------------
    def projects(self, select: Selection) -> list[str]:
        discovered = [] if self.target.project else self.reader.discover_projects(self.target.workspace)
        chosen = am.choose_projects(self.target, discovered, option_list(self.options.get("neptune_project_include")),
                                    option_list(self.options.get("neptune_project_exclude")), select)
        if not chosen and not self.target.project:
            raise UsageError(f"no projects found in workspace {self.target.workspace!r} with the given filters")
        return chosen

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        for project_id in self.projects(select):
            runs = sorted(self.reader.list_runs(project_id), key=lambda r: (r.run_id, r.sys_id))
            for run in runs:
                if select.wants_run(project_id, run.run_id):
                    yield RunRef(project_id, run.run_id, run)
            # The model registry (models, then model versions) is read with the `artifacts` class
            # (selected by default), as the registry entries of other sources are; each entity is
            # a run of its project, as neptune-exporter's `export-models` writes it.
            if ARTIFACTS_CLASS in select.classes and select.wants_project(project_id):
                for entity in self.reader.list_models(project_id):
                    if select.wants_run(project_id, entity.run_id):
                        yield RunRef(project_id, entity.run_id, entity)

    def origin(self, run: RunRef) -> Origin:
        """The run's project URI, whether it was listed from a project or a workspace URI,
        so both forms find the same destination runs."""
        return Origin(f"{self.target.scheme}://{run.project_id}", run.project_id, run.run_id)

    def _resolve(self, ref: RunRef) -> am.ApiRun:
        if isinstance(ref.locator, am.ApiRun):
            return ref.locator
        run = self.reader.find_run(ref.project_id, ref.run_id)
        if run is None:
            raise RunError("no such run in the Neptune project", project_id=ref.project_id, run_id=ref.run_id)
        return run

    def describe_run(self, run: RunRef) -> str:
        loc = run.locator
        base = f"{run.project_id}/{run.run_id}"
        if isinstance(loc, am.ApiRun) and loc.sys_id != run.run_id:
            return f"{base} ({loc.sys_id})"
        if isinstance(loc, am.ApiRun) and loc.container:
            return f"{base} ({loc.container.replace('_', ' ')})"
        return base

    # -- reading -------------------------------------------------------------------
    def _download_root(self) -> Path:
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="trackport-neptune-api-"))
                self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._root), True)
            return self._root

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        api_run = self._resolve(run)
        try:
            session = self.reader.open_run(api_run, select)
        except (TransientError, UsageError, RunError):
            raise
        except Exception as exc:  # an SDK surprise while opening: name the run
            raise RunError(f"opening the run failed: {type(exc).__name__}: {exc}",
                           project_id=run.project_id, run_id=run.run_id) from exc
        try:
            wanted = session.classes()
            has_type = any(path == am.CONTAINER_TYPE for path, _, _ in getattr(session, "attributes", ()))
            for cls in CLASS_ORDER:
                if cls not in select.classes or not wanted.get(cls):
                    continue
                try:
                    for table in session.read(cls, self._download_root()):
                        if table.num_rows:
                            yield select.filter(table)
                except (TransientError, UsageError):
                    raise
                except RunError as exc:
                    raise RunError(f"class {cls}: {exc.reason}", project_id=run.project_id,
                                   run_id=run.run_id, file=exc.file) from exc
                except Exception as exc:  # an SDK or server surprise: this run is not exported
                    raise RunError(f"class {cls} failed, so the run is not exported: "
                                   f"{type(exc).__name__}: {exc}",
                                   project_id=run.project_id, run_id=run.run_id) from exc
            if api_run.container and not has_type:
                # a model or model version says what it is, as the parquet source's do
                table = select.filter(am.container_type_table(run.project_id, run.run_id, api_run.container))
                if table.num_rows:
                    yield table
        finally:
            with self._lock:
                self._step_less[(run.project_id, run.run_id)] = getattr(session, "step_less", 0)
            session.close()

    def account(self, run: RunRef, report) -> None:
        with self._lock:
            n = self._step_less.get((run.project_id, run.run_id), 0)
        if n:
            report.transformed(mp.STEP_LESS, n)
        if isinstance(run.locator, am.ApiRun) and run.locator.container:
            report.transformed("container_as_run", 1, f"{run.locator.container} {run.run_id}")

    def files(self, run: RunRef) -> FileAccess:
        return DownloadedFiles(self._download_root())

    def close(self) -> None:
        self.reader.close()
        if self._finalizer is not None:
            self._finalizer()
