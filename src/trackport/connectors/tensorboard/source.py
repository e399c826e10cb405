"""TensorBoard source: a LOGDIR of event files -> canonical runs (see mapping.py)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import pyarrow as pa

from trackport.core.capabilities import Capabilities
from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError
from trackport.core.model import RunRef, Selection
from trackport.core.schema import VALUE_COLUMN, SeriesColumns, rows_to_table

from . import mapping as mp
from . import reader

log = logging.getLogger(__name__)

BATCH_ROWS = 50_000
BATCH_CELLS = 4_000_000    # histogram buckets and long texts count by size


@dataclass(frozen=True)
class EventFile:
    path: Path            # absolute
    size: int             # bytes present when the run was listed: reading stops there


@dataclass
class RunLocation:
    """Where one run's data is: its event directories, files and (for runs we wrote) its mark."""

    name: str
    root: Path
    dirs: list[tuple[Path, str, list[EventFile]]] = field(default_factory=list)  # (dir, prefix, files)
    mark: dict | None = None          # trackport-run.json of a run written by the trackport sink
    origin: dict | None = None        # trackport-origin.json (written first by the sink)

    @property
    def multiplier(self) -> int:
        info = self.mark or self.origin or {}
        return int(info.get("multiplier") or 1)

    @property
    def own(self) -> bool:
        return self.mark is not None or self.origin is not None

    def version(self) -> dict[str, int]:
        """Per event file (relative path) the bytes read: what a later copy continues from."""
        return {str(f.path.relative_to(self.root)): f.size for _, _, files in self.dirs for f in files}


@dataclass(frozen=True)
class Blob:
    """A file kept inside an event file: the record, the summary value and the element."""

    file: Path
    offset: int
    value_index: int
    kind: str            # image | audio | images | audio_tensor | tensor | graph | run_metadata
    element: int = 0


def read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RunError(f"unreadable trackport mark: {exc}", file=str(path)) from None


