"""ClearML sink: canonical runs -> ClearML offline sessions, one `<task id>.zip` per run in PATH.

How one run is written:
1. `begin_run` makes the run's staging folder `PATH/.trackport/<origin key>/` and writes
   `origin.json` in it first (whose run this is).  A staging folder left by a killed copy is a
   partial run: `find_run` reports it (complete=False) and `begin_run` deletes it and starts
   again -- nothing of it ever reached PATH, so the repair duplicates nothing.
2. `write()` spools the points (Arrow streams) and copies the files into the staging folder;
   what ClearML cannot hold exactly goes into the trackport record (mapping.py).
3. `commit()` hands the staged run to the writer process (client.py), which writes the session
   with the real SDK in offline mode (CLEARML_CACHE_DIR = the staging folder): origin and
   params first, points, files, the record, then `trackport/complete=true` last, `Task.close()`
   (ClearML zips the session).  The zip is checked (its task.json holds the origin and the
   mark) and renamed into PATH atomically: a zip in PATH is always a complete session.  A run
   copied again because its source grew replaces its older zip after the new one is in place.
Task ids are random (`offline-<uuid>`): a rerun finds a run by the origin in its zip's
`trackport` hyperparameter section, never by its id.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import DEST_STEP, PARAM_TYPES, VALUE_COLUMN
from trackport.core.steps import step_text

from . import mapping as mp

log = logging.getLogger(__name__)

_SPOOLS = {
    "scalars": pa.schema([("title", pa.string()), ("series", pa.string()), ("iter", pa.int64()),
                          ("ts", pa.int64()), ("value", pa.float64())]),
    "plots": pa.schema([("title", pa.string()), ("series", pa.string()), ("iter", pa.int64()),
                        ("ts", pa.int64()), ("plot", pa.string())]),
    "console": pa.schema([("level", pa.string()), ("msg", pa.string())]),
    "media": pa.schema([("title", pa.string()), ("series", pa.string()), ("iter", pa.int64()),
                        ("local", pa.string())]),
}
_FILE_TYPES = ("file", "file_set", "artifact")


def _origin_dict(origin: Origin) -> dict:
    return {"uri": origin.uri, "project_id": origin.project_id, "run_id": origin.run_id}


def read_zip_task(path: Path) -> dict | None:
    """task.json of a session zip, None when it is not one (or damaged)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("task.json").decode("utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


class WriterProcess:
    """The child process that runs the SDK (client.py); one request at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.config: Path | None = None

    def _start(self) -> None:
        from . import client

        folder = Path(tempfile.mkdtemp(prefix="clearml-writer-"))
        self.config = folder / "clearml.conf"
        self.config.write_text(client.CONFIG, encoding="utf-8")
        self.log_path = folder / "writer.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trackport.connectors.clearml.client"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log_path, "wb"),
            env=client.child_environment(self.config), cwd=str(folder), text=True, encoding="utf-8")

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path else ""
        except OSError:
            return ""
        lines = [line for line in text.splitlines() if line.strip()]
        return " | ".join(lines[-3:])

    def run(self, job: dict) -> dict:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            try:
                self.proc.stdin.write(json.dumps(job) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
            if not line:
                code = self.proc.poll()
                self.proc = None
                return {"error": f"the ClearML writer process stopped (exit {code}): {self.log_tail()}"}
            return json.loads(line)

    def close(self) -> None:
        with self.lock:
            if self.proc is not None:
                try:
                    self.proc.stdin.close()
                    self.proc.wait(timeout=60)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait()
                self.proc = None


_WRITER: WriterProcess | None = None
_WRITER_LOCK = threading.Lock()


def shared_writer() -> WriterProcess:
    """One writer process per trackport process, started on the first commit and kept for the
    next runs and commands (importing the SDK takes seconds); it ends when trackport exits
    (its stdin closes) or at interpreter exit."""
    global _WRITER
    with _WRITER_LOCK:
        if _WRITER is None:
            import atexit

            _WRITER = WriterProcess()
            atexit.register(_WRITER.close)
        return _WRITER


class ClearmlSink(Sink):
    capabilities = mp.CAPABILITIES

    def __init__(self, root: Path, uri: str, options: Any, read_only: bool = False):
        self.root, self.uri, self.options, self.read_only = root, uri, options, read_only
        self._marks: dict[str, tuple[tuple[int, int], dict | None]] = {}
        self._marks_lock = threading.Lock()

    # -- finding runs ----------------------------------------------------------------

    def staging_dir(self, origin: Origin) -> Path:
        return self.root / mp.STAGING / mp.origin_key(origin.uri, origin.project_id, origin.run_id)

    def sessions(self) -> list[tuple[Path, dict, dict]]:
        """(zip, task.json, mark) of every session in PATH trackport wrote; cached by size and mtime."""
        out = []
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.glob("*.zip")):
            try:
                st = path.stat()
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            with self._marks_lock:
                cached = self._marks.get(path.name)
            if cached is None or cached[0] != key:
                task = read_zip_task(path)
                mark = mp.read_mark(task) if task else None
                cached = (key, {"task": {"id": task.get("id")}, "mark": mark} if mark else None)
                with self._marks_lock:
                    self._marks[path.name] = cached
            if cached[1] is not None:
                out.append((path, cached[1]["task"], cached[1]["mark"]))
        return out

    def _found(self, origin: Origin) -> list[tuple[Path, dict, dict]]:
        wanted = _origin_dict(origin)
        return [s for s in self.sessions() if s[2]["origin"] == wanted and s[2]["complete"]]

    def find_run(self, origin: Origin) -> DestRun | None:
        found = self._found(origin)
        if found:
            found.sort(key=lambda s: (s[0].stat().st_mtime_ns, s[0].name), reverse=True)
            path, task, mark = found[0]
            return DestRun(task.get("id") or path.stem, True, path.as_uri(), path, mark.get("version"),
                           duplicates=tuple(t.get("id") or p.stem for p, t, _ in found[1:]))
        staging = self.staging_dir(origin)
        info = _read_json(staging / "origin.json")
        if info is not None and info.get("origin") == _origin_dict(origin):
            return DestRun(f"{mp.STAGING}/{staging.name}", False, None, None)
        return None

    def forget(self, origin: Origin) -> None:
        with self._marks_lock:
            self._marks.clear()

    # -- writing ---------------------------------------------------------------------

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this ClearML sink was opened read-only",
                           project_id=plan.origin.project_id, run_id=plan.origin.run_id)
        staging = self.staging_dir(plan.origin)
        if staging.exists():          # a partial run (a killed copy): it never reached PATH, start again
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        multiplier = plan.steps.multiplier if plan.steps is not None else 1
        _write_json(staging / "origin.json", {"trackport": mp.RECORD_VERSION, "origin": _origin_dict(plan.origin),
                                              "multiplier": multiplier})
        return ClearmlRunWriter(self, plan, staging, multiplier)

    def as_source(self):
        from .source import ClearmlSource

        return ClearmlSource(self.root, self.uri, self.options)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, dest.locator)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        scan, report = plan.scan, plan.report
        if scan.values:
            report.transformed("params_as_hyperparameters", len(scan.values), next(iter(sorted(scan.values))))
        if scan.value(mp.CREATION_TIME) is not None:
            report.transformed("creation_time_at_copy", 1, mp.CREATION_TIME)
        for path, stats in sorted(scan.series.items()):
            if stats.attribute_type == "string_series":
                report.transformed("string_series_as_console", stats.count, path)
            elif stats.attribute_type == "histogram_series":
                report.transformed("histogram_as_plot", stats.count, path)
            elif stats.attribute_type == "file_series":
                report.transformed("debug_sample_time_in_record", stats.count, path)
        sets = [f for f in scan.files if f[1] == "file_set"]
        if sets:
            report.transformed("file_set_as_archive", len(sets), sets[0][0])
        return [f"one offline session zip in {self.root} (task id given by ClearML), project "
                f"{plan.origin.project_id!r}"]

class ClearmlRunWriter(RunScoped, RunWriter):
    def __init__(self, sink: ClearmlSink, plan: RunPlan, staging: Path, multiplier: int):
        self.sink, self.plan, self.report = sink, plan, plan.report
        self.err_run = plan.origin
        self.staging, self.multiplier = staging, multiplier
        self.origin = _origin_dict(plan.origin)
        self.spools: dict[str, pa.RecordBatchStreamWriter] = {}
        self.params: dict[str, tuple[str, Any]] = {}
        self.scalar_names, self.plot_names, self.media_names = mp.Names(), mp.Names(), mp.Names()
        self.ordinals: dict[str, int] = {}
        self.nonfinite: dict[str, dict[str, Any]] = {}
        self.strings: dict[str, list] = {}
        self.media: dict[str, list] = {}
        self.artifacts: dict[str, dict] = {}
        self.uploads: list[list[str]] = []
        self.n_files = 0

    def _spool(self, name: str, columns: dict) -> None:
        if not columns[next(iter(columns))]:
            return
        writer = self.spools.get(name)
        if writer is None:
            writer = self.spools[name] = pa.ipc.new_stream(str(self.staging / f"{name}.arrow"), _SPOOLS[name])
        writer.write_table(pa.table(columns, schema=_SPOOLS[name]))

    # -- batches ---------------------------------------------------------------------

    def write(self, batch: pa.Table) -> None:
        types = batch.column("attribute_type")
        for typ in pc.unique(types).to_pylist():
            part = batch.filter(pc.equal(types, typ))
            if typ in PARAM_TYPES:
                self._params(part, typ)
            elif typ == "float_series":
                self._scalars(part)
            elif typ == "string_series":
                self._strings(part)
            elif typ == "histogram_series":
                self._histograms(part)
            elif typ == "file_series":
                self._file_series(part)
            elif typ in _FILE_TYPES:
                self._single_files(part, typ)
            else:
                self.report.dropped("unknown_type", part.num_rows, typ)

    def _params(self, table: pa.Table, typ: str) -> None:
        paths = table.column("attribute_path").to_pylist()
        values = table.column(VALUE_COLUMN[typ]).to_pylist()
        for path, value in zip(paths, values):
            if path in self.params and self.params[path] != (typ, value):
                raise self._err(f"attribute {path!r} has two different values in one run")
            self.params[path] = (typ, value)

    def _points(self, table: pa.Table):
        """(path, iteration, ts ms, row) of the rows with a step."""
        paths = table.column("attribute_path").to_pylist()
        steps = (table.column(DEST_STEP).to_pylist() if DEST_STEP in table.column_names else
                 [None if s is None else int(s) for s in table.column("step").to_pylist()])
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        for i, (path, step, ms) in enumerate(zip(paths, steps, ts)):
            if step is None:
                self.report.dropped("point_without_step", 1, path)
                continue
            yield path, step, ms, i

    def _scalars(self, table: pa.Table) -> None:
        values = table.column("float_value").to_pylist()
        cols = {k: [] for k in _SPOOLS["scalars"].names}
        changed, example = 0, None
        for path, it, ms, i in self._points(table):
            value = values[i]
            if value is None:
                self.report.dropped("null_value", 1, path)
                continue
            title, series = self.scalar_names.get(path)
            ordinal = self.ordinals.get(path, 0)
            self.ordinals[path] = ordinal + 1
            if value != value or value in (float("inf"), float("-inf")):
                self.nonfinite.setdefault(path, {})[str(ordinal)] = mp.float_to_json(value)
                changed, example = changed + 1, example or path
            for k, v in (("title", title), ("series", series), ("iter", it), ("ts", ms), ("value", value)):
                cols[k].append(v)
        self._spool("scalars", cols)
        if changed:
            self.report.transformed("nonfinite_scalar_in_record", changed, example)

    def _strings(self, table: pa.Table) -> None:
        values = table.column("string_value").to_pylist()
        steps = table.column("step").to_pylist()
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        paths = table.column("attribute_path").to_pylist()
        cols = {"level": [], "msg": []}
        for i, path in enumerate(paths):
            self.strings.setdefault(path, []).append([step_text(steps[i]), ts[i], values[i]])
            if values[i]:
                cols["level"].append(mp.console_level(path))
                cols["msg"].append(values[i])
        self._spool("console", cols)
        if paths:
            self.report.transformed("string_series_as_console", len(paths), paths[0])

    def _histograms(self, table: pa.Table) -> None:
        values = table.column("histogram_value").to_pylist()
        cols = {k: [] for k in _SPOOLS["plots"].names}
        n, example = 0, None
        for path, it, ms, i in self._points(table):
            hist = values[i]
            if hist is None:
                self.report.dropped("null_value", 1, path)
                continue
            title, series = self.plot_names.get(path)
            for k, v in (("title", title), ("series", series), ("iter", it), ("ts", ms),
                         ("plot", mp.histogram_plot(title, series, path, hist))):
                cols[k].append(v)
            n, example = n + 1, example or path
        self._spool("plots", cols)
        if n:
            self.report.transformed("histogram_as_plot", n, example)

    def _file_series(self, table: pa.Table) -> None:
        cells = table.column("file_value").to_pylist()
        steps = table.column("step").to_pylist()
        cols = {k: [] for k in _SPOOLS["media"].names}
        for path, it, ms, i in self._points(table):
            source = (cells[i] or {}).get("path")
            if not source:
                self.report.dropped("file_missing_path", 1, path)
                continue
            local = self._stage(source)
            title, series = self.media_names.get(path)
            self.media.setdefault(path, []).append([step_text(steps[i]), ms, source, it])
            for k, v in (("title", title), ("series", series), ("iter", it), ("local", str(local))):
                cols[k].append(v)
            self.report.transformed("debug_sample_time_in_record", 1, path)
        self._spool("media", cols)

    def _single_files(self, table: pa.Table, typ: str) -> None:
        paths = table.column("attribute_path").to_pylist()
        cells = table.column("file_value").to_pylist()
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        for path, cell, ms in zip(paths, cells, ts):
            source = (cell or {}).get("path")
            if not source:
                self.report.dropped("file_missing_path", 1, path)
                continue
            local = self._stage(source)
            name = path if path not in self.artifacts and path != mp.RECORD_ARTIFACT else f"{path} ({len(self.artifacts)})"
            self.artifacts[name] = {"path": path, "type": typ, "file": source, "timestamp": ms,
                                    "folder": local.is_dir()}
            self.uploads.append([name, str(local)])
            if local.is_dir():
                self.report.transformed("file_set_as_archive", 1, path)

    def _stage(self, source: str) -> Path:
        """Copy a file (or a file set's folder) into the staging folder; counted."""
        self.n_files += 1
        target = self.staging / "files" / str(self.n_files) / (Path(source).name or "file")
        target.parent.mkdir(parents=True, exist_ok=True)
        files = self.plan.files
        try:
            local = files.local_path(source)
            if local is not None and Path(local).is_dir():
                shutil.copytree(local, target)
                for dirpath, _, names in os.walk(target):
                    for name in names:
                        self.report.files += 1
                        self.report.bytes += os.path.getsize(os.path.join(dirpath, name))
                return target
            with files.open(source) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, ValueError) as exc:
            raise self._err(f"cannot read file: {exc}", file=source) from None
        self.report.files += 1
        self.report.bytes += target.stat().st_size
        return target

    # -- commit ----------------------------------------------------------------------

    def _close_spools(self) -> None:
        for writer in self.spools.values():
            writer.close()
        self.spools.clear()

    def _job(self) -> dict:
        name = self.params.get("sys/name", (None, None))[1]
        tags = self.params.get("sys/tags", (None, None))[1]
        comment = self.params.get("sys/description", (None, None))[1]
        shown = {mp.param_name(p): mp.param_text(t, v) for p, (t, v) in sorted(self.params.items())
                 if p not in mp.NATIVE_SYS}
        if self.params:
            self.report.transformed("params_as_hyperparameters", len(self.params), next(iter(sorted(self.params))))
        if self.params.get(mp.CREATION_TIME, (None, None))[1] is not None:
            self.report.transformed("creation_time_at_copy", 1, mp.CREATION_TIME)
        record = {
            "trackport": mp.RECORD_VERSION, "origin": self.origin, "multiplier": self.multiplier,
            "params": [{"path": p, "type": t, "value": mp.param_to_json(t, v)} for p, (t, v) in sorted(self.params.items())],
            "scalars": {p: list(ts) for p, ts in self.scalar_names.by_path.items()},
            "nonfinite": self.nonfinite,
            "plots": {p: list(ts) for p, ts in self.plot_names.by_path.items()},
            "strings": self.strings,
            "media": {p: {"names": list(self.media_names.by_path[p]), "points": pts} for p, pts in self.media.items()},
            "artifacts": self.artifacts,
        }
        record_path = self.staging / f"{mp.RECORD_ARTIFACT}.json"
        _write_json(record_path, record)
        spools = {name: str(self.staging / f"{name}.arrow") for name in _SPOOLS}
        return {
            "cache_dir": str(self.staging / "cache"),
            "project": self.origin["project_id"] or "trackport",
            "name": name if isinstance(name, str) and name else self.origin["run_id"],
            "tags": list(tags or []), "comment": comment,
            "params": shown,
            "mark": mp.mark_params(self.origin, self.plan.source_version, self.multiplier),
            "complete_param": f"{mp.MARK_SECTION}/complete",
            **spools,
            "artifacts": self.uploads,
            "record": str(record_path), "record_name": mp.RECORD_ARTIFACT,
        }

    def commit(self) -> DestRun:
        try:
            self._close_spools()
            answer = shared_writer().run(self._job())
            if "error" in answer:
                raise self._err(f"ClearML could not write the offline session: {answer['error']}. "
                                f"Fix: check the message; the next copy writes the run again")
            made = Path(answer["zip"])
            task = read_zip_task(made)
            mark = mp.read_mark(task) if task else None
            if mark is None or mark["origin"] != self.origin or not mark["complete"]:
                raise self._err("the session ClearML wrote lacks trackport's completion mark", file=str(made))
            older = self.sink._found(self.plan.origin)
            target = self.sink.root / made.name
            os.replace(made, target)               # the run is complete in PATH from here on
            for path, _, _ in older:
                if path != target:
                    path.unlink(missing_ok=True)   # the run's older session, copied before its source grew
            shutil.rmtree(self.staging, ignore_errors=True)
            self.sink.forget(self.plan.origin)
        except BaseException:
            self.abort()
            raise
        return DestRun(answer["task_id"], True, target.as_uri(), target, self.plan.source_version)

    def abort(self) -> None:
        try:
            self._close_spools()
        except OSError:
            log.debug("closing a spool failed", exc_info=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, ensure_ascii=False, allow_nan=False, default=_json_default)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_default(value: Any):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the trackport record")
