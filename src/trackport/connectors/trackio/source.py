"""Trackio source: a project's SQLite store read without the trackio package.

Every run of the project (ids from metrics, configs, system metrics and alerts)
becomes a canonical run: metrics rows -> series points with their step and
timestamp; the config -> params `config/<key>` (nested dicts flattened with `/`)
and `_Username`/`_Created`/`_Group` -> `sys/owner`/`sys/creation_time`/
`sys/group_tags`; the run name -> `sys/name`; system metrics ->
`monitoring/<key>`; alerts -> the string series `trackio/alerts` (JSON).
A run trackport wrote (config `_trackport`) is read back exactly through that
manifest and keeps the origin it recorded.  See docs/trackio.md.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import pyarrow as pa

from trackport.core.capabilities import Capabilities
from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.report import RunReport
from trackport.core.schema import SeriesColumns, rows_to_table
from trackport.core.steps import decimal_steps

from . import mapping as mp
from .store import columns, open_read_only

BATCH_POINTS = 50_000


class RunLocator:
    """Private to this connector: where a run lies and what its config says."""

    def __init__(self, db_path: Path, project: str, trackio_run_id: str, run_name: str,
                 config: dict | None):
        self.db_path, self.project, self.trackio_run_id = db_path, project, trackio_run_id
        self.run_name, self.config = run_name, config or {}

    @property
    def manifest(self) -> dict | None:
        found = self.config.get(mp.MANIFEST_KEY)
        return found if isinstance(found, dict) and found.get("origin") else None


def project_dbs(root: Path, project: str | None) -> list[tuple[str, Path]]:
    """(project name, db path) of the project named, or of every project in the store."""
    if project is not None:
        path = root / (mp.canonical_project_name(project) + mp.DB_EXT)
        return [(project, path)] if path.is_file() else []
    out = []
    for path in sorted(root.glob("*" + mp.DB_EXT)):
        if path.is_file() and not path.stem.startswith("registry-"):
            out.append((path.stem, path))
    return out


def read_runs(db_path: Path, project: str) -> list[RunLocator]:
    """Every run of one project database, in the order they first appear."""
    with open_read_only(db_path) as conn:
        first: dict[str, tuple[int, str]] = {}
        for table in ("metrics", "configs", "system_metrics", "alerts"):
            cols = columns(conn, table)
            if "run_id" not in cols:
                continue
            order = "MIN(id)" if "id" in cols else "0"
            for run_id, name, at in conn.execute(
                    f"SELECT run_id, MAX(run_name), {order} FROM {table} GROUP BY run_id"):
                seen = first.get(run_id)
                rank = (0 if table == "metrics" else 1, at)
                if seen is None or rank < seen[0]:
                    first[run_id] = (rank, name if name is not None else (seen[1] if seen else run_id))
        configs: dict[str, dict] = {}
        if "run_id" in columns(conn, "configs"):
            for run_id, text in conn.execute("SELECT run_id, config FROM configs"):
                try:
                    value = json.loads(text)
                except ValueError:
                    value = {}
                configs[run_id] = value if isinstance(value, dict) else {}
    ordered = sorted(first.items(), key=lambda kv: (kv[1][0], kv[0]))
    return [RunLocator(db_path, project, run_id, name, configs.get(run_id)) for run_id, (_, name) in ordered]


class TrackioFiles(FileAccess):
    def __init__(self, root: Path, run: RunRef):
        self.root, self.run = root, run

    def local_path(self, path: str) -> Path:
        from trackport.core.layout import resolve_inside

        try:
            return resolve_inside(self.root, path)
        except ValueError as exc:
            raise RunError(str(exc), project_id=self.run.project_id, run_id=self.run.run_id,
                           file=path) from None

    def open(self, path: str) -> BinaryIO:
        return self.local_path(path).open("rb")


class TrackioSource(Source):
    capabilities = Capabilities(replayable=True, transformations=dict(mp.SOURCE_TRANSFORMATIONS))

    def __init__(self, root: Path, project: str | None, uri: str):
        self.root, self.project, self.uri = root, project, uri
        self._counts: dict[tuple[str, str], Counter] = {}

    # -- runs ----------------------------------------------------------------------

    def _ref(self, loc: RunLocator) -> RunRef:
        manifest = loc.manifest
        if manifest is not None:
            origin = manifest["origin"]
            return RunRef(origin["project_id"], origin["run_id"], loc)
        return RunRef(loc.project, loc.trackio_run_id, loc)

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        for project, db_path in project_dbs(self.root, self.project):
            for loc in read_runs(db_path, project):
                ref = self._ref(loc)
                if select.wants_run(ref.project_id, ref.run_id):
                    yield ref

    def origin(self, run: RunRef) -> Origin:
        manifest = run.locator.manifest
        if manifest is not None:
            o = manifest["origin"]
            return Origin(o["uri"], o["project_id"], o["run_id"])
        return Origin(f"trackio:{run.locator.project}", run.project_id, run.run_id)

    def describe_run(self, run: RunRef) -> str:
        loc = run.locator
        return f"{run.project_id}/{run.run_id} (Trackio run {loc.run_name!r}, id {loc.trackio_run_id})"

    def run_version(self, run: RunRef) -> str | None:
        """Grows when the run does: rows and the last row id of each of its tables."""
        loc = run.locator
        parts = []
        with open_read_only(loc.db_path) as conn:
            for table in ("metrics", "system_metrics", "alerts"):
                if "run_id" in columns(conn, table):
                    count, last = conn.execute(f"SELECT COUNT(*), MAX(id) FROM {table} WHERE run_id = ?",
                                               (loc.trackio_run_id,)).fetchone()
                    parts.append(f"{count}.{last or 0}")
        return "-".join(parts)

    def files(self, run: RunRef) -> FileAccess:
        loc = run.locator
        media = loc.db_path.parent / mp.MEDIA_DIR
        if loc.manifest is not None:
            return TrackioFiles(media / mp.media_folder(loc.project, loc.trackio_run_id), run)
        return TrackioFiles(media, run)

    def account(self, run: RunRef, report: RunReport) -> None:
        for kind, count in self._counts.pop((run.project_id, run.run_id), Counter()).items():
            report.transformed(kind, count, run.run_id)

    # -- rows ------------------------------------------------------------------------

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        loc: RunLocator = run.locator
        counts = self._counts.setdefault((run.project_id, run.run_id), Counter())
        manifest = loc.manifest
        params = self._params(run, loc, manifest, counts)
        if params:
            yield select.filter(rows_to_table(params, {"project_id": run.project_id, "run_id": run.run_id}))
        for table in self._series(run, loc, manifest, counts):
            yield select.filter(table)

    def _params(self, run: RunRef, loc: RunLocator, manifest: dict | None, counts: Counter) -> list[dict]:
        from trackport.core.schema import VALUE_COLUMN

        rows: list[dict] = []

        def add(path: str, kind: str, value: Any, step=None, ts=None) -> None:
            rows.append({"attribute_path": path, "attribute_type": kind, VALUE_COLUMN[kind]: value,
                         "step": step, "timestamp": ts})

        config = loc.config
        if manifest is not None:
            for path, (kind, where, stored) in sorted(manifest.get("attrs", {}).items()):
                raw = config.get(stored) if where == "k" else stored
                add(path, kind, mp.decode_param(kind, raw))
            multiplier = int(manifest.get("multiplier") or 1)
            for path, kind, step, ts, file_path in manifest.get("files", []):
                dec = None if step is None else _decimal(mp.step_to_unscaled(step, multiplier))
                add(path, kind, {"path": file_path}, dec, ts)
            return rows
        add("sys/name", "string", loc.run_name)
        for key, value in mp.flatten_config(config):
            if key == "_Username":
                if value is not None:
                    add("sys/owner", "string", str(value))
                continue
            if key == "_Created":
                if value:
                    ms, floored = mp.ms_from_iso(str(value))
                    counts["timestamp_to_ms"] += int(floored)
                    add("sys/creation_time", "datetime", ms)
                continue
            if key == "_Group":
                if value:
                    add("sys/group_tags", "string_set", [str(value)])
                continue
            if key.startswith("_"):
                continue
            typed = mp.infer_param(value)
            if typed is None:
                counts["config_value_as_json"] += 1
                typed = ("string", json.dumps(value, ensure_ascii=False))
            add(f"config/{key}", typed[0], typed[1])
        return rows

    def _series(self, run: RunRef, loc: RunLocator, manifest: dict | None, counts: Counter):
        cols = SeriesColumns()
        steps: list[int] = []

        def flush():
            table = cols.table(run.project_id, run.run_id,
                               decimal_steps(np.array(steps, dtype=np.int64)))
            cols.clear()
            steps.clear()
            return table

        multiplier = int((manifest or {}).get("multiplier") or 1)
        types: dict[str, str] = dict((manifest or {}).get("series", {}))
        prefix = mp.media_folder(loc.project, loc.trackio_run_id) + "/" if manifest else ""
        with open_read_only(loc.db_path) as conn:
            if manifest is None:
                types.update(self._native_types(conn, loc))
            if "run_id" in columns(conn, "metrics"):
                cursor = conn.execute("SELECT step, timestamp, metrics FROM metrics WHERE run_id = ? ORDER BY id",
                                      (loc.trackio_run_id,))
                while True:
                    chunk = cursor.fetchmany(2000)
                    if not chunk:
                        break
                    for step, ts_text, text in chunk:
                        values = json.loads(text)
                        if not values:
                            continue
                        ms, floored = mp.ms_from_iso(ts_text)
                        unscaled = mp.step_to_unscaled(step, multiplier)
                        for key, value in values.items():
                            kind = types.get(key) or _kind_of(value)
                            try:
                                point = self._value(kind, value, prefix, counts)
                            except ValueError as exc:
                                raise RunError(f"metric {key!r} at step {step}: {exc}; the run's "
                                               f"`_trackport` config says {kind}. Fix: copy the run "
                                               f"again from its source", project_id=run.project_id,
                                               run_id=run.run_id, file=str(loc.db_path)) from None
                            counts["timestamp_to_ms"] += int(floored and manifest is None)
                            cols.add(mp.path_of_key(key), kind, None, ms, point)
                            steps.append(unscaled)
                    if len(cols) >= BATCH_POINTS:
                        yield flush()
            yield from self._system_and_alerts(conn, loc, cols, steps, counts, flush)
        if len(cols):
            yield flush()

    def _system_and_alerts(self, conn, loc, cols, steps, counts, flush):
        if "run_id" in columns(conn, "system_metrics"):
            ordinal: Counter = Counter()
            for ts_text, text in conn.execute(
                    "SELECT timestamp, metrics FROM system_metrics WHERE run_id = ? ORDER BY id",
                    (loc.trackio_run_id,)):
                ms, floored = mp.ms_from_iso(ts_text)
                for key, value in json.loads(text).items():
                    if isinstance(value, bool):
                        counts["bool_metric_to_float"] += 1
                    try:
                        number = mp.decode_float(value)
                    except (KeyError, TypeError, ValueError):
                        cols.add(f"monitoring/{key}", "string_series", None, ms, json.dumps(value))
                        counts["trackio_object_as_json"] += 1
                    else:
                        cols.add(f"monitoring/{key}", "float_series", None, ms, number)
                    steps.append(ordinal[key] * 1_000_000)
                    ordinal[key] += 1
                    counts["system_metric_step_from_order"] += 1
                    counts["timestamp_to_ms"] += int(floored)
                if len(cols) >= BATCH_POINTS:
                    yield flush()
        if "run_id" in columns(conn, "alerts"):
            n = 0
            for ts_text, title, text, level, step in conn.execute(
                    "SELECT timestamp, title, text, level, step FROM alerts WHERE run_id = ? ORDER BY id",
                    (loc.trackio_run_id,)):
                ms, floored = mp.ms_from_iso(ts_text)
                body = json.dumps({"title": title, "text": text, "level": level}, ensure_ascii=False)
                cols.add("trackio/alerts", "string_series", None, ms, body)
                steps.append((step if step is not None else n) * 1_000_000)
                n += 1
                counts["timestamp_to_ms"] += int(floored)

    @staticmethod
    def _native_types(conn, loc: RunLocator) -> dict[str, str]:
        """The series type of each key of a run trackport did not write: the one kind of its
        values ("NaN", "Infinity", "-Infinity" count as numbers: Trackio's encoding); a key
        holding values of several kinds is a string_series (non-text values as JSON)."""
        kinds: dict[str, set] = {}
        if "run_id" not in columns(conn, "metrics"):
            return {}
        for (text,) in conn.execute("SELECT metrics FROM metrics WHERE run_id = ?", (loc.trackio_run_id,)):
            for key, value in json.loads(text).items():
                if value is not None:
                    kinds.setdefault(key, set()).add(_kind_of(value))
        return {key: next(iter(found)) if len(found) == 1 else "string_series" for key, found in kinds.items()}

    @staticmethod
    def _value(kind: str, value: Any, prefix: str, counts: Counter) -> Any:
        if kind == "float_series":
            if isinstance(value, bool):
                counts["bool_metric_to_float"] += 1
                return float(value)
            try:
                return mp.decode_float(value)
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"value {str(value)[:80]!r} is not a number") from None
        if kind == "histogram_series":
            return None if value is None else mp.histogram_from_trackio(value)
        if kind == "file_series":
            if value is None:
                return None
            path = str(value.get("file_path") or "")
            return path[len(prefix):] if prefix and path.startswith(prefix) else path
        # string_series
        if value is None or isinstance(value, str):
            return value
        counts["trackio_object_as_json"] += 1
        return json.dumps(value, ensure_ascii=False)


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        t = value.get("_type")
        if t == mp.HISTOGRAM:
            return "histogram_series"
        if t == mp.IMAGE and value.get("file_path"):
            return "file_series"
        return "string_series"
    if isinstance(value, str) and value not in mp.NONFINITE:
        return "string_series"
    if isinstance(value, (list,)):
        return "string_series"
    return "float_series"


def _decimal(unscaled: int):
    from decimal import Decimal

    return Decimal(unscaled).scaleb(-6)