class TensorboardSource(Source):
    capabilities = Capabilities(integer_steps=True, replayable=True)

    def __init__(self, logdir: Path, uri: str, options: dict[str, Any]):
        self.logdir = logdir
        self.uri = uri
        self.options = options
        self.project = options.get("tensorboard_project") or logdir.name or "tensorboard"
        depth = options.get("tensorboard_run_depth")
        self.depth = int(depth) if depth not in (None, "") else None
        self.subdirs_as_prefixes = bool(options.get("tensorboard_subdirs_as_prefixes"))
        self.tears: list[reader.Tear] = []
        self._run_tears: dict[tuple[str, str], list[reader.Tear]] = {}
        self._lock = threading.Lock()
        self._blobs: dict[tuple[str, str], dict[str, Blob]] = {}
        self._locations: dict[tuple[str, str], RunLocation] = {}
        self._extracted: Path | None = None     # temp dir of files extracted from event files

    def extraction_dir(self) -> Path:
        """Where embedded files are written when a sink asks for a local path (removed on close)."""
        with self._lock:
            if self._extracted is None:
                self._extracted = Path(tempfile.mkdtemp(prefix="trackport-tensorboard-"))
                weakref.finalize(self, shutil.rmtree, str(self._extracted), True)
            return self._extracted

    def close(self) -> None:
        with self._lock:
            extracted, self._extracted = self._extracted, None
        if extracted is not None:
            shutil.rmtree(extracted, ignore_errors=True)

    # -- listing ------------------------------------------------------------------

    def locations(self) -> list[RunLocation]:
        if not self.logdir.is_dir():   # a destination read back before anything was written
            return []
        event_dirs, own = [], set()
        for root, dirs, files in os.walk(self.logdir):
            dirs[:] = sorted(d for d in dirs if d != mp.FILES_DIR)
            if any("tfevents" in f for f in files):
                rel = Path(root).relative_to(self.logdir).as_posix()
                event_dirs.append(rel)
                if mp.MARKER in files or mp.ORIGIN_FILE in files:
                    own.add(rel)
        out = []
        for group in mp.group_runs(event_dirs, self.depth, self.subdirs_as_prefixes, frozenset(own)):
            root = self.logdir if group.name == "." else self.logdir / group.name
            loc = RunLocation(group.name, root)
            for rel, prefix in group.dirs:
                directory = self.logdir if rel == "." else self.logdir / rel
                files = [EventFile(p, p.stat().st_size) for p in reader.event_file_names(directory)]
                loc.dirs.append((directory, prefix, files))
            if group.name in own:
                loc.mark = read_json(root / mp.MARKER)
                loc.origin = read_json(root / mp.ORIGIN_FILE)
                if loc.mark is None or not loc.mark.get("complete"):
                    # Half of a load into this logdir: its params and files are only in the mark
                    # written at the end.  The load that started it finishes it on its rerun.
                    log.warning("skipping %s: an unfinished trackport load (no %s); rerun the copy "
                                "that wrote it to finish it", root, mp.MARKER)
                    continue
            out.append(loc)
        return out

    def identity(self, loc: RunLocation) -> tuple[str, str]:
        info = (loc.mark or loc.origin or {}).get("origin")
        if info:
            return info["project_id"], info["run_id"]
        return self.project, (self.logdir.name if loc.name == "." else loc.name)

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        for loc in self.locations():
            project_id, run_id = self.identity(loc)
            if select.wants_run(project_id, run_id):
                with self._lock:
                    self._locations[(project_id, run_id)] = loc
                yield RunRef(project_id, run_id, loc)

    def _location(self, ref: RunRef) -> RunLocation:
        if isinstance(ref.locator, RunLocation):
            return ref.locator
        key = (ref.project_id, ref.run_id)
        with self._lock:
            got = self._locations.get(key)
        if got is None:
            # Asked by identity only (verify reading a destination): list the logdir once.
            found = {self.identity(loc): loc for loc in self.locations()}
            with self._lock:
                for ident, loc in found.items():
                    self._locations.setdefault(ident, loc)
                got = self._locations.get(key)
        if got is None:
            raise RunError("run not found in the TensorBoard logdir", project_id=ref.project_id,
                           run_id=ref.run_id)
        return got

    def describe_run(self, run: RunRef) -> str:
        return f"{run.project_id}/{run.run_id}"

    def run_version(self, ref: RunRef) -> str:
        """A digest of the bytes per event file of the run now: it changes while a training writes."""
        sizes = json.dumps(sorted(self._location(ref).version().items()))
        return hashlib.blake2b(sizes.encode(), digest_size=12).hexdigest()

    def account(self, run: RunRef, report) -> None:
        with self._lock:
            tears = list(self._run_tears.get((run.project_id, run.run_id), ()))
        for tear in tears:
            report.warn(f"event file {tear}")

    # -- reading ------------------------------------------------------------------

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        loc = self._location(run)
        for table in _RunReader(self, run, loc, emit=True).tables():
            table = select.filter(table)
            if table.num_rows:
                yield table

    def files(self, run: RunRef) -> FileAccess:
        return TensorboardFiles(self, run)

    def blobs(self, run: RunRef) -> dict[str, Blob]:
        key = (run.project_id, run.run_id)
        with self._lock:
            got = self._blobs.get(key)
        if got is None:
            for _ in _RunReader(self, run, self._location(run), emit=False).tables():
                pass
            with self._lock:
                got = self._blobs.get(key, {})
        return got

    def _remember_blobs(self, run: RunRef, blobs: dict[str, Blob]) -> None:
        with self._lock:
            self._blobs[(run.project_id, run.run_id)] = blobs

    def _tear(self, run: RunRef, tear: reader.Tear) -> None:
        with self._lock:
            if tear not in self.tears:
                self.tears.append(tear)
            seen = self._run_tears.setdefault((run.project_id, run.run_id), [])
            if tear not in seen:
                seen.append(tear)
        log.warning("run %s/%s: event file %s", run.project_id, run.run_id, tear)


