"""GoodSeed sink: canonical runs -> one GoodSeed run file per run.

`DIR/projects/<project>/runs/<run_id>.sqlite` (deterministic from the origin), written through
goodseed.storage.LocalStorage: run_meta `trackport_origin` first (whose run this file is), then
configs and points, then `status`/`closed_at` and `trackport_mark`, the completion mark, last.
A file without the mark is partial: the next copy deletes it (and its `.files/` folder) and
writes the run again, so a repair never leaves a point twice.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.claims import LOCK_DIR_NAME
from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped
from trackport.core.files import copy_into
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import PARAM_TYPES, VALUE_COLUMN
from trackport.core.steps import unscaled_list

from . import client
from . import mapping as mp
from .source import GoodSeedSource, meta_json, read_meta, snapshot

log = logging.getLogger(__name__)

_FILE_TYPES = ("file", "file_set", "artifact", "file_series")


def origin_dict(origin: Origin) -> dict:
    return {"uri": origin.uri, "project_id": origin.project_id, "run_id": origin.run_id}


class GoodSeedSink(Sink):
    capabilities = mp.CAPABILITIES

    def __init__(self, root: Path, uri: str, options, read_only: bool = False):
        self.root, self.uri, self.options, self.read_only = root, uri, options, read_only
        self.projects = root / "projects"

    def db_path(self, origin: Origin) -> Path:
        project, _ = mp.project_folder(origin.project_id)
        run_id, _ = mp.run_file_id(origin.run_id)
        return self.projects / project / "runs" / f"{run_id}.sqlite"

    def claim_dir(self) -> Path:
        return self.root / LOCK_DIR_NAME

    def find_run(self, origin: Origin) -> DestRun | None:
        db = self.db_path(origin)
        if not db.exists():
            return None
        try:
            with snapshot(db) as conn:
                meta = read_meta(conn)
        except sqlite3.DatabaseError:
            return None                     # begin_run names the file and refuses it
        wanted = origin_dict(origin)
        rel = db.relative_to(self.root).as_posix()
        mark = meta_json(meta, mp.META_MARK)
        if isinstance(mark, dict) and mark.get("origin") == wanted and mark.get("complete"):
            return DestRun(rel, True, db.as_uri(), db, version=mark.get("version"))
        if meta_json(meta, mp.META_ORIGIN) == wanted:
            return DestRun(rel, False, db.as_uri(), db)
        return None

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this GoodSeed sink was opened read-only",
                           project_id=plan.origin.project_id, run_id=plan.origin.run_id)
        return GoodSeedWriter(self, plan, self.db_path(plan.origin))

    def as_source(self) -> GoodSeedSource:
        return GoodSeedSource(self.projects, self.uri, {})

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, dest.locator)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        scan, report = plan.scan, plan.report
        hists = sorted(p for p, s in scan.series.items() if s.attribute_type == "histogram_series")
        if hists:
            report.transformed("histogram_beside", sum(scan.series[p].count for p in hists), hists[0])
        self._sanitized(plan.origin, report)
        return [f"GoodSeed run file {self.db_path(plan.origin).relative_to(self.root).as_posix()}"]

    @staticmethod
    def _sanitized(origin: Origin, report) -> None:
        for text, changed in ((origin.project_id, mp.project_folder(origin.project_id)[1]),
                              (origin.run_id, mp.run_file_id(origin.run_id)[1])):
            if changed:
                report.transformed("run_id_sanitized", 1, text)


class GoodSeedWriter(RunScoped, RunWriter):
    @property
    def err_run(self):   # RunScoped: errors name the run being written
        return self.plan.origin

    def __init__(self, sink: GoodSeedSink, plan: RunPlan, db: Path):
        self.sink, self.plan, self.report, self.db = sink, plan, plan.report, db
        self.origin = origin_dict(plan.origin)
        self.files_dir = db.with_name(db.stem + mp.FILES_SUFFIX)
        self.seen: set[tuple[str, int]] = set()      # (path, step) held by GoodSeed's tables
        self.counts: dict[str, list] = {}
        self.seq = 0
        self._prepare()
        self.storage = client.open_storage(db)
        run_id, _ = mp.run_file_id(plan.origin.run_id)
        project, _ = mp.project_folder(plan.origin.project_id)
        self.storage.set_meta(mp.META_ORIGIN, json.dumps(self.origin))     # first: whose run this is
        self.storage.set_meta("run_id", run_id)
        self.storage.set_meta("project", project)
        self.storage.set_meta("created_at", datetime.now(timezone.utc).isoformat())
        self.storage.set_meta("status", "running")
        self.extra = sqlite3.connect(str(db))
        self.extra.execute(f"CREATE TABLE IF NOT EXISTS {mp.POINTS_TABLE} (seq INTEGER PRIMARY KEY, "
                           f"path TEXT NOT NULL, type TEXT NOT NULL, step INTEGER, ts INTEGER, value TEXT)")
        self.extra.commit()
        GoodSeedSink._sanitized(plan.origin, self.report)

    def _prepare(self) -> None:
        """Refuse a file of another run or not written by trackport; remove a partial copy."""
        db = self.db
        if db.exists():
            try:
                with snapshot(db) as conn:
                    meta = read_meta(conn)
            except sqlite3.DatabaseError as exc:
                raise self._err(f"{db} is not a readable GoodSeed run file ({exc}); refusing to overwrite "
                                f"it. Fix: move it away", file=str(db)) from None
            started = meta_json(meta, mp.META_ORIGIN)
            if started is None:
                raise self._err(f"{db} is a GoodSeed run not written by trackport; refusing to overwrite "
                                f"it. Fix: use another DIR or move that file", file=str(db))
            if started != self.origin:
                raise self._err(f"{db} holds the run copied from {started}; refusing to mix runs. Fix: use "
                                f"another DIR or remove that file", file=str(db))
            for p in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
                p.unlink(missing_ok=True)
        if self.files_dir.exists():
            shutil.rmtree(self.files_dir)
        db.parent.mkdir(parents=True, exist_ok=True)

    def _count(self, kind: str, n: int, example: str) -> None:
        if n:
            self.report.transformed(kind, n, example)

    # -- writing ----------------------------------------------------------------

    def write(self, batch: pa.Table) -> None:
        types = batch.column("attribute_type")
        for typ in pc.unique(types).to_pylist():
            part = batch.filter(pc.equal(types, typ))
            if typ in PARAM_TYPES:
                self._singles(part, typ)
            elif typ in ("float_series", "string_series"):
                self._series(part, typ)
            elif typ == "histogram_series":
                rows = self._rows(part, typ)
                self._beside(typ, rows)
                self._count("histogram_beside", len(rows), rows[0][0] if rows else "")
            elif typ in _FILE_TYPES:
                self._files(part, typ)
            else:
                raise self._err(f"unknown attribute type {typ!r}")

    @staticmethod
    def _rows(table: pa.Table, typ: str) -> list[tuple]:
        steps = unscaled_list(table.column("step"))
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        return list(zip(table.column("attribute_path").to_pylist(), steps, ts,
                        table.column(VALUE_COLUMN[typ]).to_pylist()))

    def _beside(self, typ: str, rows: list[tuple]) -> None:
        data = []
        for path, step, ms, value in rows:
            self.seq += 1
            data.append((self.seq, path, typ, step, ms, mp.json_value(typ, value)))
        self.extra.executemany(f"INSERT INTO {mp.POINTS_TABLE} (seq, path, type, step, ts, value) "
                               f"VALUES (?, ?, ?, ?, ?, ?)", data)
        self.extra.commit()

    def _singles(self, table: pa.Table, typ: str) -> None:
        configs, beside = {}, []
        for path, step, ms, value in self._rows(table, typ):
            if value is None or step is not None or ms is not None:
                beside.append((path, step, ms, value))
                continue
            configs[path] = mp.config_value(typ, value)
            if path == "sys/name" and typ == "string":
                self.storage.set_meta("name", str(value))
            elif path == "sys/creation_time" and typ == "datetime":
                self.storage.set_meta("created_at", mp.to_utc(value).isoformat())
        if configs:
            self.storage.log_configs(configs)
        if beside:
            self._beside(typ, beside)
            self._count("point_beside", len(beside), beside[0][0])

    def _series(self, table: pa.Table, typ: str) -> None:
        native, beside = [], []
        for path, step, ms, value in self._rows(table, typ):
            f = None if step is None else mp.step_float(step)
            ok = (f is not None and ms is not None and (path, step) not in self.seen
                  and (mp.native_float(value) if typ == "float_series" else value is not None))
            if ok:
                self.seen.add((path, step))
                native.append((path, f, value, mp.ts_seconds(ms)))
            else:
                beside.append((path, step, ms, value))
        if native:
            if typ == "float_series":
                self.storage.log_metric_points(native)
            else:
                self.storage.log_string_points(native)
        if beside:
            self._beside(typ, beside)
            self._count("point_beside", len(beside), beside[0][0])

    def _files(self, table: pa.Table, typ: str) -> None:
        rows = []
        for path, step, ms, cell in self._rows(table, typ):
            source = (cell or {}).get("path")
            if source:
                self._store(source)
            rows.append((path, step, ms, source))
        self._beside(typ, rows)
        self._count("file_beside", len(rows), rows[0][0] if rows else "")

    def _store(self, source: str) -> None:
        """Copy a file (or a file set's folder) to <run_id>.files/<path>, streaming; count it."""
        from trackport.core.layout import resolve_inside

        try:
            target = resolve_inside(self.files_dir, source)
        except ValueError as exc:
            raise self._err(str(exc), file=source) from None
        n, size = copy_into(self.plan.files, source, target, self._err)
        self.report.files += n
        self.report.bytes += size

    # -- commit -----------------------------------------------------------------

    def commit(self) -> DestRun:
        try:
            self.extra.close()
            closed = self.storage.get_config("sys/modification_time")
            self.storage.set_meta("status", "finished")
            self.storage.set_meta("closed_at", closed[1] if closed and closed[0] == "datetime"
                                  else datetime.now(timezone.utc).isoformat())
            mark = {"trackport": mp.MARK_VERSION, "complete": True, "origin": self.origin,
                    "version": self.plan.source_version, "goodseed": client.goodseed_version()}
            self.storage.set_meta(mp.META_MARK, json.dumps(mark))          # the completion mark, last
            self.storage.checkpoint_wal()
            self.storage.close()
        except BaseException:
            self.abort()
            raise
        rel = self.db.relative_to(self.sink.root).as_posix()
        return DestRun(rel, True, self.db.as_uri(), self.db, version=self.plan.source_version)

    def abort(self) -> None:
        """No mark: the next copy finds the run partial and writes it again."""
        for close in (self.extra.close, self.storage.close):
            try:
                close()
            except Exception:      # noqa: BLE001
                pass
