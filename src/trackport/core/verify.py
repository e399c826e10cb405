"""Proof of what moved: the source and the destination, read back, compared.

Per series: point count, min/max step and an order-independent fingerprint of
(step, value[, timestamp]) computed with vectorised 64-bit mixing, so memory
stays flat however long the series.  Single values compare by value; files by
size and digest.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import layout
from . import steps as stepmath
from .connector import FileAccess, Sink, Source, find_loaded
from .fidelity import Drawings, RunDrawing, SeriesTap
from .errors import Cancelled, RunError
from .model import RunRef, Selection
from .report import DIFFERENT, FAILED, MISSING, VERIFIED, CommandReport, Difference, RunReport
from .schema import FILE_TYPES, series_rows

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_MAX_DIFFS = 20


def _mix(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 finaliser, vectorised (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(salt)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _text_hash(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=np.uint64)
    for i, v in enumerate(values):
        data = v.encode("utf-8", "surrogatepass") if isinstance(v, str) else json.dumps(v, sort_keys=True).encode()
        out[i] = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
    return out


def _float_bits(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    bits = arr.view(np.uint64).copy()
    bits[np.isnan(arr)] = np.uint64(0x7FF8000000000000)  # one NaN
    return bits


@dataclass
class SeriesSummary:
    attribute_type: str
    count: int = 0
    min_step: Any = None
    max_step: Any = None
    fingerprint: int = 0
    ts_fingerprint: int = 0


@dataclass
class RunSummary:
    values: dict[str, tuple[str, Any]] = field(default_factory=dict)
    series: dict[str, SeriesSummary] = field(default_factory=dict)
    files: dict[tuple[str, Any], tuple[str, Any]] = field(default_factory=dict)  # (attr, step) -> (path, None)


def summarize(tables: Iterator[pa.Table]) -> RunSummary:
    out = RunSummary()
    for table in tables:
        if not isinstance(table, pa.Table):
            table = pa.Table.from_batches([table])
        if table.num_rows == 0:
            continue
        points = series_rows(table)
        _single(out, table.filter(pc.invert(points)))
        stepped = table.filter(points)
        if stepped.num_rows:
            _stepped(out, stepped)
    return out


def _single(out: RunSummary, single: pa.Table) -> None:
    from .schema import VALUE_COLUMN

    if not single.num_rows:
        return
    for row in single.to_pylist():
        typ = row["attribute_type"]
        value = row[VALUE_COLUMN[typ]]
        if typ in FILE_TYPES:
            out.files[(row["attribute_path"], None)] = (typ, value["path"] if value else None)
        else:
            if typ == "string_set" and value is not None:
                value = sorted(value)
            out.values[row["attribute_path"]] = (typ, value)


def _stepped(out: RunSummary, table: pa.Table) -> None:
    for (path, typ), group in _groups(table):
        summary = out.series.setdefault(path, SeriesSummary(typ))
        steps = group.column("step")
        lo, hi = (v.as_py() for v in pc.min_max(steps).values())
        if lo is not None:
            summary.min_step = lo if summary.min_step is None else min(summary.min_step, lo)
            summary.max_step = hi if summary.max_step is None else max(summary.max_step, hi)
        summary.count += group.num_rows
        raw = stepmath.unscaled(steps)
        if steps.null_count:     # a point without a step is not a point at step 0
            raw = np.where(np.asarray(steps.is_valid()), raw, np.int64(-(2**63)))
        h_step = _mix(raw, 1)
        if typ == "float_series":
            h_val = _mix(_float_bits(group.column("float_value")), 2)
        elif typ == "string_series":
            h_val = _text_hash(group.column("string_value").to_pylist())
        elif typ == "histogram_series":
            h_val = _text_hash(group.column("histogram_value").to_pylist())
        else:
            h_val = np.zeros(group.num_rows, dtype=np.uint64)
            for s, fv in zip(steps.to_pylist(), group.column("file_value").to_pylist()):
                out.files[(path, s)] = (typ, fv["path"] if fv else None)
        with np.errstate(over="ignore"):
            summary.fingerprint = int((np.uint64(summary.fingerprint) + np.sum(_mix(h_step ^ h_val, 3), dtype=np.uint64)) & _MASK)
            ts = group.column("timestamp").cast(pa.int64()).fill_null(-1).to_numpy()
            summary.ts_fingerprint = int((np.uint64(summary.ts_fingerprint) + np.sum(_mix(h_step ^ _mix(ts, 4), 5), dtype=np.uint64)) & _MASK)


def _groups(table: pa.Table):
    """(path, type) and its rows: one sort and one run-length pass, however many attributes."""
    table = table.sort_by([("attribute_path", "ascending"), ("attribute_type", "ascending")])
    key = pc.binary_join_element_wise(table.column("attribute_path"), table.column("attribute_type"), "\x00")
    runs = pc.run_end_encode(key.combine_chunks())
    start = 0
    for end, joined in zip(runs.run_ends.to_pylist(), runs.values.to_pylist()):
        path, typ = joined.rsplit("\x00", 1)
        yield (path, typ), table.slice(start, end - start)
        start = end


def file_digest(files: FileAccess, path: str) -> tuple[int, str]:
    """(size, blake2b) of a file, or of a directory's files in name order."""
    local = files.local_path(path)
    special = layout.special_file(local) if local is not None else None
    if special:   # opening a named pipe waits for a writer: never read it
        raise OSError(f"{path!r} {special}")
    digest = hashlib.blake2b(digest_size=16)
    size = 0
    if local is not None and local.is_dir():
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = f.relative_to(local).as_posix()
            digest.update(rel.encode() + b"\0")
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
        return size, digest.hexdigest()
    with files.open(path) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(expected: RunSummary, actual: RunSummary, src_files: FileAccess, dst_files: FileAccess,
            timestamps: bool = True, digests: dict[str, tuple[Any, Any]] | None = None
            ) -> tuple[list[Difference], dict[str, int]]:
    """The undeclared differences and what was checked; `digests`, when given, receives each
    file's (source, destination) size/digest text (None where a side has no file)."""
    diffs: list[Difference] = []
    checked = {"values": 0, "series": 0, "points": 0, "files": 0}
    for path in sorted(set(expected.values) | set(actual.values)):
        e, a = expected.values.get(path), actual.values.get(path)
        checked["values"] += 1
        if e is None or a is None:
            diffs.append(Difference("value", path, "missing in destination" if a is None else "not in source"))
        elif e[0] != a[0] or not _same(e[1], a[1]):
            diffs.append(Difference("value", path, "value", f"{e[0]} {e[1]!r:.80}", f"{a[0]} {a[1]!r:.80}"))
    for path in sorted(set(expected.series) | set(actual.series)):
        e, a = expected.series.get(path), actual.series.get(path)
        checked["series"] += 1
        if e is None or a is None:
            diffs.append(Difference("series", path, "missing in destination" if a is None else "not in source"))
            continue
        checked["points"] += e.count
        for what in ("attribute_type", "count", "min_step", "max_step", "fingerprint"):
            if getattr(e, what) != getattr(a, what):
                diffs.append(Difference("series", path, what, getattr(e, what), getattr(a, what)))
                break
        else:
            if timestamps and e.ts_fingerprint != a.ts_fingerprint:
                diffs.append(Difference("series", path, "point timestamps"))
    for key in sorted(set(expected.files) | set(actual.files), key=lambda k: (k[0], str(k[1]))):
        e, a = expected.files.get(key), actual.files.get(key)
        label = key[0] if key[1] is None else f"{key[0]}@{key[1]}"
        checked["files"] += 1
        if e is None or a is None:
            diffs.append(Difference("file", label, "missing in destination" if a is None else "not in source"))
            if digests is not None:
                digests[label] = (None if e is None else "?", None if a is None else "?")
            continue
        try:
            es = file_digest(src_files, e[1])
        except Exception as exc:
            diffs.append(Difference("file", label, "unreadable in source", str(exc)))
            continue
        try:
            ds = file_digest(dst_files, a[1])
        except Exception as exc:
            diffs.append(Difference("file", label, "unreadable in destination", None, str(exc)))
            continue
        if digests is not None:
            digests[label] = (f"{es[0]}/{es[1]}", f"{ds[0]}/{ds[1]}")
        if es != ds:
            diffs.append(Difference("file", label, "size/digest", f"{es[0]}/{es[1][:12]}", f"{ds[0]}/{ds[1][:12]}"))
    return diffs, checked


