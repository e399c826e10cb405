"""TensorBoard source: a LOGDIR of event files -> canonical runs (see mapping.py)."""

from __future__ import annotations

import hashlib
import io
from array import array
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
from trackport.core.errors import RunError, RunScoped, UsageError
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.schema import VALUE_COLUMN, SeriesColumns, rows_to_table
from trackport.core.steps import step_text

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


@dataclass
class _Restarts:
    """What a read of a run found about restarts, for its report."""

    restarts: list[tuple[Path, mp.Restart]] = field(default_factory=list)   # SessionLog START rules
    regressions: dict[str, tuple[int, int]] = field(default_factory=dict)   # tag -> (count, first step)
    hidden: int = 0                    # points left out by --tensorboard-orphans


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
    capabilities = Capabilities(integer_steps=True, replayable=True, transformations={
        "orphans_hidden": "with --tensorboard-orphans default-loader or python-loader, the points that "
                          "TensorBoard loader hides after a training restart are left out (docs/tensorboard.md)",
    })

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
        self.orphans = options.get("tensorboard_orphans") or mp.ORPHANS_KEEP
        if self.orphans not in mp.ORPHAN_VIEWS:
            raise UsageError(f"--tensorboard-orphans {self.orphans!r}: use one of {', '.join(mp.ORPHAN_VIEWS)}")
        self._run_restarts: dict[tuple[str, str], _Restarts] = {}    # per run, its last full read
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

    def origin(self, ref: RunRef) -> Origin:
        """A logdir has no id of its own; its runs' event files do.  The origin of a run is the
        name of its first event file (`events.out.tfevents.<time>.<host>...`, named once by the
        writer that started the run), with its project and run id (docs/tensorboard.md,
        "Origin"): moving the logdir keeps it, another training never shares it."""
        loc = self._location(ref)
        names = sorted(f.path.name for _, _, files in loc.dirs for f in files)
        return Origin(f"tensorboard:{names[0]}" if names else self.uri, ref.project_id, ref.run_id)

    def legacy_origins(self, ref: RunRef) -> list[Origin]:
        return [Origin(self.uri, ref.project_id, ref.run_id)]   # the logdir's path: earlier releases

    def run_version(self, ref: RunRef) -> str:
        """A digest of the bytes per event file of the run now: it changes while a training writes."""
        sizes = json.dumps(sorted(self._location(ref).version().items()))
        return hashlib.blake2b(sizes.encode(), digest_size=12).hexdigest()

    def account(self, run: RunRef, report) -> None:
        with self._lock:
            tears = list(self._run_tears.get((run.project_id, run.run_id), ()))
        for tear in tears:
            report.warn(f"event file {tear}")
        with self._lock:
            found = self._run_restarts.get((run.project_id, run.run_id))
        if found is None:
            return
        keep = self.orphans == mp.ORPHANS_KEEP
        if found.restarts:
            report.details["tensorboard_restarts"] = len(found.restarts)
            for file, restart in found.restarts:
                which = "" if restart.tags is None else f" of {', '.join(sorted(restart.tags))}"
                report.warn(f"event file {file}: the training restarted at step {restart.step}; "
                            f"`tensorboard --load_fast=false` hides the points{which} written before "
                            f"it at or after that step" + (" (all were moved)" if keep else ""))
        if found.regressions:
            count = sum(n for n, _ in found.regressions.values())
            report.details["tensorboard_step_regressions"] = count
            tag, (_, step) = next(iter(sorted(found.regressions.items())))
            report.warn(f"{count} point(s) of {len(found.regressions)} series do not come after the "
                        f"series' previous step (a restart; first: {tag!r} at step {step}); TensorBoard's "
                        f"default loader hides the earlier points at or after such a step"
                        + (" (all were moved; --tensorboard-orphans default-loader leaves them out)"
                           if keep else ""))
        if found.hidden:
            report.transformed("orphans_hidden", found.hidden, self.orphans)

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
            new = tear not in self.tears
            if new:
                self.tears.append(tear)
            seen = self._run_tears.setdefault((run.project_id, run.run_id), [])
            if tear not in seen:
                seen.append(tear)
        if new:     # a run is read more than once (scan, write, files): say it once
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
    if blob.kind == "meta_graph":
        return event.meta_graph_def
    if blob.kind == "run_metadata":
        return event.tagged_run_metadata.run_metadata
    value = event.summary.value[blob.value_index]
    if blob.kind == "plugin_content":
        return value.metadata.plugin_data.content
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


