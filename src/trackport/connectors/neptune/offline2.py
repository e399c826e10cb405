"""2.x client (`neptune` 1.x) offline / unsynced async runs: JSON operation queues.

Layout (neptune/internal/operation_processors/utils.py, neptune/core/components/queue/):
`<data dir>/{offline,async}/run__<container id>__<pid>__<random>/` with
`metadata.json` (mode, containerId, createdAt) and `data-<n>.log` files, one
JSON object per line: `{"obj": <operation>, "version": <n>, "at": <s>}`.
Operations are neptune/internal/operation.py's `to_dict()`: `type`, `path`
(list of parts) and per type fields; series values are
`{"value", "step", "ts"}` with `ts` in seconds since the epoch.

Numbers are parsed as Decimal, so a step or timestamp is taken exactly as
the client wrote it (the shortest repr of its float).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from decimal import Decimal, ROUND_HALF_EVEN
from pathlib import Path
from typing import Any, Iterator

from trackport.core.errors import RunError

from . import mapping as mp
from .offline import ReadRun, RunBuilder, origin_identity

log = logging.getLogger(__name__)

_MICRO = Decimal(1_000_000)
_MS = Decimal(1000)


def _data_files(queue: Path) -> list[Path]:
    def number(p: Path) -> int:
        try:
            return int(p.stem.split("-", 1)[1])
        except (IndexError, ValueError):
            return 0

    return sorted(queue.glob("data-*.log"), key=number)


def _lines(queue: Path, label: str, torn: list[str], only: str | None = None) -> Iterator[dict]:
    """The queue's operations in order; a torn LAST line is reported and skipped."""
    files = _data_files(queue)
    for fi, path in enumerate(files):
        with open(path, "rb") as fh:
            data = fh.read()
        lines = data.split(b"\n")
        for li, line in enumerate(lines):
            if not line.strip():
                continue
            if only is not None and only.encode() not in line:
                continue
            try:
                entry = json.loads(line, parse_float=Decimal)
            except ValueError:
                last = fi == len(files) - 1 and li == len(lines) - 1
                if last:
                    torn.append(f"{path.name}: torn last line ({len(line)} bytes) ignored")
                    log.warning("%s: %s: torn last line of the queue ignored (the writer was killed "
                                "mid-write)", label, path)
                    return
                raise RunError(f"line {li + 1} of the operation queue is not JSON", run_id=label,
                               file=str(path)) from None
            yield entry


def _metadata(queue: Path) -> dict:
    meta = queue / "metadata.json"
    if meta.exists():
        try:
            return json.loads(meta.read_text())
        except ValueError:
            return {}
    return {}


def identity2(queue: Path, source) -> tuple[str, str]:
    meta = _metadata(queue)
    container = meta.get("containerId") or (queue.name.split("__")[1] if "__" in queue.name else queue.name)
    origin_project = origin_run = custom = None
    for entry in _lines(queue, str(queue), [], only="trackport"):
        op = entry.get("obj") or {}
        path = "/".join(op.get("path") or [])
        if op.get("type") == "AssignString":
            if path == mp.ORIGIN_PROJECT:
                origin_project = op.get("value")
            elif path == mp.ORIGIN_RUN:
                origin_run = op.get("value")
    if origin_project and origin_run:
        return origin_project, origin_run
    for entry in _lines(queue, str(queue), [], only="custom_run_id"):
        op = entry.get("obj") or {}
        if op.get("path") == ["sys", "custom_run_id"] and op.get("type") == "AssignString":
            custom = op.get("value")
    return source.default_project, custom or str(container)


def _step(value: Any) -> int | None:
    if value is None:
        return None
    d = Decimal(value) * _MICRO
    return int(d.to_integral_value(ROUND_HALF_EVEN))


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    return int((Decimal(value) * _MS).to_integral_value(ROUND_HALF_EVEN))


def _float(value: Any) -> float:
    return float(value)


