"""Comet offline sink: canonical runs -> one `OfflineExperiment` archive per run.

`--comet-offline-dir DIR/<key>.zip`, the experiment key derived from the destination project and
the origin (mapping.experiment_key), so a rerun finds the same archive and `comet upload` creates
one experiment per source run, never two.  The SDK writes the archive only when the experiment
ends, into `DIR/.trackport-staging/`; trackport then renames it into DIR: an archive in DIR is
complete (its trackport/manifest.json, logged last with the `trackport.mark` other, says whose
run it is and which source version it holds), an archive or leftover in the staging folder is a
partial run, written again from nothing by the next copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.claims import LOCK_DIR_NAME
from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped
from trackport.core.files import materialise
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import DEST_STEP, PARAM_TYPES, VALUE_COLUMN, ms_from_datetime
from trackport.core.steps import unscaled_list

from . import client
from . import mapping as mp
from .source import Archive, CometArchiveSource

log = logging.getLogger(__name__)


def origin_dict(origin: Origin) -> dict:
    return {"uri": origin.uri, "project_id": origin.project_id, "run_id": origin.run_id}


class CometOfflineSink(Sink):
    capabilities = mp.CAPABILITIES

    def __init__(self, workspace: str, project: str, folder: Path, options, read_only: bool = False):
        self.workspace, self.project, self.folder = workspace, project, folder
        self.uri = f"comet://{workspace}/{project}"
        self.options, self.read_only = options, read_only

    def key(self, origin: Origin) -> str:
        return mp.experiment_key(self.workspace, self.project, origin_dict(origin))

    def archive_path(self, origin: Origin) -> Path:
        return self.folder / f"{self.key(origin)}.zip"

    def staging(self) -> Path:
        return self.folder / mp.STAGING

    def claim_dir(self) -> Path:
        return self.folder / LOCK_DIR_NAME

    def find_run(self, origin: Origin) -> DestRun | None:
        final = self.archive_path(origin)
        key = final.stem
        if final.exists():
            try:
                archive = Archive(final)
            except (zipfile.BadZipFile, OSError, ValueError, KeyError):
                return DestRun(key, False, final.as_uri(), final)      # damaged: written again
            if archive.origin == origin_dict(origin) and (archive.manifest or {}).get("complete"):
                return DestRun(key, True, final.as_uri(), final, version=archive.manifest.get("version"))
            return DestRun(key, False, final.as_uri(), final)
        if (self.staging() / final.name).exists():
            return DestRun(key, False, final.as_uri(), final)
        return None

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this Comet sink was opened read-only",
                           project_id=plan.origin.project_id, run_id=plan.origin.run_id)
        return CometOfflineWriter(self, plan)

    def as_source(self) -> CometArchiveSource:
        return CometArchiveSource(self.folder, f"comet:{self.folder}", {})

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, dest.locator)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        self.declare(plan)
        return [f"Comet offline archive {self.archive_path(plan.origin)} (experiment key "
                f"{self.key(plan.origin)}, {self.workspace}/{self.project})"]

    @staticmethod
    def declare(plan: RunPlan) -> None:
        """The transformations a run's copy will count (as the writer counts them)."""
        scan, report = plan.scan, plan.report
        for path, stats in sorted(scan.series.items()):
            if stats.attribute_type == "string_series":
                report.transformed("series_as_asset", stats.count, path)
            elif stats.attribute_type == "histogram_series":
                report.transformed("histogram_as_asset", stats.count, path)
        as_text = sorted(path for path, (typ, value) in scan.values.items()
                         if path not in ("sys/name", "sys/tags") and value is not None
                         and not mp.param_native(path, typ, value))
        if as_text:
            report.transformed("params_as_text", len(as_text), as_text[0])


