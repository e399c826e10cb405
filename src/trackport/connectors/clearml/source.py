"""ClearML source: a folder of offline sessions (zips and/or unzipped session folders) ->
canonical runs.  Pure JSON reading: no SDK, no server, and nothing in PATH is changed (a zip
is read in place; files are extracted to this process's scratch folder when asked for).

Sessions trackport wrote (their task.json has the `trackport` hyperparameter section and the
`trackport-record` artifact) are read back exactly, under the origin recorded in them.  Any
other session is mapped as mapping.py describes (scalars `title/series`, console lines as
monitoring/stdout|stderr with their ordinal as step, hyperparameters `section/name`, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator

import pyarrow as pa

from trackport.core.capabilities import Capabilities
from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError
from trackport.core.layout import safe
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.schema import SeriesColumns, rows_to_table

from . import mapping as mp

log = logging.getLogger(__name__)

BATCH_ROWS = 50_000
FOREIGN_ORIGIN = "clearml:offline-session"   # task ids are globally unique: stable wherever PATH lies
_MICRO = 10**6


@dataclass
class Session:
    path: Path                  # a .zip or a session folder
    task: dict
    mark: dict | None
    zipped: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def task_id(self) -> str:
        return str(self.task.get("id") or self.path.stem)

    @property
    def own(self) -> bool:
        return self.mark is not None

    def ids(self) -> tuple[str, str]:
        if self.mark is not None:
            return self.mark["origin"]["project_id"], self.mark["origin"]["run_id"]
        return str(self.task.get("project_name") or "clearml"), self.task_id

    def names(self) -> list[str]:
        if self.zipped:
            with zipfile.ZipFile(self.path) as zf:
                return zf.namelist()
        return [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]

    def read(self, name: str) -> bytes | None:
        try:
            if self.zipped:
                with zipfile.ZipFile(self.path) as zf:
                    return zf.read(name)
            return (self.path / name).read_bytes()
        except (KeyError, OSError):
            return None

    def json_lines(self, name: str) -> Iterator[dict]:
        """The events of metrics.jsonl / log.jsonl: one JSON list per line."""
        data = self.read(name)
        if not data:
            return
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items = json.loads(line)
            except ValueError:
                self.warnings.append(f"{self.path.name}: {name} line {n} is not JSON (torn?); ignored")
                continue
            for item in items if isinstance(items, list) else [items]:
                if isinstance(item, dict):
                    yield item

    def version(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        if self.zipped:
            with zipfile.ZipFile(self.path) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    h.update(f"{info.filename}:{info.file_size}:{info.CRC}\n".encode())
        else:
            for name in ("task.json", "metrics.jsonl", "log.jsonl"):
                p = self.path / name
                h.update(f"{name}:{p.stat().st_size if p.exists() else -1}\n".encode())
        return h.hexdigest()

    def member_of(self, uri: str | None) -> str | None:
        """A path inside the session for an artifact/debug-sample location ClearML recorded
        (absolute, under the session's `offline_folder` at write time)."""
        if not uri:
            return None
        base = str(self.task.get("offline_folder") or "").rstrip("/")
        if base and uri.startswith(base + "/"):
            return uri[len(base) + 1:]
        return None


def load_session(path: Path) -> Session | None:
    zipped = path.is_file()
    try:
        if zipped:
            with zipfile.ZipFile(path) as zf:
                task = json.loads(zf.read("task.json").decode("utf-8"))
        else:
            task = json.loads((path / "task.json").read_text(encoding="utf-8"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    if not isinstance(task, dict):
        return None
    return Session(path, task, mp.read_mark(task), zipped)


class ClearmlSource(Source):
    capabilities = Capabilities(replayable=True)

    def __init__(self, root: Path, uri: str, options: Any):
        self.root, self.uri, self.options = root, uri, options
        self._scratch: Path | None = None
        self._extracted: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._warnings: dict[str, list[str]] = {}

    def _sessions(self) -> list[Session]:
        if (self.root / "task.json").is_file() or (self.root.is_file() and self.root.suffix == ".zip"):
            found = [self.root]
        else:
            zips = sorted(self.root.glob("*.zip"))
            stems = {p.stem for p in zips}
            folders = sorted(p for p in self.root.iterdir()
                             if p.is_dir() and p.name != mp.STAGING and p.name not in stems
                             and (p / "task.json").is_file())
            found = zips + folders
        out = []
        for path in found:
            session = load_session(path)
            if session is None:
                continue
            if session.mark is not None and not session.mark["complete"]:
                session.warnings.append(f"{path.name}: trackport never completed this session; read as it is")
            if not session.zipped:
                session.warnings.append(f"{path.name}: a session folder without its zip (a task still running, "
                                        "or not closed); read as it is")
            out.append(session)
        return out

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        runs = []
        for session in self._sessions():
            project, run = session.ids()
            if select.wants_run(project, run):
                runs.append(RunRef(project, run, session.path))
        yield from sorted(runs, key=lambda r: (r.project_id, r.run_id, str(r.locator)))

    def _session(self, run: RunRef) -> Session:
        session = load_session(Path(run.locator)) if run.locator is not None else None
        if session is None:
            raise RunError(f"cannot read the ClearML session {run.locator}: no readable task.json. "
                           "Fix: point at a folder of ClearML offline sessions",
                           project_id=run.project_id, run_id=run.run_id, file=str(run.locator))
        return session

    def describe_run(self, run: RunRef) -> str:
        return f"{run.project_id}/{run.run_id} ({Path(str(run.locator)).name})"

    def origin(self, run: RunRef) -> Origin:
        session = self._session(run)
        if session.mark is not None:
            o = session.mark["origin"]
            return Origin(o["uri"], o["project_id"], o["run_id"])
        return Origin(FOREIGN_ORIGIN, run.project_id, run.run_id)

    def run_version(self, run: RunRef) -> str | None:
        return self._session(run).version()

    def account(self, run: RunRef, report) -> None:
        for message in self._warnings.pop(str(run.locator), []):
            report.warn(message)

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        session = self._session(run)
        reader = _RunReader(self, session, run)
        for table in reader.tables():
            yield select.filter(table)
        self._warnings[str(run.locator)] = session.warnings

    def files(self, run: RunRef) -> FileAccess:
        return SessionFiles(self, run)

    # -- extraction ------------------------------------------------------------------

    def extracted(self, session_path: Path) -> Path:
        """The session's files on disk: the folder itself, or the zip extracted (once) to scratch."""
        if session_path.is_dir():
            return session_path
        key = str(session_path)
        with self._lock:
            got = self._extracted.get(key)
            if got is not None:
                return got
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="clearml-source-"))
            target = self._scratch / str(len(self._extracted))
            target.mkdir()
            with zipfile.ZipFile(session_path) as zf:
                for info in zf.infolist():
                    dest = _inside(target, info.filename)
                    if dest is None or info.is_dir():
                        continue            # a member escaping the folder is never written
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            self._extracted[key] = target
            return target

    def archive_dir(self, archive: Path) -> Path:
        """A folder artifact (ClearML's zip archive) extracted to scratch: the file set's folder."""
        key = f"archive:{archive}"
        with self._lock:
            got = self._extracted.get(key)
            if got is not None:
                return got
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="clearml-source-"))
            target = self._scratch / f"a{len(self._extracted)}"
            target.mkdir()
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    dest = _inside(target, info.filename)
                    if dest is None or info.is_dir():
                        continue
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            self._extracted[key] = target
            return target

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
            self._extracted.clear()


