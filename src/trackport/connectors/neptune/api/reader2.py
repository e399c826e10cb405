"""The `neptune2://` reader: the API sources' only module importing the `neptune` 1.x client
(lazily; the sink writes through it in sink/client2.py).  `file_series_points` also uses
neptune-query, when installed, for the steps of file series.

Runs are listed with `Project.fetch_runs_table` (NQL passed through, trashed
runs only on request) and read in `read-only` mode, attribute by attribute
as `Run.get_structure()` lists them.  Two client behaviours are worked
around (neptune 1.14 sources):
- `FetchableSeries.fetch_values` turns the server's epoch milliseconds into
  naive local datetimes (attributes/series/fetchable_series.py); the points
  are read with `_fetch_values_from_backend`, keeping `timestampMillis` (UTC).
- `FileSeries.download` fetches items by index and the 2.x image-series
  endpoint returns only a count (internal/backends/hosted_neptune_backend.py
  `get_image_series_values`); the logged steps come from the series values
  endpoint neptune-query uses, and item i gets the i-th step.

The model registry (models and model versions, moved as runs of their project as
neptune-exporter's `export-models` writes them) is listed with
`Project.fetch_models_table` and `Model.fetch_model_versions_table`, and each entity is
opened with `init_model` / `init_model_version` (`read-only`): their handles have the
attribute API of a run, so Api2Session reads them the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from trackport.core.errors import RunError, TransientError, UsageError, translated
from trackport.core.model import Selection

from . import mapping as am
from .base import TOKEN_ENV, ApiReader, RunSession

log = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")   # the clients colour their messages

SERIES_PAGE = 1000   # what FetchableSeries.fetch_values asks per page


def classify(exc: BaseException, project_id: str = "", run_id: str = "") -> Exception:
    """trackport's error for an exception from the neptune client (never with the token in it)."""
    from neptune.common import exceptions as nce
    from neptune import exceptions as ne

    name = type(exc).__name__
    if isinstance(exc, (nce.NeptuneInvalidApiTokenException, ne.NeptuneMissingApiTokenException,
                        nce.Unauthorized)):
        return UsageError(f"Neptune refused the API token ({name}); check {TOKEN_ENV}")
    if isinstance(exc, nce.Forbidden):
        return UsageError(f"the token in {TOKEN_ENV} may not read {project_id or 'this workspace'} ({name})")
    if isinstance(exc, ne.ProjectNotFound):
        return UsageError(f"Neptune project {project_id!r} not found (or not visible with the token in {TOKEN_ENV})")
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    if isinstance(status, int) and (status == 429 or status >= 500):
        retry_after = None
        headers = getattr(response, "headers", None) or {}
        with contextlib.suppress(Exception):
            retry_after = float(headers.get("retry-after") or headers.get("Retry-After"))
        return TransientError(f"Neptune API unavailable or rate limited (HTTP {status})", retry_after=retry_after)
    if isinstance(status, int) and status in (401, 403):
        return UsageError(f"Neptune answered HTTP {status}; check {TOKEN_ENV}")
    if isinstance(exc, (nce.InternalServerError, nce.NeptuneConnectionLostException, ConnectionError,
                        TimeoutError)):
        return TransientError(f"Neptune API connection failed or server error ({name})")
    if isinstance(exc, nce.NeptuneException):
        text = _ANSI.sub("", str(exc))
        first = next((line for line in text.splitlines() if line.strip() and "---" not in line), name)
        return RunError(f"Neptune: {first.strip()}", project_id=project_id, run_id=run_id)
    return exc  # type: ignore[return-value]


def errors(project_id: str = "", run_id: str = ""):
    return translated(classify, project_id, run_id)


def _quiet() -> None:
    logging.getLogger("neptune").setLevel(logging.ERROR)


def list_projects(token: str) -> list[str]:
    from neptune import management

    _quiet()
    with errors():
        return sorted(management.get_project_list(api_token=token))


