"""DVCLive source: reads DVCLive folders through their files (no DVC, no git).

A run is a folder DVCLive wrote (it holds metrics.json or plots/metrics/, or a trackport
mark).  `dvclive:DIR` where DIR is such a folder reads that one run; otherwise every such
folder below DIR (at any depth, not below another run, hidden folders skipped) is a run,
named by its path relative to DIR.  Folders the trackport sink wrote are read through their
mark (exact types, origin); others through their files (mapping.py).  Reading never writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator

import numpy as np
import pyarrow as pa

from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError
from trackport.core.layout import resolve_inside, safe
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.schema import SeriesColumns, rows_to_table
from trackport.core.steps import decimal_steps

from . import client
from . import mapping as mp

log = logging.getLogger(__name__)

BATCH_POINTS = 50_000


def read_json(path: Path) -> Any:
    """A JSON file, or None when it is missing or unreadable (never raises)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


@dataclass
class RunLoc:
    path: Path
    rel: str                                   # relative to DIR, "." for DIR itself
    mark: dict | None = None                   # a complete trackport mark
    started: dict | None = None                # trackport-origin.json


@dataclass
class _Account:
    warnings: list[str] = field(default_factory=list)
    transformed: dict[str, list] = field(default_factory=dict)

    def transform(self, kind: str, example: str) -> None:
        got = self.transformed.setdefault(kind, [0, example])
        got[0] += 1


def is_run_folder(path: Path) -> bool:
    return any((path / name).exists() for name in mp.RUN_MARKERS)


class DvcLiveSource(Source):
    capabilities = mp.SOURCE_CAPABILITIES

    def __init__(self, root: Path, uri: str, options):
        self.root, self.uri, self.options = root, uri, options
        self.single = is_run_folder(root)
        project = options.get("dvclive_project") if options else None
        self.project = project or (root.parent.name if self.single else root.name) or "dvclive"
        self._lock = threading.Lock()
        self._accounts: dict[tuple[str, str], _Account] = {}

    # -- runs ------------------------------------------------------------------

    def _loc(self, path: Path, rel: str) -> RunLoc:
        mark = read_json(path / mp.MARKER)
        return RunLoc(path, rel, mark if isinstance(mark, dict) and mark.get("complete") else None,
                      read_json(path / mp.ORIGIN_FILE))

    def locations(self) -> list[RunLoc]:
        if self.single:
            return [self._loc(self.root, ".")]
        found = []
        for top, dirs, _ in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            here = Path(top)
            if here != self.root and is_run_folder(here):
                found.append(self._loc(here, here.relative_to(self.root).as_posix()))
                dirs[:] = []
        return sorted(found, key=lambda loc: loc.rel)

    def identity(self, loc: RunLoc) -> tuple[str, str]:
        info = (loc.mark or loc.started or {}).get("origin")
        if isinstance(info, dict) and info.get("project_id") is not None:
            return info["project_id"], info["run_id"]
        return self.project, (self.root.name if loc.rel == "." else loc.rel)

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        for loc in self.locations():
            if loc.mark is None and loc.started is not None:
                # Half of a copy into this folder: its exact values are only in the mark written at
                # the end.  The copy that started it finishes it when rerun.
                log.warning("skipping %s: an unfinished trackport copy (no %s); rerun the copy that "
                            "wrote it to finish it", loc.path, mp.MARKER)
                continue
            project_id, run_id = self.identity(loc)
            if select.wants_run(project_id, run_id):
                yield RunRef(project_id, run_id, loc)

    def _location(self, ref: RunRef) -> RunLoc:
        if isinstance(ref.locator, RunLoc):
            return ref.locator
        if isinstance(ref.locator, Path):
            rel = ref.locator.relative_to(self.root).as_posix() if ref.locator != self.root else "."
            return self._loc(ref.locator, rel)
        for loc in self.locations():
            if self.identity(loc) == (ref.project_id, ref.run_id):
                return loc
        raise RunError(f"run not found in {self.root}", project_id=ref.project_id, run_id=ref.run_id)

    def origin(self, ref: RunRef) -> Origin:
        """The origin recorded by the trackport sink; else (dvclive, project, run): a DVCLive
        folder has no id of its own, so moving DIR keeps the origin when its name is kept (or
        --dvclive-project names the project)."""
        loc = self._location(ref)
        info = (loc.mark or {}).get("origin")
        if isinstance(info, dict):
            return Origin(info["uri"], info["project_id"], info["run_id"])
        return Origin(mp.ORIGIN_URI, ref.project_id, ref.run_id)

    def run_version(self, ref: RunRef) -> str:
        """A digest of every file's relative path and size: it changes while a training writes."""
        loc = self._location(ref)
        sizes = []
        for top, dirs, names in os.walk(loc.path):
            dirs.sort()
            for name in sorted(names):
                p = Path(top) / name
                try:
                    sizes.append((p.relative_to(loc.path).as_posix(), p.stat().st_size))
                except OSError:
                    continue
        return hashlib.blake2b(json.dumps(sizes).encode(), digest_size=12).hexdigest()

    def account(self, run: RunRef, report) -> None:
        with self._lock:
            acc = self._accounts.get((run.project_id, run.run_id))
        if acc is None:
            return
        for message in acc.warnings:
            report.warn(message)
        for kind, (count, example) in sorted(acc.transformed.items()):
            report.transformed(kind, count, example)

    def files(self, run: RunRef) -> FileAccess:
        return DvcLiveFiles(self._location(run), run)

    # -- reading ----------------------------------------------------------------

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        loc = self._location(run)
        acc = _Account()
        reader = _OwnReader(loc, run, acc) if loc.mark is not None else _NativeReader(loc, run, acc)
        for table in reader.tables():
            table = select.filter(table)
            if table.num_rows:
                yield table
        with self._lock:
            self._accounts[(run.project_id, run.run_id)] = acc


