"""The `neptune3://` reader, through neptune-query (imported lazily, here and in reader2.py's
`file_series_points`; nowhere else).

It talks to neptune-query 1.14's retrieval layer (`neptune_query.internal.retrieval`)
rather than its public `runs.*` frames, because the public frames are keyed by
`sys/custom_run_id` and fail on a run without one (search.py
`_process_table_rows_exact_attributes_page` indexes the label unconditionally).
Runs are addressed by `sys/id` here; every series is read with lineage NONE
(`include_inherited=False`), so a fork yields only its own points.
"""

from __future__ import annotations

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

SERIES_BATCH = 16          # attributes per series request: all their points are held until the request ends
RUNS_PAGE = 1000


def _status(exc: BaseException) -> int | None:
    match = re.search(r"(?:Last response status|Response status): (\d{3})", str(exc))
    return int(match.group(1)) if match else None


def classify(exc: BaseException, project_id: str = "", run_id: str = "") -> Exception:
    """trackport's error for an exception from neptune-query (never with the token in it)."""
    import httpx
    from neptune_query import exceptions as nqe

    name = type(exc).__name__
    if isinstance(exc, (nqe.NeptuneApiTokenNotProvided, nqe.NeptuneInvalidCredentialsError)):
        return UsageError(f"Neptune refused the API token ({name}); check {TOKEN_ENV}")
    if isinstance(exc, nqe.NeptuneProjectInaccessible):
        return UsageError(f"Neptune project {project_id!r} is not accessible with the token in {TOKEN_ENV}")
    status = _status(exc)
    if status in (401, 403):
        return UsageError(f"Neptune answered HTTP {status}: the token in {TOKEN_ENV} is not allowed to read "
                          f"{project_id or 'this workspace'}")
    if isinstance(exc, nqe.NeptuneRetryError) or (status is not None and (status == 429 or status >= 500)):
        return TransientError(f"Neptune API unavailable or rate limited (HTTP {status or '?'}, {name})")
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return TransientError(f"Neptune API connection failed: {name}")
    if isinstance(exc, nqe.NeptuneError):
        text = _ANSI.sub("", str(exc))
        first = next((line for line in text.splitlines() if line.strip()), name)
        return RunError(f"Neptune: {first.strip()}" + (f" (HTTP {status})" if status else ""),
                        project_id=project_id, run_id=run_id)
    return exc  # type: ignore[return-value]


def errors(project_id: str = "", run_id: str = ""):
    return translated(classify, project_id, run_id)