class CometOfflineWriter(RunScoped, RunWriter):
    @property
    def err_run(self):   # RunScoped: errors name the run being written
        return self.plan.origin

    def __init__(self, sink: CometOfflineSink, plan: RunPlan):
        self.sink, self.plan, self.report = sink, plan, plan.report
        self.origin = origin_dict(plan.origin)
        self.multiplier = plan.steps.multiplier if plan.steps is not None else 1
        self.scratch = Path(tempfile.mkdtemp(prefix="trackport-comet-"))
        self.rows_path = self.scratch / "rows.jsonl"
        self.rows = self.rows_path.open("w", encoding="utf-8")
        self.empty_dirs: list[str] = []
        self.metric_counts: dict[str, int] = {}
        try:
            self.run = self._open_run()
        except BaseException:
            self.abort()
            raise
        try:
            self.run.other(mp.OTHER_ORIGIN, json.dumps(self.origin, ensure_ascii=False))   # first
            scan = plan.scan
            created = ms_from_datetime(scan.value("sys/creation_time"))
            if created is not None:
                self.run.set_start_ms(created)
            name = scan.value("sys/name")
            if isinstance(name, str) and name:
                self.run.name(name)
            tags = scan.value("sys/tags")
            if tags:
                self.run.tags([str(t) for t in tags])
        except BaseException:
            self.abort()
            raise

    def _open_run(self):
        self.final = self.sink.archive_path(self.plan.origin)
        staging = self.sink.staging()
        staging.mkdir(parents=True, exist_ok=True)
        (staging / self.final.name).unlink(missing_ok=True)         # a partial archive: start again
        return client.OfflineRun(self.sink.workspace, self.sink.project, self.final.stem, staging)

    def _count(self, kind: str, n: int, example: str) -> None:
        if n:
            self.report.transformed(kind, n, example)

    def _row(self, path: str, typ: str, step, ms, value) -> None:
        self.rows.write(mp.row_json(path, typ, step, ms, value) + "\n")

    # -- writing ----------------------------------------------------------------

    def write(self, batch: pa.Table) -> None:
        types = batch.column("attribute_type")
        for typ in pc.unique(types).to_pylist():
            part = batch.filter(pc.equal(types, typ))
            if typ in PARAM_TYPES:
                self._singles(part, typ)
            elif typ == "float_series":
                self._metrics(part)
            elif typ in ("string_series", "histogram_series"):
                rows = self._rows(part, typ)
                for path, step, _dest, ms, value in rows:
                    self._row(path, typ, step, ms, value)
                    if path in mp.CONSOLE and ms is not None and value is not None:
                        self.run.output(value, mp.CONSOLE[path], ms)     # shown in Comet's Output tab
                self._count("series_as_asset" if typ == "string_series" else "histogram_as_asset",
                            len(rows), rows[0][0] if rows else "")
            elif typ in mp.FILE_TYPES:
                self._files(part, typ)
            else:
                raise self._err(f"unknown attribute type {typ!r}")

    @staticmethod
    def _rows(table: pa.Table, typ: str) -> list[tuple]:
        """(path, step in millionths or None, Comet's integer step or None, ms or None, value)."""
        steps = unscaled_list(table.column("step"))
        if DEST_STEP in table.column_names:
            dest = table.column(DEST_STEP).to_pylist()
        else:
            dest = [None if s is None else s // 1_000_000 for s in steps]
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        values = table.column(VALUE_COLUMN[typ]).to_pylist()
        return list(zip(table.column("attribute_path").to_pylist(), steps, dest, ts, values))

    def _singles(self, table: pa.Table, typ: str) -> None:
        as_text = []
        for path, step, _dest, ms, value in self._rows(table, typ):
            self._row(path, typ, step, ms, value)          # exact, with its type
            if path in ("sys/name", "sys/tags") or step is not None or ms is not None:
                continue                                   # Name and tags: set when the run began
            if mp.param_native(path, typ, value):
                self.run.parameter(path, value)
            elif value is not None:
                self.run.other(path[: mp.MAX_KEY], mp.other_text(typ, value))
                as_text.append(path)
        self._count("params_as_text", len(as_text), as_text[0] if as_text else "")

    def _metrics(self, table: pa.Table) -> None:
        beside = []
        for path, step, dest, ms, value in self._rows(table, "float_series"):
            if ms is None or len(path) > mp.MAX_KEY or value is None:
                self._row(path, "float_series", step, ms, value)
                beside.append(path)
                continue
            self.run.metric(path, mp.metric_value(value), None if dest is None else int(dest), ms)
            self.metric_counts[path] = self.metric_counts.get(path, 0) + 1
        self._count("point_beside", len(beside), beside[0] if beside else "")

    def _files(self, table: pa.Table, typ: str) -> None:
        for path, step, _dest, ms, cell in self._rows(table, typ):
            source = (cell or {}).get("path")
            self._row(path, typ, step, ms, source)
            if source:
                self._store(path, source, step, ms)

    def _store(self, attribute: str, source: str, step, ms) -> None:
        """Log a file (a file set: each file in its folder) as Comet assets named by the attribute."""
        local = materialise(self.plan.files, source, self.scratch / "files", self._err)
        if local.is_dir():
            members = sorted(p for p in local.rglob("*") if p.is_file())
            if not members:
                self.empty_dirs.append(source)
            for p in members:
                rel = p.relative_to(local).as_posix()
                self._asset(p, f"{attribute}/{rel}", source, rel, step, ms)
        else:
            name = attribute if step is None else f"{attribute}/{Path(source).name}"
            self._asset(local, name, source, "", step, ms)

    def _asset(self, path: Path, name: str, source: str, rel: str, step, ms) -> None:
        metadata = {"trackport_path": source, "trackport_rel": rel}
        if step is not None:
            metadata["trackport_step"] = step
        if ms is not None:
            metadata["trackport_timestamp"] = ms
        try:
            self.run.asset(path, name, metadata)
        except OSError as exc:
            raise self._err(f"cannot log the file as a Comet asset: {exc}", file=source) from None
        self.report.files += 1
        self.report.bytes += path.stat().st_size

    # -- commit -----------------------------------------------------------------

    def _log_manifest(self) -> None:
        """trackport's rows and manifest as the run's last assets."""
        self.rows.close()
        self.run.asset(self.rows_path, mp.ROWS_ASSET, {"trackport": "rows"})
        manifest = mp.manifest(self.origin, self.plan.source_version, self.multiplier, client.sdk_version())
        manifest["empty_dirs"] = self.empty_dirs
        manifest["metrics"] = self.metric_counts      # the points sent per metric (the SDK adds its own)
        manifest_path = self.scratch / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, ensure_ascii=False))
        self.run.asset(manifest_path, mp.MANIFEST_ASSET, {"trackport": "manifest"})

    def commit(self) -> DestRun:
        try:
            self._log_manifest()
            self.run.other(mp.OTHER_MARK, "complete")              # the completion mark, last
            written = self.run.end()
            if not written.exists():
                raise self._err(f"comet_ml wrote no archive at {written}", file=str(written))
            os.replace(written, self.final)                        # complete: moved into the folder at once
        except BaseException:
            self.abort()
            raise
        shutil.rmtree(self.scratch, ignore_errors=True)
        return DestRun(self.final.stem, True, self.final.as_uri(), self.final, version=self.plan.source_version)

    def abort(self) -> None:
        """No archive in the folder: the next copy finds the run partial and writes it again."""
        try:
            self.rows.close()
        except Exception:       # noqa: BLE001
            pass
        if getattr(self, "run", None) is not None:
            self.run.abort()
        shutil.rmtree(self.scratch, ignore_errors=True)