class DvcLiveFiles(FileAccess):
    """Files of one run: by the mark's list (trackport-written) or `<safe(run)>/<path in folder>`."""

    def __init__(self, loc: RunLoc, run: RunRef):
        self.loc, self.run = loc, run
        self.stored = {f["file"]: f["stored"] for f in (loc.mark or {}).get("files", [])}

    def local_path(self, path: str) -> Path:
        rel = self.stored.get(path)
        if rel is None:
            head, _, rest = path.partition("/")
            if head != safe(self.run.run_id) or not rest:
                raise RunError("file is not one of this DVCLive run's files", project_id=self.run.project_id,
                               run_id=self.run.run_id, file=path)
            rel = rest
        try:
            return resolve_inside(self.loc.path, rel)
        except ValueError as exc:
            raise RunError(str(exc), project_id=self.run.project_id, run_id=self.run.run_id, file=path) from None

    def open(self, path: str) -> BinaryIO:
        return self.local_path(path).open("rb")


# -- readers --------------------------------------------------------------------------

class _Reader:
    def __init__(self, loc: RunLoc, run: RunRef, acc: _Account):
        self.loc, self.run, self.acc = loc, run, acc
        self.cols = SeriesColumns()

    def _err(self, message: str, file: str | Path | None = None) -> RunError:
        return RunError(message, project_id=self.run.project_id, run_id=self.run.run_id,
                        file=None if file is None else str(file))

    def _flush(self) -> pa.Table:
        return self.cols.take_micro(self.run.project_id, self.run.run_id)

    def _add(self, path, kind, step, ms, value) -> Iterator[pa.Table]:
        self.cols.add(path, kind, step, ms, value)
        if len(self.cols) + self.cols.weight >= BATCH_POINTS:
            yield self._flush()

    def _singles(self, rows: list[dict]) -> pa.Table:
        return rows_to_table([{"attribute_path": r["path"], "attribute_type": r["type"],
                               _value_column(r["type"]): r["value"]} for r in rows],
                             {"project_id": self.run.project_id, "run_id": self.run.run_id})

    def _tsv(self, rel: str, path: str, kind: str | None) -> Iterator[pa.Table]:
        """One plots/metrics TSV as a series; `kind` None: float_series if every value is a number."""
        file = self.loc.path / rel
        try:
            header, rows, torn = client.read_tsv(file)
        except (OSError, UnicodeDecodeError) as exc:
            raise self._err(f"cannot read the metric file: {exc}", file) from None
        if torn:
            self.acc.warnings.append(f"{rel}: last line without its line end (a training still writing?) "
                                     f"left out")
        if not header:
            return
        value_at = len(header) - 1
        step_at = header.index("step") if "step" in header[:-1] else None
        ts_at = header.index("timestamp") if "timestamp" in header[:-1] else None
        cells = [r[value_at] if len(r) > value_at else "" for r in rows]
        if kind is None:
            kind = "float_series"
            try:
                for c in cells:
                    mp.parse_float(c)
            except ValueError:
                kind = "string_series"
        for line, (row, cell) in enumerate(zip(rows, cells), start=2):
            try:
                step = mp.parse_step(row[step_at]) if step_at is not None and step_at < len(row) else None
                ms = mp.parse_timestamp(row[ts_at]) if ts_at is not None and ts_at < len(row) else None
                value = mp.parse_float(cell) if kind == "float_series" else cell
            except (ValueError, ArithmeticError) as exc:
                raise self._err(f"line {line}: {exc}", file) from None
            yield from self._add(path, kind, step, ms, value)


