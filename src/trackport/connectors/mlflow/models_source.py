"""MLflow source: MLflow 3 logged models -> canonical runs (models.py names the shapes).

A logged model trackport wrote (origin tags on the model) reads back under its origin project
and run id, with the times (and a status MLflow could not be given) its `trackport.logged_model`
tag recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from trackport.core.connector import FileAccess
from trackport.core.errors import RunError
from trackport.core.model import RunRef, Selection
from trackport.core.schema import ARTIFACTS_CLASS

from . import models as lm
from .client import errors
from .entries import EntryFiles, EntryRows
from .tags import TAG_ORIGIN_PROJECT, TAG_ORIGIN_RUN, TRACKPORT_TAG_PREFIX
from .values import datetime_from_ms


@dataclass(frozen=True)
class ModelLocator:
    """A logged model, as the store names it."""

    model_id: str


def entry_ids(model, experiment_name: str) -> tuple[str, str]:
    """(project, run id) of a logged model: its origin when trackport wrote it."""
    tags = model.tags or {}
    project, run_id = tags.get(TAG_ORIGIN_PROJECT), tags.get(TAG_ORIGIN_RUN)
    if project and run_id and lm.is_models_project(project):
        return project, run_id
    return lm.project_of(experiment_name), model.model_id


class ModelReader:
    """The logged-model half of an MlflowSource (`source` gives the client and the run ids)."""

    def __init__(self, source):
        self.source = source
        self.tracking = source.tracking

    def list_entries(self, select: Selection, experiments: list) -> Iterator[RunRef]:
        """Every logged model of `experiments` (the ones whose runs are listed), by model id."""
        if ARTIFACTS_CLASS not in select.classes:
            return
        if select.projects and not any(lm.is_models_project(p) for p in select.projects):
            return
        for exp in experiments:
            try:
                models = self.tracking.logged_models(exp.experiment_id)
            except RunError as exc:   # a store without logged models (before MLflow 3's schema)
                note = f"MLflow logged models of experiment {exp.name!r} not read: {exc}"
                if note not in self.tracking.notes:
                    self.tracking.notes.append(note)
                continue
            for model in sorted(models, key=lambda m: (m.creation_timestamp or 0, m.model_id)):
                self.source._model_by_id[model.model_id] = model
                project_id, run_id = entry_ids(model, exp.name)
                if select.wants_run(project_id, run_id):
                    yield RunRef(project_id, run_id, ModelLocator(model.model_id))

    def locate(self, ref: RunRef) -> ModelLocator:
        if isinstance(ref.locator, ModelLocator):
            return ref.locator
        for exp in self.tracking.experiments(deleted=self.source.include_deleted):
            with errors(ref.project_id, ref.run_id):
                models = self.tracking.logged_models(exp.experiment_id)
            for model in models:
                if entry_ids(model, exp.name) == (ref.project_id, ref.run_id):
                    return ModelLocator(model.model_id)
        raise RunError("no such MLflow logged model", project_id=ref.project_id, run_id=ref.run_id)

    def get(self, model_id: str, ref: RunRef | None = None):
        with errors(*((ref.project_id, ref.run_id) if ref else ())):
            model = self.tracking.client.get_logged_model(model_id)
        self.source._model_by_id[model_id] = model
        return model

    def ids_of(self, model_id: str) -> tuple[str, str] | None:
        """(project, run id) of a logged model as this source lists it; None when it is not
        in the store (deleted, or another store's)."""
        try:
            model = self.get(model_id)
        except RunError:
            return None
        exp = self.source._experiment(model.experiment_id)
        return entry_ids(model, exp.name if exp is not None else "")

    def read(self, ref: RunRef, select: Selection) -> Iterator[pa.Table]:
        loc = self.locate(ref)
        model = self.get(loc.model_id, ref)
        tags = dict(model.tags or {})
        ours = TAG_ORIGIN_RUN in tags
        kept = lm.read_model_tag(tags.get(lm.TAG_MODEL)) if ours else {}
        entry = EntryRows(self.source, ref, select)
        add = entry.add
        add("sys/name", "string", "string_value", model.name)
        add(lm.NAME, "string", "string_value", model.name)
        created = kept.get("creation_timestamp", model.creation_timestamp) if ours else model.creation_timestamp
        updated = kept.get("last_updated_timestamp", model.last_updated_timestamp) if ours \
            else model.last_updated_timestamp
        if created is not None:
            add("sys/creation_time", "datetime", "datetime_value", datetime_from_ms(int(created)))
        if updated is not None:
            add("sys/modification_time", "datetime", "datetime_value", datetime_from_ms(int(updated)))
        if model.model_type:
            add(lm.MODEL_TYPE, "string", "string_value", model.model_type)
        status = (kept.get("status") if ours else None) or str(model.status)
        add(lm.STATUS, "string", "string_value", status)
        if model.status_message:
            add(lm.STATUS_MESSAGE, "string", "string_value", model.status_message)
        for key in sorted(tags):
            if not (ours and key.startswith(TRACKPORT_TAG_PREFIX)):   # trackport's own, on its copies
                add(lm.TAG_PREFIX + key, "string", "string_value", tags[key])
        for key, value in sorted((model.params or {}).items()):
            add(lm.PARAM_PREFIX + key, "string", "string_value", value)
        if model.source_run_id:
            project, run_id = self.source.registry._source_run(model.source_run_id)
            add(lm.SOURCE_RUN_PROJECT, "string", "string_value", project)
            add(lm.SOURCE_RUN_ID, "string", "string_value", run_id)
        runs: dict[str, tuple[str, str]] = {}
        points = []
        with errors(ref.project_id, ref.run_id):
            metrics = self.tracking.logged_model_metrics(model)
        for m in metrics:
            if m.run_id and m.run_id not in runs:
                runs[m.run_id] = self.source.registry._source_run(m.run_id)
            project, run_id = runs.get(m.run_id, ("", m.run_id)) if m.run_id else (None, None)
            points.append({"key": m.key, "value": m.value, "step": m.step, "timestamp": m.timestamp,
                           "run_project": project, "run_id": run_id, "dataset_name": m.dataset_name,
                           "dataset_digest": m.dataset_digest})
        add(lm.METRICS, "string", "string_value", lm.metrics_json(points))
        entry.add_files(lambda: model.artifact_location, lm.FILES, lm.file_name, "logged_model_files_unreachable")
        yield from entry.tables()

    def files(self, ref: RunRef) -> FileAccess:
        return ModelFiles(self, self.locate(ref), ref)


class ModelFiles(EntryFiles):
    """The files of one logged model (under its artifact location)."""

    WHAT = "the logged model's files"

    def __init__(self, reader: ModelReader, loc: ModelLocator, ref: RunRef):
        super().__init__(reader.source, ref)
        self.reader = reader
        self.loc = loc

    def _rel(self, path: str) -> str:
        return lm.file_rel(self.ref.run_id, path)

    def _location(self) -> str:
        model = self.source._model_by_id.get(self.loc.model_id) or self.reader.get(self.loc.model_id, self.ref)
        return model.artifact_location

    def _scratch(self) -> Path:
        return self.source._tmpdir() / "models" / self.loc.model_id
