"""`wandb:PATH` — W&B offline run directories -> canonical rows.

Reads each run's `.wandb` transaction log (datastore.LogReader) and replays its
records: run, config, summary, history, stats (system metrics), output_raw
(console), telemetry, exit, artifact; then the run's `files/` directory.  The
protobuf classes come from the installed wandb package (`wandb.proto`, loaded in
client.py); the log itself is parsed here.

Memory stays bounded: history points go into column lists that become an Arrow
table every `_BATCH_ROWS` points; only config/summary (latest values) and the
current console line are held for the whole run.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa

from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError, UsageError
from trackport.core.model import RunRef, Selection
from trackport.core.schema import (
    FILE_TYPE,
    SCHEMA,
    STEP_TYPE,
    TIMESTAMP_TYPE,
    VALUE_COLUMN,
    SeriesColumns,
    rows_to_table,
)

from . import mapping as mp
from .datastore import DatastoreError, LogReader

log = logging.getLogger(__name__)

_BATCH_ROWS = 50_000
_RUN_DIR = re.compile(r"^(offline-run|run)-\d{8}_\d{6}-(?P<id>.+)$")
_RUN_RECORD_PEEK = 200   # records to look at for the run record when listing


@dataclass(frozen=True)
class Locator:
    run_dir: Path
    log_file: Path


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories under `root` (a run dir, a `wandb/` dir, or a dir holding `wandb/`)."""
    if not root.exists():
        raise UsageError(f"wandb:{root}: no such folder")
    if _log_file(root) is not None:
        return [root]
    for base in (root, root / "wandb"):
        if base.is_dir():
            dirs = sorted(p for p in base.iterdir()
                          if p.is_dir() and not p.is_symlink() and _RUN_DIR.match(p.name)
                          and _log_file(p) is not None)
            if dirs:
                return dirs
    raise UsageError(f"wandb:{root}: no W&B run directory (offline-run-* / run-* with a .wandb file) "
                     f"in it, nor in {root / 'wandb'}")


def _log_file(run_dir: Path) -> Path | None:
    if not run_dir.is_dir():
        return None
    logs = sorted(run_dir.glob("*.wandb"))
    return logs[0] if logs else None


class RunFiles(FileAccess):
    """`file_value.path` = `<run dir name>/files/<relative path>` under the run's parent dir."""

    def __init__(self, base: Path, ref: RunRef, written: dict[str, str] | None = None):
        self.base = base
        self.ref = ref
        # runs trackport wrote: original file path -> `<run dir name>/files/<rel>`
        self.written = written or {}

    def local_path(self, path: str) -> Path | None:
        path = self.written.get(path, path)
        parts = path.split("/")
        if not path or ".." in parts or path.startswith("/"):
            raise RunError("bad file path", project_id=self.ref.project_id, run_id=self.ref.run_id, file=path)
        local = self.base / path
        if local.is_symlink() and not local.exists():
            raise RunError(
                f"dangling symlink to {os.readlink(local)} (run.save links the original file, which "
                f"is gone); copy the file into {local.parent} to move it",
                project_id=self.ref.project_id, run_id=self.ref.run_id, file=path)
        return local

    def open(self, path: str) -> BinaryIO:
        local = self.local_path(path)
        return open(local, "rb")


