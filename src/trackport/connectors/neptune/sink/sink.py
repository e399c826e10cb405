"""Neptune sinks: `neptune2://WORKSPACE[/PROJECT]` (2.x client) and `neptune3://...` (neptune-scale).

Per run: start the run with a deterministic custom run id, write the origin
identity (`trackport/origin/*`) first so a partial run can be found, single
values and files as they come, series spooled to disk and written at commit
in increasing step order, then the restore table (what Neptune cannot hold
natively, see ../mapping.py), then `trackport/complete` last.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped, UsageError
from trackport.core.files import materialise
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import FILE_TYPES, PARAM_TYPES, SCHEMA
from trackport.core.steps import step_text, unscaled

from .. import mapping as mp

log = logging.getLogger(__name__)

_SERIES_TYPES = ("float_series", "string_series", "histogram_series")


def _is_wandb(origin: Origin) -> bool:
    return origin.uri.startswith("wandb:")


class NeptuneSink(Sink):
    def __init__(self, scheme: str, workspace: str, project: str | None, options: dict[str, Any],
                 read_only: bool = False):
        self.read_only = read_only
        self.generation = "2" if scheme == "neptune2" else "3"
        self.workspace = workspace
        self.project = project
        self.options = options
        self.capabilities = mp.CAPABILITIES_2 if self.generation == "2" else mp.CAPABILITIES_3
        self.mode = options.get("neptune_mode") or "async"
        if self.mode not in ("async", "offline"):
            raise UsageError(f"--neptune-mode must be async or offline, not {self.mode!r}")
        data_dir = options.get("neptune_data_dir") or str(Path.cwd() / ".neptune")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.uri = f"{scheme}://{workspace}" + (f"/{project}" if project else "")
        if self.generation == "3" and self.mode == "async" and not read_only:
            # A rerun must find runs already copied (find_run); against a live project that needs
            # neptune-query and a server, which cannot be tested here.
            raise UsageError("neptune3:// as a destination supports --neptune-mode offline only (then "
                             "`neptune sync`); async mode cannot find runs already copied yet")
        self._lock = threading.Lock()
        self._index: dict[tuple[str, str, str], tuple[Path, bool]] | None = None
        if self.generation == "2" and not read_only:
            self.client2().set_data_dir(str(self.data_dir))

    def client2(self):
        """The module speaking the 2.x client API (minfx's sink gives its own, connectors/minfx)."""
        from . import client2

        return client2

    def preflight(self, read_only: bool = False) -> None:
        """The data directory (where offline and async runs are queued) takes files."""
        from trackport.core.connector import check_output_folder

        check_output_folder(self.data_dir, f"{self.uri} (--neptune-data-dir)",
                            read_only or self.read_only)

    # -- identity ------------------------------------------------------------------
    def dest_project(self, origin: Origin) -> tuple[str, bool]:
        if self.project:
            return f"{self.workspace}/{self.project}", False
        name = origin.project_id.rstrip("/").rsplit("/", 1)[-1]
        fixed = mp.project_name(name)
        return f"{self.workspace}/{fixed}", fixed != name

    def custom_id(self, origin: Origin) -> tuple[str, bool]:
        """The destination's custom run id: the source run id (hashed when too long), so that
        find_run, which knows only the origin, asks for the id begin_run wrote."""
        limit = mp.MAX_CUSTOM_RUN_ID if self.generation == "2" else 128
        return mp.custom_run_id(origin.run_id, limit)

    # -- finding runs (offline: the data directory) -------------------------------
    def _scan(self) -> dict[tuple[str, str, str], tuple[Path, bool, str | None]]:
        index: dict[tuple[str, str, str], tuple[Path, bool, str | None]] = {}
        if not self.data_dir.exists():
            return index
        if self.generation == "2":
            for queue in sorted({p.parent for p in self.data_dir.rglob("data-*.log")}):
                found: dict[str, Any] = {}
                for path in sorted(queue.glob("data-*.log")):
                    with open(path, "rb") as fh:
                        for line in fh:
                            if b"trackport" not in line:
                                continue
                            try:
                                op = json.loads(line).get("obj") or {}
                            except ValueError:
                                continue
                            found["/".join(op.get("path") or [])] = op.get("value")
                key = (found.get(mp.ORIGIN_URI), found.get(mp.ORIGIN_PROJECT), found.get(mp.ORIGIN_RUN))
                if all(key):
                    complete = found.get(mp.COMPLETE) is True
                    index[key] = (queue, complete, found.get(mp.SOURCE_VERSION) if complete else None)
        else:
            from ..offline.reader3 import _operations

            for db in sorted(self.data_dir.rglob("run_operations.sqlite3")):
                found = {}
                try:
                    for kind, op in _operations(db):
                        if kind != 0:
                            continue
                        for k, v in op.assign.items():
                            if k.startswith(mp.TRACKPORT_NS):
                                found[k] = v.string if v.WhichOneof("value") == "string" else v.bool
                except sqlite3.Error:
                    continue
                key = (found.get(mp.ORIGIN_URI), found.get(mp.ORIGIN_PROJECT), found.get(mp.ORIGIN_RUN))
                if all(key):
                    complete = found.get(mp.COMPLETE) is True
                    index[key] = (db.parent, complete, found.get(mp.SOURCE_VERSION) if complete else None)
        return index

    def _known(self, origin: Origin) -> tuple[Path, bool, str | None] | None:
        with self._lock:
            if self._index is None:
                self._index = self._scan()
            return self._index.get((origin.uri, origin.project_id, origin.run_id))

    def claim_dir(self) -> Path | None:
        """Offline: beside the data folder, for every process on this machine; async: per user
        on this machine (core/claims.py)."""
        if self.mode == "offline":
            return self.data_dir.with_name(f".{self.data_dir.name}.trackport-locks")
        return super().claim_dir()

    def forget(self, origin: Origin) -> None:
        with self._lock:
            self._index = None   # scanned again at the next find_run

    def find_run(self, origin: Origin) -> DestRun | None:
        if self.mode == "offline":
            got = self._known(origin)
            if got is None:
                return None
            return DestRun(got[0].name, got[1], None, str(got[0]), version=got[2])
        if self.generation == "2":
            project, _ = self.dest_project(origin)
            # the custom run id is all the API knows before a run's values are read
            cid = self.custom_id(origin)[0]
            found = self.client2().find_async(project, [cid])
            if cid not in found:
                return None
            return DestRun(cid, found[cid], None, None)
        raise UsageError("neptune3:// destinations support --neptune-mode offline only")

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this Neptune sink was opened read-only", project_id=plan.origin.project_id,
                           run_id=plan.origin.run_id)
        if resume is not None and self.mode == "offline" and resume.locator:
            # an unsynced partial run of ours (identity checked by find_run): write it again whole
            shutil.rmtree(resume.locator, ignore_errors=True)
        writer = _Writer2(self, plan) if self.generation == "2" else _Writer3(self, plan)
        writer.start()
        return writer

    def _remember(self, origin: Origin, where: Path, complete: bool, version: str | None = None) -> None:
        with self._lock:
            if self._index is not None:
                self._index[(origin.uri, origin.project_id, origin.run_id)] = (where, complete, version)

    def record_project(self, project: str, origin: Origin) -> None:
        description = f"Copied by trackport from {origin.uri}"
        if self.mode == "offline":
            self.data_dir.mkdir(parents=True, exist_ok=True)
            record = self.data_dir / "trackport-projects.json"
            with self._lock:
                known = json.loads(record.read_text()) if record.exists() else {}
                if project not in known:
                    known[project] = {"visibility": "priv", "description": description}
                    record.write_text(json.dumps(known, indent=1, sort_keys=True))
        elif self.generation == "2":
            self.client2().create_project_if_missing(project, description)

    def as_source(self):
        from ..offline.source import NeptuneOfflineSource

        return NeptuneOfflineSource(self.data_dir, self.options)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        kind = self.generation
        where = Path(dest.locator)
        if kind == "3":
            where = where / "run_operations.sqlite3"
        return RunRef(origin.project_id, origin.run_id, (kind, str(where)))

    def describe_plan(self, plan: RunPlan) -> list[str]:
        project, renamed = self.dest_project(plan.origin)
        cid, hashed = self.custom_id(plan.origin)
        if renamed:
            plan.report.transformed("project_name_dashes", 1, project)
        if hashed:
            plan.report.transformed("custom_run_id_hashed", 1, cid)
        return [f"Neptune {self.generation}.x project {project} ({self.mode}), custom run id {cid}"]


