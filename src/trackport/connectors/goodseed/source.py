"""GoodSeed source: every run file below a projects/ folder, read without changing a byte.

A run file is opened `immutable=1` (SQLite creates no -wal/-shm beside it); one whose `-wal`
exists (a training still writing, or killed) is first copied with its WAL to a temporary folder
and read there, so the committed points in the WAL are read too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
import tempfile
import threading
import urllib.parse
from datetime import datetime, timezone
from decimal import Decimal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa

from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.schema import VALUE_COLUMN, SeriesColumns, rows_to_table

from . import mapping as mp

log = logging.getLogger(__name__)
BATCH_POINTS = 50_000


def projects_dir(root: Path) -> Path:
    """DIR as a GoodSeed home (holding projects/) or the projects/ folder itself."""
    return root / "projects" if (root / "projects").is_dir() else root


@contextmanager
def snapshot(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a run file that leaves no file behind in its folder."""
    wal = Path(str(db) + "-wal")
    tmp = None
    try:
        if wal.exists():
            tmp = tempfile.mkdtemp(prefix="trackport-goodseed-")
            shutil.copyfile(db, Path(tmp) / "run.sqlite")
            try:
                shutil.copyfile(wal, Path(tmp) / "run.sqlite-wal")
            except FileNotFoundError:
                pass               # checkpointed between the two copies: the db file has it all
            conn = sqlite3.connect(str(Path(tmp) / "run.sqlite"))
        else:
            uri = "file:" + urllib.parse.quote(str(db)) + "?mode=ro&immutable=1"
            conn = sqlite3.connect(uri, uri=True)
        try:
            yield conn
        finally:
            conn.close()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    if not has_table(conn, "run_meta"):
        return {}
    return {k: v for k, v in conn.execute("SELECT key, value FROM run_meta")}


def meta_json(meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key]) if key in meta else None
    except ValueError:
        return None


class RunLoc:
    def __init__(self, db: Path, project: str, meta: dict[str, str]):
        self.db, self.project, self.meta = db, project, meta
        self.started = meta_json(meta, mp.META_ORIGIN)
        self.mark = meta_json(meta, mp.META_MARK)

    @property
    def files_dir(self) -> Path:
        return self.db.with_name(self.db.stem + mp.FILES_SUFFIX)


class GoodSeedSource(Source):
    capabilities = mp.SOURCE_CAPABILITIES

    def __init__(self, projects: Path, uri: str, options):
        self.projects, self.uri, self.options = projects, uri, options
        self._lock = threading.Lock()
        self._accounts: dict[tuple[str, str], dict] = {}

    def locate(self, db: Path) -> RunLoc:
        try:
            with snapshot(db) as conn:
                meta = read_meta(conn)
        except sqlite3.DatabaseError as exc:
            raise RunError(f"cannot read the GoodSeed run file: {exc}. Fix: restore the file or move it "
                           f"out of {self.projects}", project_id=str(db.parent.parent), run_id=db.stem,
                           file=str(db)) from None
        project = db.parent.parent.relative_to(self.projects).as_posix()
        return RunLoc(db, project, meta)

    def identity(self, loc: RunLoc) -> tuple[str, str]:
        origin = (loc.mark or {}).get("origin")
        if isinstance(origin, dict):
            return origin["project_id"], origin["run_id"]
        return loc.project, loc.meta.get("run_id") or loc.db.stem

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        if not self.projects.is_dir():
            return
        for db in sorted(self.projects.glob("**/runs/*.sqlite")):
            try:
                loc = self.locate(db)
            except RunError as exc:
                log.warning("%s", exc)
                continue
            if loc.started is not None and loc.mark is None:
                log.warning("skipping %s: an unfinished trackport copy (no completion mark); rerun the "
                            "copy that wrote it to finish it", db)
                continue
            project_id, run_id = self.identity(loc)
            if select.wants_run(project_id, run_id):
                yield RunRef(project_id, run_id, loc)

    def _loc(self, ref: RunRef) -> RunLoc:
        if isinstance(ref.locator, RunLoc):
            return ref.locator
        if isinstance(ref.locator, Path):
            return self.locate(ref.locator)
        for db in sorted(self.projects.glob("**/runs/*.sqlite")):
            loc = self.locate(db)
            if self.identity(loc) == (ref.project_id, ref.run_id):
                return loc
        raise RunError(f"run not found in {self.projects}", project_id=ref.project_id, run_id=ref.run_id)

    def origin(self, ref: RunRef) -> Origin:
        info = (self._loc(ref).mark or {}).get("origin")
        if isinstance(info, dict):
            return Origin(info["uri"], info["project_id"], info["run_id"])
        return Origin(mp.ORIGIN_URI, ref.project_id, ref.run_id)

    def describe_run(self, run: RunRef) -> str:
        return str(self._loc(run).db)

    def run_version(self, ref: RunRef) -> str:
        """What the run holds (counts, last step and time, status): changes while a training logs."""
        loc = self._loc(ref)
        with snapshot(loc.db) as conn:
            parts: list[Any] = [sorted(read_meta(conn).items())]
            for table in ("configs", "metric_points", "string_points", mp.POINTS_TABLE):
                if has_table(conn, table):
                    parts.append(list(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()))
            for table in ("metric_points", "string_points"):
                if has_table(conn, table):
                    parts.append(list(conn.execute(f"SELECT MAX(step), MAX(ts) FROM {table}").fetchone()))
        return hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=12).hexdigest()

    def account(self, run: RunRef, report) -> None:
        with self._lock:
            acc = self._accounts.pop((run.project_id, run.run_id), None)
        for kind, (count, example) in sorted((acc or {}).items()):
            report.transformed(kind, count, example)

    def files(self, run: RunRef) -> FileAccess:
        return GoodSeedFiles(self._loc(run), run)

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        loc = self._loc(run)
        acc: dict[str, tuple[int, str]] = {}
        with snapshot(loc.db) as conn:
            for table in _Reader(conn, loc, run, acc).tables():
                table = select.filter(table)
                if table.num_rows:
                    yield table
        with self._lock:
            self._accounts[(run.project_id, run.run_id)] = acc