class Api2Reader(ApiReader):
    def __init__(self, token: str, options: dict[str, Any]):
        self._token = token
        self.nql = options.get("neptune_nql") or None
        self.archived = bool(options.get("neptune_archived"))
        _quiet()

    def discover_projects(self, workspace: str) -> list[str]:
        return list_projects(self._token)

    def list_runs(self, project_id: str) -> list[am.ApiRun]:
        import neptune

        with errors(project_id):
            with neptune.init_project(project=project_id, api_token=self._token, mode="read-only") as project:
                frame = project.fetch_runs_table(
                    query=self.nql, columns=["sys/id", "sys/custom_run_id"],
                    trashed=None if self.archived else False, progress_bar=False, ascending=True,
                ).to_pandas()
        if frame.empty or "sys/id" not in frame.columns:
            return []
        customs = frame["sys/custom_run_id"].tolist() if "sys/custom_run_id" in frame.columns else None
        return am.runs_from_table(project_id, 2, frame["sys/id"].tolist(), customs)

    def list_models(self, project_id: str) -> list[am.ApiRun]:
        """The project's models (trashed ones with --neptune-archived), then each model's versions.

        --neptune-nql selects runs only: a runs query would not fit models.  The client lists a
        model's versions with `sys/trashed = false` always added (metadata_containers/model.py
        `fetch_model_versions_table` calls `build_raw_query(query, trashed=False)`), so a trashed
        version of a live model is not listed, whatever --neptune-archived says."""
        import neptune

        with errors(project_id):
            with neptune.init_project(project=project_id, api_token=self._token, mode="read-only") as project:
                frame = project.fetch_models_table(
                    columns=["sys/id"], trashed=None if self.archived else False, progress_bar=False,
                    ascending=True,
                ).to_pandas()
        ids = frame["sys/id"].tolist() if not frame.empty and "sys/id" in frame.columns else []
        models = am.entities_from_table(project_id, am.MODEL, ids)
        versions: list[am.ApiRun] = []
        for model in models:
            with errors(project_id, model.run_id):
                with neptune.init_model(project=project_id, api_token=self._token, with_id=model.sys_id,
                                        mode="read-only") as handle:
                    frame = handle.fetch_model_versions_table(columns=["sys/id"], progress_bar=False,
                                                              ascending=True).to_pandas()
            ids = frame["sys/id"].tolist() if not frame.empty and "sys/id" in frame.columns else []
            versions.extend(am.entities_from_table(project_id, am.MODEL_VERSION, ids))
        return sorted(models, key=lambda m: m.run_id) + sorted(versions, key=lambda v: v.run_id)

    def open_run(self, run: am.ApiRun, select: Selection) -> "Api2Session":
        import neptune

        init = {None: neptune.init_run, am.MODEL: neptune.init_model,
                am.MODEL_VERSION: neptune.init_model_version}[run.container]
        with errors(run.project_id, run.run_id):
            handle = init(project=run.project_id, api_token=self._token, with_id=run.sys_id, mode="read-only")
        return Api2Session(self, run, select, handle)


def _walk(structure: dict) -> Iterator[Any]:
    for value in structure.values():
        if isinstance(value, dict):
            yield from _walk(value)
        else:
            yield value


def attribute_list(structure: dict, select: Selection) -> list[tuple[str, str, Any]]:
    """(path, canonical type, attribute object) of a `Run.get_structure()` dict, wanted ones only."""
    out = []
    for attribute in _walk(structure):
        class_name = type(attribute).__name__
        attribute_type = am.TYPE_OF_CLASS_2X.get(class_name)
        if attribute_type is None:
            continue
        path = "/".join(attribute._path)
        if am.wants(select, path, attribute_type):
            out.append((path, attribute_type, attribute))
    return sorted(out, key=lambda item: item[0])


