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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import steps as stepmath
from .connector import FileAccess, Sink, Source
from .errors import RunError
from .model import RunRef, Selection
from .report import DIFFERENT, FAILED, MISSING, VERIFIED, CommandReport, RunReport
from .schema import FILE_TYPES

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
        step = table.column("step")
        _single(out, table.filter(pc.is_null(step)))
        stepped = table.filter(pc.is_valid(step))
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
        lo, hi = pc.min_max(steps).values()
        summary.min_step = lo.as_py() if summary.min_step is None else min(summary.min_step, lo.as_py())
        summary.max_step = hi.as_py() if summary.max_step is None else max(summary.max_step, hi.as_py())
        summary.count += group.num_rows
        h_step = _mix(stepmath.unscaled(steps), 1)
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
            timestamps: bool = True) -> tuple[list[str], dict[str, int]]:
    diffs: list[str] = []
    checked = {"values": 0, "series": 0, "points": 0, "files": 0}
    for path in sorted(set(expected.values) | set(actual.values)):
        e, a = expected.values.get(path), actual.values.get(path)
        checked["values"] += 1
        if e is None or a is None:
            diffs.append(f"value {path}: {'missing in destination' if a is None else 'not in source'}")
        elif e[0] != a[0] or not _same(e[1], a[1]):
            diffs.append(f"value {path}: source {e[0]} {e[1]!r:.80} != destination {a[0]} {a[1]!r:.80}")
    for path in sorted(set(expected.series) | set(actual.series)):
        e, a = expected.series.get(path), actual.series.get(path)
        checked["series"] += 1
        if e is None or a is None:
            diffs.append(f"series {path}: {'missing in destination' if a is None else 'not in source'}")
            continue
        checked["points"] += e.count
        for what in ("attribute_type", "count", "min_step", "max_step", "fingerprint"):
            if getattr(e, what) != getattr(a, what):
                diffs.append(f"series {path}: {what} {getattr(e, what)} != {getattr(a, what)}")
                break
        else:
            if timestamps and e.ts_fingerprint != a.ts_fingerprint:
                diffs.append(f"series {path}: point timestamps differ")
    for key in sorted(set(expected.files) | set(actual.files), key=lambda k: (k[0], str(k[1]))):
        e, a = expected.files.get(key), actual.files.get(key)
        label = key[0] if key[1] is None else f"{key[0]}@{key[1]}"
        checked["files"] += 1
        if e is None or a is None:
            diffs.append(f"file {label}: {'missing in destination' if a is None else 'not in source'}")
            continue
        try:
            es = file_digest(src_files, e[1])
        except Exception as exc:
            diffs.append(f"file {label}: unreadable in source ({exc})")
            continue
        try:
            ds = file_digest(dst_files, a[1])
        except Exception as exc:
            diffs.append(f"file {label}: unreadable in destination ({exc})")
            continue
        if es != ds:
            diffs.append(f"file {label}: size/digest {es[0]}/{es[1][:12]} != {ds[0]}/{ds[1][:12]}")
    return diffs, checked


def verify(source: Source, sink: Sink, select: Selection, report: CommandReport,
           workers: int = 4, progress=None) -> CommandReport:
    dest_source = sink.as_source()
    runs = list(source.list_runs(select))
    if progress is not None:
        progress.start(len(runs))
    timestamps = sink.capabilities.keeps_timestamps

    def one(ref: RunRef) -> None:
        run_report = report.add(RunReport(ref.project_id, ref.run_id))
        name = source.describe_run(ref)
        if progress is not None:
            progress.run_started(name)
        try:
            origin = source.origin(ref)
            dest = sink.find_run(origin)
            if dest is None or not dest.complete:
                run_report.status = MISSING
                run_report.error = "not in the destination" if dest is None else "incomplete in the destination"
                return
            run_report.dest_id = dest.id
            dref = sink.dest_ref(dest, origin)
            expected = summarize(source.read_run(ref, select))
            actual = summarize(dest_source.read_run(dref, select))
            diffs, checked = compare(expected, actual, source.files(ref), dest_source.files(dref), timestamps)
            run_report.points = checked["points"]
            run_report.params = checked["values"]
            run_report.files = checked["files"]
            run_report.details["series"] = checked["series"]
            if diffs:
                run_report.status = DIFFERENT
                run_report.details["differences"] = diffs[:_MAX_DIFFS]
                run_report.error = f"{len(diffs)} difference(s); first: {diffs[0]}"
            else:
                run_report.status = VERIFIED
        except RunError as exc:
            run_report.status = FAILED
            run_report.error = str(exc)
        except Exception as exc:
            run_report.status = FAILED
            run_report.error = f"run {name}: unexpected {type(exc).__name__}: {exc}"
        finally:
            if progress is not None:
                progress.run_done(name, run_report.status)

    try:
        if workers <= 1:
            for ref in runs:
                one(ref)
        else:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                list(pool.map(one, runs))
            except BaseException:   # Ctrl-C: do not wait for the runs still being compared
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
    finally:
        if progress is not None:
            progress.finish()
    return report