class GoodSeedFiles(FileAccess):
    def __init__(self, loc: RunLoc, run: RunRef):
        self.loc, self.run = loc, run

    def local_path(self, path: str) -> Path:
        from trackport.core.layout import resolve_inside

        try:
            return resolve_inside(self.loc.files_dir, path)
        except ValueError as exc:
            raise RunError(str(exc), project_id=self.run.project_id, run_id=self.run.run_id, file=path) from None

    def open(self, path: str) -> BinaryIO:
        return self.local_path(path).open("rb")


class _Reader:
    def __init__(self, conn: sqlite3.Connection, loc: RunLoc, run: RunRef, acc: dict):
        self.conn, self.loc, self.run, self.acc = conn, loc, run, acc
        self.cols = SeriesColumns()

    def _flush(self) -> pa.Table:
        return self.cols.take_micro(self.run.project_id, self.run.run_id)

    def _add(self, path, kind, step, ms, value) -> Iterator[pa.Table]:
        self.cols.add(path, kind, step, ms, value)
        if len(self.cols) + self.cols.weight >= BATCH_POINTS:
            yield self._flush()

    def tables(self) -> Iterator[pa.Table]:
        conn = self.conn
        singles: dict[str, tuple[str, Any]] = {}
        if has_table(conn, "configs"):
            for path, tag, text in conn.execute("SELECT path, type_tag, value FROM configs ORDER BY path"):
                singles[path] = mp.from_config(tag, text)
        if self.loc.mark is None:
            self._meta_as_sys(singles)
        extra: list[tuple] = []
        if has_table(conn, mp.POINTS_TABLE):
            extra = conn.execute(f"SELECT path, type, step, ts, value FROM {mp.POINTS_TABLE} "
                                 f"WHERE type NOT IN ('float_series', 'string_series', "
                                 f"'histogram_series', 'file_series') ORDER BY seq").fetchall()
        rows = [{"attribute_path": p, "attribute_type": t, VALUE_COLUMN[t]: v} for p, (t, v) in singles.items()]
        for path, typ, step, ms, text in extra:
            value = mp.from_json(typ, text)
            if typ in ("file", "file_set", "artifact"):
                value = None if value is None else {"path": value}
            rows.append({"attribute_path": path, "attribute_type": typ, VALUE_COLUMN[typ]: value,
                         "step": None if step is None else Decimal(int(step)).scaleb(-6),
                         "timestamp": None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc)})
        if rows:
            yield rows_to_table(rows, {"project_id": self.run.project_id, "run_id": self.run.run_id})
        for table, kind, col in (("metric", "float_series", "y"), ("string", "string_series", "value")):
            if not has_table(conn, f"{table}_points"):
                continue
            query = (f"SELECT s.path, p.step, p.{col}, p.ts FROM {table}_points p JOIN {table}_series s "
                     f"ON p.series_id = s.id ORDER BY s.path, p.step")
            for path, step, value, ts in conn.execute(query):
                if kind == "float_series" and value is not None:
                    value = float(value)
                yield from self._add(path, kind, mp.float_micro(step), mp.ts_ms(ts), value)
        if has_table(conn, mp.POINTS_TABLE):
            query = (f"SELECT path, type, step, ts, value FROM {mp.POINTS_TABLE} WHERE type IN "
                     f"('float_series', 'string_series', 'histogram_series', 'file_series') ORDER BY seq")
            for path, typ, step, ms, text in conn.execute(query):
                value = mp.from_json(typ, text)
                yield from self._add(path, typ, None if step is None else int(step), ms, value)
        if len(self.cols):
            yield self._flush()

    def _meta_as_sys(self, singles: dict[str, tuple[str, Any]]) -> None:
        """A run GoodSeed wrote: its run_meta facts under the sys/ vocabulary."""
        meta, added = self.loc.meta, []

        def put(path: str, typ: str, value: Any) -> None:
            if path not in singles and value is not None:
                singles[path] = (typ, value)
                added.append(path)

        def when(text: str | None):
            try:
                return mp.to_utc(datetime.fromisoformat(text)) if text else None
            except ValueError:
                return None

        put("sys/name", "string", meta.get("name"))
        put("sys/custom_run_id", "string", meta.get("run_id"))
        put("sys/creation_time", "datetime", when(meta.get("created_at")))
        put("sys/modification_time", "datetime", when(meta.get("closed_at") or meta.get("modified_at")))
        if meta.get("status"):
            put("sys/failed", "bool", meta["status"] == "failed")
            put("goodseed/status", "string", meta["status"])
        if added:
            self.acc["run_meta_as_sys"] = (len(added), added[0])