class TensorboardFiles(FileAccess):
    """Files of a TensorBoard run: images/audio/protos inside event files, or files beside them."""

    def __init__(self, source: TensorboardSource, run: RunRef):
        self.source = source
        self.run = run
        self.loc = source._location(run)

    def _beside(self, path: str) -> Path | None:
        if not self.loc.own:
            return None
        local = _inside(self.loc.root / mp.FILES_DIR, path)
        return local if local is not None and local.exists() else None

    def local_path(self, path: str) -> Path | None:
        """Files beside the events as they are; files inside event files extracted to a temp dir."""
        local = self._beside(path)
        if local is not None:
            return local
        blob = self.source.blobs(self.run).get(path)
        if blob is None:
            return None
        root = self.source.extraction_dir() / mp.safe(self.run.project_id) / mp.safe(self.run.run_id)
        target = _inside(root, path)
        if target is None:
            return None
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + f".{threading.get_ident()}.tmp")
            tmp.write_bytes(extract_blob(blob))
            os.replace(tmp, target)
        return target

    def open(self, path: str) -> BinaryIO:
        local = self._beside(path)
        if local is not None:
            return open(local, "rb")
        blob = self.source.blobs(self.run).get(path)
        if blob is None:
            raise FileNotFoundError(path)
        return io.BytesIO(extract_blob(blob))


def _inside(root: Path, path: str) -> Path | None:
    candidate = (root / path).resolve()
    try:
        candidate.relative_to(root.resolve())
    except ValueError:
        return None
    return candidate


def extract_blob(blob: Blob) -> bytes:
    event = reader.parse_event(reader.read_record_at(blob.file, blob.offset))
    if blob.kind == "graph":
        return event.graph_def
    if blob.kind == "run_metadata":
        return event.tagged_run_metadata.run_metadata
    value = event.summary.value[blob.value_index]
    if blob.kind == "image":
        return value.image.encoded_image_string
    if blob.kind == "audio":
        return value.audio.encoded_audio_string
    if blob.kind == "tensor":
        return value.tensor.SerializeToString()
    array = reader.tensor_to_array(value.tensor)
    flat = np.asarray(array, dtype=object).reshape(-1)
    if blob.kind == "images":      # [width, height, image, image, ...]
        return flat[2 + blob.element]
    if blob.kind == "audio_tensor":  # [k, 2]: (encoded, label)
        return np.asarray(array, dtype=object).reshape(-1, 2)[blob.element, 0]
    raise ValueError(f"unknown blob kind {blob.kind}")


