"""LitLogger sink: canonical runs -> Lightning AI experiments (mapping in mapping.py, docs/litlogger.md).

One source run = one experiment (metrics stream) named `mapping.experiment_name`.  A run found
partial (killed before its completion tag) or older is started again from nothing: the stream
is deleted and created anew under the same name, so no point is ever sent twice into one stream
(the service appends; it has no idempotent write).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped
from trackport.core.files import materialise
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import DEST_STEP, FILE_TYPES
from trackport.core.steps import StepConverter, step_text

from . import mapping as mp
from .client import LitLoggerClient, LitLoggerRejected

log = logging.getLogger(__name__)


def _fix_for(exc: LitLoggerRejected) -> str:
    if exc.status in (401, 403):
        return ". Fix: set LIGHTNING_USER_ID and LIGHTNING_API_KEY (or run `lightning login`) for this server"
    if exc.status == 404:
        return ". Fix: check the teamspace in the URI and LIGHTNING_CLOUD_URL"
    return ""


class LitLoggerSink(Sink):
    capabilities = mp.CAPABILITIES

    def __init__(self, teamspace: str, options: dict[str, Any], client: LitLoggerClient, read_only: bool = False):
        self.read_only = read_only
        self.teamspace = teamspace
        self.client = client
        self.uri = f"litlogger://{teamspace}"
        self.batch_size = max(1, int(options.get("litlogger_batch_size") or 1000))
        self._sources: list = []

    def _find(self, origin: Origin):
        ext = mp.external_id(origin.uri, origin.project_id, origin.run_id)
        name = mp.experiment_name(ext, origin.run_id)
        stream = self.client.get_stream(name)
        if stream is not None:
            tags = {t.name: t.value for t in (stream.tags or [])}
            if tags.get(mp.TAG_ORIGIN) != ext:
                raise RunError(f"the teamspace already has an experiment named {name!r} that trackport did not "
                               f"load from this run (its tag {mp.TAG_ORIGIN} is {tags.get(mp.TAG_ORIGIN)!r}). "
                               f"Fix: rename or delete that experiment", project_id=origin.project_id,
                               run_id=origin.run_id)
        return stream, ext, name

    def server(self) -> str:
        return os.environ.get("LIGHTNING_CLOUD_URL", "").strip() or "https://lightning.ai"

    def find_run(self, origin: Origin) -> DestRun | None:
        try:
            stream, _, name = self._find(origin)
        except LitLoggerRejected as exc:
            raise RunError(f"LitLogger refused {exc}{_fix_for(exc)}", project_id=origin.project_id,
                           run_id=origin.run_id) from None
        if stream is None:
            return None
        tags = {t.name: t.value for t in (stream.tags or [])}
        complete = mp.TAG_COMPLETE in tags
        version = (tags.get(mp.TAG_COMPLETE) or None) if complete else None
        return DestRun(str(stream.id), complete, self.client.experiment_url(name), (str(stream.id), name),
                       version=version)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, dest.locator)

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this LitLogger sink was opened read-only", project_id=plan.origin.project_id,
                           run_id=plan.origin.run_id)
        writer = LitLoggerRunWriter(self, plan)
        writer.start()
        return writer

    def as_source(self):
        from .source import LitLoggerSource

        source = LitLoggerSource(self.client, self.uri)
        self._sources.append(source)
        return source

    def describe_plan(self, plan: RunPlan) -> list[str]:
        scan, report = plan.scan, plan.report
        tags = mp.tag_plan(scan.values)
        for kind, paths in tags.counts.items():
            for p in paths:
                report.transformed(kind, 1, p)
        for path, stats in scan.series.items():
            if stats.attribute_type in ("string_series", "histogram_series"):
                report.transformed("series_file", 1, path)
        ext = mp.external_id(plan.origin.uri, plan.origin.project_id, plan.origin.run_id)
        return [f"LitLogger teamspace {self.teamspace!r}, experiment {mp.experiment_name(ext, plan.origin.run_id)!r}"]

    def close(self) -> None:
        for source in self._sources:
            source.close()
        self._sources.clear()


class LitLoggerRunWriter(RunScoped, RunWriter):
    def __init__(self, sink: LitLoggerSink, plan: RunPlan):
        self.sink = sink
        self.client = sink.client
        self.plan = plan
        self.report = plan.report
        self.origin = plan.origin
        self.err_run = plan.origin
        self.multiplier = plan.steps.multiplier if plan.steps is not None else 1
        self.ext = mp.external_id(self.origin.uri, self.origin.project_id, self.origin.run_id)
        self.name = mp.experiment_name(self.ext, self.origin.run_id)
        self.manifest = mp.Manifest(self.origin.uri, self.origin.project_id, self.origin.run_id, self.ext,
                                    self.multiplier)
        self.stream = None
        self.tags: dict[str, str] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="trackport-litlogger-"))
        self._spools: dict[str, Path] = {}
        self._files: list[tuple[str, str, Any, str, int | None]] = []
        self._closed = False

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LitLoggerRejected as exc:
            raise self._err(f"LitLogger refused {exc}{_fix_for(exc)}") from None

    # -- start -------------------------------------------------------------------
    def start(self) -> None:
        tags = mp.tag_plan(self.plan.scan.values)
        for kind, paths in tags.counts.items():
            for p in paths:
                self.report.transformed(kind, 1, p)
        self.manifest.types.update(tags.types)
        self.manifest.params.update(tags.in_manifest)
        for path, stats in self.plan.scan.series.items():
            self.manifest.types[path] = stats.attribute_type
        for attr, typ, _step, _path in self.plan.scan.files:
            self.manifest.types[attr] = typ
        self.tags = {**tags.tags, mp.TAG_ORIGIN: self.ext}
        # whatever an earlier attempt left under this name (found by find_run, or created by an
        # attempt whose answer was lost) is started again from nothing
        try:
            existing, _, _ = self.sink._find(self.origin)
        except LitLoggerRejected as exc:
            raise self._err(f"LitLogger refused {exc}{_fix_for(exc)}") from None
        if existing is not None:
            self._call(self.client.delete_stream, str(existing.id))
        self.stream = self._call(self.client.create_stream, self.name, self.tags)

    # -- rows ----------------------------------------------------------------------
    def write(self, table: pa.Table) -> None:
        types = table.column("attribute_type")
        metrics = table.filter(pc.equal(types, "float_series"))
        if metrics.num_rows:
            self._write_metrics(metrics)
        series = table.filter(pc.is_in(types, value_set=pa.array(["string_series", "histogram_series"])))
        if series.num_rows:
            self._spool_series(series)
        files = table.filter(pc.is_in(types, value_set=pa.array(sorted(FILE_TYPES))))
        if files.num_rows:
            self._collect_files(files)

    def _dest_steps(self, table: pa.Table) -> list:
        if DEST_STEP in table.column_names:
            return table.column(DEST_STEP).to_pylist()
        return StepConverter(1).convert(table.column("step"))[0].to_pylist()

    def _write_metrics(self, table: pa.Table) -> None:
        names = table.column("attribute_path").to_pylist()
        values = table.column("float_value").to_pylist()
        steps = self._dest_steps(table)
        times = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        batch: dict[str, list] = {}
        count = 0
        for name, value, step, ms in zip(names, values, steps, times):
            self.manifest.metrics.setdefault(name, 0)
            text = mp.special_text(value)
            if text is not None:
                self.manifest.special.setdefault(name, []).append([step, ms, text])
                self.report.transformed("special_point_in_manifest", 1, name)
                continue
            self.manifest.metrics[name] += 1
            batch.setdefault(name, []).append((value, step, ms))
            count += 1
            if count >= self.sink.batch_size:
                self._call(self.client.append, str(self.stream.id), batch)
                batch, count = {}, 0
        if batch:
            self._call(self.client.append, str(self.stream.id), batch)

    def _spool_series(self, table: pa.Table) -> None:
        paths = table.column("attribute_path").to_pylist()
        types = table.column("attribute_type").to_pylist()
        steps = table.column("step").to_pylist()
        times = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        strings = table.column("string_value").to_pylist()
        hists = table.column("histogram_value").to_pylist()
        out: dict[str, list[str]] = {}
        for i, (path, typ) in enumerate(zip(paths, types)):
            value = strings[i] if typ == "string_series" else hists[i]
            out.setdefault(path, []).append(json.dumps(
                {"step": None if steps[i] is None else step_text(steps[i]), "timestamp": times[i], "value": value},
                ensure_ascii=False) + "\n")
        for path, lines in out.items():
            spool = self._spools.get(path)
            if spool is None:
                spool = self._spools[path] = self._tmp / f"series-{len(self._spools)}.jsonl"
                self.report.transformed("series_file", 1, path)
            with open(spool, "a", encoding="utf-8") as fh:
                fh.writelines(lines)

    def _collect_files(self, table: pa.Table) -> None:
        paths = table.column("attribute_path").to_pylist()
        types = table.column("attribute_type").to_pylist()
        cells = table.column("file_value").to_pylist()
        steps = table.column("step").to_pylist()
        times = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        for attr, typ, cell, step, ts in zip(paths, types, cells, steps, times):
            source = cell.get("path") if cell else None
            if not source:
                self.report.dropped("file_missing_path", 1, attr)
                continue
            self._files.append((attr, typ, step, source, ts))

    # -- commit ------------------------------------------------------------------
    def _upload(self, local: Path, remote: str) -> None:
        self._call(self.client.upload, self.stream, self.name, local, remote)

    def _send_series(self) -> None:
        for path, spool in self._spools.items():
            remote = mp.series_remote(path)
            self.manifest.series_files[path] = remote
            self._upload(spool, remote)

    def _send_files(self) -> None:
        renamed: set[str] = set()
        for attr, typ, step, source, ts in self._files:
            local = materialise(self.plan.files, source, self._tmp / "files", self._err)
            members = ([(p.relative_to(local).as_posix(), p) for p in sorted(local.rglob("*")) if p.is_file()]
                       if local.is_dir() else [(None, local)])
            text = None if step is None else step_text(step)
            for member, path in members:
                remote, moved = mp.file_remote(attr, text, source, member)
                if moved and attr not in renamed:
                    renamed.add(attr)
                    self.report.transformed("file_path_renamed", 1, attr)
                self.manifest.files.append([attr, typ, text, source, remote, member, ts])
                self._upload(path, remote)
                self.report.files += 1
                self.report.bytes += path.stat().st_size

    def commit(self) -> DestRun:
        try:
            self._send_series()
            self._send_files()
            manifest = self._tmp / "manifest.json"
            manifest.write_bytes(self.manifest.dumps())
            self._upload(manifest, mp.MANIFEST_PATH)
            failed = self.plan.scan.value("sys/failed") is True
            # the completion mark, last: phase and the full tag set with trackport:complete
            final = {**self.tags, mp.TAG_COMPLETE: self.plan.source_version or ""}
            self._call(self.client.finish, str(self.stream.id), failed, final)
        finally:
            self._cleanup()
        return DestRun(str(self.stream.id), True, self.client.experiment_url(self.name),
                       (str(self.stream.id), self.name), version=self.plan.source_version)

    def abort(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if not self._closed:
            self._closed = True
            shutil.rmtree(self._tmp, ignore_errors=True)
