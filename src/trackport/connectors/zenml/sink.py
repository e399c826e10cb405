"""ZenML sink: canonical runs -> model versions of one ZenML model (see mapping.py for the shape).

The run is staged in a temporary folder while its batches arrive (rows.arrow through Arrow IPC,
files/), then saved as one artifact version linked to the model version; then the run metadata
(params, series summaries), the tags, and the completion mark, last.  The model version is
created first with `trackport/origin` and the mark `{"complete": false}`, so a crash anywhere
leaves a run find_run calls partial.  A partial run, or one whose source grew, is written again
into the same model version (never a second one); artifact versions of earlier attempts are
deleted once the new mark is in.  See docs/zenml.md.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped, UsageError
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import COLUMNS, PARAM_TYPES, SCHEMA, VALUE_COLUMN

from . import client
from . import mapping as mp
from .source import ZenmlSource

_SERIES = ("float_series", "string_series", "histogram_series", "file_series")


class ZenmlSink(Sink):
    capabilities = mp.CAPABILITIES

    def __init__(self, config_dir: Path | None, model: str, uri: str, read_only: bool = False):
        self.config_dir, self.model, self.uri, self.read_only = config_dir, model, uri, read_only
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = client.connect(self.config_dir)
        return self._client

    def claim_dir(self) -> Path | None:
        if self.config_dir is not None:
            return self.config_dir / ".trackport-claims"
        return super().claim_dir()

    def preflight(self, read_only: bool = False) -> None:
        try:
            self.client
        except Exception as exc:           # a store ZenML cannot open: name it and stop
            raise UsageError(f"{self.uri}: ZenML cannot open its store ({type(exc).__name__}: {exc}); "
                             f"fix: check --zenml-config-dir / ZENML_CONFIG_PATH") from None

    def find_run(self, origin: Origin) -> DestRun | None:
        name = mp.version_name_for(origin.uri, origin.project_id, origin.run_id)
        if client.get_model(self.client, self.model) is None:
            return None
        version = client.get_version(self.client, self.model, name)
        if version is None:
            return None
        meta = version.run_metadata or {}
        mark = meta.get(mp.MARK_KEY) or {}
        wanted = mp.origin_dict(origin.uri, origin.project_id, origin.run_id)
        complete = bool(mark.get("complete")) and mark.get("origin") == wanted
        locator = {"model": self.model, "version": name, "artifact": mark.get("artifact"), "origin": wanted}
        return DestRun(f"{self.model}/{name}", complete, None, locator,
                       mark.get("version") if complete else None)

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this ZenML sink was opened read-only",
                           project_id=plan.origin.project_id, run_id=plan.origin.run_id)
        return ZenmlRunWriter(self, plan)

    def as_source(self) -> ZenmlSource:
        return ZenmlSource(self.config_dir, self.model, self.uri)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, dest.locator)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        scan, report = plan.scan, plan.report
        if scan.series:
            report.transformed("series_in_run_artifact", len(scan.series), sorted(scan.series)[0])
        if scan.files:
            report.transformed("file_in_run_artifact", len(scan.files), scan.files[0][0])
        if scan.value(mp.CREATION_TIME) is not None:
            report.transformed("creation_time_at_copy", 1, mp.CREATION_TIME)
        name = mp.version_name_for(plan.origin.uri, plan.origin.project_id, plan.origin.run_id)
        return [f"ZenML model {self.model!r}, model version {name}"]


class ZenmlRunWriter(RunScoped, RunWriter):
    @property
    def err_run(self):   # RunScoped: errors name the run being written
        return self.plan.origin

    def __init__(self, sink: ZenmlSink, plan: RunPlan):
        self.sink, self.plan, self.report = sink, plan, plan.report
        origin = plan.origin
        self.origin = mp.origin_dict(origin.uri, origin.project_id, origin.run_id)
        self.version_name = mp.version_name_for(origin.uri, origin.project_id, origin.run_id)
        self.artifact = mp.artifact_name(sink.model, self.version_name)
        self.params: dict[str, tuple[str, Any]] = {}
        self.series: dict[str, mp.SeriesSummary] = {}
        self.files = 0
        self.writer = None
        c = sink.client
        client.ensure_model(c, sink.model)
        version = client.get_version(c, sink.model, self.version_name)
        if version is not None:
            recorded = (version.run_metadata or {}).get(mp.ORIGIN_KEY)
            if recorded is not None and recorded != self.origin:
                raise self._err(f"ZenML model version {sink.model}/{self.version_name} holds the run "
                                f"copied from {recorded}; refusing to mix runs. Fix: delete that "
                                f"model version or copy into another model")
        else:
            version = client.create_version(c, sink.model, self.version_name,
                                            f"{origin.project_id}/{origin.run_id} copied by trackport", [])
        self.version_id = version.id
        # the origin first, the mark "not complete": a crash from here on leaves a partial run
        client.log_metadata(self.version_id, {mp.ORIGIN_KEY: self.origin,
                                              mp.MARK_KEY: {"complete": False, "origin": self.origin}})
        self.stage = Path(tempfile.mkdtemp(prefix="trackport-zenml-"))

    # -- writing ------------------------------------------------------------------------

    def write(self, batch: pa.Table) -> None:
        table = batch.select(list(COLUMNS)).cast(SCHEMA)      # dest_step dropped: steps kept as they are
        if self.writer is None:
            self.writer = pa.ipc.new_file(str(self.stage / mp.ROWS_FILE), SCHEMA)
        self.writer.write_table(table)
        types = table.column("attribute_type")
        for kind in pc.unique(types).to_pylist():
            part = table.filter(pc.equal(types, kind))
            paths = part.column("attribute_path").to_pylist()
            if kind in PARAM_TYPES:
                for path, value in zip(paths, part.column(VALUE_COLUMN[kind]).to_pylist()):
                    self.params[path] = (kind, value)
            elif kind in _SERIES:
                steps = part.column("step").to_pylist()
                values = part.column(VALUE_COLUMN[kind]).to_pylist() if kind == "float_series" else [None] * len(paths)
                for path, step, value in zip(paths, steps, values):
                    self.series.setdefault(path, mp.SeriesSummary(kind)).add(step, value)
        for value in pc.struct_field(table.column("file_value"), "path").drop_null().to_pylist():
            self._copy(value)

    def _copy(self, file_path: str) -> None:
        from trackport.core.layout import resolve_inside

        try:
            target = resolve_inside(self.stage / mp.FILES_DIR, file_path)
        except ValueError as exc:
            raise self._err(str(exc), file=file_path) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        local = self.plan.files.local_path(file_path)
        if local is not None and local.is_dir():          # file_set / artifact: a folder
            shutil.copytree(local, target, dirs_exist_ok=True)
            copied = [p for p in target.rglob("*") if p.is_file()]
        else:
            with self.plan.files.open(file_path) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            copied = [target]
        self.files += len(copied)
        self.report.files += len(copied)
        self.report.bytes += sum(p.stat().st_size for p in copied)

    # -- commit ---------------------------------------------------------------------------

    def commit(self) -> DestRun:
        if self.writer is None:
            self.writer = pa.ipc.new_file(str(self.stage / mp.ROWS_FILE), SCHEMA)
        self.writer.close()
        manifest = {"format": mp.FORMAT_VERSION, "origin": self.origin, "version": self.plan.source_version}
        (self.stage / mp.MANIFEST_FILE).write_text(json.dumps(manifest, ensure_ascii=False))
        c, model = self.sink.client, self.sink.model
        artifact_id = client.save_run_artifact(c, self.stage, self.artifact, model, self.version_id)

        metadata: dict[str, Any] = {}
        taken: set[str] = set()
        renamed, example = 0, None
        for path, (kind, value) in sorted(self.params.items()):
            if value is None:
                continue
            key, changed = mp.metadata_key(path, taken)
            metadata[key] = mp.metadata_value(kind, value)
            renamed, example = renamed + changed, example or (path if changed else None)
        for path, summary in sorted(self.series.items()):
            key, changed = mp.metadata_key(mp.SERIES_PREFIX + path, taken, summary=True)
            metadata[key] = summary.as_metadata()
            renamed, example = renamed + changed, example or (path if changed else None)
        if renamed:
            self.report.transformed("metadata_key_colon", renamed, example)
        if metadata:
            client.log_metadata(self.version_id, metadata)
        tags = self.params.get("sys/tags")
        if tags and tags[1]:
            client.add_tags(c, model, self.version_id, sorted(t for t in tags[1] if mp.valid_tag(t)))
        if self.series:
            self.report.transformed("series_in_run_artifact", len(self.series), sorted(self.series)[0])
        if self.files:
            self.report.transformed("file_in_run_artifact", self.files, mp.FILES_DIR)
        if self.params.get(mp.CREATION_TIME, (None, None))[1] is not None:
            self.report.transformed("creation_time_at_copy", 1, mp.CREATION_TIME)

        mark = {"complete": True, "origin": self.origin, "version": self.plan.source_version,
                "artifact": artifact_id, "format": mp.FORMAT_VERSION}
        client.log_metadata(self.version_id, {mp.MARK_KEY: mark})           # the completion mark, last
        for old in client.artifact_versions(c, self.artifact):               # earlier attempts' artifacts
            if old != artifact_id:
                client.delete_artifact_version(c, old)
        shutil.rmtree(self.stage, ignore_errors=True)
        locator = {"model": model, "version": self.version_name, "artifact": artifact_id, "origin": self.origin}
        return DestRun(f"{model}/{self.version_name}", True, None, locator, self.plan.source_version)

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        shutil.rmtree(self.stage, ignore_errors=True)      # the run stays partial (mark not complete)