class _Base(RunScoped, RunWriter):
    def __init__(self, sink: NeptuneSink, plan: RunPlan):
        self.sink = sink
        self.plan = plan
        self.origin = plan.origin
        self.report = plan.report
        self.values = plan.scan.values
        self.where = (plan.origin.project_id, plan.origin.run_id)
        self.err_run = plan.origin
        self.wandb = _is_wandb(plan.origin) and not (sink.options.get("neptune_keep_all"))
        self.project, renamed = sink.dest_project(plan.origin)
        if renamed:
            self.report.transformed("project_name_dashes", 1, self.project)
        self.cid, hashed = sink.custom_id(plan.origin)
        if hashed:
            self.report.transformed("custom_run_id_hashed", 1, f"{self.cid}")
        self._tmp = Path(tempfile.mkdtemp(prefix="trackport-neptune-"))
        self._spool_path = self._tmp / "series.parquet"
        self._spool: pq.ParquetWriter | None = None
        self._series_paths: set[str] = set()
        self._restore: list[pa.Table] = []
        self._suppress: list[str] = []
        restore_dir = sink.data_dir / "trackport-restore"
        restore_dir.mkdir(parents=True, exist_ok=True)
        self._restore_file = restore_dir / f"{self.generation}-{mp.short_hash(repr((self.origin.uri, *self.where)))}.parquet"

    generation = "2"

    def keep_in_restore(self, table: pa.Table, kind: str | None, example: str) -> None:
        self._restore.append(table.select(list(SCHEMA.names)))
        if kind:
            self.report.transformed(kind, 1, example)

    def _wandb_filter(self, table: pa.Table) -> pa.Table:
        if not self.wandb or table.num_rows == 0:
            return table
        paths = table.column("attribute_path").to_pylist()
        types = table.column("attribute_type").to_pylist()
        files = pc.struct_field(table.column("file_value"), "path").to_pylist()
        keep = []
        for p, t, f in zip(paths, types, files):
            why = mp.wandb_excluded(p, t, f)
            if why:
                self.report.transformed("excluded_by_wandb_mapping", 1, f"{p}: {why}")
            keep.append(why is None)
        return table.filter(pa.array(keep))

    def write(self, batch: pa.Table) -> None:
        table = batch.select(list(SCHEMA.names))  # drops the core's dest_step (Neptune takes decimal steps)
        table = self._wandb_filter(table)
        if table.num_rows == 0:
            return
        types = table.column("attribute_type")
        singles = table.filter(pc.is_in(types, value_set=pa.array(sorted(PARAM_TYPES))))
        for row in singles.to_pylist():
            self.single(row)
        files = table.filter(pc.is_in(types, value_set=pa.array(sorted(FILE_TYPES))))
        for row in files.to_pylist():
            self.file_row(row)
        series = table.filter(pc.is_in(types, value_set=pa.array(_SERIES_TYPES)))
        if series.num_rows:
            if self._spool is None:
                self._spool = pq.ParquetWriter(self._spool_path, series.schema, compression="lz4")
            # one row group per attribute and batch: at commit, reading one attribute skips the
            # other row groups by their min/max statistics, so memory holds one series at a time
            paths = series.column("attribute_path")
            for path in pc.unique(paths).to_pylist():
                self._spool.write_table(series.filter(pc.equal(paths, path)))
                self._series_paths.add(path)

    def single(self, row: dict) -> None:
        path, typ = row["attribute_path"], row["attribute_type"]
        value = row[{"float": "float_value", "int": "int_value", "string": "string_value", "bool": "bool_value",
                     "datetime": "datetime_value", "string_set": "string_set_value"}[typ]]
        if typ == "string_set" and value and list(value) != sorted(value):
            self.report.transformed("string_set_sorted", 1, path)
        if path.startswith("sys/") and path not in self.writable_sys:
            self.keep_in_restore(pa.Table.from_pylist([row], schema=SCHEMA), "sys_attribute_in_restore", path)
            return
        self.assign(path, typ, value, row)

    def local_file(self, path: str) -> str:
        # a source without local files: the bytes are copied next to the restore table
        local = materialise(self.plan.files, path, self._restore_file.parent / "files", self._err,
                            name=mp.short_hash(repr((self.origin.uri, *self.where, path))))
        resolved = local.resolve()
        members = [p for p in resolved.rglob("*") if p.is_file()] if resolved.is_dir() else [resolved]
        self.report.files, self.report.bytes = (self.report.files + len(members),
                                                self.report.bytes + sum(p.stat().st_size for p in members))
        return str(resolved)

    def _series_tables(self):
        """Spooled series, one attribute at a time, in increasing step order."""
        if self._spool is None:
            return
        self._spool.close()
        self._spool = None
        for path in sorted(self._series_paths):
            t = pq.read_table(self._spool_path, filters=[("attribute_path", "=", path)])
            order = pc.sort_indices(pa.table({"s": unscaled(t.column("step"))}), [("s", "ascending")])
            yield path, t.take(order)

    def finish_restore(self) -> str | None:
        tables = [t for t in self._restore if t.num_rows]
        if not tables and not self._suppress:
            return None
        rows = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        rows = rows.append_column(mp.RESTORE_ACTION, pa.array(["row"] * rows.num_rows, pa.string()))
        if self._suppress:
            sup = SCHEMA.empty_table().to_pydict()
            n = len(self._suppress)
            cols = {name: [None] * n for name in SCHEMA.names}
            cols["attribute_path"] = list(self._suppress)
            cols["attribute_type"] = ["string"] * n
            sup = pa.Table.from_pydict(cols, schema=SCHEMA)
            sup = sup.append_column(mp.RESTORE_ACTION, pa.array(["suppress"] * n, pa.string()))
            rows = pa.concat_tables([rows, sup])
        pq.write_table(rows, self._restore_file)
        return str(self._restore_file)

    def abort(self) -> None:
        try:
            self.close_run()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def close_run(self) -> None:
        raise NotImplementedError


