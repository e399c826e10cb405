"""Trackio sink: canonical runs -> a Trackio project store (TRACKIO_DIR/<project>.db).

One Trackio run per origin, with a run id derived from the origin (mapping.run_id_for)
and the source's run name.  Series points go to `metrics` rows through trackio's own
`SQLiteStorage.bulk_log` with their step (integer; decimal steps scaled by the
pipeline's exact multiplier) and timestamp; points sharing a step and a timestamp
share a row, as one `trackio.log` call would.  Params go to the run's config; the
config key `_trackport` holds the origin, the source version, the multiplier and the
exact type of everything, and its `complete` flag is the completion mark, written
last.  A partial or grown run is repaired in place: the points already there are
read first and only the missing ones are added.  See docs/trackio.md.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import DEST_STEP, PARAM_TYPES, VALUE_COLUMN

from . import client
from . import mapping as mp
from .source import RunLocator, TrackioSource
from .store import open_read_only, open_writable

_SINGLE_FILE_TYPES = ("file", "file_set", "artifact")
# sys/ attributes Trackio has a field for (run name, config _Username/_Created/_Group)
_NATIVE_SYS = ("sys/name", "sys/owner", "sys/creation_time")


def _origin_dict(origin: Origin) -> dict:
    return {"uri": origin.uri, "project_id": origin.project_id, "run_id": origin.run_id}


class TrackioSink(Sink):
    capabilities = mp.CAPABILITIES

    def __init__(self, root: Path, project: str, uri: str, read_only: bool = False):
        self.root, self.project, self.uri, self.read_only = root, project, uri, read_only
        self.db_path = root / (mp.canonical_project_name(project) + mp.DB_EXT)

    def claim_dir(self) -> Path:
        return self.root / ".trackport-claims"

    def preflight(self, read_only: bool = False) -> None:
        if not read_only:
            client.init_project(self.root, self.project)

    def _config_of(self, run_id: str) -> tuple[str, dict] | None:
        if not self.db_path.is_file():
            return None
        opener = open_read_only if self.read_only else open_writable
        with opener(self.db_path) as conn:
            try:
                row = conn.execute("SELECT run_name, config FROM configs WHERE run_id = ?", (run_id,)).fetchone()
                has_metrics = conn.execute("SELECT 1 FROM metrics WHERE run_id = ? LIMIT 1",
                                           (run_id,)).fetchone() is not None
            except Exception:           # a store without these tables yet
                return None
        if row is None:
            return ("", {}) if has_metrics else None
        try:
            config = json.loads(row[1])
        except ValueError:
            config = {}
        return row[0], config if isinstance(config, dict) else {}

    def find_run(self, origin: Origin) -> DestRun | None:
        run_id = mp.run_id_for(origin.uri, origin.project_id, origin.run_id)
        found = self._config_of(run_id)
        if found is None:
            return None
        name, config = found
        manifest = config.get(mp.MANIFEST_KEY) or {}
        locator = RunLocator(self.db_path, self.project, run_id, name, config)
        complete = bool(manifest.get("complete")) and manifest.get("origin") == _origin_dict(origin)
        return DestRun(run_id, complete, None, locator, manifest.get("version") if complete else None)

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this Trackio sink was opened read-only",
                           project_id=plan.origin.project_id, run_id=plan.origin.run_id)
        return TrackioRunWriter(self, plan, resume)

    def as_source(self) -> TrackioSource:
        return TrackioSource(self.root, self.project, self.uri)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, dest.locator)

    def expected_view(self, table: pa.Table) -> pa.Table:
        return table

    def describe_plan(self, plan: RunPlan) -> list[str]:
        scan, report = plan.scan, plan.report
        hidden = [p for p in scan.values if _manifest_only(p, scan.values)]
        if hidden:
            report.transformed("kept_in_trackport_config", len(hidden), sorted(hidden)[0])
        others = [f for f in scan.files if f[1] != "file_series" or not mp.is_image(f[3])]
        if others:
            report.transformed("file_in_media_folder", len(others), others[0][0])
        run_id = mp.run_id_for(plan.origin.uri, plan.origin.project_id, plan.origin.run_id)
        return [f"Trackio project {self.project!r} in {self.root}, run id {run_id}"]


def _manifest_only(path: str, values: dict) -> bool:
    """A single value the Trackio dashboard does not show (kept under `_trackport` only)."""
    if path in _NATIVE_SYS:
        return False
    if path == "sys/group_tags":
        got = values.get(path)
        return got is not None and len(got[1] or []) > 1
    if path.startswith("config/"):
        key = path[len("config/"):]
        return not key or key.startswith("_")
    return path.startswith("sys/") or path.startswith("_")


class TrackioRunWriter(RunWriter):
    def __init__(self, sink: TrackioSink, plan: RunPlan, resume: DestRun | None):
        self.sink, self.plan, self.report = sink, plan, plan.report
        self.origin = _origin_dict(plan.origin)
        self.run_id = mp.run_id_for(plan.origin.uri, plan.origin.project_id, plan.origin.run_id)
        self.multiplier = plan.steps.multiplier if plan.steps is not None else 1
        name = plan.scan.value("sys/name")
        self.run_name = name if isinstance(name, str) and name.strip() else plan.origin.run_id
        self.attrs: dict[str, tuple[str, Any]] = {}
        self.series: dict[str, str] = {}
        self.files: list[list] = []
        self.rows_written = 0
        self.media_root = sink.root / mp.MEDIA_DIR / mp.media_folder(sink.project, self.run_id)
        self.have: Counter = Counter()
        found = sink._config_of(self.run_id)
        if found is not None:
            recorded = (found[1].get(mp.MANIFEST_KEY) or {}).get("origin")
            if recorded is not None and recorded != self.origin:
                raise self._err(f"Trackio run {self.run_id} holds the run copied from {recorded}; "
                                f"refusing to mix runs. Fix: delete that run or copy into another project")
            for step, ts, text in client.existing_rows(sink.root, sink.project, self.run_id):
                for key in json.loads(text):
                    self.have[(key, int(step), ts)] += 1
                self.rows_written += 1
        created = plan.scan.value("sys/creation_time")
        self.created_at = mp.iso_from_ms(mp.ms_of(created) if created is not None else
                                         mp.ms_of(plan.scan.first_timestamp))
        # the origin first: a crash from here on leaves a run find_run calls partial
        self._write_config(complete=False)

    def _err(self, message: str, file: str | None = None) -> RunError:
        return RunError(message, project_id=self.plan.origin.project_id, run_id=self.plan.origin.run_id,
                        file=file or str(self.sink.db_path))

    # -- writing ------------------------------------------------------------------------

    def write(self, batch: pa.Table) -> None:
        types = batch.column("attribute_type")
        rows: dict[tuple[int, str], list[dict]] = {}
        for kind in pc.unique(types).to_pylist():
            part = batch.filter(pc.equal(types, kind))
            if kind in PARAM_TYPES:
                self._params(part, kind)
            elif kind in ("float_series", "string_series", "histogram_series", "file_series"):
                self._points(part, kind, rows)
            elif kind in _SINGLE_FILE_TYPES:
                self._single_files(part, kind)
            else:
                self.report.dropped("unknown_type", part.num_rows, kind)
        if rows:
            ordered = sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0]))
            metrics, steps, stamps = [], [], []
            for (step, ts), group in ordered:
                for values in group:
                    metrics.append(values)
                    steps.append(step)
                    stamps.append(ts)
            client.bulk_log(self.sink.root, self.sink.project, self.run_name, self.run_id, metrics, steps, stamps)
            self.rows_written += len(metrics)

    def _params(self, table: pa.Table, kind: str) -> None:
        paths = table.column("attribute_path").to_pylist()
        values = table.column(VALUE_COLUMN[kind]).to_pylist()
        for path, value in zip(paths, values):
            if path in self.attrs and self.attrs[path] != (kind, value):
                raise self._err(f"attribute {path!r} has two different values in one run")
            self.attrs[path] = (kind, value)

    def _steps(self, table: pa.Table) -> list:
        if DEST_STEP in table.column_names:
            return table.column(DEST_STEP).to_pylist()
        return [None if s is None else int(s) for s in table.column("step").to_pylist()]

    def _points(self, table: pa.Table, kind: str, rows: dict) -> None:
        paths = table.column("attribute_path").to_pylist()
        steps = self._steps(table)
        stamps = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        values = table.column(VALUE_COLUMN[kind]).to_pylist()
        null_ts = 0
        for path, step, ms, value in zip(paths, steps, stamps, values):
            if step is None:
                raise self._err(f"series {path!r} has a point without a step; Trackio needs one")
            key = mp.metric_key(path)
            if kind == "file_series" and value is not None and not mp.is_image(value["path"]):
                self._file(path, kind, step, ms, value["path"])
                continue
            known = self.series.setdefault(key, kind)
            if known != kind:
                raise self._err(f"attribute {path!r} is both {known} and {kind} in one run")
            if ms is None:
                null_ts += 1
            ts = mp.iso_from_ms(ms)
            if kind == "file_series" and value is not None:
                self._copy(value["path"])
            if self.have[(key, step, ts)] > 0:       # already in the destination (repair)
                self.have[(key, step, ts)] -= 1
                continue
            group = rows.setdefault((step, ts), [])
            target = next((r for r in group if key not in r), None)
            if target is None:
                target = {}
                group.append(target)
            target[key] = self._encode(kind, value)
        if null_ts:
            self.report.transformed("null_timestamp_epoch", null_ts, paths[0])

    def _encode(self, kind: str, value: Any) -> Any:
        if value is None:
            return None
        if kind == "float_series":
            return mp.encode_float(value)
        if kind == "histogram_series":
            return mp.histogram_to_trackio(value)
        if kind == "file_series":     # an image: trackio/media/media.py TrackioMedia._to_dict
            rel = f"{mp.media_folder(self.sink.project, self.run_id)}/{value['path']}"
            return {"_type": mp.IMAGE, "file_path": rel, "caption": None}
        return value

    def _file(self, path: str, kind: str, step, ms, file_path: str) -> None:
        self._copy(file_path)
        self.files.append([path, kind, step, ms, file_path])
        self.report.transformed("file_in_media_folder", 1, path)

    def _single_files(self, table: pa.Table, kind: str) -> None:
        paths = table.column("attribute_path").to_pylist()
        steps = self._steps(table)
        stamps = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        for path, step, ms, value in zip(paths, steps, stamps, table.column("file_value").to_pylist()):
            if value is None:
                self.files.append([path, kind, step, ms, None])
                continue
            self._file(path, kind, step, ms, value["path"])

    def _copy(self, file_path: str) -> None:
        from trackport.core.layout import resolve_inside

        try:
            target = resolve_inside(self.media_root, file_path)
        except ValueError as exc:
            raise self._err(str(exc), file=file_path) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        local = self.plan.files.local_path(file_path)
        if local is not None and local.is_dir():
            shutil.copytree(local, target, dirs_exist_ok=True)
            copied = [p for p in target.rglob("*") if p.is_file()]
        else:
            tmp = target.with_name(target.name + ".trackport-tmp")
            with self.plan.files.open(file_path) as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(target)
            copied = [target]
        self.report.files += len(copied)
        self.report.bytes += sum(p.stat().st_size for p in copied)

    # -- config and mark ------------------------------------------------------------------

    def _write_config(self, complete: bool) -> None:
        config: dict[str, Any] = {}
        attrs: dict[str, list] = {}
        hidden, example = 0, None
        for path, (kind, value) in sorted(self.attrs.items()):
            encoded = mp.encode_param(kind, value)
            key = path[len("config/"):] if path.startswith("config/") else path
            if not _manifest_only(path, self.attrs) and not path.startswith("sys/") and key not in config:
                config[key] = encoded
                attrs[path] = [kind, "k", key]
            else:       # sys/*, `_` keys, or a path whose config key another attribute took
                attrs[path] = [kind, "v", encoded]
                if _manifest_only(path, self.attrs) or not path.startswith("sys/"):
                    hidden += 1
                    example = example or path
        owner = self.attrs.get("sys/owner")
        groups = self.attrs.get("sys/group_tags")
        config["_Username"] = owner[1] if owner else None
        config["_Created"] = self.created_at
        config["_Group"] = (groups[1] or [None])[0] if groups else None
        config[mp.MANIFEST_KEY] = {
            "v": mp.MANIFEST_VERSION, "origin": self.origin, "complete": complete,
            "version": self.plan.source_version if complete else None,
            "multiplier": self.multiplier, "attrs": attrs, "series": self.series, "files": self.files,
        }
        if complete and hidden:
            self.report.transformed("kept_in_trackport_config", hidden, example)
        text = json.dumps(config, ensure_ascii=False, allow_nan=False).encode("utf-8")
        client.write_config(self.sink.root, self.sink.project, self.run_name, self.run_id, text, self.created_at)

    def commit(self) -> DestRun:
        if self.rows_written == 0:
            # Trackio lists a project's runs from its metrics rows: one empty row makes a run
            # without points visible (the source reads it as nothing).
            client.bulk_log(self.sink.root, self.sink.project, self.run_name, self.run_id, [{}], [0],
                            [self.created_at])
        self._write_config(complete=True)
        config = {mp.MANIFEST_KEY: {"origin": self.origin}}
        locator = RunLocator(self.sink.db_path, self.sink.project, self.run_id, self.run_name, config)
        return DestRun(self.run_id, True, None, locator, self.plan.source_version)

    def abort(self) -> None:
        """Nothing open: every batch is committed by bulk_log; the run stays partial (no mark)."""
