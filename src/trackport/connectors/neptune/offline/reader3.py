"""3.x client (`neptune-scale`) offline runs: `run_operations.sqlite3`.

Tables (neptune_scale/sync/operations_repository.py): `metadata` (version,
project, run_id), `run_operations` (sequence_id, timestamp, operation_type
0 = UpdateRunSnapshot / 1 = CreateRun, operation = protobuf bytes) and
`file_upload_requests` (source_path on this machine -> destination, the
`file_ref.path` of the operations).  The protobuf classes come from
`neptune_api.proto.neptune_pb.ingest.v1.common_pb2`; they are imported here,
inside functions, and only when a 3.x run is read.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from trackport.core.errors import RunError

from .. import mapping as mp
from .source import ReadRun, RunBuilder, origin_identity

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def ms_from_iso(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _connect(db: Path) -> sqlite3.Connection:
    """Read only: never create or migrate what the SDK left.

    neptune-scale keeps the file in WAL mode, where even a `mode=ro` connection creates
    `-wal` and `-shm` files beside it (https://www.sqlite.org/wal.html#readonly).  With no
    `-wal` file, no writer has it open and everything is in the main file: it is opened
    `immutable` (no lock, no side file); with one, a writer may be at work, and the side
    files it has are shared (mode=ro)."""
    if Path(f"{db}-wal").exists():
        return sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    return sqlite3.connect(f"{db.resolve().as_uri()}?immutable=1", uri=True)


def _meta(db: Path) -> tuple[str, str]:
    try:
        with _connect(db) as conn:
            row = conn.execute("SELECT project, run_id FROM metadata ORDER BY id LIMIT 1").fetchone()
    except sqlite3.Error as exc:
        raise RunError(f"cannot read the 3.x operation store ({exc})", file=str(db)) from None
    if not row:
        raise RunError("the 3.x operation store has no metadata row (project, run id)", file=str(db))
    return row[0], row[1]


def _ms(ts) -> int | None:
    """protobuf Timestamp -> ms, rounded to the nearest ms (the SDK goes through float seconds)."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return None
    return ts.seconds * 1000 + (ts.nanos + 500_000) // 1_000_000


def _step(step) -> int:
    return step.whole * 1_000_000 + step.micro


def _pb():
    from neptune_api.proto.neptune_pb.ingest.v1 import common_pb2

    return common_pb2


def _operations(db: Path):
    pb = _pb()
    with _connect(db) as conn:
        cur = conn.execute("SELECT sequence_id, operation_type, operation FROM run_operations ORDER BY sequence_id")
        for seq, kind, blob in cur:
            cls = pb.Run if kind == 1 else pb.UpdateRunSnapshot
            yield kind, cls.FromString(blob)


def _uploads(db: Path) -> dict[str, str]:
    with _connect(db) as conn:
        return {dest: src for src, dest in conn.execute("SELECT source_path, destination FROM file_upload_requests")}


def _value(v):
    """(attribute type, python value) of a protobuf Value."""
    which = v.WhichOneof("value")
    if which == "float64":
        return "float", v.float64
    if which == "int64":
        return "int", v.int64
    if which == "bool":
        return "bool", v.bool
    if which == "string":
        return "string", v.string
    if which == "timestamp":
        return "datetime", v.timestamp.seconds * 1000 + (v.timestamp.nanos + 500_000) // 1_000_000
    if which == "string_set":
        return "string_set", list(v.string_set.values)
    if which == "file_ref":
        return "file", v.file_ref.path
    if which == "histogram":
        h = v.histogram
        if h.HasField("counts"):
            return "histogram", {"type": "COUNTING", "edges": list(h.bin_edges),
                                 "values": [float(x) for x in h.counts.values]}
        return "histogram", {"type": "DENSITY", "edges": list(h.bin_edges),
                             "values": list(h.densities.values)}
    return which, None


def identity3(db: Path, source) -> tuple[str, str]:
    project, run_id = _meta(db)
    o_project = o_run = None
    for kind, op in _operations(db):
        if kind != 0:
            continue
        for key, v in op.assign.items():
            if key == mp.ORIGIN_PROJECT:
                o_project = v.string
            elif key == mp.ORIGIN_RUN:
                o_run = v.string
    if o_project and o_run:
        return o_project, o_run
    return project, run_id


def read_run3(db: Path, source) -> ReadRun:
    project_id, run_id = identity3(db, source)
    uploads = _uploads(db)
    b = RunBuilder()
    missing: list[str] = []

    def local_of(ref_path: str, attr: str) -> str:
        local = uploads.get(ref_path)
        if local is None or not Path(local).exists():
            raise RunError(f"attribute {attr}: the file to upload ({local or ref_path}) is missing on this "
                           f"machine (store {db}); fix: restore it at that path",
                           project_id=project_id, run_id=run_id, file=local or ref_path)
        return local

    for kind, op in _operations(db):
        if kind == 1:
            if op.HasField("creation_time"):
                b.assign("sys/creation_time", "datetime", _ms(op.creation_time) or 0)
            if op.experiment_id:
                b.assign("sys/experiment/name", "string", op.experiment_id)
            if op.HasField("fork_point") and op.fork_point.parent_run_id:
                b.assign("sys/forking/parent", "string", op.fork_point.parent_run_id)
                step = _step(op.fork_point.step)
                b.assign("sys/forking/step", "float", step / 1_000_000)
            continue
        ts = _ms(op.timestamp) if op.HasField("timestamp") else None
        step = _step(op.step) if op.HasField("step") else None
        for key, v in op.assign.items():
            typ, value = _value(v)
            if typ == "file":
                b.file(key, "file", local_of(value, key))
            else:
                b.assign(key, typ, value)
        for key, mods in op.modify_sets.items():
            for item, action in mods.string.values.items():
                if action == 1:   # ADD (neptune_pb ingest SetOperation)
                    b.set_add(key, [item])
                else:
                    b.set_remove(key, [item])
        for key, v in op.append.items():
            typ, value = _value(v)
            if typ == "float":
                b.append(key, "float_series", step, ts, value)
            elif typ == "int":
                b.append(key, "float_series", step, ts, float(value))
            elif typ == "string":
                b.append(key, "string_series", step, ts, value)
            elif typ == "histogram":
                b.append(key, "histogram_series", step, ts, value)
            elif typ == "file":
                b.file(key, "file_series", local_of(value, key), step, ts, append=True)
            else:
                missing.append(f"{key}: {typ}")
    if missing:
        b.notes.append("values not replayed: " + ", ".join(missing[:5]))
    origin_uri, o_project, o_run = origin_identity(b.singles)
    restore = None
    if o_project and o_run:
        got = b.files.get(mp.RESTORE)
        restore = Path(got[0][3]) if got else None
    return ReadRun(project_id, run_id, b, origin_uri, restore, str(db), source.scratch())