class WandbOfflineSource(Source):
    capabilities = mp.SOURCE_CAPABILITIES

    def __init__(self, root: Path, options: dict[str, Any] | None = None):
        self.root = root
        self.uri = f"wandb:{root}"
        self.options = dict(options or {})
        self._pb = None
        self._notes: dict[tuple[str, str], dict[str, Any]] = {}

    def account(self, run: RunRef, report) -> None:
        notes = self._notes.get((run.project_id, run.run_id), {"transformations": {}, "warnings": []})
        for kind, count in sorted(notes["transformations"].items()):
            report.transformed(kind, count)
        for warning in notes["warnings"]:
            report.warn(warning)

    @property
    def pb(self):
        if self._pb is None:
            from .client import internal_pb2

            self._pb = internal_pb2()
        return self._pb

    # -- listing ----------------------------------------------------------------

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        for run_dir in find_run_dirs(self.root):
            log_file = _log_file(run_dir)
            project, run_id = self._identity(run_dir, log_file)
            if select.wants_run(project, run_id):
                yield RunRef(project, run_id, Locator(run_dir, log_file))

    def _identity(self, run_dir: Path, log_file: Path) -> tuple[str, str]:
        """(project_id, run_id) from the first run record; a trackport-written run gives its origin."""
        match = _RUN_DIR.match(run_dir.name)
        run_id = match["id"] if match else run_dir.name
        project = mp.project_id("", "")
        try:
            for n, payload in enumerate(LogReader(log_file)):
                if n > _RUN_RECORD_PEEK:
                    break
                record = self.pb.Record()
                record.ParseFromString(payload)
                if record.WhichOneof("record_type") == "run":
                    run = record.run
                    origin = mp.origin_from_config(_config_items(run.config))
                    if origin is not None and load_manifest(run_dir) is not None:
                        return origin[0], origin[1]
                    return mp.project_id(run.entity, run.project), run.run_id or run_id
        except (DatastoreError, OSError) as exc:
            log.warning("%s: %s", log_file, exc)
        return project, run_id

    def files(self, run: RunRef) -> FileAccess:
        run_dir = run.locator.run_dir
        written = {}
        manifest = load_manifest(run_dir)
        if manifest is not None and manifest.get("origin", {}).get("run_id") == run.run_id:
            for entry in manifest.get("files", []):
                if entry.get("source"):
                    written[entry["source"]] = f"{run_dir.name}/files/{entry['rel']}"
        return RunFiles(run_dir.parent, run, written)

    def describe_run(self, run: RunRef) -> str:
        return f"{run.project_id}/{run.run_id} ({run.locator.run_dir})"

    # -- reading ----------------------------------------------------------------

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        loc: Locator = run.locator
        replay = Replay(run, loc, self.pb)
        self._notes[(run.project_id, run.run_id)] = replay.notes
        try:
            for table in replay.tables():
                yield select.filter(table)
        except DatastoreError as exc:
            raise RunError(str(exc), project_id=run.project_id, run_id=run.run_id,
                           file=str(loc.log_file)) from None


def _config_items(config) -> dict:
    out: dict = {}
    for item in config.update:
        keys = list(item.nested_key) or [item.key]
        try:
            mp.set_nested(out, keys, mp.load_json(item.value_json))
        except ValueError:
            mp.set_nested(out, keys, item.value_json)
    return out