def _inside(root: Path, relative: str) -> Path | None:
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        return None
    return root.joinpath(*parts)


class SessionFiles(FileAccess):
    """Files of one session, by the canonical path the run's rows give them."""

    def __init__(self, source: ClearmlSource, run: RunRef):
        self.source, self.run = source, run
        self._map: dict[str, tuple[str, bool]] | None = None

    def _files(self) -> dict[str, tuple[str, bool]]:
        if self._map is None:
            session = self.source._session(self.run)
            self._map = _RunReader(self.source, session, self.run).file_map()
        return self._map

    def local_path(self, path: str) -> Path | None:
        got = self._files().get(path)
        if got is None:
            return None
        member, archive = got
        root = self.source.extracted(Path(self.run.locator))
        local = _inside(root, member)
        if local is None or not local.exists():
            return None
        return self.source.archive_dir(local) if archive else local

    def open(self, path: str) -> BinaryIO:
        local = self.local_path(path)
        if local is None or local.is_dir():
            raise FileNotFoundError(f"{path} is not in the ClearML session {self.run.locator}")
        return open(local, "rb")


class _RunReader:
    def __init__(self, source: ClearmlSource, session: Session, run: RunRef):
        self.source, self.session, self.run = source, session, run
        self.project, self.run_id = run.project_id, run.run_id
        self.record = self._record() if session.own else None
        self.multiplier = int((self.record or session.mark or {}).get("multiplier") or 1)

    def _artifacts(self) -> list[dict]:
        return [a for a in ((self.session.task.get("execution") or {}).get("artifacts") or []) if isinstance(a, dict)]

    def _record(self) -> dict | None:
        for art in self._artifacts():
            if art.get("key") == mp.RECORD_ARTIFACT:
                member = self.session.member_of(art.get("uri"))
                data = self.session.read(member) if member else None
                if data:
                    try:
                        return json.loads(data.decode("utf-8"))
                    except ValueError:
                        break
        self.session.warnings.append(f"{self.session.path.name}: its trackport record is missing or damaged; "
                                     "read as a plain ClearML session")
        return None

    # -- files ------------------------------------------------------------------------

    def file_map(self) -> dict[str, tuple[str, bool]]:
        """canonical file path -> (member inside the session, is a folder archive)."""
        out: dict[str, tuple[str, bool]] = {}
        arts = {a.get("key"): a for a in self._artifacts()}
        if self.record is not None:
            for name, info in (self.record.get("artifacts") or {}).items():
                member = self.session.member_of((arts.get(name) or {}).get("uri"))
                if member:
                    out[info["file"]] = (member, bool(info.get("folder")))
            for path, sample in self._debug_samples().items():
                out.update(sample)
            return out
        for key, art in arts.items():
            member = self.session.member_of(art.get("uri"))
            if member and key != mp.RECORD_ARTIFACT:
                out[self._foreign_file(member)] = (member, False)
        for _, _, _, _, member in self._foreign_debug():
            out[self._foreign_file(member)] = (member, False)
        return out

    def _foreign_file(self, member: str) -> str:
        return f"{safe(self.run_id)}/{member}"

    def _debug_events(self) -> Iterator[dict]:
        for ev in self.session.json_lines("metrics.jsonl"):
            if ev.get("type") == mp.DEBUG_IMAGE:
                yield ev

    def _debug_member(self, ev: dict) -> str | None:
        key = ev.get("key")
        if not key:
            return None
        return "data/" + str(key).lstrip("/")

    def _debug_samples(self) -> dict[str, dict[str, tuple[str, bool]]]:
        """Own sessions: attribute path -> {original file path: (member, False)}, matching each
        recorded point with the debug sample event of its title, series and iteration."""
        by_name: dict[tuple[str, str, int], list[str]] = {}
        for ev in self._debug_events():
            member = self._debug_member(ev)
            if member:
                by_name.setdefault((ev.get("metric"), ev.get("variant"), ev.get("iter")), []).append(member)
        out: dict[str, dict[str, tuple[str, bool]]] = {}
        for path, info in (self.record.get("media") or {}).items():
            title, series = info["names"]
            for step, ts, original, it in info["points"]:
                queue = by_name.get((title, series, it)) or []
                if queue:
                    out.setdefault(path, {})[original] = (queue.pop(0), False)
        return out

    def _foreign_debug(self) -> Iterator[tuple[str, int, int | None, str, str]]:
        for ev in self._debug_events():
            member = self._debug_member(ev)
            if member:
                yield (mp.scalar_path(str(ev.get("metric")), str(ev.get("variant"))), int(ev.get("iter") or 0),
                       ev.get("timestamp"), "file_series", member)

    # -- rows -------------------------------------------------------------------------

    def tables(self) -> Iterator[pa.Table]:
        yield self._singles()
        cols = SeriesColumns()
        for path, micro, ts, kind, value in self._points():
            cols.add(path, kind, micro, ts, value)
            if len(cols) >= BATCH_ROWS or cols.weight >= 4_000_000:
                yield self._flush(cols)
        if len(cols):
            yield self._flush(cols)

    def _flush(self, cols: SeriesColumns) -> pa.Table:
        return cols.take_micro(self.project, self.run_id)

    def _iter_micro(self, iteration: Any) -> int | None:
        if iteration is None:
            return None
        return int(iteration) * (_MICRO // self.multiplier)

    @staticmethod
    def _text_micro(text: str | None) -> int | None:
        return None if text is None else int(Decimal(text) * _MICRO)

    def _singles(self) -> pa.Table:
        rows = []
        extra = {"project_id": self.project, "run_id": self.run_id}
        if self.record is not None:
            for p in self.record.get("params") or []:
                col = {"float": "float_value", "int": "int_value", "string": "string_value", "bool": "bool_value",
                       "datetime": "datetime_value", "string_set": "string_set_value"}[p["type"]]
                rows.append({"attribute_path": p["path"], "attribute_type": p["type"],
                             col: mp.param_from_json(p["type"], p["value"])})
            for name, info in (self.record.get("artifacts") or {}).items():
                rows.append({"attribute_path": info["path"], "attribute_type": info["type"],
                             "file_value": {"path": info["file"]},
                             "timestamp": None if info.get("timestamp") is None else
                             mp.datetime_from_ms(int(info["timestamp"]))})
            return rows_to_table(rows, extra)
        task = self.session.task
        rows.append({"attribute_path": "sys/name", "attribute_type": "string", "string_value": str(task.get("name") or "")})
        rows.append({"attribute_path": "sys/id", "attribute_type": "string", "string_value": self.session.task_id})
        if task.get("tags"):
            rows.append({"attribute_path": "sys/tags", "attribute_type": "string_set",
                         "string_set_value": [str(t) for t in task["tags"]]})
        if task.get("comment"):
            rows.append({"attribute_path": "sys/description", "attribute_type": "string",
                         "string_value": str(task["comment"])})
        if task.get("type"):
            rows.append({"attribute_path": "clearml/type", "attribute_type": "string", "string_value": str(task["type"])})
        for section, items in sorted((task.get("hyperparams") or {}).items()):
            if section == mp.MARK_SECTION or not isinstance(items, dict):
                continue
            for name, item in sorted(items.items()):
                value = item.get("value") if isinstance(item, dict) else item
                rows.append({"attribute_path": mp.hyperparam_path(section, name), "attribute_type": "string",
                             "string_value": "" if value is None else str(value)})
        for name, item in sorted((task.get("configuration") or {}).items()):
            value = item.get("value") if isinstance(item, dict) else item
            rows.append({"attribute_path": f"clearml/configuration/{name}", "attribute_type": "string",
                         "string_value": "" if value is None else str(value)})
        script = task.get("script") or {}
        for key in ("repository", "branch", "version_num", "entry_point", "working_dir", "binary", "diff"):
            if script.get(key):
                rows.append({"attribute_path": f"clearml/script/{key}", "attribute_type": "string",
                             "string_value": str(script[key])})
        requirements = script.get("requirements") or {}
        for key, value in sorted(requirements.items() if isinstance(requirements, dict) else []):
            if value:
                rows.append({"attribute_path": f"clearml/script/requirements/{key}", "attribute_type": "string",
                             "string_value": str(value)})
        for art in self._artifacts():
            key = str(art.get("key"))
            member = self.session.member_of(art.get("uri"))
            if member:
                rows.append({"attribute_path": f"artifacts/{key}", "attribute_type": "file",
                             "file_value": {"path": self._foreign_file(member)}})
            elif art.get("uri"):
                rows.append({"attribute_path": f"clearml/artifacts/{key}", "attribute_type": "string",
                             "string_value": str(art["uri"])})
        return rows_to_table(rows, extra)

    def _points(self) -> Iterator[tuple[str, int | None, int | None, str, Any]]:
        record = self.record
        if record is not None:
            scalars = {tuple(v): p for p, v in (record.get("scalars") or {}).items()}
            nonfinite = record.get("nonfinite") or {}
            ordinals: dict[str, int] = {}
            for ev in self.session.json_lines("metrics.jsonl"):
                kind = ev.get("type")
                if kind == mp.SCALAR:
                    path = scalars.get((ev.get("metric"), ev.get("variant")))
                    if path is None:
                        yield self._foreign_event(ev)
                        continue
                    n = ordinals.get(path, 0)
                    ordinals[path] = n + 1
                    value = nonfinite.get(path, {}).get(str(n))
                    value = ev.get("value") if value is None else mp.float_from_json(value)
                    yield path, self._iter_micro(ev.get("iter")), ev.get("timestamp"), "float_series", float(value)
                elif kind == mp.PLOT:
                    hist = mp.histogram_from_plot(ev.get("plot_str") or "")
                    if hist is None:
                        yield self._foreign_event(ev)
                        continue
                    yield hist[0], self._iter_micro(ev.get("iter")), ev.get("timestamp"), "histogram_series", hist[1]
                elif kind == mp.DEBUG_IMAGE:
                    continue              # from the record, below
                else:
                    yield self._foreign_event(ev)
            for path, points in (record.get("strings") or {}).items():
                for step, ts, value in points:
                    yield path, self._text_micro(step), ts, "string_series", value
            for path, info in (record.get("media") or {}).items():
                for step, ts, original, _ in info["points"]:
                    yield path, self._text_micro(step), ts, "file_series", original
            return
        for ev in self.session.json_lines("metrics.jsonl"):
            kind = ev.get("type")
            if kind == mp.SCALAR:
                value = ev.get("value")
                yield (mp.scalar_path(str(ev.get("metric")), str(ev.get("variant"))), self._iter_micro(ev.get("iter")),
                       ev.get("timestamp"), "float_series", None if value is None else float(value))
            elif kind == mp.DEBUG_IMAGE:
                member = self._debug_member(ev)
                if member:
                    yield (mp.scalar_path(str(ev.get("metric")), str(ev.get("variant"))),
                           self._iter_micro(ev.get("iter")), ev.get("timestamp"), "file_series",
                           self._foreign_file(member))
            else:
                yield self._foreign_event(ev)
        counters: dict[str, int] = {}
        for ev in self.session.json_lines("log.jsonl"):
            path = mp.console_path(ev.get("level"))
            n = counters.get(path, 0)
            counters[path] = n + 1
            yield path, n * _MICRO, ev.get("timestamp"), "string_series", str(ev.get("msg") or "")

    def _foreign_event(self, ev: dict) -> tuple[str, int | None, int | None, str, Any]:
        """An event trackport has no canonical type for: kept whole, as JSON text, under
        `clearml/plots/...` (plots) or `clearml/events/<type>/...`."""
        kind = str(ev.get("type") or "event")
        name = f"{ev.get('metric')}/{ev.get('variant')}"
        if kind == mp.PLOT:
            return f"clearml/plots/{name}", self._iter_micro(ev.get("iter")), ev.get("timestamp"), "string_series", \
                str(ev.get("plot_str") or "")
        body = {k: v for k, v in ev.items() if k not in ("task", "timestamp", "iter", "method")}
        return (f"clearml/events/{kind}/{name}", self._iter_micro(ev.get("iter") or 0), ev.get("timestamp"),
                "string_series", json.dumps(body, ensure_ascii=False, sort_keys=True))
