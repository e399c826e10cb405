"""`neptune:PATH`: Neptune offline data of both client generations as a source.

A data directory (`.neptune/` or any folder below it) may hold
- 2.x client runs: folders with `metadata.json` and `data-<n>.log` JSON
  operation queues (`offline/run__*`, `async/run__*`), read by reader2.py;
- 3.x client runs: `run_operations.sqlite3` files, read by reader3.py.

Each run's operations are replayed in order (assignments overwrite, deletes
remove, set adds/removes apply) by `RunBuilder` into canonical rows.  A run
written by trackport's Neptune sink carries `trackport/origin/*` (its source
identity) and `trackport/restore` (the rows Neptune could not hold natively):
those give back the original identity and rows, and the `trackport/*`
bookkeeping is not emitted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError, UsageError
from trackport.core.model import RunRef, Selection
from trackport.core.schema import FILE_TYPES, SCHEMA, TIMESTAMP_TYPE, VALUE_COLUMN, conform
from trackport.core.steps import decimal_steps, unscaled_text

from .. import mapping as mp

log = logging.getLogger(__name__)

_BATCH_ROWS = 50_000


@dataclass
class _Series:
    attribute_type: str
    steps: list = field(default_factory=list)       # int millionths or None
    timestamps: list = field(default_factory=list)  # int ms or None
    values: list = field(default_factory=list)


class RunBuilder:
    """Replays one run's operations into attribute states, then canonical rows."""

    def __init__(self) -> None:
        self.singles: dict[str, tuple[str, Any]] = {}
        self.series: dict[str, _Series] = {}
        # attribute -> list of (attribute_type, step millionths|None, ts ms|None, local path)
        self.files: dict[str, list[tuple[str, int | None, int | None, str]]] = {}
        self.notes: list[str] = []
        # what the replay transformed or could not give back: kind -> count, kind -> examples
        self.transformed: Counter = Counter()
        self.dropped: Counter = Counter()
        self.examples: dict[str, list[str]] = {}
        # the last step of each series (millionths): where a step-less point is numbered from
        self._last_step: dict[str, int] = {}

    def count(self, kind: str, example: str | None = None, drop: bool = False) -> None:
        (self.dropped if drop else self.transformed)[kind] += 1
        if example is not None:
            seen = self.examples.setdefault(kind, [])
            if len(seen) < 5 and example not in seen:
                seen.append(example)

    def step_of(self, path: str, step: int | None) -> int:
        """The step Neptune gives a point: its own, or for a point logged without one (the
        client writes `"step": null` for `append()`/`log()` without `step=`) the series'
        last step + 1, and 0 for a series' first point (mapping.STEP_LESS)."""
        if step is None:
            last = self._last_step.get(path)
            step = 0 if last is None else last + 1_000_000
            self.transformed[mp.STEP_LESS] += 1
        self._last_step[path] = step
        return step

    # single values
    def assign(self, path: str, attribute_type: str, value: Any) -> None:
        self.delete(path)
        self.singles[path] = (attribute_type, value)

    def set_add(self, path: str, values) -> None:
        current = self.singles.get(path)
        items = list(current[1]) if current and current[0] == "string_set" else []
        for v in values:
            if v not in items:
                items.append(v)
        self.singles[path] = ("string_set", items)

    def set_remove(self, path: str, values) -> None:
        current = self.singles.get(path)
        items = list(current[1]) if current and current[0] == "string_set" else []
        self.singles[path] = ("string_set", [v for v in items if v not in set(values)])

    def set_clear(self, path: str) -> None:
        self.singles[path] = ("string_set", [])

    def delete(self, path: str) -> None:
        self.singles.pop(path, None)
        self.series.pop(path, None)
        self.files.pop(path, None)
        self._last_step.pop(path, None)

    # series
    def append(self, path: str, attribute_type: str, step: int | None, ts: int | None, value: Any) -> None:
        s = self.series.get(path)
        if s is None or s.attribute_type != attribute_type:
            s = self.series[path] = _Series(attribute_type)
        s.steps.append(self.step_of(path, step))
        s.timestamps.append(ts)
        s.values.append(value)

    def clear_series(self, path: str) -> None:
        self.series.pop(path, None)
        self._last_step.pop(path, None)
        if path in self.files:
            self.files[path] = [f for f in self.files[path] if f[0] != "file_series"]

    # files
    def file(self, path: str, attribute_type: str, local: str, step: int | None = None,
             ts: int | None = None, append: bool = False) -> None:
        if not append:
            self.delete(path)
        self.files.setdefault(path, []).append((attribute_type, step, ts, local))

    def drop_files(self, path: str) -> None:
        self.files.pop(path, None)


def _steps(values: list) -> pa.Array:
    valid = np.array([v is not None for v in values], dtype=bool)
    return decimal_steps(np.array([0 if v is None else v for v in values], dtype=np.int64), valid)


