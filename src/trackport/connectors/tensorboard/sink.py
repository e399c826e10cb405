"""TensorBoard sink: canonical runs -> one directory of event files per run.

Layout: `LOGDIR/<safe(project_id)>/<safe(run_id)>/` (deterministic from the
origin) holding
- `trackport-origin.json`: written first; whose run this directory is;
- `events.out.tfevents.<created>.trackport`: scalars (float32 `scalars`
  tensors as tf.summary.scalar writes them, plus an exact float64 twin under
  the `trackport` plugin where float32 rounds), text, histograms, images and
  the HParams session;
- `trackport-files/<path>`: files TensorBoard has no summary for;
- `trackport-run.json`: the completion mark, written LAST (atomic rename),
  with the exact params, file list and step multiplier the source reads back.
A run without the mark is partial: the next load rewrites its event file
from scratch (TensorBoard would show every point twice if we appended), so a
repair never duplicates a point.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.claims import LOCK_DIR_NAME
from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped
from trackport.core.files import copy_into
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import DEST_STEP, PARAM_TYPES, VALUE_COLUMN, ms_from_datetime
from trackport.core.steps import step_text

from . import mapping as mp
from . import reader
from .source import TensorboardSource, read_json

log = logging.getLogger(__name__)

_SINGLE_FILE_TYPES = ("file", "file_set", "artifact")


def _origin_dict(origin: Origin) -> dict:
    return {"uri": origin.uri, "project_id": origin.project_id, "run_id": origin.run_id}


class TensorboardSink(Sink):
    capabilities = mp.CAPABILITIES

    def __init__(self, logdir: Path, uri: str, options: dict[str, Any], read_only: bool = False):
        self.read_only = read_only
        self.logdir = logdir
        self.uri = uri
        self.options = options

    def run_dir(self, origin: Origin) -> Path:
        project, run = mp.run_dir_parts(origin.project_id, origin.run_id)
        return self.logdir / project / run

    def claim_dir(self) -> Path:
        """Inside the logdir (TensorBoard ignores a folder without event files; core/claims.py)."""
        return self.logdir / LOCK_DIR_NAME

    def find_run(self, origin: Origin) -> DestRun | None:
        """Read-only: the completion mark says complete, the origin file says partial."""
        directory = self.run_dir(origin)
        wanted = _origin_dict(origin)
        for name, complete in ((mp.MARKER, True), (mp.ORIGIN_FILE, False)):
            info = read_json(directory / name)
            if info is not None and info.get("origin") == wanted:
                if complete and not info.get("complete"):
                    continue
                rel = directory.relative_to(self.logdir).as_posix()
                return DestRun(rel, complete, directory.as_uri(), directory,
                               version=info.get("source_version") if complete else None)
        return None

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this TensorBoard sink was opened read-only",
                           project_id=plan.origin.project_id, run_id=plan.origin.run_id)
        return TensorboardRunWriter(self, plan, self.run_dir(plan.origin))

    def as_source(self) -> TensorboardSource:
        return TensorboardSource(self.logdir, self.uri, {})

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, None)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        scan, report = plan.scan, plan.report
        if scan.values:
            report.transformed("params_in_mark", len(scan.values), next(iter(sorted(scan.values))))
        singles = [f for f in scan.files if f[1] != "file_series"]
        if singles:
            report.transformed("file_beside_events", len(singles), singles[0][0])
        project, run = mp.run_dir_parts(plan.origin.project_id, plan.origin.run_id)
        lines = [f"run directory {project}/{run}"]
        if any(f[1] == "file_series" for f in scan.files):
            lines.append(f"file series: PNG/JPEG/GIF points become image summaries, others go to {mp.FILES_DIR}/")
        return lines


class TensorboardRunWriter(RunScoped, RunWriter):
    def __init__(self, sink: TensorboardSink, plan: RunPlan, directory: Path):
        self.sink = sink
        self.plan = plan
        self.err_run = plan.origin
        self.report = plan.report
        self.directory = directory
        self.origin = _origin_dict(plan.origin)
        self.multiplier = plan.steps.multiplier if plan.steps is not None else 1
        self.P = reader.protos()
        self.params: dict[str, tuple[str, Any]] = {}
        self.files: list[dict] = []
        self.images: dict[str, dict[str, str]] = {}
        self.hist_types: dict[str, str] = {}
        self._tags: set[str] = set()
        self._prepare_directory()
        created = ms_from_datetime(plan.scan.value("sys/creation_time"))
        if created is None and plan.scan.first_timestamp is not None:
            created = ms_from_datetime(plan.scan.first_timestamp)
        self.created_s = mp.wall_seconds(created)
        name = f"events.out.tfevents.{int(self.created_s):010d}{mp.EVENT_FILE_SUFFIX}"
        self.events = reader.EventWriter(directory / name, self.created_s)

    def _prepare_directory(self) -> None:
        """Claim the directory (origin file first); clear what an earlier, partial load left."""
        d = self.directory
        for name in (mp.MARKER, mp.ORIGIN_FILE):
            info = read_json(d / name)
            if info is not None and info.get("origin") != self.origin:
                raise self._err(f"{d} holds the run loaded from {info.get('origin')}; refusing to mix "
                                f"runs. Fix: use another LOGDIR or remove that directory", file=str(d))
        d.mkdir(parents=True, exist_ok=True)
        _write_json(d / mp.ORIGIN_FILE, {"trackport": mp.MARKER_VERSION, "origin": self.origin,
                                         "multiplier": self.multiplier})
        (d / mp.MARKER).unlink(missing_ok=True)
        for old in reader.event_file_names(d):
            if old.name.endswith(mp.EVENT_FILE_SUFFIX):
                old.unlink()
        shutil.rmtree(d / mp.FILES_DIR, ignore_errors=True)

    # -- writing ----------------------------------------------------------------

    def write(self, batch: pa.Table) -> None:
        types = batch.column("attribute_type")
        for typ in pc.unique(types).to_pylist():
            part = batch.filter(pc.equal(types, typ))
            if typ in PARAM_TYPES:
                self._params(part, typ)
            elif typ == "float_series":
                self._scalars(part)
            elif typ == "string_series":
                self._texts(part)
            elif typ == "histogram_series":
                self._histograms(part)
            elif typ == "file_series":
                self._file_series(part)
            elif typ in _SINGLE_FILE_TYPES:
                self._single_files(part, typ)
            else:
                self.report.dropped("unknown_type", part.num_rows, typ)

    def _params(self, table: pa.Table, typ: str) -> None:
        paths = table.column("attribute_path").to_pylist()
        values = table.column(VALUE_COLUMN[typ]).to_pylist()
        steps = table.column("step")
        if steps.null_count != len(steps):
            self.report.dropped("param_with_step", len(steps) - steps.null_count, paths[0])
        for path, value in zip(paths, values):
            if path in self.params and self.params[path] != (typ, value):
                raise self._err(f"attribute {path!r} has two different values in one run")
            self.params[path] = (typ, value)

    def _points(self, table: pa.Table, kind: str):
        """(path, dest step, wall seconds, row index) of rows with a step; rows without are dropped."""
        paths = table.column("attribute_path").to_pylist()
        steps = table.column(DEST_STEP).to_pylist() if DEST_STEP in table.column_names else \
            [None if s is None else int(s) for s in table.column("step").to_pylist()]
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        missing_ts = 0
        for i, (path, step, ms) in enumerate(zip(paths, steps, ts)):
            if step is None:
                self.report.dropped("point_without_step", 1, path)
                continue
            if ms is None:
                missing_ts += 1
            yield path, step, mp.wall_seconds(ms), i
        if missing_ts:
            self.report.transformed("null_wall_time_zero", missing_ts, kind)

    def _metadata(self, tag: str, plugin: str, data_class):
        if tag in self._tags:
            return None
        self._tags.add(tag)
        return self.P.SummaryMetadata(plugin_data=self.P.SummaryMetadata.PluginData(plugin_name=plugin),
                                      data_class=data_class)

    def _emit(self, tag: str, step: int, wall: float, metadata=None, **value) -> None:
        v = self.P.Summary.Value(tag=tag, **value)
        if metadata is not None:
            v.metadata.CopyFrom(metadata)
        self.events.write(self.P.Event(wall_time=wall, step=step, summary=self.P.Summary(value=[v])))

    def _scalars(self, table: pa.Table) -> None:
        """Each point as `tf.summary.scalar` writes it: a DT_FLOAT scalar tensor of the `scalars`
        plugin, the one encoding both TensorBoard loaders show (the default Rust data server ignores
        DT_DOUBLE scalars).  A value float32 cannot hold exactly gets an exact DT_DOUBLE twin in the
        same event, under the `trackport` plugin that no dashboard draws (mapping.exact_tag)."""
        values = table.column("float_value").to_pylist()
        exact = np.asarray(pc.fill_null(table.column("float_value"), 0.0).to_numpy(zero_copy_only=False),
                           dtype=np.float64)
        with np.errstate(over="ignore"):
            shown = exact.astype(np.float32)
        rounded = ~((shown.astype(np.float64) == exact) | (np.isnan(shown) & np.isnan(exact)))
        P = self.P
        shape = P.TensorShapeProto()
        twins, example = 0, None
        for path, step, wall, i in self._points(table, "float_series"):
            value = values[i]
            if value is None:
                self.report.dropped("null_value", 1, path)
                continue
            v = P.Summary.Value(tag=path, tensor=P.TensorProto(
                dtype=P.DataType.DT_FLOAT, tensor_shape=shape, float_val=[float(shown[i])]))
            metadata = self._metadata(path, mp.SCALARS, P.DATA_CLASS_SCALAR)
            if metadata is not None:
                v.metadata.CopyFrom(metadata)
            out = [v]
            if rounded[i]:
                twin = P.Summary.Value(tag=mp.exact_tag(path), tensor=P.TensorProto(
                    dtype=P.DataType.DT_DOUBLE, tensor_shape=shape, double_val=[value]))
                twin_metadata = self._metadata(twin.tag, mp.TRACKPORT_PLUGIN, P.DATA_CLASS_UNKNOWN)
                if twin_metadata is not None:
                    twin.metadata.CopyFrom(twin_metadata)
                out.append(twin)
                twins += 1
                example = example or path
            self.events.write(P.Event(wall_time=wall, step=step, summary=P.Summary(value=out)))
        if twins:
            self.report.transformed("scalar_float32_display", twins, example)

    def _texts(self, table: pa.Table) -> None:
        values = table.column("string_value").to_pylist()
        P = self.P
        shape = P.TensorShapeProto()
        for path, step, wall, i in self._points(table, "string_series"):
            value = values[i]
            if value is None:
                self.report.dropped("null_value", 1, path)
                continue
            tensor = P.TensorProto(dtype=P.DataType.DT_STRING, tensor_shape=shape,
                                   string_val=[value.encode("utf-8")])
            self._emit(path, step, wall, self._metadata(path, mp.TEXT, P.DATA_CLASS_TENSOR), tensor=tensor)

    def _histograms(self, table: pa.Table) -> None:
        values = table.column("histogram_value").to_pylist()
        for path, step, wall, i in self._points(table, "histogram_series"):
            h = values[i]
            if h is None:
                self.report.dropped("null_value", 1, path)
                continue
            typ = h.get("type")
            base, _ = mp.split_histogram_type(typ)
            if base != mp.HISTOGRAM_TYPE:
                self.hist_types[path] = base
            fields = mp.histogram_to_proto_fields(h.get("edges") or [], h.get("values") or [], typ)
            self._emit(path, step, wall, histo=self.P.HistogramProto(**fields))

    def _file_series(self, table: pa.Table) -> None:
        cells = table.column("file_value").to_pylist()
        steps = table.column("step").to_pylist()
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        for path, step, wall, i in self._points(table, "file_series"):
            source = (cells[i] or {}).get("path")
            if not source:
                self.report.dropped("file_missing_path", 1, path)
                continue
            head = self._read(source, 16)
            kind = mp.image_kind(head)
            step_key = step_text(steps[i])
            if kind is not None:
                # An image summary holds the encoded bytes in its event record (one image in memory).
                data = self._read(source)
                height, width = mp.png_size(data)
                image = self.P.Summary.Image(height=height, width=width, encoded_image_string=data)
                self._emit(path, step, wall, image=image)
                self.images.setdefault(path, {})[step_key] = source
                self.report.files += 1
                self.report.bytes += len(data)
            else:
                self._store(source)
                self.files.append({"path": path, "type": "file_series", "step": step_key,
                                   "timestamp": ts[i], "file": source})
                self.report.transformed("file_beside_events", 1, path)

    def _single_files(self, table: pa.Table, typ: str) -> None:
        paths = table.column("attribute_path").to_pylist()
        cells = table.column("file_value").to_pylist()
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        for path, cell, ms in zip(paths, cells, ts):
            source = (cell or {}).get("path")
            if not source:
                self.report.dropped("file_missing_path", 1, path)
                continue
            self._store(source)
            self.files.append({"path": path, "type": typ, "step": None, "timestamp": ms, "file": source})
            self.report.transformed("file_beside_events", 1, path)

    def _target(self, source: str) -> Path:
        root = (self.directory / mp.FILES_DIR).resolve()
        target = (root / source).resolve()
        try:
            target.relative_to(root)
        except ValueError:
            raise self._err("file path leaves the run directory", file=source) from None
        return target

    def _read(self, source: str, size: int = -1) -> bytes:
        try:
            with self.plan.files.open(source) as fh:
                return fh.read(size)
        except (OSError, ValueError) as exc:
            raise self._err(f"cannot read file: {exc}", file=source) from None

    def _store(self, source: str) -> None:
        """Copy a file (or a file set's directory) beside the events, streaming."""
        target = self._target(source)
        n, size = copy_into(self.plan.files, source, target, self._err)
        self.report.files += n
        self.report.bytes += size

    # -- commit -----------------------------------------------------------------

    def _hparams_event(self) -> None:
        if not self.params:
            return
        P = self.P
        data = P.HParamsPluginData(version=0)
        for path, (typ, value) in sorted(self.params.items()):
            shown = mp.hparam_value(typ, value)
            if shown is None:
                continue
            kind, v = shown
            slot = data.session_start_info.hparams[path]
            if kind == "number":
                slot.number_value = v
            elif kind == "bool":
                slot.bool_value = v
            else:
                slot.string_value = v
        data.session_start_info.start_time_secs = self.created_s
        metadata = P.SummaryMetadata(plugin_data=P.SummaryMetadata.PluginData(
            plugin_name=mp.HPARAMS, content=data.SerializeToString()))
        # Like tensorboardX's add_hparams: a value with metadata only (tensorboardX/summary.py hparams()).
        self._emit(mp.HPARAMS_START_TAG, 0, self.created_s, metadata)
        self.report.transformed("params_in_mark", len(self.params), next(iter(sorted(self.params))))

    def commit(self) -> DestRun:
        try:
            self._hparams_event()
            self.events.close()
            mark = {
                "trackport": mp.MARKER_VERSION,
                "complete": True,
                "origin": self.origin,
                "multiplier": self.multiplier,
                "params": [{"path": p, "type": t, "value": mp.param_to_json(t, v)}
                           for p, (t, v) in sorted(self.params.items())],
                "files": self.files,
                "images": self.images,
                "histogram_types": self.hist_types,
                "event_files": {self.events.path.name: self.events.path.stat().st_size},
                "source_version": self.plan.source_version,
            }
            _write_json(self.directory / mp.MARKER, mark)
        except BaseException:
            self.abort()
            raise
        rel = self.directory.relative_to(self.sink.logdir).as_posix()
        return DestRun(rel, True, self.directory.as_uri(), self.directory, version=self.plan.source_version)

    def abort(self) -> None:
        try:
            self.events.close()
        except OSError:
            log.debug("closing the event file failed", exc_info=True)


def _write_json(path: Path, payload: dict) -> None:
    """Atomically: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, ensure_ascii=False, allow_nan=False, default=_json_default)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_default(value: Any):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the trackport mark")