class _RunReader:
    """One pass over a run's event files: rows (when `emit`) and the index of embedded files."""

    def __init__(self, source: TensorboardSource, run: RunRef, loc: RunLocation, emit: bool):
        self.source = source
        self.run = run
        self.loc = loc
        self.emit = emit
        self.rows = SeriesColumns()
        self.blobs: dict[str, Blob] = {}
        self.params: dict[str, tuple[str, Any]] = {}
        self.first_wall: float | None = None
        mark = loc.mark or {}
        self.image_paths: dict[str, dict[str, str]] = mark.get("images", {})
        self.hist_types: dict[str, str] = mark.get("histogram_types", {})
        self.multiplier = loc.multiplier
        self.P = reader.protos()

    def _err(self, message: str, file: str | None = None) -> RunError:
        return RunError(message, project_id=self.run.project_id, run_id=self.run.run_id, file=file)

    def tables(self) -> Iterator[pa.Table]:
        for directory, prefix, files in self.loc.dirs:
            for index, event_file in enumerate(files):
                yield from self._read_file(event_file, prefix)
        if self.rows:
            yield self._flush()
        self.source._remember_blobs(self.run, self.blobs)
        if self.emit:
            table = self._single_values()
            if table.num_rows:
                yield table

    def _flush(self) -> pa.Table:
        try:
            table = self.rows.table(self.run.project_id, self.run.run_id,
                                    mp.step_array(np.asarray(self.rows.step, dtype=np.int64), None, self.multiplier))
        except (OverflowError, ValueError) as exc:
            raise self._err(f"{exc}; fix: steps beyond 10**12 cannot be held by the canonical format") from None
        self.rows.clear()
        return table

    def _read_file(self, event_file: EventFile, prefix: str) -> Iterator[pa.Table]:
        records = reader.RecordReader(event_file.path, 0, stop=event_file.size)
        plugins: dict[str, str] = {}
        try:
            for offset, data in records:
                try:
                    event = self.P.Event.FromString(data)
                except Exception as exc:  # protobuf DecodeError: a record that is not an Event
                    raise self._err(f"record at byte {offset} is not a TensorBoard event ({exc})",
                                    file=str(event_file.path)) from None
                self._event(event, event_file.path, offset, prefix, plugins)
                if self.emit and (len(self.rows) >= BATCH_ROWS or self.rows.weight >= BATCH_CELLS):
                    yield self._flush()
        except OSError as exc:
            raise self._err(f"cannot read event file: {exc}", file=str(event_file.path)) from None
        if records.tear is not None:
            self.source._tear(self.run, records.tear)

    def _event(self, event, file: Path, offset: int, prefix: str, plugins: dict[str, str]) -> None:
        if event.wall_time and (self.first_wall is None or event.wall_time < self.first_wall):
            self.first_wall = event.wall_time
        what = event.WhichOneof("what")
        step = event.step
        ts = mp.wall_ms(event.wall_time)
        if what == "summary":
            for index, value in enumerate(event.summary.value):
                self._value(value, index, step, ts, file, offset, prefix, plugins)
        elif what == "graph_def":
            self._blob(f"{prefix}tensorboard/graph", step, ts, Blob(file, offset, 0, "graph"), "pb", single=True)
        elif what == "tagged_run_metadata":
            tag = event.tagged_run_metadata.tag
            self._blob(f"{prefix}tensorboard/run_metadata/{tag}", step, ts,
                       Blob(file, offset, 0, "run_metadata"), "pb")
        elif what == "session_log" and self.emit:
            log_msg = event.session_log
            status = self.P.Event.DESCRIPTOR.fields_by_name["session_log"].message_type \
                .fields_by_name["status"].enum_type.values_by_number[log_msg.status].name
            text = status + (f": {log_msg.msg}" if log_msg.msg else "")
            self.rows.add(f"{prefix}tensorboard/session_log", "string_series", step, ts, text)
        elif what == "log_message" and self.emit:
            self.rows.add(f"{prefix}tensorboard/log_message", "string_series", step, ts,
                          event.log_message.message)

    def _value(self, value, index: int, step: int, ts: int | None, file: Path, offset: int,
               prefix: str, plugins: dict[str, str]) -> None:
        plugin_data = value.metadata.plugin_data
        if plugin_data.plugin_name and value.tag not in plugins:
            plugins[value.tag] = plugin_data.plugin_name
        plugin = plugins.get(value.tag, "")
        kind = value.WhichOneof("value")
        path = prefix + value.tag
        if plugin == mp.HPARAMS:
            if self.emit and not self.loc.own and plugin_data.content:
                self._hparams(plugin_data.content, prefix)
            return
        if kind == "simple_value":
            if self.emit:
                self.rows.add(path, "float_series", step, ts, float(value.simple_value))
        elif kind == "histo":
            if self.emit:
                h = mp.histogram_from_proto(value.histo.min, value.histo.bucket_limit, value.histo.bucket)
                h["type"] = self.hist_types.get(path, h["type"])
                self.rows.add(path, "histogram_series", step, ts, h)
        elif kind == "image":
            ext = (mp.image_kind(value.image.encoded_image_string) or ("png",))[0] if self.emit else "png"
            self._blob(path, step, ts, Blob(file, offset, index, "image"), ext)
        elif kind == "audio":
            self._blob(path, step, ts, Blob(file, offset, index, "audio"),
                       mp.audio_extension(value.audio.content_type))
        elif kind == "tensor":
            self._tensor(value, index, plugin, path, step, ts, file, offset)

    def _tensor(self, value, index: int, plugin: str, path: str, step: int, ts: int | None,
                file: Path, offset: int) -> None:
        if plugin in (mp.SCALARS, mp.HISTOGRAMS, mp.TEXT):
            if not self.emit:
                return
            if plugin == mp.SCALARS:
                self.rows.add(path, "float_series", step, ts, reader.tensor_scalar(value.tensor))
                return
            if plugin == mp.TEXT and len(value.tensor.string_val) == 1:
                self.rows.add(path, "string_series", step, ts,
                              value.tensor.string_val[0].decode("utf-8", "replace"))
                return
            array = reader.tensor_to_array(value.tensor)
            if plugin == mp.HISTOGRAMS:
                h = mp.histogram_from_tensor(array)
                h["type"] = self.hist_types.get(path, h["type"])
                self.rows.add(path, "histogram_series", step, ts, h)
            else:
                self.rows.add(path, "string_series", step, ts, mp.text_value(array))
        elif plugin == mp.IMAGES:
            dims = value.tensor.tensor_shape.dim
            count = max(0, (dims[0].size if dims else 0) - 2)
            for k in range(count):
                self._blob(path if count == 1 else f"{path}/{k}", step, ts,
                           Blob(file, offset, index, "images", k), "png")
        elif plugin == mp.AUDIO:
            dims = value.tensor.tensor_shape.dim
            count = dims[0].size if dims else 0
            for k in range(count):
                self._blob(path if count == 1 else f"{path}/{k}", step, ts,
                           Blob(file, offset, index, "audio_tensor", k), "wav")
        else:
            # A plugin this connector has no mapping for (pr_curves, mesh, custom ...): its
            # tensor is kept as a file, so nothing is lost.
            self._blob(path, step, ts, Blob(file, offset, index, "tensor"), f"{plugin or 'tensor'}.pb")

    def _blob(self, attr: str, step: int, ts: int | None, blob: Blob, ext: str, single: bool = False) -> None:
        step_key = mp.step_text(Decimal(step) / self.multiplier)
        own = self.image_paths.get(attr, {}).get(step_key)
        ordinal = 0
        path = own or mp.blob_path(attr, step, ordinal, ext)
        while path in self.blobs:
            ordinal += 1
            path = mp.blob_path(attr, step, ordinal, ext)
        self.blobs[path] = blob
        if self.emit:
            if single:
                self.params[attr] = ("file", {"path": path})
            else:
                self.rows.add(attr, "file_series", step, ts, path)

    def _hparams(self, content: bytes, prefix: str) -> None:
        data = self.P.HParamsPluginData.FromString(content)
        if not data.HasField("session_start_info"):
            return
        for name, v in sorted(data.session_start_info.hparams.items()):
            kind = v.WhichOneof("kind")
            path = f"{prefix}hparams/{name}"
            if kind == "number_value":
                number = v.number_value
                if number.is_integer() and abs(number) < 2**53:
                    self.params[path] = ("int", int(number))
                else:
                    self.params[path] = ("float", number)
            elif kind == "string_value":
                self.params[path] = ("string", v.string_value)
            elif kind == "bool_value":
                self.params[path] = ("bool", v.bool_value)

    def _single_values(self) -> pa.Table:
        rows = []
        if self.loc.mark is not None:
            for item in self.loc.mark.get("params", []):
                typ = item["type"]
                rows.append({"attribute_path": item["path"], "attribute_type": typ,
                             VALUE_COLUMN[typ]: mp.param_from_json(typ, item["value"])})
            for item in self.loc.mark.get("files", []):
                step = item.get("step")
                rows.append({"attribute_path": item["path"], "attribute_type": item["type"],
                             "step": None if step is None else Decimal(step),
                             "timestamp": item.get("timestamp"),
                             "file_value": {"path": item["file"]}})
        else:
            run_id = self.run.run_id
            rows.append({"attribute_path": "sys/name", "attribute_type": "string",
                         "string_value": self.loc.name if self.loc.name != "." else run_id})
            if self.first_wall is not None:
                created = datetime.fromtimestamp(round(self.first_wall * 1000) / 1000, tz=timezone.utc)
                rows.append({"attribute_path": "sys/creation_time", "attribute_type": "datetime",
                             "datetime_value": created})
        for path, (typ, value) in sorted(self.params.items()):
            rows.append({"attribute_path": path, "attribute_type": typ, VALUE_COLUMN[typ]: value})
        return rows_to_table(rows, {"project_id": self.run.project_id, "run_id": self.run.run_id})