def read_run2(queue: Path, source) -> ReadRun:
    label = str(queue)
    project_id, run_id = identity2(queue, source)
    b = RunBuilder()
    torn: list[str] = []
    meta = _metadata(queue)
    upload_dir = queue / "upload_path"
    scratch = source.scratch() / hashlib.blake2b(label.encode(), digest_size=8).hexdigest()
    for entry in _lines(queue, label, torn):
        op = entry.get("obj") or {}
        kind = op.get("type")
        path = "/".join(op.get("path") or [])
        if kind == "AssignFloat":
            b.assign(path, "float", _float(op["value"]))
        elif kind == "AssignInt":
            b.assign(path, "int", int(op["value"]))
        elif kind == "AssignBool":
            b.assign(path, "bool", bool(op["value"]))
        elif kind == "AssignString":
            b.assign(path, "string", op["value"])
        elif kind == "AssignDatetime":
            b.assign(path, "datetime", int(op["value"]))
        elif kind == "AddStrings":
            b.set_add(path, op.get("values") or [])
        elif kind == "RemoveStrings":
            b.set_remove(path, op.get("values") or [])
        elif kind == "ClearStringSet":
            b.set_clear(path)
        elif kind in ("LogFloats", "LogStrings"):
            typ = "float_series" if kind == "LogFloats" else "string_series"
            for v in op.get("values") or []:
                value = _float(v["value"]) if typ == "float_series" else v["value"]
                b.append(path, typ, _step(v.get("step")), _ms(v.get("ts")), value)
        elif kind == "LogImages":
            for i, v in enumerate(op.get("values") or []):
                image = v.get("value") or {}
                data = image.get("data") if isinstance(image, dict) else image
                step = _step(v.get("step"))
                scratch.mkdir(parents=True, exist_ok=True)
                local = scratch / f"img-{entry.get('version')}-{i}.png"
                local.write_bytes(base64.b64decode(data or ""))
                b.file(path, "file_series", str(local), step, _ms(v.get("ts")), append=True)
        elif kind in ("ClearFloatLog", "ClearStringLog", "ClearImageLog"):
            b.clear_series(path)
        elif kind == "UploadFile":
            local = op.get("file_path")
            if not local and op.get("tmp_file_name"):
                local = str(upload_dir / op["tmp_file_name"])
            _need(local, path, label, project_id, run_id)
            b.file(path, "file", local)
        elif kind == "UploadFileContent":
            scratch.mkdir(parents=True, exist_ok=True)
            local = scratch / f"content-{entry.get('version')}.{op.get('ext') or 'bin'}"
            local.write_bytes(base64.b64decode(op.get("file_content") or ""))
            b.file(path, "file", str(local))
        elif kind == "UploadFileSet":
            reset = str(op.get("reset")) != "False"
            if reset:
                b.drop_files(path)
            for glob in op.get("file_globs") or []:
                _file_set_glob(b, path, glob, label, project_id, run_id)
        elif kind == "DeleteFiles":
            gone = set(op.get("file_paths") or [])
            if path in b.files:
                b.files[path] = [f for f in b.files[path] if Path(f[3]).name not in gone]
        elif kind == "DeleteAttribute":
            b.delete(path)
        elif kind in ("ConfigFloatSeries",):
            continue
        else:
            b.notes.append(f"operation {kind} on {path} not replayed")
            log.warning("%s: operation %s on %s is not replayed by trackport", label, kind, path)
    if torn:
        b.notes.extend(torn)
    acked = _acked(queue)
    if acked:
        # async mode: the disk queue drops operations once the server acknowledged them
        # (neptune/core/components/queue/disk_queue.py), so only the unsynced tail is on disk
        log.warning("%s: operations up to version %d were already uploaded by the client and may be gone "
                    "from disk; read the rest with the neptune2:// API source", label, acked)
    # The server sets sys/creation_time; offline the queue's creation is the best record of it.
    origin_uri, o_project, o_run = origin_identity(b.singles)
    restore = None
    if o_project and o_run:
        got = b.files.get(mp.RESTORE)
        restore = Path(got[0][3]) if got else None
    elif "sys/creation_time" not in b.singles and meta.get("createdAt"):
        from trackport.connectors.neptune.offline3 import ms_from_iso

        b.assign("sys/creation_time", "datetime", ms_from_iso(meta["createdAt"]))
    return ReadRun(project_id, run_id, b, origin_uri, restore, label, source.scratch())


def _acked(queue: Path) -> int:
    try:
        return int((queue / "last_ack_version").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _need(local: str | None, attr: str, label: str, project_id: str, run_id: str) -> None:
    if not local or not Path(local).exists():
        raise RunError(f"attribute {attr}: the uploaded file is missing on this machine (queue {label}); "
                       f"fix: restore it at that path", project_id=project_id, run_id=run_id, file=local)


def _file_set_glob(b: RunBuilder, attr: str, glob: str, label: str, project_id: str, run_id: str) -> None:
    p = Path(glob)
    if p.is_dir() or p.is_file():
        b.file(attr, "file_set", str(p), append=True)
        return
    import glob as globmod

    hits = sorted(globmod.glob(glob, recursive=True))
    if not hits:
        raise RunError(f"attribute {attr}: file set glob {glob!r} matches nothing on this machine (queue "
                       f"{label}); fix: restore the files", project_id=project_id, run_id=run_id, file=glob)
    for hit in hits:
        b.file(attr, "file_set", hit, append=True)