def _value_column(kind: str) -> str:
    from trackport.core.schema import VALUE_COLUMN

    return VALUE_COLUMN[kind]


class _OwnReader(_Reader):
    """A folder the trackport sink wrote: its mark lists every value, series and file exactly."""

    def tables(self) -> Iterator[pa.Table]:
        mark = self.loc.mark
        rows = [{"path": p["path"], "type": p["type"], "value": mp.value_of_mark(p["type"], p["value"])}
                for p in mark.get("params", [])]
        for f in mark.get("files", []):
            if f["type"] != "file_series":
                rows.append({"path": f["path"], "type": f["type"], "value": {"path": f["file"]}})
        if rows:
            table = self._singles(rows)
            yield self._with_file_times(table, mark.get("files", []))
        for path, info in sorted(mark.get("series", {}).items()):
            yield from self._tsv(info["file"], path, info["type"])
        for path, info in sorted(mark.get("histograms", {}).items()):
            yield from self._histograms(info["file"], path)
        for f in mark.get("files", []):
            if f["type"] == "file_series":
                step = None if f["step"] is None else mp.parse_step(f["step"])
                yield from self._add(f["path"], "file_series", step, f["timestamp"], f["file"])
        if len(self.cols):
            yield self._flush()

    def _with_file_times(self, table: pa.Table, files: list[dict]) -> pa.Table:
        """Single files keep the step and timestamp their row had (usually none)."""
        extra = {f["path"]: f for f in files if f["type"] != "file_series"}
        if not any(f.get("timestamp") is not None or f.get("step") is not None for f in extra.values()):
            return table
        from trackport.core.schema import STEP_TYPE, TIMESTAMP_TYPE

        paths = table.column("attribute_path").to_pylist()
        ts = [extra[p]["timestamp"] if p in extra else None for p in paths]
        micro = [mp.parse_step(extra[p]["step"]) if p in extra and extra[p].get("step") else None for p in paths]
        valid = np.array([m is not None for m in micro])
        steps = decimal_steps(np.array([m or 0 for m in micro], dtype=np.int64), valid)
        table = table.set_column(table.schema.get_field_index("step"), pa.field("step", STEP_TYPE), steps)
        return table.set_column(table.schema.get_field_index("timestamp"), pa.field("timestamp", TIMESTAMP_TYPE),
                                pa.array(ts, pa.int64()).cast(TIMESTAMP_TYPE))

    def _histograms(self, rel: str, path: str) -> Iterator[pa.Table]:
        file = self.loc.path / rel
        try:
            with open(file, encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    if not line.endswith("\n"):
                        raise self._err(f"line {n} is cut short", file)
                    point = json.loads(line)
                    step = None if point["step"] is None else mp.parse_step(point["step"])
                    value = {"type": point["type"], "edges": point["edges"], "values": point["values"]}
                    yield from self._add(path, "histogram_series", step, point["timestamp"], value)
        except (OSError, ValueError, KeyError) as exc:
            raise self._err(f"cannot read the histogram file: {exc}", file) from None


class _NativeReader(_Reader):
    """A folder DVCLive wrote: params.yaml, metrics.json, plots/, artifacts/ (mapping.py)."""

    def tables(self) -> Iterator[pa.Table]:
        root = self.loc.path
        metric_files = sorted(p for p in (root / mp.METRICS_DIR).rglob("*.tsv") if p.is_file()) \
            if (root / mp.METRICS_DIR).is_dir() else []
        metric_names = {p.relative_to(root / mp.METRICS_DIR).as_posix()[:-4]: p for p in metric_files}
        rows = self._params() + self._summary(set(metric_names)) + self._file_rows()
        singles = [r for r in rows if r["type"] != "file_series"]
        if singles:
            yield self._singles(singles)
        for name, p in sorted(metric_names.items()):
            yield from self._tsv(p.relative_to(root).as_posix(), name, None)
        for r in rows:
            if r["type"] == "file_series":
                yield from self._add(r["path"], "file_series", r["step"], None, r["value"]["path"])
        if len(self.cols):
            yield self._flush()

    def _typed(self, path: str, value: Any) -> dict:
        kind, value, changed = mp.native_value(value)
        if changed:
            self.acc.transform("yaml_value_as_json", path)
        return {"path": path, "type": kind, "value": value}

    def _params(self) -> list[dict]:
        file = self.loc.path / mp.PARAMS_FILE
        if not file.is_file():
            return []
        try:
            data = client.load_yaml(file)
        except Exception as exc:        # noqa: BLE001  (ruamel raises many types)
            raise self._err(f"params.yaml is not valid YAML ({type(exc).__name__}: {exc}). "
                            f"Fix: repair the file", file) from None
        if data is None:
            return []
        if not isinstance(data, dict):
            return [self._typed("params", data)]
        return [self._typed(f"params/{k}", v) for k, v in mp.flatten(data)]

    def _summary(self, metric_names: set[str]) -> list[dict]:
        file = self.loc.path / mp.METRICS_FILE
        if not file.is_file():
            return []
        try:
            with open(file, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise self._err(f"metrics.json is not valid JSON ({exc}). Fix: repair the file", file) from None
        if not isinstance(data, dict):
            return [self._typed("summary", data)]
        out = []
        for key, value in mp.flatten(data):
            if key in metric_names:
                continue                  # the latest point of a series read from its TSV
            out.append(self._typed("dvclive/step" if key == "step" else key, value))
        return out

    def _file_rows(self) -> list[dict]:
        """Images (a folder of `<step>.<ext>` is an image series), other plots, artifacts, and any
        other file of the folder."""
        root, prefix = self.loc.path, safe(self.run.run_id)
        known = {mp.PARAMS_FILE, mp.METRICS_FILE, mp.PLOTS_DIR, mp.ARTIFACTS_DIR, mp.MARKER, mp.ORIGIN_FILE,
                 *mp.DERIVED_FILES}
        out: list[dict] = []

        def cell(p: Path) -> dict:
            return {"path": f"{prefix}/{p.relative_to(root).as_posix()}"}

        images = root / mp.IMAGES_DIR
        if images.is_dir():
            by_folder: dict[Path, list[Path]] = {}
            for p in sorted(images.rglob("*")):
                if p.is_file():
                    by_folder.setdefault(p.parent, []).append(p)
            for folder, members in sorted(by_folder.items()):
                steps = [_numeric_stem(p) for p in members]
                series = folder != images and all(s is not None for s in steps) and \
                    all(p.suffix.lower() in mp.IMAGE_SUFFIXES for p in members)
                for p, step in zip(members, steps):
                    if series:
                        out.append({"path": f"images/{folder.relative_to(images).as_posix()}",
                                    "type": "file_series", "step": step, "value": cell(p)})
                    else:
                        out.append({"path": f"images/{p.relative_to(images).as_posix()}", "type": "file",
                                    "value": cell(p)})
        plots = root / mp.PLOTS_DIR
        if plots.is_dir():
            for sub in sorted(plots.iterdir()):
                if sub.name in ("metrics", "images"):
                    continue
                members = sorted(p for p in sub.rglob("*") if p.is_file()) if sub.is_dir() else [sub]
                for p in members:
                    out.append({"path": p.relative_to(root).as_posix(), "type": "file", "value": cell(p)})
        artifacts = root / mp.ARTIFACTS_DIR
        if artifacts.is_dir():
            for p in sorted(artifacts.iterdir()):
                out.append({"path": f"artifacts/{p.name}", "type": "file_set" if p.is_dir() else "file",
                            "value": cell(p)})
        for p in sorted(root.iterdir()):
            if p.name in known or p.name.startswith("."):
                continue
            out.append({"path": f"files/{p.name}", "type": "file_set" if p.is_dir() else "file",
                        "value": cell(p)})
        return out


def _numeric_stem(p: Path) -> int | None:
    try:
        return mp.parse_step(PurePosixPath(p.name).stem)
    except ValueError:
        return None
