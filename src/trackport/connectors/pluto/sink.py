"""Pluto sink: canonical runs -> Pluto runs (mapping in mapping.py, docs/pluto.md)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped
from trackport.core.files import materialise
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import DEST_STEP, FILE_TYPES
from trackport.core.steps import StepConverter, step_text

from . import mapping as mp
from .client import PlutoClient, PlutoRejected, RunContext

log = logging.getLogger(__name__)


def _int_option(options: dict, name: str, default: int, minimum: int = 0) -> int:
    value = options.get(name)
    if value in (None, ""):
        return default
    return max(minimum, int(value))


class PlutoSink(Sink):
    capabilities = mp.CAPABILITIES

    def __init__(self, project: str | None, options: dict[str, Any], client: PlutoClient | None,
                 read_only: bool = False):
        self.read_only = read_only
        self.project = project
        self.options = options
        self._client = client
        self.uri = f"pluto://{project or ''}"
        self.batch_rows = _int_option(options, "pluto_batch_rows", 10_000, 1)
        self.flush_every = _int_option(options, "pluto_flush_every", 1_000, 1)
        self.file_chunk = _int_option(options, "pluto_file_chunk_size", 100, 1)
        self.chunk_pause = float(options.get("pluto_file_chunk_sleep") or 0.0)
        self.max_files = _int_option(options, "pluto_max_files_per_run", 0, 0)
        self.log_every = _int_option(options, "pluto_log_every", 1, 1)
        self._sources: list = []

    @property
    def client(self) -> PlutoClient:
        if self._client is None:
            raise RunError("this Pluto sink was opened without a connection")
        return self._client

    def server(self) -> str:
        return self._client.settings.url_api if self._client is not None else ""

    def project_for(self, origin_project: str) -> str:
        return self.project or origin_project

    # -- finding runs (read-only: list + details, never create/resume) ---------

    def _find(self, origin: Origin) -> tuple[dict | None, str]:
        ext = mp.external_id(origin.uri, origin.project_id, origin.run_id)
        project = self.project_for(origin.project_id)
        found = None
        for item in self.client.list_runs(project, tags=[mp.origin_tag(ext)]):
            details = self.client.run_details(project, int(item["id"]))
            if details.get("externalId") == ext:
                if found is None or int(details["id"]) < int(found["id"]):
                    found = details
        return found, ext

    def find_run(self, origin: Origin) -> DestRun | None:
        if self._client is None:
            return None
        try:
            details, _ = self._find(origin)
        except PlutoRejected as exc:
            raise RunError(f"Pluto refused {exc}{_fix_for(exc)}", project_id=origin.project_id,
                           run_id=origin.run_id) from None
        if details is None:
            return None
        tags = details.get("tags") or []
        complete = mp.TAG_COMPLETE in tags
        version = next((t[len(mp.TAG_VERSION):] for t in tags if t.startswith(mp.TAG_VERSION)), None)
        locator = (self.project_for(origin.project_id), int(details["id"]))
        return DestRun(str(details["id"]), complete, details.get("url"), locator,
                       version=version if complete else None)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, dest.locator)

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this Pluto sink was opened read-only", project_id=plan.origin.project_id,
                           run_id=plan.origin.run_id)
        writer = PlutoRunWriter(self, plan)
        writer.start(resume)
        return writer

    def as_source(self):
        from .source import PlutoSource

        source = PlutoSource(self.client, self.project, self.uri)
        self._sources.append(source)
        return source

    def describe_plan(self, plan: RunPlan) -> list[str]:
        scan, report = plan.scan, plan.report
        cfg = mp.config_plan(scan.values)
        for kind, paths in cfg.counts.items():
            for p in paths:
                report.transformed(kind, 1, p)
        for path, stats in scan.series.items():
            if stats.attribute_type in ("string_series", "histogram_series"):
                report.transformed("series_file", 1, path)
        for path in sorted({f[0] for f in scan.files}):
            log_name, moved = mp.file_log(path)
            if moved:
                report.transformed("file_log_renamed", 1, f"{path} -> {log_name}")
        lines = [f"Pluto project {self.project_for(plan.origin.project_id)!r}, externalId "
                 f"{mp.external_id(plan.origin.uri, plan.origin.project_id, plan.origin.run_id)}"]
        if self.log_every > 1:
            lines.append(f"metrics downsampled: 1 point in {self.log_every} kept (--pluto-log-every)")
        if self.max_files:
            lines.append(f"at most {self.max_files} files per run (--pluto-max-files-per-run)")
        return lines

    def close(self) -> None:
        for source in self._sources:
            source.close()
        self._sources.clear()


def _fix_for(exc: PlutoRejected) -> str:
    if exc.status in (401, 403):
        return ". Fix: set PLUTO_API_KEY (or run `pluto login`) to a valid key for this server"
    if exc.status == 404:
        return ". Fix: check the project name and the PLUTO_URL_* / --pluto-host settings"
    return ""


class PlutoRunWriter(RunScoped, RunWriter):
    def __init__(self, sink: PlutoSink, plan: RunPlan):
        self.sink = sink
        self.client = sink.client
        self.plan = plan
        self.report = plan.report
        self.origin = plan.origin
        self.project_id = plan.origin.project_id
        self.source_run = plan.origin.run_id
        self.err_run = plan.origin
        self.multiplier = plan.steps.multiplier if plan.steps is not None else 1
        scan = plan.scan
        self.ext = mp.external_id(self.origin.uri, self.project_id, self.source_run)
        self.ctx = RunContext(sink.project_for(self.project_id), mp.run_name(scan.values, self.source_run), self.ext)
        self.manifest = mp.Manifest(self.origin.uri, self.project_id, self.source_run, self.ext, self.multiplier)
        self.created_ms = mp.ms(scan.value("sys/creation_time"))
        if self.created_ms is None:
            self.created_ms = mp.ms(scan.first_timestamp)
        self.updated_ms = mp.ms(scan.value("sys/modification_time"))
        if self.updated_ms is None:
            self.updated_ms = mp.ms(scan.last_timestamp) or self.created_ms
        self._tmp = Path(tempfile.mkdtemp(prefix="trackport-pluto-"))
        self._spools: dict[str, Path] = {}
        self._series_types: dict[str, str] = {}
        self._files: list[tuple[str, str, Any, int | None, str, int | None]] = []
        self._metric_names: set[str] = set()
        self._down_counts: dict[str, int] = {}
        self._existing_files: set[tuple[str, str, Any]] = set()
        self._resumed = False
        self._closed = False
        # a grown run (complete, older run_version): the manifest of its last copy, and the
        # generation of the manifest and series files this refresh writes (mapping.generation_name)
        self._previous: mp.Manifest | None = None
        self._generation = 0

    def _call(self, fn, *args, fix: str = ""):
        try:
            return fn(*args)
        except PlutoRejected as exc:
            raise self._err(f"Pluto refused {exc}" + (f". Fix: {fix}" if fix else _fix_for(exc))) from None

    # -- start -------------------------------------------------------------------

    def start(self, resume: DestRun | None) -> None:
        scan = self.plan.scan
        for path, stats in scan.series.items():
            if stats.min_step is not None and stats.min_step < 0:
                raise self._err(
                    f"series {path!r} has negative step {stats.min_step}; Pluto takes only non-negative "
                    f"integer steps and rejects the whole batch. Nothing was written. Fix: shift the "
                    f"steps of this run in the source export")
        cfg = mp.config_plan(scan.values)
        for kind, paths in cfg.counts.items():
            for p in paths:
                self.report.transformed(kind, 1, p)
        self.manifest.types.update(cfg.types)
        for path, stats in scan.series.items():
            self.manifest.types[path] = stats.attribute_type
        for attr, typ, _step, _path in scan.files:
            self.manifest.types[attr] = typ
        tags = mp.run_tags(scan.values, self.origin.uri, self.project_id, self.ext)
        self.tags = tags
        if resume is not None:
            self.ctx.run_id = int(resume.id)
            self._call(self.client.resume_run, self.ctx)
            self._resumed = True
        else:
            created = self._call(self.client.create_run, self.ctx, cfg.config, tags, self.created_ms,
                                 self.updated_ms)
            self.ctx.run_id = created.run_id
            # `resumed`: another attempt (or a lost answer) created it first; finish that run
            self._resumed = created.resumed
        if self._resumed:
            listing = self._call(self.client.files, self.ctx.project, self.ctx.run_id, None)
            for f in listing:
                self._existing_files.add((f.get("logName"), f.get("fileName"), f.get("step")))
            if resume is not None and resume.complete:
                self._grown(resume, listing)
            # config and tags replace what an earlier attempt sent
            self._call(self.client.update_config, self.ctx, cfg.config)
            self._call(self.client.update_tags, self.ctx, self._kept_tags(resume))

    def _grown(self, resume: DestRun, listing: list[dict]) -> None:
        """A complete run whose source grew: the next generation of files, the last one's
        manifest to tell which string/histogram points the server has."""
        latest = mp.latest_manifest([f for f in listing if f.get("logName") == mp.MANIFEST_LOG
                                     and f.get("downloadUrl")])
        if latest is None:
            raise self._err(f"Pluto run {resume.id} is marked complete but has no trackport manifest")
        target = self._tmp / "previous-manifest.json"
        self._call(self.client.download, latest[1]["downloadUrl"], target)
        self._previous = mp.Manifest.loads(target.read_bytes())
        self._generation = latest[0] + 1
        self._listing = listing

    def _kept_tags(self, resume: DestRun | None) -> list[str]:
        """A grown run keeps its mark (and old version) while it is refreshed: a refresh that
        fails is done again, from the same manifest, by the next copy."""
        if resume is not None and resume.complete:
            old = [mp.TAG_COMPLETE] + ([mp.TAG_VERSION + resume.version] if resume.version else [])
            return sorted(set(self.tags) | set(old))
        return self.tags

    # -- rows ----------------------------------------------------------------------

    def write(self, table: pa.Table) -> None:
        for offset in range(0, table.num_rows, self.sink.batch_rows):
            self._write_slice(table.slice(offset, self.sink.batch_rows))

    def _write_slice(self, table: pa.Table) -> None:
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

    def _dest_column(self, table: pa.Table) -> pa.ChunkedArray | pa.Array:
        """The pipeline's exact int64 steps (nulls where the source has none)."""
        if DEST_STEP in table.column_names:
            return table.column(DEST_STEP)
        return StepConverter(1).convert(table.column("step"))[0]   # integer steps as they are

    def _dest_steps(self, table: pa.Table) -> np.ndarray:
        col = self._dest_column(table)
        if col.null_count:
            raise self._err("a series point has no step; Pluto needs one. Fix: give every series point a step")
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)

    def _times(self, table: pa.Table) -> np.ndarray:
        ts = pc.cast(table.column("timestamp"), pa.int64())
        if ts.null_count:
            missing = table.filter(pc.is_null(ts))
            for item in pc.value_counts(missing.column("attribute_path")).to_pylist():
                self.report.transformed("timestamp_filled", item["counts"], item["values"])
            ts = pc.fill_null(ts, self.created_ms or 0)
        return np.asarray(ts.to_numpy(zero_copy_only=False), dtype=np.int64)

    def _write_metrics(self, table: pa.Table) -> None:
        encoded = pc.dictionary_encode(table.column("attribute_path")).combine_chunks()
        codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        names = encoded.dictionary.to_pylist()
        values = np.asarray(pc.fill_null(table.column("float_value"), np.nan).to_numpy(zero_copy_only=False),
                            dtype=np.float64)
        steps = self._dest_steps(table)
        times = self._times(table)
        keep = np.ones(len(values), dtype=bool)
        if self.sink.log_every > 1:
            for j, name in enumerate(names):
                rows = np.nonzero(codes == j)[0]
                start = self._down_counts.get(name, 0)
                idx = start + np.arange(len(rows))
                drop = rows[(idx % self.sink.log_every) != 0]
                keep[drop] = False
                self._down_counts[name] = start + len(rows)
                if len(drop):
                    self.report.dropped("metric_downsampled", int(len(drop)), name)
        for j, name in enumerate(names):
            rows = codes == j
            entry = self.manifest.series.setdefault(name, {"count": 0, "min": None, "max": None})
            sel = steps[rows & keep]
            if sel.size:
                entry["count"] += int(sel.size)
                lo, hi = int(sel.min()), int(sel.max())
                entry["min"] = lo if entry["min"] is None else min(entry["min"], lo)
                entry["max"] = hi if entry["max"] is None else max(entry["max"], hi)
        bad = ~np.isfinite(values) & keep
        if bad.any():
            for i in np.nonzero(bad)[0].tolist():
                name = names[codes[i]]
                self.manifest.nonfinite.setdefault(name, []).append(
                    [int(steps[i]), int(times[i]), mp.float_text(float(values[i]))])
                self.report.transformed("nonfinite_in_manifest", 1, name)
            keep &= ~bad
        new = [n for n in names if n not in self._metric_names]
        if new:
            self._call(self.client.add_log_names, self.ctx, "num", new)
            self._metric_names.update(new)
        idx = np.nonzero(keep)[0]
        name_list = np.array(names, dtype=object)[codes[idx]].tolist()
        lines = [
            json.dumps({"time": t, "step": s, "data": {n: v}}) + "\n"
            for t, s, n, v in zip(times[idx].tolist(), steps[idx].tolist(), name_list, values[idx].tolist())
        ]
        for chunk in mp.chunks(lines, self.sink.flush_every):
            self._call(self.client.post_lines, self.ctx, "num", chunk)

    def _spool_series(self, table: pa.Table) -> None:
        paths = table.column("attribute_path").to_pylist()
        types = table.column("attribute_type").to_pylist()
        steps = table.column("step").to_pylist()
        dest = self._dest_steps(table).tolist()
        times = self._times(table).tolist()
        raw_times = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        strings = table.column("string_value").to_pylist()
        hists = table.column("histogram_value").to_pylist()
        out: dict[str, list[str]] = {}
        for i, (path, typ) in enumerate(zip(paths, types)):
            value = strings[i] if typ == "string_series" else hists[i]
            self._series_types[path] = typ
            out.setdefault(path, []).append(json.dumps(
                {"step": step_text(steps[i]), "dest": dest[i], "timestamp": raw_times[i], "time": times[i],
                 "value": value},
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
        dest = self._dest_column(table).to_pylist()
        times = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        for attr, typ, cell, step, d, ts in zip(paths, types, cells, steps, dest, times):
            source = cell.get("path") if cell else None
            if not source:
                self.report.dropped("file_missing_path", 1, attr)
                continue
            self._files.append((attr, typ, step, d, source, ts))

    # -- commit ------------------------------------------------------------------

    def _send_series(self) -> None:
        for path, spool in self._spools.items():
            typ = self._series_types[path]
            name = mp.generation_name(mp.series_file_name(path), self._generation)
            log_name = mp.series_log(path)
            self.manifest.series_files[path] = name
            if (log_name, name, None) in self._existing_files:
                continue   # sent completely by an earlier attempt (the file goes after the points)
            console = mp.CONSOLE_STREAMS.get(path) if typ == "string_series" else None
            kind = "message" if console else "data"
            if typ == "histogram_series":
                self._call(self.client.add_log_names, self.ctx, "histogram", [path])
            elif not console:
                self._call(self.client.add_log_names, self.ctx, "data", [path])
            batch: list[str] = []
            line_number = 0
            already: set[int] = set()
            sent = self._sent_points(path) if not console else set()
            if console and self._resumed:
                # an earlier attempt may have sent some lines (maybe without seeing the answer):
                # the server's own copy says which, by our line numbers
                already = {int(e.get("lineNumber", -1)) for e in
                           self._call(self.client.logs, self.ctx.project, self.ctx.run_id, console)}
            with open(spool, encoding="utf-8") as fh:
                for raw in fh:
                    point = json.loads(raw)
                    value = point["value"]
                    if console:
                        obj = {"time": point["time"], "message": value or "", "lineNumber": line_number,
                               "logType": console}
                        line_number += 1
                        if obj["lineNumber"] in already:
                            continue
                    elif (point["dest"], point["time"]) in sent:
                        continue   # a grown run: sent by an earlier copy (in its series file)
                    elif typ == "string_series":
                        if value is None or len(value) > mp.STRING_SERIES_MAX_LEN:
                            if value is not None:
                                self.report.transformed("long_string_not_charted", 1, path)
                            continue
                        obj = {"time": point["time"], "data": value, "dataType": "string-series",
                               "logName": path, "step": point["dest"]}
                    else:
                        if value is None:
                            continue
                        data, exact = mp.histogram_data(value)
                        if not exact:
                            self.report.transformed("histogram_nonuniform", 1, path)
                        obj = {"time": point["time"], "data": json.dumps(data), "dataType": "HISTOGRAM",
                               "logName": path, "step": point["dest"]}
                    batch.append(json.dumps(obj, ensure_ascii=False) + "\n")
                    if len(batch) >= self.sink.batch_rows:
                        self._call(self.client.post_lines, self.ctx, kind, batch)
                        batch = []
            self._call(self.client.post_lines, self.ctx, kind, batch)
            entry = self._file_entry(log_name, name, None, spool, self.updated_ms)
            self._call(self.client.upload_files, self.ctx, [entry], [spool])

    def _sent_points(self, path: str) -> set[tuple[int, int]]:
        """(dest step, time) of the points of `path` the last copy of a grown run sent."""
        if self._previous is None or path not in self._previous.series_files:
            return set()
        name = self._previous.series_files[path]
        entry = next((f for f in self._listing if f.get("logName") == mp.series_log(path)
                      and f.get("fileName") == name and f.get("downloadUrl")), None)
        if entry is None:
            raise self._err(f"the series file of {path!r} of the earlier copy is missing in Pluto")
        target = self._tmp / "previous-series.jsonl"
        self._call(self.client.download, entry["downloadUrl"], target)
        with open(target, encoding="utf-8") as fh:
            sent = {(p["dest"], p["time"]) for p in map(json.loads, fh)}
        target.unlink()
        return sent

    def _file_entry(self, log_name: str, name: str, step: int | None, local: Path, ts: int | None) -> dict:
        return {"fileName": name, "fileSize": local.stat().st_size, "fileType": mp.file_type(name),
                "time": ts if ts is not None else (self.created_ms or 0), "logName": log_name, "step": step,
                "sampleIndex": 0}

    def _local(self, source: str) -> Path:
        return materialise(self.plan.files, source, self._tmp / "files", self._err)

    def _send_files(self) -> None:
        pending: list[tuple[dict, Path]] = []
        sent = 0
        renamed: set[str] = set()
        for attr, typ, step, dest, source, ts in self._files:
            local = self._local(source)
            log_name, moved = mp.file_log(attr)
            if moved and attr not in renamed:
                renamed.add(attr)
                self.report.transformed("file_log_renamed", 1, f"{attr} -> {log_name}")
            members = ([(p.relative_to(local).as_posix(), p) for p in sorted(local.rglob("*")) if p.is_file()]
                       if local.is_dir() else [(None, local)])
            for member, path in members:
                name = mp.file_name(typ, source, member)
                self.manifest.files.append([attr, typ, step_text(step), source, log_name, name, dest, member, ts])
                if self.sink.max_files and sent >= self.sink.max_files:
                    self.report.dropped("max_files_per_run", 1, f"{attr}: {name}")
                    continue
                sent += 1
                self.report.files += 1
                self.report.bytes += path.stat().st_size
                if (log_name, name, dest) in self._existing_files:
                    continue
                pending.append((self._file_entry(log_name, name, dest, path, ts), path))
                if len(pending) >= self.sink.file_chunk:
                    self._flush_files(pending)
                    pending = []
        self._flush_files(pending)

    def _flush_files(self, pending: list[tuple[dict, Path]]) -> None:
        """One presign + PUTs for a chunk of files, then the user's pause between chunks."""
        if not pending:
            return
        self._call(self.client.add_log_names, self.ctx, "artifact", sorted({e["logName"] for e, _ in pending}))
        self._call(self.client.upload_files, self.ctx, [e for e, _ in pending], [p for _, p in pending])
        if self.sink.chunk_pause:
            time.sleep(self.sink.chunk_pause)

    def commit(self) -> DestRun:
        try:
            self._send_series()
            self._send_files()
            # the manifest is deterministic: one an earlier attempt uploaded is the same file
            manifest_name = mp.generation_name(mp.MANIFEST_FILE, self._generation)
            if (mp.MANIFEST_LOG, manifest_name, None) not in self._existing_files:
                manifest = self._tmp / manifest_name
                manifest.write_bytes(self.manifest.dumps())
                entry = self._file_entry(mp.MANIFEST_LOG, manifest_name, None, manifest, self.updated_ms)
                self._call(self.client.upload_files, self.ctx, [entry], [manifest])
            failed = self.plan.scan.value("sys/failed") is True
            self._call(self.client.finish, self.ctx, "FAILED" if failed else "COMPLETED", self.updated_ms)
            # the completion mark, last, with the source's run_version
            version = self.plan.source_version
            mark = {mp.TAG_COMPLETE} | ({mp.TAG_VERSION + version} if version else set())
            self._call(self.client.update_tags, self.ctx, sorted(set(self.tags) | mark))
        finally:
            self._cleanup()
        url = f"{self.client.app_url}/o/runs/{self.ctx.run_id}"
        return DestRun(str(self.ctx.run_id), True, url, (self.ctx.project, self.ctx.run_id), version=version)

    def abort(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        if not self._closed:
            self._closed = True
            shutil.rmtree(self._tmp, ignore_errors=True)