def _ts(values: list) -> pa.Array:
    return pa.array(values, pa.int64()).view(TIMESTAMP_TYPE)


def _column_table(project_id: str, run_id: str, path: str, attribute_type: str,
                  steps: list, timestamps: list, values: list) -> pa.Table:
    n = len(values)
    value_column = VALUE_COLUMN[attribute_type]
    arrays = []
    for f in SCHEMA:
        if f.name == "project_id":
            arrays.append(pa.array([project_id] * n, pa.string()))
        elif f.name == "run_id":
            arrays.append(pa.array([run_id] * n, pa.string()))
        elif f.name == "attribute_path":
            arrays.append(pa.array([path] * n, pa.string()))
        elif f.name == "attribute_type":
            arrays.append(pa.array([attribute_type] * n, pa.string()))
        elif f.name == "step":
            arrays.append(_steps(steps))
        elif f.name == "timestamp":
            arrays.append(_ts(timestamps))
        elif f.name == value_column:
            if f.name == "datetime_value":
                arrays.append(_ts(values))
            elif f.name == "file_value":
                arrays.append(pa.array([{"path": v} for v in values], f.type))
            else:
                arrays.append(pa.array(values, f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


@dataclass
class ReadRun:
    """A replayed run: what the source emits, plus where its files are."""

    project_id: str
    run_id: str
    builder: RunBuilder
    origin_uri: str | None = None
    restore: Path | None = None     # local path of the restore table, trackport-written runs
    label: str = ""
    scratch: Path | None = None

    def file_path(self, attr: str, step: int | None, local: str) -> str:
        """The relative path a native file row gets (neptune-exporter style: project/run/attribute)."""
        where = f"{self.project_id}/{self.run_id}/{attr}"
        if step is not None:
            where += f"/{mp.step_token(unscaled_text(step))}"
        if Path(local).is_dir():
            return where
        return f"{where}/{Path(local).name or 'file'}"

    def tables(self, files: dict[str, Path]) -> Iterator[pa.Table]:
        b = self.builder
        restore = self._restore_table() if self.restore is not None else None
        replaced: set[str] = set()
        prefixes: list[str] = []
        if restore is not None:
            replaced = set(restore.column("attribute_path").to_pylist())
            for path, typ in zip(restore.column("attribute_path").to_pylist(),
                                 restore.column("attribute_type").to_pylist()):
                if typ in FILE_TYPES:
                    prefixes.append(path + "/")

        def hidden(path: str) -> bool:
            if restore is None:
                return False
            return (path in replaced or mp.is_origin_path(path)
                    or any(path.startswith(p) for p in prefixes))

        # Neptune string sets are unordered (the 2.x client sends a Python set): emit them sorted
        singles = [(p, t, sorted(v) if t == "string_set" else v)
                   for p, (t, v) in sorted(b.singles.items()) if not hidden(p)]
        by_type: dict[str, list] = {}
        for p, t, v in singles:
            by_type.setdefault(t, []).append((p, v))
        for t, items in sorted(by_type.items()):
            table = _column_table(self.project_id, self.run_id, "", t, [None] * len(items),
                                  [None] * len(items), [v for _, v in items])
            yield table.set_column(2, "attribute_path", pa.array([p for p, _ in items], pa.string()))
        for path, s in sorted(b.series.items()):
            if hidden(path):
                continue
            for start in range(0, len(s.values), _BATCH_ROWS):
                end = start + _BATCH_ROWS
                yield _column_table(self.project_id, self.run_id, path, s.attribute_type,
                                    s.steps[start:end], s.timestamps[start:end], s.values[start:end])
        # native files (and the restore table's file rows, mapped onto native files)
        native_by_key: dict[tuple[str, int | None], str] = {}
        for attr, entries in sorted(b.files.items()):
            if entries and entries[0][0] == "file_set":
                local = self._file_set_local(attr, [e[3] for e in entries])
                entries = [("file_set", None, None, local)]
            for typ, step, ts, local in entries:
                native_by_key.setdefault((attr, step), local)
                if hidden(attr):
                    continue
                rel = self.file_path(attr, step, local)
                files[rel] = Path(local)
                yield _column_table(self.project_id, self.run_id, attr, typ, [step], [ts], [rel])
        if restore is not None:
            yield from self._restored(restore, b, files, native_by_key)

    def _restore_table(self) -> pa.Table | None:
        try:
            table = pq.read_table(self.restore)
        except (OSError, pa.ArrowInvalid) as exc:
            raise RunError(f"cannot read the restore table ({exc})", project_id=self.project_id,
                           run_id=self.run_id, file=str(self.restore)) from None
        if mp.RESTORE_ACTION in table.column_names:
            suppress = table.filter(pc.equal(table.column(mp.RESTORE_ACTION), "suppress"))
            for path in suppress.column("attribute_path").to_pylist():
                self.builder.delete(path)
            table = table.filter(pc.equal(table.column(mp.RESTORE_ACTION), "row"))
        table = conform(table.select([c for c in table.column_names if c in SCHEMA.names]), str(self.restore))
        n = table.num_rows
        table = table.set_column(0, "project_id", pa.array([self.project_id] * n, pa.string()))
        return table.set_column(1, "run_id", pa.array([self.run_id] * n, pa.string()))

    def _restored(self, table: pa.Table, b: RunBuilder, files: dict[str, Path],
                  native: dict[tuple[str, int | None], str]) -> Iterator[pa.Table]:
        plain = table.filter(pc.invert(pc.is_in(table.column("attribute_type"),
                                                value_set=pa.array(sorted(FILE_TYPES)))))
        if plain.num_rows:
            yield plain
        file_rows = table.filter(pc.is_in(table.column("attribute_type"), value_set=pa.array(sorted(FILE_TYPES))))
        if not file_rows.num_rows:
            return
        from trackport.core.steps import unscaled

        attrs = file_rows.column("attribute_path").to_pylist()
        types = file_rows.column("attribute_type").to_pylist()
        step_col = file_rows.column("step")
        steps = unscaled(step_col).tolist()
        valid = step_col.is_valid().to_pylist()
        paths = pc.struct_field(file_rows.column("file_value"), "path").to_pylist()
        for attr, typ, step, ok, original in zip(attrs, types, steps, valid, paths):
            step = step if ok else None
            local = native.get((attr, step))
            if local is None and typ == "file_set":
                local = self._file_set_dir(attr, b)
            if local is None and typ == "file_series":
                local = native.get((f"{attr}/{mp.step_token(unscaled_text(step))}", None))
            if local is None or original is None:
                raise RunError(f"trackport/restore names file attribute {attr!r} (step {step}) but the "
                               f"run holds no such upload", project_id=self.project_id, run_id=self.run_id,
                               file=original)
            files[original] = Path(local)
        yield file_rows

    def _file_set_local(self, attr: str, members: list[str]) -> str:
        """One directory for a file set: the uploaded directory itself, or a scratch copy of the members."""
        if len(members) == 1 and Path(members[0]).is_dir():
            return members[0]
        root = Path(tempfile.mkdtemp(prefix="trackport-neptune-set-", dir=self.scratch))
        for member in members:
            src = Path(member)
            if src.is_dir():
                shutil.copytree(src, root / src.name, dirs_exist_ok=True)
            elif src.exists():
                shutil.copyfile(src, root / src.name)
        return str(root)

    def _file_set_dir(self, attr: str, b: RunBuilder) -> str | None:
        """3.x writes a file set as one file attribute per file under `attr/`: gather them."""
        members = {p[len(attr) + 1:]: e[0][3] for p, e in b.files.items() if p.startswith(attr + "/") and e}
        if not members:
            return None
        root = Path(tempfile.mkdtemp(prefix="trackport-neptune-set-", dir=self.scratch))
        for rel, local in members.items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, target)
        return str(root)


class _Files(FileAccess):
    def __init__(self, files: dict[str, Path], ref: RunRef):
        self.map = files
        self.ref = ref

    def local_path(self, path: str) -> Path:
        local = self.map.get(path)
        if local is None:
            raise RunError("no such file in this run", project_id=self.ref.project_id,
                           run_id=self.ref.run_id, file=path)
        return local

    def open(self, path: str) -> BinaryIO:
        local = self.local_path(path)
        try:
            return open(local, "rb")
        except OSError as exc:
            raise RunError(f"cannot open {local}: {exc.strerror}", project_id=self.ref.project_id,
                           run_id=self.ref.run_id, file=path) from None


class NeptuneOfflineSource(Source):
    capabilities = mp.SOURCE_CAPABILITIES

    def __init__(self, root: Path, options: dict[str, Any]):
        self.root = root
        self.uri = f"neptune:{root}"
        self.options = options
        self.default_project = options.get("neptune_project") or "offline"
        self._files: dict[tuple[str, str], dict[str, Path]] = {}
        self._notes: dict[tuple[str, str], RunBuilder] = {}
        self._tmp = Path(tempfile.mkdtemp(prefix="trackport-neptune-src-"))

    # discovery -------------------------------------------------------------------
    def _locations(self) -> list[tuple[str, Path, tuple[Path, ...]]]:
        """(kind, where, queues): a 3.x database, or a 2.x container with its executions in order."""
        out: list[tuple[str, Path, tuple[Path, ...]]] = []
        for db in sorted(self.root.rglob("run_operations.sqlite3")):
            out.append(("3", db, ()))
        queues = {p.parent for p in self.root.rglob("data-*.log")}
        queues |= {p.parent for p in self.root.rglob("last_put_version")}
        queues |= {p.parent for p in self.root.rglob("metadata.json") if (p.parent / "last_put_version").exists()}
        if any(self.root.glob("data-*.log")):
            queues.add(self.root)
        from .reader2 import containers

        for executions in containers(queues):
            out.append(("2", executions[0], tuple(executions)))
        return out

    @staticmethod
    def _where(run: RunRef) -> tuple[str, Path, tuple[Path, ...]]:
        kind, where = run.locator[0], Path(run.locator[1])
        queues = tuple(Path(q) for q in run.locator[2]) if len(run.locator) > 2 else (where,)
        return kind, where, queues

    def _read(self, kind: str, where: Path, queues: tuple[Path, ...]) -> ReadRun:
        if kind == "3":
            from .reader3 import read_run3

            return read_run3(where, self)
        from .reader2 import read_run2

        return read_run2(list(queues), self)

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        if not self.root.exists():
            raise UsageError(f"no Neptune data at {self.root}")
        refs = []
        for kind, where, queues in self._locations():
            try:
                project_id, run_id = self._identity(kind, where, queues)
            except RunError as exc:
                log.error("%s", exc)
                continue
            if select.wants_run(project_id, run_id):
                locator = (kind, str(where), tuple(str(q) for q in queues)) if kind == "2" else (kind, str(where))
                refs.append(RunRef(project_id, run_id, locator))
        refs.sort(key=lambda r: (r.project_id, r.run_id, r.locator[1]))
        yield from refs

    def run_version(self, run: RunRef) -> str:
        """A digest of the sizes of the run's files as the client left them (2.x: every file of
        its queue folders, the `data-*.log` operation logs first of all; 3.x: the operation
        database and its write-ahead log): they grow while a training writes, nothing is read."""
        kind, where, queues = self._where(run)
        sizes = []
        if kind == "3":
            for p in (where, where.with_name(where.name + "-wal")):
                sizes.append((p.name, p.stat().st_size if p.exists() else None))
        else:
            for queue in queues:
                for top, dirs, names in os.walk(queue):
                    dirs.sort()
                    for name in sorted(names):
                        p = Path(top) / name
                        if name.endswith(".lock"):
                            continue
                        try:
                            sizes.append((str(p.relative_to(queue.parent)), p.stat().st_size))
                        except OSError:
                            continue
        return hashlib.blake2b(json.dumps(sizes).encode(), digest_size=12).hexdigest()

    def _identity(self, kind: str, where: Path, queues: tuple[Path, ...]) -> tuple[str, str]:
        if kind == "3":
            from .reader3 import identity3

            return identity3(where, self)
        from .reader2 import identity2

        return identity2(list(queues), self)

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        read = self._read(*self._where(run))
        files: dict[str, Path] = {}
        for table in read.tables(files):
            table = select.filter(table)
            if table.num_rows:
                yield table
        self._files[(run.project_id, run.run_id)] = files
        self._notes[(run.project_id, run.run_id)] = read.builder

    def account(self, run: RunRef, report) -> None:
        b = self._notes.get((run.project_id, run.run_id))
        if b is None:
            return
        for counts, add in ((b.transformed, report.transformed), (b.dropped, report.dropped)):
            for kind, count in sorted(counts.items()):
                examples = b.examples.get(kind, [])[:count]
                for example in examples:
                    add(kind, 1, example)
                if count > len(examples):
                    add(kind, count - len(examples))
        for note in b.notes:
            report.warn(note)

    def files(self, run: RunRef) -> FileAccess:
        files = self._files.get((run.project_id, run.run_id))
        if files is None:
            files = {}
            for _ in self.read_run(run, Selection()):
                pass
            files = self._files[(run.project_id, run.run_id)]
        return _Files(files, run)

    def describe_run(self, run: RunRef) -> str:
        return f"{run.project_id}/{run.run_id} ({run.locator[1]})"

    def scratch(self) -> Path:
        return self._tmp

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def open_offline_source(rest: str, options: dict[str, Any]) -> NeptuneOfflineSource:
    text = rest.strip()
    if not text:
        raise UsageError("neptune: needs a path: neptune:PATH/.neptune (or any folder under it)")
    root = Path(text).expanduser()
    if not root.is_absolute():
        root = Path.cwd() / root
    if not root.exists():
        raise UsageError(f"no Neptune data at {root}")
    return NeptuneOfflineSource(root.resolve(), options)


def origin_identity(singles: dict[str, tuple[str, Any]]) -> tuple[str | None, str | None, str | None]:
    def get(path: str) -> str | None:
        got = singles.get(path)
        return got[1] if got and got[0] == "string" else None

    return get(mp.ORIGIN_URI), get(mp.ORIGIN_PROJECT), get(mp.ORIGIN_RUN)