class _Nql:
    """A run filter given as NQL text (the search body sends `str(filter)` as the query)."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


def nql_for(user_nql: str | None, archived: bool) -> str | None:
    parts = []
    if user_nql:
        parts.append(f"({user_nql})")
    if not archived:
        # The same clause the 2.x client adds for trashed=False (neptune/api/searching_entries.py).
        parts.append('(`sys/trashed`:bool = false)')
    return " AND ".join(parts) or None


class Api3Reader(ApiReader):
    def __init__(self, token: str, options: dict[str, Any]):
        self._token = token
        self.nql = options.get("neptune_nql") or None
        self.archived = bool(options.get("neptune_archived"))
        self.include_previews = bool(options.get("neptune_metric_previews"))
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from neptune_query.internal.client import get_client
            from neptune_query.internal.context import Context

            with errors():
                self._client = get_client(Context(api_token=self._token))
        return self._client

    def discover_projects(self, workspace: str) -> list[str]:
        from .reader2 import list_projects

        return list_projects(self._token)

    def list_runs(self, project_id: str) -> list[am.ApiRun]:
        from neptune_query.internal.filters import _Attribute
        from neptune_query.internal.retrieval import search, util

        def page(data) -> util.Page:
            items = []
            for entry in data.entries:
                attrs = {a.name: a.string_properties.value for a in entry.attributes
                         if a.HasField("string_properties")}
                if attrs.get("sys/id"):
                    items.append(attrs)
            return util.Page(items=items)

        query = nql_for(self.nql, self.archived)
        out = []
        with errors(project_id):
            pages = search._fetch_entries_with_projection(
                client=self.client, project_identifier=project_id,
                attribute_projection=["sys/id", "sys/custom_run_id"], process_page=page,
                filter_=_Nql(query) if query else None,
                sort_by=_Attribute("sys/creation_time", type="datetime"), sort_direction="asc",
                limit=None, batch_size=RUNS_PAGE, container_type=search.ContainerType.RUN)
            for p in pages:
                for attrs in p.items:
                    sys_id = attrs["sys/id"]
                    custom = attrs.get("sys/custom_run_id") or None
                    out.append(am.ApiRun(project_id, sys_id, am.run_identity(3, sys_id, custom), custom))
        return out

    def open_run(self, run: am.ApiRun, select: Selection) -> "Api3Session":
        return Api3Session(self, run, select)


class Api3Session(RunSession):
    def __init__(self, reader: Api3Reader, run: am.ApiRun, select: Selection):
        from neptune_query.internal import identifiers as ids
        from neptune_query.internal.filters import _AttributeFilter
        from neptune_query.internal.retrieval import attribute_values

        self.reader = reader
        self.run = run
        self.select = select
        self.ident = ids.RunIdentifier(ids.ProjectIdentifier(run.project_id), ids.SysId(run.sys_id))
        self.values: list[tuple[str, str, Any]] = []
        with errors(run.project_id, run.run_id):
            pages = attribute_values.fetch_attribute_values(
                reader.client, ids.ProjectIdentifier(run.project_id), [self.ident],
                _AttributeFilter(type_in=list(am.TYPES_3X)))
            for page in pages:
                for item in page.items:
                    definition = item.attribute_definition
                    if am.wants(select, definition.name, definition.type):
                        self.values.append((definition.name, definition.type, item.value))
        self.values.sort(key=lambda v: v[0])
        self.previews_left_out = 0

    def classes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, attribute_type, _ in self.values:
            cls = am.class_of(attribute_type)
            counts[cls] = counts.get(cls, 0) + 1
        return counts

    def _of(self, *types: str) -> list[tuple[str, str, Any]]:
        return [v for v in self.values if v[1] in types]

    def _definitions(self, items):
        from neptune_query.internal import identifiers as ids

        return [ids.RunAttributeDefinition(self.ident, ids.AttributeDefinition(name, typ)) for name, typ, _ in items]

    def read(self, cls: str, root: Path) -> Iterator[pa.Table]:
        run = self.run
        with errors(run.project_id, run.run_id):
            if cls == "params":
                yield am.scalar_table(run.project_id, run.run_id, self._of(*am.CLASSES_PARAMS))
            elif cls == "metrics":
                yield from self._metrics()
            elif cls == "series":
                yield from self._series()
            elif cls == "files":
                yield from self._files(root)

    def _metrics(self) -> Iterator[pa.Table]:
        from neptune_query.internal.retrieval import metrics, search

        items = self._of("float_series")
        for start in range(0, len(items), SERIES_BATCH):
            definitions = self._definitions(items[start:start + SERIES_BATCH])
            fetched = metrics.fetch_multiple_series_values(
                self.reader.client, definitions, include_inherited=False,
                container_type=search.ContainerType.RUN, include_preview=self.reader.include_previews)
            for definition in definitions:
                table, left_out = am.metric_points_3x(self.run.project_id, self.run.run_id,
                                                      definition.attribute_definition.name,
                                                      fetched.get(definition, []), self.reader.include_previews)
                if left_out:
                    log.info("run %s/%s: %d preview points of %s left out (--neptune-metric-previews keeps them)",
                             self.run.project_id, self.run.run_id, left_out, definition.attribute_definition.name)
                self.previews_left_out += left_out
                yield table

    def _series_values(self, items):
        from neptune_query.internal.retrieval import search, series

        for start in range(0, len(items), SERIES_BATCH):
            definitions = self._definitions(items[start:start + SERIES_BATCH])
            fetched = series.fetch_series_values(self.reader.client, definitions, include_inherited=False,
                                                 container_type=search.ContainerType.RUN)
            for definition in definitions:
                points = sorted(fetched.get(definition, []), key=lambda p: p.step)
                yield definition.attribute_definition, points

    def _series(self) -> Iterator[pa.Table]:
        for definition, points in self._series_values(self._of("string_series", "histogram_series")):
            yield am.series_points_3x(self.run.project_id, self.run.run_id, definition.name, definition.type, points)

    def _download(self, file_ref, root: Path, relative: str) -> None:
        from neptune_query import types as nq_types
        from neptune_query.internal.retrieval import files

        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        wanted = nq_types.File(project_identifier=self.run.project_id, experiment_name=None, run_id=self.run.run_id,
                               attribute_path="", step=None, path=file_ref.path,
                               size_bytes=file_ref.size_bytes, mime_type=file_ref.mime_type)
        signed = files.fetch_signed_urls(self.reader.client, [wanted])[0]
        got = files.download_file_complete(self.reader.client, signed, target)
        if got is None:
            raise RunError("file not found in Neptune storage", project_id=self.run.project_id,
                           run_id=self.run.run_id, file=file_ref.path)

    def _files(self, root: Path) -> Iterator[pa.Table]:
        rows = []
        for name, _, file_ref in self._of("file"):
            relative = am.local_file_path(self.run.run_id, name, suffix=Path(file_ref.path).suffix)
            self._download(file_ref, root, relative)
            rows.append((name, "file", None, None, relative))
        if rows:
            yield am.file_table(self.run.project_id, self.run.run_id, rows)
        for definition, points in self._series_values(self._of("file_series")):
            rows = []
            for point in points:
                relative = am.local_file_path(self.run.run_id, definition.name, point.step,
                                              Path(point.value.path).suffix)
                self._download(point.value, root, relative)
                rows.append((definition.name, "file_series", point.step, point.timestamp_millis, relative))
            yield am.file_table(self.run.project_id, self.run.run_id, rows)