# -- online: one Comet experiment per run, through the SDK's online Experiment ----------------------

class CometOnlineSink(CometOfflineSink):
    """`comet://WORKSPACE/PROJECT --comet-mode online`: one experiment per run, created by the SDK's
    online `Experiment` under the deterministic key.  Complete when its `trackport.mark` other is
    "complete": written through the REST API after the SDK delivered everything (rows and manifest
    assets last).  An incomplete experiment (a killed or failed copy) is deleted and written again
    under the same key: Comet has no way to take back metric points already sent, so completing it
    in place would duplicate them (docs/comet.md)."""

    def __init__(self, workspace: str, project: str, api, options, read_only: bool = False):
        self.workspace, self.project, self.api = workspace, project, api
        self.uri = f"comet://{workspace}/{project}"
        self.options, self.read_only = options, read_only

    def claim_dir(self) -> Path | None:
        return Sink.claim_dir(self)         # the host's claims for this URI (no local folder here)

    def server(self) -> str:
        return os.environ.get("COMET_URL_OVERRIDE", "").strip() or "https://www.comet.com"

    def locator(self, key: str) -> str:
        return f"comet://{self.workspace}/{self.project}/{key}"

    def find_run(self, origin: Origin) -> DestRun | None:
        key = self.key(origin)
        meta = self.api.metadata(key)
        if meta is None:
            return None
        others = {o.get("name"): o.get("valueCurrent") for o in self.api.others(key)}
        try:
            recorded = json.loads(others.get(mp.OTHER_ORIGIN) or "null")
        except ValueError:
            recorded = None
        if others.get(mp.OTHER_MARK) != "complete" or recorded != origin_dict(origin):
            return DestRun(key, False, self.locator(key), key)
        return DestRun(key, True, self.locator(key), key, version=self._version(key))

    def _version(self, key: str) -> str | None:
        for asset in self.api.assets(key):
            if asset.get("fileName") == mp.MANIFEST_ASSET:
                return json.loads(self.api.asset(key, asset["assetId"])).get("version")
        return None

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this Comet sink was opened read-only",
                           project_id=plan.origin.project_id, run_id=plan.origin.run_id)
        key = self.key(plan.origin)
        if self.api.metadata(key) is not None:       # incomplete (find_run said so): start again
            log.info("Comet experiment %s is incomplete: deleting it to write it again", key)
            self.api.delete(key)
        return CometOnlineWriter(self, plan)

    def as_source(self):
        from .source import CometApiSource

        return CometApiSource(self.api, self.workspace, self.project, {})

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(f"{self.workspace}/{self.project}", dest.id, None)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        self.declare(plan)
        return [f"Comet experiment {self.key(plan.origin)} in {self.workspace}/{self.project} (online)"]


