"""MLflow source: registered model versions -> canonical runs (registry.py names the shapes).

A version trackport wrote (origin tags on the model version) reads back under its origin
project and run id, with the source URI and times its `trackport.registry` tag recorded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from trackport.core.connector import FileAccess
from trackport.core.errors import RunError
from trackport.core.model import RunRef, Selection
from trackport.core.schema import ARTIFACTS_CLASS

from . import registry as rg
from .client import errors
from .entries import EntryFiles, EntryRows
from .models import model_uri_id
from .tags import TAG_ORIGIN_PROJECT, TAG_ORIGIN_RUN, TRACKPORT_TAG_PREFIX
from .values import datetime_from_ms

PAGE = 1000


@dataclass(frozen=True)
class RegistryLocator:
    """A model version, as the store names it."""

    name: str
    version: str


def _paged(search, **kwargs) -> list:
    out, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def entry_ids(mv) -> tuple[str, str]:
    """(project, run id) of a model version: its origin when trackport wrote it."""
    tags = mv.tags or {}
    project, run_id = tags.get(TAG_ORIGIN_PROJECT), tags.get(TAG_ORIGIN_RUN)
    if project and run_id and rg.is_registry_project(project):
        return project, run_id
    return rg.project_of(mv.name), str(mv.version)


class RegistryReader:
    """The registry half of an MlflowSource (`source` gives the client and the run ids)."""

    def __init__(self, source):
        self.source = source
        self.tracking = source.tracking
        self._lock = threading.Lock()
        self._download_uris: dict[tuple[str, str], str] = {}

    def list_entries(self, select: Selection) -> Iterator[RunRef]:
        if ARTIFACTS_CLASS not in select.classes or not self.tracking.has_registry():
            return
        client = self.tracking.client
        try:
            with errors():
                models = _paged(client.search_registered_models, max_results=100)
        except RunError as exc:   # a store without a registry (some servers): no entries
            self._note(f"MLflow model registry not read: {exc}")
            return
        for model in sorted(models, key=lambda m: m.name):
            with errors():
                versions = _paged(client.search_model_versions, filter_string=rg.model_filter(model.name),
                                  max_results=PAGE)
            if not versions:
                self._note(f"registered model {model.name!r} has no version: not moved (a registry "
                           f"entry is a model version)")
            for mv in sorted(versions, key=lambda v: int(v.version)):
                project, run_id = entry_ids(mv)
                if select.wants_run(project, run_id):
                    yield RunRef(project, run_id, RegistryLocator(mv.name, str(mv.version)))

    def _note(self, text: str) -> None:
        if text not in self.tracking.notes:
            self.tracking.notes.append(text)

    def locate(self, ref: RunRef) -> RegistryLocator:
        if isinstance(ref.locator, RegistryLocator):
            return ref.locator
        name = rg.model_of(ref.project_id)
        with errors(ref.project_id, ref.run_id):
            versions = _paged(self.tracking.client.search_model_versions,
                              filter_string=rg.model_filter(name), max_results=PAGE)
        for mv in versions:
            if entry_ids(mv) == (ref.project_id, ref.run_id):
                return RegistryLocator(mv.name, str(mv.version))
        raise RunError("no such MLflow model version", project_id=ref.project_id, run_id=ref.run_id)

    def _get(self, loc: RegistryLocator, ref: RunRef):
        client = self.tracking.client
        with errors(ref.project_id, ref.run_id):
            return client.get_model_version(loc.name, loc.version), client.get_registered_model(loc.name)

    def download_uri(self, loc: RegistryLocator) -> str:
        key = (loc.name, loc.version)
        with self._lock:
            got = self._download_uris.get(key)
        if got is None:
            with errors():
                got = self.tracking.client.get_model_version_download_uri(loc.name, loc.version)
            with self._lock:
                self._download_uris[key] = got
        return got

    def _source_run(self, run_id: str) -> tuple[str, str]:
        """The source run as this source lists it (its origin when trackport wrote it)."""
        try:
            with errors():
                run = self.tracking.client.get_run(run_id)
        except RunError:
            return "", run_id
        exp = self.source._experiment(run.info.experiment_id)
        return self.source._ids(run, exp.name if exp is not None else "")

    def read(self, ref: RunRef, select: Selection) -> Iterator[pa.Table]:
        loc = self.locate(ref)
        mv, model = self._get(loc, ref)
        tags = dict(mv.tags or {})
        ours = TAG_ORIGIN_RUN in tags
        kept = rg.read_registry_tag(tags.get(rg.TAG_REGISTRY)) if ours else {}
        entry = EntryRows(self.source, ref, select)
        add = entry.add
        add("sys/name", "string", "string_value", mv.name)
        if mv.description:
            add("sys/description", "string", "string_value", mv.description)
        created = kept.get("creation_timestamp", mv.creation_timestamp) if ours else mv.creation_timestamp
        updated = kept.get("last_updated_timestamp", mv.last_updated_timestamp) if ours \
            else mv.last_updated_timestamp
        if created is not None:
            add("sys/creation_time", "datetime", "datetime_value", datetime_from_ms(int(created)))
        if updated is not None:
            add("sys/modification_time", "datetime", "datetime_value", datetime_from_ms(int(updated)))
        owner = kept.get("user_id") if ours else mv.user_id
        if owner:
            add("sys/owner", "string", "string_value", owner)
        add(rg.MODEL, "string", "string_value", mv.name)
        add(rg.VERSION, "int", "int_value", int(ref.run_id) if ref.run_id.isdigit() else int(mv.version))
        for key in sorted(tags):
            if not (ours and key.startswith(TRACKPORT_TAG_PREFIX)):   # trackport's own, on its copies
                add(rg.TAG_PREFIX + key, "string", "string_value", tags[key])
        aliases = sorted(mv.aliases or [])
        if aliases:
            add(rg.ALIASES, "string_set", "string_set_value", aliases)
        if mv.current_stage and mv.current_stage != "None":
            add(rg.STAGE, "string", "string_value", mv.current_stage)
        source = kept.get("source", mv.source) if ours else mv.source
        if source:
            add(rg.SOURCE, "string", "string_value", source)
        if mv.run_link:
            add(rg.RUN_LINK, "string", "string_value", mv.run_link)
        model_id = model_uri_id(mv.source)   # the store's own source: a copy's points at its model copy
        linked = self.source.models.ids_of(model_id) if model_id else None
        if linked is not None:
            add(rg.SOURCE_MODEL_PROJECT, "string", "string_value", linked[0])
            add(rg.SOURCE_MODEL_ID, "string", "string_value", linked[1])
        if mv.run_id:
            project, run_id = self._source_run(mv.run_id)
            add(rg.SOURCE_RUN_PROJECT, "string", "string_value", project)
            add(rg.SOURCE_RUN_ID, "string", "string_value", run_id)
        if model.description:
            add(rg.MODEL_DESCRIPTION, "string", "string_value", model.description)
        for key, value in sorted((model.tags or {}).items()):
            add(rg.MODEL_TAG_PREFIX + key, "string", "string_value", value)
        entry.add_files(lambda: self.download_uri(loc), rg.FILES, rg.file_name, "registry_files_unreachable")
        yield from entry.tables()

    def files(self, ref: RunRef) -> FileAccess:
        return RegistryFiles(self, self.locate(ref), ref)


class RegistryFiles(EntryFiles):
    """The files of one model version (under its download URI)."""

    WHAT = "the model version's files"

    def __init__(self, reader: RegistryReader, loc: RegistryLocator, ref: RunRef):
        super().__init__(reader.source, ref)
        self.reader = reader
        self.loc = loc

    def _rel(self, path: str) -> str:
        return rg.file_rel(self.ref.run_id, path)

    def _location(self) -> str:
        return self.reader.download_uri(self.loc)

    def _scratch(self) -> Path:
        return self.source._tmpdir() / "registry" / self.loc.name.replace("/", "_") / self.loc.version