def verify(source: Source, sink: Sink, select: Selection, report: CommandReport,
           workers: int = 4, progress=None, cancel=None, drawings: Drawings | None = None) -> CommandReport:
    """Compare every selected source run with its copy in `sink`, into `report`.  `cancel`
    (a threading.Event): once set, no further run is compared and Cancelled is raised.
    `drawings`: also collect each run's series, params and files as `trackport report` shows them."""
    from .pipeline import AttributeMatches, check_selection, count_files, in_parallel

    sink.preflight(read_only=True)
    dest_source = sink.as_source()
    runs = list(source.list_runs(select))
    check_selection(select, runs, report, source)
    attributes = AttributeMatches()
    if progress is not None:
        progress.start(len(runs))
    timestamps = sink.capabilities.keeps_timestamps
    if drawings is not None:
        drawings.total_runs = max(1, len(runs))

    def one(ref: RunRef) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled(report)
        run_report = report.add(RunReport(ref.project_id, ref.run_id))
        name = source.describe_run(ref)
        if progress is not None:
            progress.run_started(name)
        taps = (SeriesTap(), SeriesTap()) if drawings is not None else None
        expected = actual = None
        diffs: list[Difference] = []
        digests: dict[str, tuple[Any, Any]] = {}
        try:
            origin = source.origin(ref)
            dest = find_loaded(sink, source, ref, origin)
            if dest is not None and dest.damage:
                run_report.status = FAILED
                run_report.error = f"run {name} in the destination: {dest.damage}"
                return
            if dest is None or not dest.complete:
                run_report.status = MISSING
                run_report.error = "not in the destination" if dest is None else "incomplete in the destination"
                return
            run_report.dest_id = dest.id
            if dest.duplicates:
                # Which of them a reader sees is luck: the copy is not one run, whatever the data.
                from .pipeline import duplicates_message

                run_report.status = DIFFERENT
                run_report.details["duplicates"] = [dest.id, *dest.duplicates]
                run_report.details["differences"] = [Difference("run", name, "duplicates",
                                                                destination=[dest.id, *dest.duplicates],
                                                                text=duplicates_message(dest))]
                run_report.error = f"run {name}: {duplicates_message(dest)}"
                return
            dref = sink.dest_ref(dest, origin)
            # The source as the destination holds it: its declared, one-way transformations applied.
            run_select = select.of_project(ref.project_id)
            expected_tables = (sink.expected_view(_table(t)) for t in source.read_run(ref, run_select))
            actual_tables = dest_source.read_run(dref, run_select)
            if taps is not None:
                expected_tables, actual_tables = taps[0].watch(expected_tables), taps[1].watch(actual_tables)
            expected = summarize(expected_tables)
            attributes.saw_paths([*expected.values, *expected.series, *(k[0] for k in expected.files)])
            actual = summarize(actual_tables)
            diffs, checked = compare(expected, actual, source.files(ref), dest_source.files(dref), timestamps,
                                     digests if drawings is not None else None)
            run_report.points = checked["points"]
            run_report.params = checked["values"]
            # files and bytes as plan and copy count them (each source file once, a file_set's files)
            run_report.files, run_report.bytes = count_files(
                source.files(ref), [(k[0], v[0], k[1], v[1]) for k, v in expected.files.items()])
            run_report.details["files_compared"] = checked["files"]
            run_report.details["series"] = checked["series"]
            if diffs:
                run_report.status = DIFFERENT
                run_report.details["differences"] = diffs[:_MAX_DIFFS]
                run_report.error = f"{len(diffs)} difference(s); first: {diffs[0].message}"
            else:
                run_report.status = VERIFIED
        except RunError as exc:
            run_report.status = FAILED
            run_report.error = str(exc)
        except Exception as exc:
            run_report.status = FAILED
            run_report.error = f"run {name}: unexpected {type(exc).__name__}: {exc}"
        finally:
            if drawings is not None:
                _draw(drawings, run_report, name, taps, expected, actual, diffs, digests)
            if progress is not None:
                progress.run_done(name, run_report.status)

    try:
        in_parallel(one, runs, workers)
    finally:
        if progress is not None:
            progress.finish()
    attributes.check(select, report)
    return report


def _table(batch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


def _draw(drawings: Drawings, run_report: RunReport, name: str, taps, expected: RunSummary | None,
          actual: RunSummary | None, diffs: list[Difference], digests: dict[str, tuple[Any, Any]]) -> None:
    run = RunDrawing(run_report.project_id, run_report.run_id, name, run_report.status, run_report.error,
                     differences=[d.message for d in run_report.differences] or [d.message for d in diffs[:_MAX_DIFFS]])
    differing = {d.path for d in diffs}
    if expected is not None and actual is not None:
        for path in sorted(set(expected.values) | set(actual.values)):
            e, a = expected.values.get(path), actual.values.get(path)
            run.params.append((path, None if e is None else e[1], None if a is None else a[1], path in differing))
    for label in sorted(digests):
        src, dst = digests[label]
        run.files.append((label, src, dst, label in differing))
    drawings.add_run(run, taps[0], taps[1], {d.path for d in diffs if d.kind == "series"})