class _Writer2(_Base):
    generation = "2"
    writable_sys = mp.WRITABLE_SYS_2

    def start(self) -> None:
        client2 = self.sink.client2()
        client2.quiet()
        self.c = client2
        self.sink.record_project(self.project, self.origin)
        name = self.values.get("sys/name", (None, None))[1]
        description = self.values.get("sys/description", (None, None))[1]
        if description is not None and len(description) > mp.MAX_STRING_2:
            description = None  # written (cut) by single(), whole in the restore table
        self.run = client2.init_run(self.project, self.sink.mode, self.cid, name, description, self.where)
        present = set(self.values) | set(self.plan.scan.series) | {f[0] for f in self.plan.scan.files}
        for path in mp.INIT_WRITES_2:
            if path not in present:
                self._suppress.append(path)
        self.run[mp.ORIGIN_URI] = self.origin.uri
        self.run[mp.ORIGIN_PROJECT] = self.origin.project_id
        self.run[mp.ORIGIN_RUN] = self.origin.run_id
        self.queue = self._queue_dir()

    def _queue_dir(self) -> Path:
        # neptune/internal/operation_processors/lazy_operation_processor_wrapper.py wraps the processor
        backend = getattr(self.run, "_op_processor", None)
        for holder in (backend, getattr(backend, "_operation_processor", None)):
            data_path = getattr(holder, "_data_path", None) if holder is not None else None
            if data_path is not None:
                return Path(data_path)
        raise self._err("cannot find where the neptune client queues this run")

    def assign(self, path: str, typ: str, value: Any, row: dict) -> None:
        if value is None:
            self.keep_in_restore(pa.Table.from_pylist([row], schema=SCHEMA), None, path)
            return
        kind, native, transformation = mp.native_param_2(typ, value)
        if kind == "datetime":
            native = self.c.as_datetime(int(value.timestamp() * 1000)) if hasattr(value, "timestamp") else value
        if kind == "string_set":
            self.run[path] = self.c.string_set_value(list(native))
        else:
            self.run[path] = native
        if transformation:
            self.keep_in_restore(pa.Table.from_pylist([row], schema=SCHEMA), transformation, path)

    def file_row(self, row: dict) -> None:
        path, typ = row["attribute_path"], row["attribute_type"]
        source = (row["file_value"] or {}).get("path")
        if source is None:
            return
        local = self.local_file(source)
        table = pa.Table.from_pylist([row], schema=SCHEMA)
        if typ == "file":
            self.run[path].upload(local)
            self.keep_in_restore(table, "file_path_in_restore", path)
        elif typ == "artifact":
            self.run[path].upload(local)
            self.keep_in_restore(table, "artifact_as_file", path)
        elif typ == "file_set":
            self.run[path].upload_files([local])
            self.keep_in_restore(table, "file_path_in_restore", path)
        elif typ == "file_series":
            step = row["step"]
            ts = row["timestamp"]
            if mp.is_image(local) or mp.is_image(source):
                self.run[path].append(self.c.file_value(local), step=float(step),
                                      timestamp=ts.timestamp() if ts is not None else None)
                self.keep_in_restore(table, "file_path_in_restore", path)
            else:
                token = mp.step_token(step_text(step))
                self.run[f"{path}/{token}"].upload(local)
                self.keep_in_restore(table, "file_series_not_image_as_files", path)

    def series(self, path: str, t: pa.Table) -> None:
        typ = t.column("attribute_type")[0].as_py()
        ts_null = t.column("timestamp").null_count
        if typ == "histogram_series":
            self.keep_in_restore(t, "histogram_in_restore", path)
            return
        steps = [float(s) for s in t.column("step").to_pylist()]
        ts_ms = pc.cast(t.column("timestamp"), pa.int64()).to_pylist()
        tss = [None if v is None else v / 1000 for v in ts_ms]
        if typ == "float_series":
            values = t.column("float_value").to_numpy(zero_copy_only=False)
            finite = [math.isfinite(v) for v in values.tolist()]
            if not all(finite):
                self.keep_in_restore(t, "nonfinite_points_in_restore", path)
            elif ts_null:
                self.keep_in_restore(t, "series_timestamp_filled", path)
            keep = [i for i, ok in enumerate(finite) if ok]
            vals = [float(values[i]) for i in keep]
            if vals:
                self.run[path].extend(vals, steps=[steps[i] for i in keep],
                                      timestamps=[tss[i] for i in keep] if not ts_null else None)
        else:
            values = t.column("string_value").to_pylist()
            if any(v is not None and len(v) > mp.MAX_STRING_SERIES_2 for v in values) or ts_null:
                self.keep_in_restore(t, "string_series_value_truncated", path)
            vals = [(v or "")[: mp.MAX_STRING_SERIES_2] for v in values]
            if vals:
                self.run[path].extend(vals, steps=steps, timestamps=tss if not ts_null else None)

    def commit(self) -> DestRun:
        for path, t in self._series_tables() or ():
            self.series(path, t)
        restore = self.finish_restore()
        if restore:
            self.run[mp.RESTORE].upload(restore)
        version = self.plan.source_version
        if version is not None:
            self.run[mp.SOURCE_VERSION] = version
        self.run[mp.COMPLETE] = True
        self.run.stop()
        self.run = None
        shutil.rmtree(self._tmp, ignore_errors=True)
        where = self.queue
        self.sink._remember(self.origin, where, True, version)
        return DestRun(self.cid, True, None, str(where), version=version)

    def close_run(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            run.stop()
            self.run = None


class _Writer3(_Base):
    generation = "3"
    writable_sys = mp.WRITABLE_SYS_3

    def start(self) -> None:
        from . import client3

        client3.quiet()
        self.c = client3
        self.sink.record_project(self.project, self.origin)
        created = self.values.get("sys/creation_time", (None, None))[1]
        created_ms = int(created.timestamp() * 1000) if created is not None else None
        if created is None:
            self._suppress.append("sys/creation_time")
        fork_id = fork_step = None
        parent = self.values.get("sys/forking/parent", (None, None))[1]
        if parent:
            known = self.sink._known(Origin(self.origin.uri, self.origin.project_id, str(parent)))
            if known is not None:
                fork_id = self._run_id_of(known[0])
                step = self.values.get("sys/forking/step", (None, None))[1]
                fork_step = float(step) if step is not None else None
        self.sink.data_dir.mkdir(parents=True, exist_ok=True)
        self.run = client3.start_run(self.project, self.sink.mode, self.cid, str(self.sink.data_dir),
                                     created_ms, fork_id, fork_step, self.where)
        if not fork_id:
            for p in ("sys/forking/parent", "sys/forking/step"):
                if p not in self.values:
                    self._suppress.append(p)
        self.run.log_configs({mp.ORIGIN_URI: self.origin.uri, mp.ORIGIN_PROJECT: self.origin.project_id,
                              mp.ORIGIN_RUN: self.origin.run_id})

    @staticmethod
    def _run_id_of(folder: Path) -> str | None:
        db = folder / "run_operations.sqlite3"
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                row = conn.execute("SELECT run_id FROM metadata LIMIT 1").fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def assign(self, path: str, typ: str, value: Any, row: dict) -> None:
        if value is None or (typ == "string_set" and not value):
            self.keep_in_restore(pa.Table.from_pylist([row], schema=SCHEMA), None, path)
            return
        if typ == "string_set":
            value = list(value)
        self.run.log_configs({path: value})

    def file_row(self, row: dict) -> None:
        path, typ = row["attribute_path"], row["attribute_type"]
        source = (row["file_value"] or {}).get("path")
        if source is None:
            return
        local = self.local_file(source)
        table = pa.Table.from_pylist([row], schema=SCHEMA)
        if typ in ("file", "artifact"):
            self.run.assign_files({path: local})
            self.keep_in_restore(table, "file_path_in_restore" if typ == "file" else "artifact_as_file", path)
        elif typ == "file_set":
            root = Path(local)
            members = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
            for m in members:
                rel = m.relative_to(root).as_posix() if root.is_dir() else m.name
                self.run.assign_files({f"{path}/{rel}": str(m)})
            self.keep_in_restore(table, "file_set_as_files", path)
        elif typ == "file_series":
            ts = row["timestamp"]
            self.run.log_files({path: local}, step=float(row["step"]), timestamp=ts)
            self.keep_in_restore(table, "file_path_in_restore", path)

    def series(self, path: str, t: pa.Table) -> None:
        typ = t.column("attribute_type")[0].as_py()
        steps = [float(s) for s in t.column("step").to_pylist()]
        ts_ms = pc.cast(t.column("timestamp"), pa.int64()).to_pylist()
        if t.column("timestamp").null_count:
            self.keep_in_restore(t, "series_timestamp_filled", path)
        tss = [None if v is None else self.c.as_datetime(v) for v in ts_ms]
        if typ in ("float_series", "string_series") and not t.column("timestamp").null_count:
            micro = unscaled(t.column("step")).tolist()
            column = "float_value" if typ == "float_series" else "string_value"
            self.c.append_points(self.run, path, "float" if typ == "float_series" else "string", micro,
                                 ts_ms, t.column(column).to_pylist())
        elif typ == "float_series":
            for s, ts, v in zip(steps, tss, t.column("float_value").to_pylist()):
                self.run.log_metrics({path: v}, step=s, timestamp=ts)
        elif typ == "string_series":
            for s, ts, v in zip(steps, tss, t.column("string_value").to_pylist()):
                self.run.log_string_series({path: v}, step=s, timestamp=ts)
        else:
            hists = t.column("histogram_value").to_pylist()
            exact = all(h and h.get("type") == "COUNTING" and all(float(x).is_integer() for x in h["values"])
                        for h in hists)
            if not exact:
                self.keep_in_restore(t, "histogram_densities", path)
            for s, ts, h in zip(steps, tss, hists):
                self.run.log_histograms({path: self.c.histogram(h["edges"], h["values"], exact)},
                                        step=s, timestamp=ts)

    def commit(self) -> DestRun:
        for path, t in self._series_tables() or ():
            self.series(path, t)
        restore = self.finish_restore()
        if restore:
            self.run.assign_files({mp.RESTORE: restore})
        version = self.plan.source_version
        if version is not None:
            self.run.log_configs({mp.SOURCE_VERSION: version})
        self.run.log_configs({mp.COMPLETE: True})
        self.run.close()
        self.run = None
        shutil.rmtree(self._tmp, ignore_errors=True)
        folder = self._folder()
        self.sink._remember(self.origin, folder, True, version)
        return DestRun(self.cid, True, None, str(folder), version=version)

    def _folder(self) -> Path:
        for db in sorted(self.sink.data_dir.rglob("run_operations.sqlite3"), key=lambda p: p.stat().st_mtime,
                         reverse=True):
            if self._run_id_of(db.parent) == self.cid:
                return db.parent
        raise self._err("neptune-scale wrote no operation store for this run")

    def close_run(self) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            run.close()
            self.run = None