class CometOnlineWriter(CometOfflineWriter):
    def _open_run(self):
        try:
            return client.OnlineRun(self.sink.workspace, self.sink.project, self.sink.key(self.plan.origin))
        except ConnectionError as exc:
            raise self._err(str(exc)) from None

    def commit(self) -> DestRun:
        sink, key = self.sink, self.sink.key(self.plan.origin)
        try:
            self._log_manifest()
            try:
                self.run.end()
            except Exception as exc:       # noqa: BLE001  (the SDK's own exception types)
                raise self._err(f"comet_ml did not deliver the run: {exc}") from None
            names = {a.get("fileName") for a in sink.api.assets(key)}
            if not {mp.ROWS_ASSET, mp.MANIFEST_ASSET} <= names:
                raise self._err("the Comet server does not list trackport's rows and manifest assets")
            start = getattr(self.run, "start_ms", None)
            if start is not None:
                meta = sink.api.metadata(key) or {}
                sink.api.set_start_end(key, start, max(start, int(meta.get("endTimeMillis") or start)))
            sink.api.log_other(key, mp.OTHER_MARK, "complete")     # the completion mark, last
        except BaseException:
            self.abort()
            raise
        shutil.rmtree(self.scratch, ignore_errors=True)
        return DestRun(key, True, sink.locator(key), key, version=self.plan.source_version)