class _RunReader(RunScoped):
    """One pass over a run's event files: rows (when `emit`) and the index of embedded files."""

    def __init__(self, source: TensorboardSource, run: RunRef, loc: RunLocation, emit: bool):
        self.source = source
        self.run = run
        self.err_run = run
        self.loc = loc
        self.emit = emit
        self.rows = SeriesColumns()
        self.blobs: dict[str, Blob] = {}
        self.params: dict[str, tuple[str, Any]] = {}
        self.first_wall: float | None = None
        # graph / meta graph files: one record -> a `file`; several (a session per `train` call) -> a
        # `file_series` with each record's step and wall time
        self.graphs: dict[str, list[tuple[int, int | None, str]]] = {}
        mark = loc.mark or {}
        self.image_paths: dict[str, dict[str, str]] = mark.get("images", {})
        self.hist_types: dict[str, str] = mark.get("histogram_types", {})
        self.multiplier = loc.multiplier
        self.P = reader.protos()
        self._START = self.P.Event.DESCRIPTOR.fields_by_name["session_log"].message_type \
            .enum_types_by_name["SessionStatus"].values_by_name["START"].number
        self.found = _Restarts()
        self._tracker = mp.RestartTracker()
        self._ordinal = 0
        self._orphans: list[mp.Restart] = []       # python-loader view: the directory's restarts
        self._hidden: dict[str, bytearray] = {}    # default-loader view: per tag, per value: hidden
        self._seen: dict[str, int] = {}            # per tag: values read so far in the directory
        self._last: dict[str, int] = {}            # per tag: the last step read in the directory

    def tables(self) -> Iterator[pa.Table]:
        for directory, prefix, files in self.loc.dirs:
            # TensorBoard applies its restart rules per event directory (one accumulator each)
            self._orphans, self._hidden = self._prescan(files)
            self._tracker, self._ordinal, self._seen, self._last = mp.RestartTracker(), 0, {}, {}
            for index, event_file in enumerate(files):
                yield from self._read_file(event_file, prefix)
        if self.rows:
            yield self._flush()
        self.source._remember_blobs(self.run, self.blobs)
        if self.emit:
            with self.source._lock:
                self.source._run_restarts[(self.run.project_id, self.run.run_id)] = self.found
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

    def _restart(self, event) -> mp.Restart | None:
        what = event.WhichOneof("what")
        ordinal = self._ordinal
        self._ordinal += 1
        tracker = self._tracker
        if what == "summary" and tracker.version is not None and tracker.version >= 2:
            return None     # the common case: summaries matter only to files before version 2
        return tracker.feed(
            ordinal, event.file_version, what == "session_log" and event.session_log.status == self._START,
            event.step, [v.tag for v in event.summary.value] if what == "summary" else None)

    def _prescan(self, files: list[EventFile]) -> tuple[list[mp.Restart], dict[str, bytearray]]:
        """With --tensorboard-orphans, a first read of one event directory: a point is hidden by
        what is written after it, so the view must be known before the rows are made."""
        view = self.source.orphans
        if view == mp.ORPHANS_KEEP:
            return [], {}
        self._tracker, self._ordinal = mp.RestartTracker(), 0
        restarts, steps = [], {}
        for event_file in files:
            for _, data in reader.RecordReader(event_file.path, 0, stop=event_file.size):
                try:
                    event = self.P.Event.FromString(data)
                except Exception:  # a record that is not an Event: the main pass reports it
                    break
                restart = self._restart(event)
                if restart is not None:
                    restarts.append(restart)
                if view == mp.ORPHANS_DEFAULT_LOADER and event.WhichOneof("what") == "summary":
                    for value in event.summary.value:
                        steps.setdefault(value.tag, array("q")).append(event.step)
        return (restarts if view == mp.ORPHANS_PYTHON_LOADER else []), mp.preempted(steps)

    def _regressions(self, values, step: int) -> None:
        """Count the values whose step does not come after their series' previous one."""
        last_steps = self._last
        for value in values:
            tag = value.tag
            last = last_steps.get(tag)
            last_steps[tag] = step
            if last is not None and step <= last and not tag.endswith(mp.EXACT_SUFFIX):
                n, first = self.found.regressions.get(tag, (0, step))
                self.found.regressions[tag] = (n + 1, first)

    def _orphan(self, ordinal: int, step: int, tag: str) -> bool:
        """Whether the chosen TensorBoard view hides this value."""
        if tag.endswith(mp.EXACT_SUFFIX):
            return False       # a scalar's exact twin: it goes with its scalar
        k = self._seen.get(tag, 0)
        self._seen[tag] = k + 1
        if self._orphans and mp.orphaned(self._orphans, ordinal, step, tag):
            return True
        flags = self._hidden.get(tag)
        return flags is not None and bool(flags[k])

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
        ordinal = self._ordinal
        restart = self._restart(event)
        if restart is not None and self.emit:
            self.found.restarts.append((file, restart))
        what = event.WhichOneof("what")
        step = event.step
        ts = mp.wall_ms(event.wall_time)
        if what == "summary":
            values = event.summary.value
            if self.emit:
                self._regressions(values, step)
            if self._orphans or self._hidden:
                kept = [(i, v) for i, v in enumerate(values) if not self._orphan(ordinal, step, v.tag)]
                if self.emit:
                    self.found.hidden += len(values) - len(kept)
            else:
                kept = enumerate(values)
            exact = self._exact_twins(values, plugins) if len(values) > 1 else None
            for index, value in kept:
                self._value(value, index, step, ts, file, offset, prefix, plugins, exact)
        elif what == "graph_def":
            self._blob(f"{prefix}tensorboard/graph", step, ts, Blob(file, offset, 0, "graph"), "pb", single=True)
        elif what == "meta_graph_def":
            self._blob(f"{prefix}tensorboard/meta_graph", step, ts, Blob(file, offset, 0, "meta_graph"), "pb",
                       single=True)
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
            if log_msg.checkpoint_path:      # CHECKPOINT records name the checkpoint written
                self.rows.add(f"{prefix}tensorboard/checkpoint_path", "string_series", step, ts,
                              log_msg.checkpoint_path)
        elif what == "log_message" and self.emit:
            self.rows.add(f"{prefix}tensorboard/log_message", "string_series", step, ts,
                          event.log_message.message)

    @staticmethod
    def _exact_twins(values, plugins: dict[str, str]) -> dict[str, float] | None:
        """{scalar tag: exact float64} of the `trackport` twins the sink writes beside a float32
        scalar that rounds (mapping.exact_tag), in the same event."""
        exact = None
        for value in values:
            name = value.metadata.plugin_data.plugin_name or plugins.get(value.tag, "")
            if name == mp.TRACKPORT_PLUGIN:
                tag = mp.scalar_of_exact_tag(value.tag)
                if tag is not None and value.WhichOneof("value") == "tensor":
                    exact = exact or {}
                    exact[tag] = reader.tensor_scalar(value.tensor)
        return exact

    def _value(self, value, index: int, step: int, ts: int | None, file: Path, offset: int,
               prefix: str, plugins: dict[str, str], exact: dict[str, float] | None = None) -> None:
        plugin_data = value.metadata.plugin_data
        if plugin_data.plugin_name and value.tag not in plugins:
            plugins[value.tag] = plugin_data.plugin_name
        plugin = plugins.get(value.tag, "")
        kind = value.WhichOneof("value")
        path = prefix + value.tag
        if plugin == mp.HPARAMS:
            if not self.loc.own and plugin_data.content:
                self._hparams(plugin_data.content, prefix, Blob(file, offset, index, "plugin_content"), step, ts)
            return
        if plugin == mp.TRACKPORT_PLUGIN and mp.scalar_of_exact_tag(value.tag) is not None:
            return          # an exact twin: its value was taken with its scalar (_exact_twins)
        if kind == "simple_value":
            if self.emit:
                self.rows.add(path, "float_series", step, ts, float(value.simple_value))
        elif kind == "histo":
            if self.emit:
                histo = value.histo
                h = mp.histogram_from_proto(histo.min, histo.bucket_limit, histo.bucket, histo.max,
                                            histo.num, histo.sum, histo.sum_squares)
                if path in self.hist_types:     # a type other than COUNTING, kept in the mark
                    h["type"] = self.hist_types[path] + h["type"][len(mp.HISTOGRAM_TYPE):]
                self.rows.add(path, "histogram_series", step, ts, h)
        elif kind == "image":
            ext = (mp.image_kind(value.image.encoded_image_string) or ("png",))[0] if self.emit else "png"
            self._blob(path, step, ts, Blob(file, offset, index, "image"), ext)
        elif kind == "audio":
            self._blob(path, step, ts, Blob(file, offset, index, "audio"),
                       mp.audio_extension(value.audio.content_type))
        elif kind == "tensor":
            if exact and plugin == mp.SCALARS and value.tag in exact:
                if self.emit:
                    self.rows.add(path, "float_series", step, ts, exact[value.tag])
                return
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
        step_key = step_text(Decimal(step) / self.multiplier)
        own = self.image_paths.get(attr, {}).get(step_key)
        ordinal = 0
        path = own or mp.blob_path(self.run.run_id, attr, step, ordinal, ext)
        while path in self.blobs:
            ordinal += 1
            path = mp.blob_path(self.run.run_id, attr, step, ordinal, ext)
        self.blobs[path] = blob
        if self.emit:
            if single:
                self.graphs.setdefault(attr, []).append((step, ts, path))
            else:
                self.rows.add(attr, "file_series", step, ts, path)

    def _hparams(self, content: bytes, prefix: str, blob: Blob, step: int, ts: int | None) -> None:
        data = self.P.HParamsPluginData.FromString(content)
        if data.HasField("experiment"):
            # the hparams experiment (each hparam's domain, the metric list): kept whole, as the
            # serialized HParamsPluginData (tensorboard/plugins/hparams/plugin_data.proto)
            self._blob(f"{prefix}tensorboard/hparams_experiment", step, ts, blob, "hparams.pb", single=True)
            return
        if not self.emit:
            return
        if data.HasField("session_end_info"):
            end = data.session_end_info
            status = type(end).DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number.get(end.status)
            self.params[f"{prefix}tensorboard/session_end/status"] = (
                "string", status.name if status is not None else str(end.status))
            if end.end_time_secs:
                self.params[f"{prefix}tensorboard/session_end/end_time"] = (
                    "datetime", datetime.fromtimestamp(round(end.end_time_secs * 1000) / 1000, tz=timezone.utc))
            return
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
        for path, points in sorted(self.graphs.items()):
            if len(points) == 1:
                rows.append({"attribute_path": path, "attribute_type": "file", "file_value": {"path": points[0][2]}})
                continue
            for step, ts, file in points:
                rows.append({"attribute_path": path, "attribute_type": "file_series",
                             "step": Decimal(step) / self.multiplier, "timestamp": ts,
                             "file_value": {"path": file}})
        return rows_to_table(rows, {"project_id": self.run.project_id, "run_id": self.run.run_id})
