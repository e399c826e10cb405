"""Aim destination: one Aim run per source run, its hash derived from the origin (docs/aim.md).

A run holds, besides what Aim shows (params, metrics, Text, Distribution and Image sequences,
artifacts, name, description, tags, experiment, creation time), the top-level param
`__trackport`: the origin, the source's run_version, the step multiplier, a JSON record of
what Aim cannot say by itself (param types, params that cannot nest, where each file went)
and `complete`, set to true last: the completion mark.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.connector import RunPlan, RunWriter, Sink, check_output_folder
from trackport.core.errors import RunError, RunScoped
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import DEST_STEP, FILE_TYPES, PARAM_TYPES, VALUE_COLUMN
from trackport.core.steps import StepConverter

from . import mapping as mp


class AimSink(Sink):
    capabilities = mp.CAPABILITIES

    def __init__(self, root: Path, options: Any, read_only: bool = False):
        self.root = Path(root)
        self.uri = f"aim:{self.root}"
        self.options = options
        self.read_only = read_only
        self._lock = threading.RLock()     # Aim's Repo (its SQLite session) is shared by the workers
        self._writer = None

    def preflight(self, read_only: bool = False) -> None:
        check_output_folder(self.root, "aim", read_only=read_only, example="aim:./aim-repo")

    def writer(self):
        from .client import AimWriter

        with self._lock:
            if self._writer is None:
                self._writer = AimWriter(self.root)
            return self._writer

    def record(self, run_hash: str) -> dict | None:
        """The run's __trackport param, or None when the run does not exist ({} without one)."""
        from .client import AimReader

        reader = AimReader(self.root)
        try:
            if not reader.exists(run_hash):
                return None
            meta = reader.meta(run_hash)
            attrs = reader.attrs(meta) if meta is not None else {}
            got = attrs.get(mp.MARK_KEY)
            return got if isinstance(got, dict) else {}
        finally:
            reader.close()

    def find_run(self, origin: Origin) -> DestRun | None:
        h = mp.run_hash(origin.uri, origin.project_id, origin.run_id)
        with self._lock:
            rec = self.record(h)
        if rec is None:
            return None
        recorded = rec.get("origin") or {}
        if recorded and [recorded.get("uri"), recorded.get("project_id"), recorded.get("run_id")] != \
                [origin.uri, origin.project_id, origin.run_id]:
            raise RunError(f"Aim run {h} in {self.root} holds another origin ({recorded}); "
                           "fix: move that run away", project_id=origin.project_id, run_id=origin.run_id)
        complete = rec.get("complete") is True
        return DestRun(h, complete=complete, url=f"{self.root}#{h}", locator=h,
                       version=rec.get("version") if complete else None)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, dest.locator)

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        o = plan.origin
        if self.read_only:
            raise RunError("this Aim destination was opened read-only", project_id=o.project_id, run_id=o.run_id)
        return AimRunWriter(self, plan, resume)

    def as_source(self):
        from .source import AimSource

        return AimSource(self.root)

    def close(self) -> None:
        self._writer = None


def _file_kind(local: Path) -> str:
    if local.is_dir():
        return "dir"
    with open(local, "rb") as fh:
        return "image" if mp.is_image(fh.read(16)) else "file"