def _ts_seconds(timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


def _ms_of(timestamp) -> int:
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


class Replay:
    """One pass over a run's records, yielding canonical tables."""

    def __init__(self, ref: RunRef, loc: Locator, pb):
        self.ref = ref
        self.loc = loc
        self.pb = pb
        self.project_id = ref.project_id
        self.run_id = ref.run_id
        self.file_prefix = f"{loc.run_dir.name}/files/"
        self.hits: dict[str, int] = {}
        self.cols = SeriesColumns()
        self.config: dict = {}
        self.summary: dict = {}
        self.info = mp.RunInfo(run_id="")
        self.extra: dict[str, Any] = {}
        self.telemetry: str | None = None
        self.exit_code: int | None = None
        self.last_ms: int | None = None
        self.console: dict[str, _Console] = {}
        self.stats_index: dict[str, int] = {}
        self.media_files: set[str] = set()
        self.artifacts: dict[str, str] = {}
        self.origin: tuple[str, str] | None = None
        self.notes: dict[str, Any] = {"transformations": {}, "warnings": []}
        self.decoder: mp.Decoder | None = None

    def _seen(self, ms: int) -> None:
        if self.last_ms is None or ms > self.last_ms:
            self.last_ms = ms

    def tables(self) -> Iterator[pa.Table]:
        reader = LogReader(self.loc.log_file)
        for payload in reader:
            record = self.pb.Record()
            try:
                record.ParseFromString(payload)
            except Exception as exc:  # protobuf DecodeError: a corrupt payload that passed the CRC
                raise DatastoreError(f"record {reader.records} is not a W&B Record ({exc})") from None
            kind = record.WhichOneof("record_type")
            handler = getattr(self, f"_on_{kind}", None)
            if handler is not None:
                handler(getattr(record, kind))
            if len(self.cols) >= _BATCH_ROWS:
                yield self._flush()
        if reader.tear is not None:
            message = f"{self.loc.log_file}: read up to a tear ({reader.tear}); the records before it are kept"
            log.warning("run %s/%s: %s", self.project_id, self.run_id, message)
            self.notes["warnings"].append(message)
            self.extra["transaction_log_tear"] = message
        for console in self.console.values():
            console.finish()
        if len(self.cols):
            yield self._flush()
        yield self._single_values()
        files = self._files()
        if files is not None:
            yield files
        self.notes["transformations"] = dict(self.hits)
        if self.hits:
            log.info("run %s/%s: %s", self.project_id, self.run_id,
                     ", ".join(f"{k} x{v}" for k, v in sorted(self.hits.items())))

    def _flush(self) -> pa.Table:
        cols, self.cols = self.cols, SeriesColumns()
        return cols.table(self.project_id, self.run_id, _steps_array(cols.step))

    def _add(self, path: str, kind: str, step: int, ts_ms: int | None, value: Any) -> None:
        """A series point; a media file's path is relative to the run's files/."""
        self.cols.add(path, kind, step, ts_ms, self.file_prefix + value if kind == "file_series" else value)

    # -- records ----------------------------------------------------------------

    def _on_run(self, run) -> None:
        info = self.info
        info.run_id = run.run_id or info.run_id
        info.entity = run.entity or info.entity
        info.project = run.project or info.project
        info.display_name = run.display_name or info.display_name
        info.notes = run.notes or info.notes
        info.tags = tuple(run.tags) or info.tags
        info.group = run.run_group or info.group
        info.job_type = run.job_type or info.job_type
        if run.HasField("start_time") and info.created is None:
            info.created = mp.datetime_from_seconds(_ts_seconds(run.start_time))
            self._seen(_ms_of(run.start_time))
        for name in ("host", "sweep_id", "storage_id"):
            value = getattr(run, name)
            if value:
                self.extra[name] = value
        if run.starting_step:
            self.extra["starting_step"] = run.starting_step
        if run.resumed:
            self.extra["resumed"] = True
        if run.HasField("git") and (run.git.remote_url or run.git.commit):
            self.extra["git"] = {"remote_url": run.git.remote_url, "commit": run.git.commit}
        if run.HasField("branch_point") and run.branch_point.run and run.branch_point.run != run.run_id:
            info.fork_parent = run.branch_point.run
            value = run.branch_point.value
            info.fork_step = int(value) if float(value).is_integer() else value
            if run.branch_point.metric and run.branch_point.metric != "_step":
                self.extra["fork_metric"] = run.branch_point.metric
        self._apply(self.config, run.config.update, ())
        self._apply(self.summary, run.summary.update, run.summary.remove)
        self._check_origin()

    def _check_origin(self) -> None:
        if self.origin is None and self.decoder is None:
            origin = mp.origin_from_config(self.config)
            if origin is not None and origin == (self.project_id, self.run_id):
                manifest = load_manifest(self.loc.run_dir)
                if manifest is not None:
                    self.origin = origin
                    self.decoder = mp.Decoder(manifest)

    def _apply(self, target: dict, updates, removes) -> None:
        for item in updates:
            keys = list(item.nested_key) or [item.key]
            try:
                value = mp.load_json(item.value_json)
            except ValueError:
                value = item.value_json
            mp.set_nested(target, keys, value)
        for item in removes:
            mp.remove_nested(target, list(item.nested_key) or [item.key])

    def _on_config(self, config) -> None:
        self._apply(self.config, config.update, config.remove)
        self._check_origin()

    def _on_summary(self, summary) -> None:
        self._apply(self.summary, summary.update, summary.remove)

    def _on_history(self, history) -> None:
        row: dict = {}
        for item in history.item:
            keys = list(item.nested_key) or [item.key]
            mp.set_nested(row, keys, _item_value(item))
        step = row.pop("_step", None)
        if step is None:
            step = history.step.num
        ts = row.pop("_timestamp", None)
        ts_ms = mp.ms_from_seconds(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None
        if ts_ms is not None:
            self._seen(ts_ms)
        if self.decoder is not None:
            points = self.decoder.history_row(row, ts_ms, int(step))
            step = self.decoder.step(int(step))
            for path, kind, ts, value in points:
                self._add(path, kind, step, ts, value)
            return
        for key, value in row.items():
            for point in mp.history_points(key, value, self.hits):
                if point.type == "file_series":
                    self.media_files.add(point.value)
                self._add(point.path, point.type, int(step), ts_ms, point.value)

    def _on_stats(self, stats) -> None:
        if self.decoder is not None:
            return  # the sink disables system metrics: not part of the canonical run
        ts_ms = _ms_of(stats.timestamp)
        self._seen(ts_ms)
        for item in stats.item:
            try:
                value = mp.load_json(item.value_json)
            except ValueError:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            path = mp.system_metric_path(item.key)
            index = self.stats_index.get(path, 0)
            self.stats_index[path] = index + 1
            if index == 0:
                self.hits["system_metric_index_step"] = self.hits.get("system_metric_index_step", 0) + 1
            self.cols.add(path, "float_series", index, ts_ms, float(value))

    def _on_output_raw(self, output) -> None:
        if self.decoder is not None:
            return  # the sink disables console capture: not part of the canonical run
        stream = mp.STDOUT if output.output_type == self.pb.OutputRawRecord.OutputType.STDOUT else mp.STDERR
        ts_ms = _ms_of(output.timestamp) if output.HasField("timestamp") else None
        if ts_ms is not None:
            self._seen(ts_ms)
        console = self.console.get(stream)
        if console is None:
            console = self.console[stream] = _Console(stream, self)
        console.feed(output.line, ts_ms)

    _on_output = _on_output_raw

    def _on_telemetry(self, telemetry) -> None:
        from google.protobuf import json_format

        self.telemetry = json.dumps(json_format.MessageToDict(telemetry), sort_keys=True)

    def _on_exit(self, exit_record) -> None:
        self.exit_code = exit_record.exit_code
        self.extra["runtime_seconds"] = exit_record.runtime

    def _on_artifact(self, artifact) -> None:
        self.artifacts[artifact.name or artifact.digest] = mp.json_text(
            {"type": artifact.type, "digest": artifact.digest, "aliases": list(artifact.aliases),
             "files": [c.path for c in artifact.manifest.contents]})

    # -- the end ----------------------------------------------------------------

    def _single_values(self) -> pa.Table:
        info = self.info
        info.run_id = info.run_id or self.run_id
        if self.exit_code is None:
            info.state = "crashed" if "transaction_log_tear" in self.extra else "running"
        else:
            info.state = "finished" if self.exit_code == 0 else "failed"
            info.exit_code = self.exit_code
        if self.last_ms is not None:
            info.heartbeat = datetime.fromtimestamp(self.last_ms / 1000, tz=timezone.utc)
        extra = dict(self.extra)
        if self.telemetry:
            extra["telemetry"] = self.telemetry
        extra["offline_run_dir"] = self.loc.run_dir.name
        for name, text in self.artifacts.items():
            extra[f"artifacts/{name}"] = text
        info.extra = extra
        if self.decoder is not None:
            rows = self.decoder.single_rows()
        else:
            rows = mp.run_rows(info, self.hits) + mp.config_rows(self.config, self.hits) + \
                mp.summary_rows(self.summary, self.hits)
        return _rows_table(rows, self.project_id, self.run_id)

    def _files(self) -> pa.Table | None:
        if self.decoder is not None:
            return self._decoded_files()
        files_dir = self.loc.run_dir / "files"
        if not files_dir.is_dir():
            return None
        rows = []
        for dirpath, dirnames, filenames in os.walk(files_dir):
            dirnames.sort()
            for name in sorted(filenames):
                local = Path(dirpath) / name
                rel = local.relative_to(files_dir).as_posix()
                if rel in self.media_files:
                    continue
                path, kind = mp.classify_file(rel)
                rows.append(mp.Row(path, kind, {"path": self.file_prefix + rel}))
        if not rows:
            return None
        return _rows_table(rows, self.project_id, self.run_id)

    def _decoded_files(self) -> pa.Table | None:
        entries = self.decoder.file_rows()
        if not entries:
            return None
        from decimal import Decimal

        n = len(entries)
        steps = [None if e.get("step") is None else Decimal(e["step"]) for e in entries]
        table = {
            "project_id": pa.array([self.project_id] * n, pa.string()),
            "run_id": pa.array([self.run_id] * n, pa.string()),
            "attribute_path": pa.array([e["path"] for e in entries], pa.string()),
            "attribute_type": pa.array([e["type"] for e in entries], pa.string()),
            "step": pa.array(steps, STEP_TYPE),
            "timestamp": pa.array([e.get("ts") for e in entries], pa.int64()).cast(TIMESTAMP_TYPE),
            "file_value": pa.array([{"path": e.get("source") or self.file_prefix + e["rel"]} for e in entries],
                                   FILE_TYPE),
        }
        cols = [table[f.name] if f.name in table else pa.nulls(n, f.type) for f in SCHEMA]
        return pa.Table.from_arrays(cols, schema=SCHEMA)


def load_manifest(run_dir: Path) -> dict | None:
    """The trackport manifest a W&B run written by the sink carries (None when absent/unreadable)."""
    path = run_dir / "files" / mp.MANIFEST_PATH
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == mp.MANIFEST_FORMAT else None


class _Console:
    """Joins console fragments into lines: one string_series point per line."""

    def __init__(self, path: str, replay: Replay):
        self.path = path
        self.replay = replay
        self.parts: list[str] = []
        self.first_ms: int | None = None
        self.index = 0

    def feed(self, text: str, ts_ms: int | None) -> None:
        while text:
            if not self.parts:
                self.first_ms = ts_ms
            head, newline, text = text.partition("\n")
            self.parts.append(head)
            if newline:
                self._emit()

    def _emit(self) -> None:
        line = "".join(self.parts)
        self.parts = []
        self.replay.hits["console_lines"] = self.replay.hits.get("console_lines", 0) + 1
        self.replay._add(self.path, "string_series", self.index, self.first_ms, line)
        self.index += 1

    def finish(self) -> None:
        if self.parts:
            self._emit()


def _item_value(item) -> Any:
    if item.value_json:
        try:
            return mp.load_json(item.value_json)
        except ValueError:
            return item.value_json
    which = item.WhichOneof("value")
    if which is None or which == "none":
        return None
    if which == "json":
        return mp.load_json(item.json)
    return getattr(item, which)


def _rows_table(rows: list[mp.Row], project_id: str, run_id: str) -> pa.Table:
    return rows_to_table(
        ({"attribute_path": r.path, "attribute_type": r.type, VALUE_COLUMN[r.type]: r.value} for r in rows),
        {"project_id": project_id, "run_id": run_id},
    )


def _steps_array(steps: list) -> pa.Array:
    """int (or Decimal) steps -> decimal128(18,6); out-of-range steps raise (never wrap)."""
    if all(type(s) is int for s in steps):
        return pa.array(steps, pa.int64()).cast(pa.decimal128(25, 6)).cast(STEP_TYPE)
    return pa.array(steps, STEP_TYPE)