class Api2Session(RunSession):
    """One open 2.x run (`handle`: a `neptune.Run`, read-only against the service), or a model
    or model version (`neptune.Model` / `neptune.ModelVersion`: the same attribute API)."""

    def __init__(self, reader: Api2Reader, run: am.ApiRun, select: Selection, handle: Any):
        self.reader = reader
        self.run = run
        self.handle = handle
        with errors(run.project_id, run.run_id):
            self.attributes = attribute_list(self.handle.get_structure(), select)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.handle.stop()

    def classes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, attribute_type, _ in self.attributes:
            cls = am.class_of(attribute_type)
            counts[cls] = counts.get(cls, 0) + 1
        return counts

    def _of(self, *types: str) -> list[tuple[str, str, Any]]:
        return [a for a in self.attributes if a[1] in types]

    def read(self, cls: str, root: Path) -> Iterator[pa.Table]:
        with errors(self.run.project_id, self.run.run_id):
            if cls == "params":
                yield self._params()
            elif cls == "metrics":
                for path, attribute_type, attribute in self._of("float_series"):
                    yield self._points(path, attribute_type, series_points(attribute))
            elif cls == "series":
                for path, attribute_type, attribute in self._of("string_series"):
                    yield self._points(path, attribute_type, series_points(attribute))
            elif cls == "files":
                yield from self._files(root)

    def _points(self, path: str, attribute_type: str, points) -> pa.Table:
        # points the server returned without a step are numbered as Neptune numbers them (counted)
        self.step_less = getattr(self, "step_less", 0) + am.step_less_count(points)
        return am.points_2x(self.run.project_id, self.run.run_id, path, attribute_type, points)

    def _params(self) -> pa.Table:
        values = self.handle.fetch()   # one request for every atom value

        def lookup(path: str) -> Any:
            node: Any = values
            for part in path.split("/"):
                if not isinstance(node, dict) or part not in node:
                    return None
                node = node[part]
            return node

        items = []
        for path, attribute_type, attribute in self._of(*am.CLASSES_PARAMS):
            value = attribute.fetch() if attribute_type == "string_set" else lookup(path)
            if value is None or isinstance(value, type):   # absent, or the mapper's `NoValue` class
                value = attribute.fetch()
            items.append((path, attribute_type, value))
        return am.scalar_table(self.run.project_id, self.run.run_id, items)

    def _files(self, root: Path) -> Iterator[pa.Table]:
        run = self.run
        rows = []
        for path, attribute_type, attribute in self._of("file", "file_set", "artifact"):
            if attribute_type == "file":
                ext = attribute.fetch_extension()
                relative = am.local_file_path(run.run_id, path, suffix=f".{ext}" if ext else "",
                                              container=run.container)
                target = root / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                attribute.download(destination=str(target), progress_bar=False)
            elif attribute_type == "file_set":
                relative = am.local_file_path(run.run_id, path, suffix=".zip", container=run.container)
                target = root / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                attribute.download(destination=str(target), progress_bar=False)
            else:  # artifact: its file list (hashes, locations), as neptune-exporter keeps it
                relative = am.local_file_path(run.run_id, path, suffix=".files_list.json",
                                              container=run.container)
                target = root / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                listing = [item.to_dto() for item in attribute.fetch_files_list()]
                target.write_text(json.dumps(listing, sort_keys=True), encoding="utf-8")
            if not target.exists():
                raise RunError("the client downloaded nothing", project_id=run.project_id, run_id=run.run_id,
                               file=path)
            rows.append((path, attribute_type, None, None, relative))
        if rows:
            yield am.file_table(run.project_id, run.run_id, rows)
        for path, _, attribute in self._of("file_series"):
            yield self._file_series(root, path, attribute)

    def _file_series(self, root: Path, path: str, attribute: Any) -> pa.Table:
        run = self.run
        backend = attribute._backend
        count = backend.get_image_series_values(attribute._container_id, attribute._container_type,
                                                attribute._path, 0, 1).totalItemCount
        try:
            points = file_series_points(self.reader._token, run, path)
        except RunError as exc:
            raise RunError(f"the logged steps of this file series could not be read from the series "
                           f"endpoint ({exc.reason}); the run is not exported rather than numbering its "
                           f"files by index", project_id=run.project_id, run_id=run.run_id, file=path) from None
        try:
            steps = am.file_series_steps_2x(count, [p[0] for p in points] if points is not None else None,
                                            f"file series {path}")
        except ValueError as exc:
            raise RunError(f"{exc}; the run is not exported rather than numbering its files by index",
                           project_id=run.project_id, run_id=run.run_id, file=path) from None
        stamps = {p[0]: p[1] for p in points or []}
        rows = []
        for index, step in enumerate(steps):
            folder = root / am.local_file_path(run.run_id, path, step, container=run.container) / ""
            folder.mkdir(parents=True, exist_ok=True)
            backend.download_file_series_by_index(attribute._container_id, attribute._container_type,
                                                  attribute._path, index, str(folder), False)
            got = sorted(p for p in folder.iterdir() if p.is_file())
            if len(got) != 1:
                raise RunError(f"item {index} of the file series downloaded {len(got)} files",
                               project_id=run.project_id, run_id=run.run_id, file=path)
            rows.append((path, "file_series", step, stamps.get(step), str(got[0].relative_to(root))))
        return am.file_table(run.project_id, run.run_id, rows)


def series_points(attribute: Any) -> list[Any]:
    """Every point of a 2.x float / string series as the backend returns them (UTC epoch ms)."""
    first = attribute._fetch_values_from_backend(0, SERIES_PAGE)
    points = list(first.values)
    offset = SERIES_PAGE
    while offset < first.totalItemCount:
        page = attribute._fetch_values_from_backend(offset, SERIES_PAGE)
        if not page.values:
            break
        points.extend(page.values)
        offset += SERIES_PAGE
    return points


def file_series_points(token: str, run: am.ApiRun, path: str) -> list[tuple[float, int]] | None:
    """(step, timestamp ms) of a file series' items, from the series endpoint neptune-query uses."""
    try:
        from neptune_query.internal import identifiers as ids
        from neptune_query.internal.client import get_client
        from neptune_query.internal.context import Context
        from neptune_query.internal.retrieval import search, series
    except ImportError:
        return None
    from .reader3 import errors as errors3

    ident = ids.RunIdentifier(ids.ProjectIdentifier(run.project_id), ids.SysId(run.sys_id))
    definition = ids.RunAttributeDefinition(ident, ids.AttributeDefinition(path, "file_series"))
    with errors3(run.project_id, run.run_id):
        client = get_client(Context(api_token=token))
        fetched = series.fetch_series_values(client, [definition], include_inherited=False,
                                             container_type=search.ContainerType.RUN)
    return sorted((float(p.step), int(p.timestamp_millis)) for p in fetched.get(definition, []))