class AimRunWriter(RunScoped, RunWriter):
    @property
    def err_run(self):   # RunScoped: errors name the run being written
        return self.plan.origin

    def __init__(self, sink: AimSink, plan: RunPlan, resume: DestRun | None):
        from .client import quiet

        self.sink, self.plan, self.report = sink, plan, plan.report
        o = plan.origin
        self.hash = mp.run_hash(o.uri, o.project_id, o.run_id)
        self.multiplier = plan.steps.multiplier if plan.steps is not None else 1
        self.params: dict[str, tuple[str, Any]] = {}
        self.series_types: dict[str, str] = {}
        self.files: list[tuple] = []
        self.seen: dict[str, set] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="trackport-aim-"))
        scan = plan.scan
        writer = sink.writer()
        with sink._lock, quiet():
            if resume is not None or sink.record(self.hash) is not None:
                # partial (or an older version): start the run again from nothing, same hash
                writer.delete_run(self.hash)
            created = scan.value("sys/creation_time")
            experiment = sink.options.get("aim_experiment") if hasattr(sink.options, "get") else None
            self.run = writer.create_run(self.hash, created, experiment or o.project_id)
            tags = scan.value("sys/tags") or []
            self.run.set_props(scan.value("sys/name") or o.run_id, scan.value("sys/description"),
                               [str(t) for t in tags])
            self.run.set_param(mp.MARK_KEY, self._mark(False, "{}"))

    def _mark(self, complete: bool, record: str) -> dict:
        o = self.plan.origin
        return {"format": mp.FORMAT, "origin": {"uri": o.uri, "project_id": o.project_id, "run_id": o.run_id},
                "version": self.plan.source_version, "multiplier": self.multiplier, "record": record,
                "complete": complete}

    # -- rows ----------------------------------------------------------------------------

    def write(self, table: pa.Table) -> None:
        from .client import quiet

        types = table.column("attribute_type")
        with self.sink._lock, quiet():
            params = table.filter(pc.is_in(types, value_set=pa.array(sorted(PARAM_TYPES))))
            for row in params.select(["attribute_path", "attribute_type", *sorted(
                    {VALUE_COLUMN[t] for t in PARAM_TYPES})]).to_pylist():
                typ = row["attribute_type"]
                self.params[row["attribute_path"]] = (typ, row[VALUE_COLUMN[typ]])
            for typ in ("float_series", "string_series", "histogram_series"):
                part = table.filter(pc.equal(types, typ))
                if part.num_rows:
                    self._series(part, typ)
            files = table.filter(pc.is_in(types, value_set=pa.array(sorted(FILE_TYPES))))
            if files.num_rows:
                self._collect_files(files)

    def _dest_steps(self, table: pa.Table) -> list:
        if DEST_STEP in table.column_names:
            return table.column(DEST_STEP).to_pylist()
        return StepConverter(1).convert(table.column("step"))[0].to_pylist()

    def _series(self, table: pa.Table, typ: str) -> None:
        paths = table.column("attribute_path").to_pylist()
        steps = self._dest_steps(table)
        times = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        values = table.column(VALUE_COLUMN[typ]).to_pylist()
        run = self.run
        metrics: dict[str, tuple[list, list, list]] = {}
        for path, step, ms, value in zip(paths, steps, times, values):
            if value is None:
                self.report.dropped("null_point", 1, path)
                continue
            if step is None:
                raise self._err(f"{path}: a series point has no step; Aim needs one. Fix: give every point a step")
            seen = self.seen.setdefault(path, set())
            if step in seen:
                raise self._err(f"{path}: two points at Aim step {step}; Aim keeps one value per step. "
                                "Fix: remove the duplicate point from the source")
            seen.add(step)
            self.series_types[path] = typ
            if typ == "float_series":
                got = metrics.setdefault(path, ([], [], []))
                got[0].append(int(step))
                got[1].append(float(value))
                got[2].append(mp.seconds(ms))
                continue
            if typ == "string_series":
                obj = run.text(value)
            else:
                counts, lo, hi, exact = mp.histogram_plan(value)
                extra = None
                if not exact:
                    extra = {"type": value.get("type"), "edges": list(value.get("edges") or []),
                             "values": list(value.get("values") or [])}
                    self.report.transformed("histogram_binned", 1, path)
                obj = run.distribution(counts, lo, hi, extra)
            run.track(obj, mp.seconds(ms), path, int(step))
        for path, (steps_, values_, times_) in metrics.items():
            run.track_metric(path, steps_, values_, times_)

    def _collect_files(self, table: pa.Table) -> None:
        steps = table.column("step").to_pylist()
        dest = self._dest_steps(table)
        for row, step, d in zip(table.select(["attribute_path", "attribute_type", "timestamp", "file_value"])
                                .to_pylist(), steps, dest):
            cell = row["file_value"]
            source = cell.get("path") if cell else None
            if not source:
                self.report.dropped("null_point", 1, row["attribute_path"])
                continue
            ts = row["timestamp"]
            ms = None if ts is None else int(ts.timestamp() * 1000) if hasattr(ts, "timestamp") else int(ts)
            self.files.append((row["attribute_path"], row["attribute_type"], mp.step_text(step), d, source, ms))

    # -- commit --------------------------------------------------------------------------

    def _local(self, source: str) -> Path:
        files = self.plan.files
        try:
            local = files.local_path(source)
            if local is None:
                target = self._tmp / "files" / str(len(list(self._tmp.glob("files/*")))) / (Path(source).name or "file")
                target.parent.mkdir(parents=True, exist_ok=True)
                with files.open(source) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                local = target
        except (FileNotFoundError, ValueError, PermissionError) as exc:
            raise self._err(f"cannot read file: {exc}", file=source) from None
        return Path(local)

    def _send_files(self) -> list:
        record = []
        # a file_series goes to an Aim Image sequence when each of its files is an image
        locals_ = {f[4]: self._local(f[4]) for f in self.files}
        image_series = {}
        for attr, typ, _, _, source, _ in self.files:
            if typ == "file_series":
                ok = image_series.get(attr, True) and _file_kind(locals_[source]) == "image"
                image_series[attr] = ok
        for attr, typ, step, dest, source, ms in self.files:
            local = locals_[source]
            if typ == "file_series" and image_series.get(attr):
                if dest is None:
                    raise self._err(f"{attr}: a file_series point has no step", file=source)
                data = local.read_bytes()
                self.run.track(self.run.image(local, data), mp.seconds(ms), attr, int(dest))
                record.append([attr, typ, step, source, "image", int(dest), ms])
                self.report.files += 1
                self.report.bytes += len(data)
                continue
            base = Path(source.rstrip("/")).name
            name = mp.artifact_name(attr, step=step if typ == "file_series" else None, base=base)
            if local.is_dir():
                members = sorted(p for p in local.rglob("*") if p.is_file())
                for p in members:
                    self.run.artifact(p, f"{name}/{p.relative_to(local).as_posix()}")
                    self.report.files += 1
                    self.report.bytes += p.stat().st_size
                kind = "artifact_dir"
            else:
                self.run.artifact(local, name)
                self.report.files += 1
                self.report.bytes += local.stat().st_size
                kind = "artifact"
            self.report.transformed("file_as_artifact", 1, attr)
            record.append([attr, typ, step, source, kind, name, ms])
        return record

    def commit(self) -> DestRun:
        from .client import quiet

        try:
            with self.sink._lock, quiet():
                files = self._send_files()
                values: dict[str, Any] = {}
                types: dict[str, str] = {}
                for path, (typ, value) in self.params.items():
                    aim_value, kind = mp.param_value(typ, value)
                    if kind:
                        self.report.transformed(kind, 1, path)
                    values[path] = aim_value
                    types[path] = typ
                tree, flat = mp.nest_params(values)
                for path in flat:
                    self.report.transformed("param_in_record", 1, path)
                for key, sub in tree.items():
                    self.run.set_param(key, sub)
                record = json.dumps({"types": types, "flat": flat, "series": self.series_types,
                                     "files": files}, ensure_ascii=False, allow_nan=True)
                self.run.set_param(mp.MARK_KEY, self._mark(False, record))
                # the completion mark, last
                self.run.set_param((mp.MARK_KEY, "complete"), True)
                self.run.close()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return DestRun(self.hash, complete=True, url=f"{self.sink.root}#{self.hash}", locator=self.hash,
                       version=self.plan.source_version)

    def abort(self) -> None:
        try:
            with self.sink._lock:
                self.run.close()       # no mark: the next command finds the run partial and redoes it
        except Exception:
            pass
        shutil.rmtree(self._tmp, ignore_errors=True)

