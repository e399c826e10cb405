"""2.x client (`neptune` 0.9 - 1.x) offline / unsynced async runs: JSON operation queues.

Every layout a client generation wrote (neptune/metadata_containers/structure_version.py,
neptune/cli/utils.py `detect_async_dir` / `detect_offline_dir`):
- 0.9 - 0.14 (`neptune.new`): `async/<uuid>/exec-<n>-<YYYY-MM-DD_HH.MM.SS.ffffff>/`
  (0.14 adds a `container_type` file), `offline/<uuid>/`;
- 0.15 - 1.8: `async/<type>__<uuid>/exec-<epoch s>-<date>[-<pid>]/`, `offline/<type>__<uuid>/`;
- 1.9 on: `{async,offline}/<type>__<uuid>__<pid>__<random>/` with `metadata.json`
  (mode, containerId, containerType, createdAt).
A queue folder holds `data-<n>.log` files, one JSON object per operation:
`{"obj": <operation>, "version": <n>[, "at": <s>]}`, `last_put_version` and
(async) `last_ack_version`.  The container id and type come from
`metadata.json`, else from the folder names; every execution (queue folder) of
one container is replayed into one run, in the order they were started.
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
import math
import re
from datetime import datetime, timezone
from decimal import Decimal, ROUND_HALF_EVEN
from pathlib import Path
from typing import Any, Iterator

from trackport.core.errors import RunError

from .. import mapping as mp
from .source import ReadRun, RunBuilder, origin_identity

log = logging.getLogger(__name__)

_MICRO = Decimal(1_000_000)


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
                # strict=False as the client's own reader (core/components/queue/json_file_splitter.py)
                entry = json.loads(line, parse_float=Decimal, strict=False)
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


# container types (neptune/internal/container_type.py)
CONTAINER_TYPES = ("run", "model", "model_version", "project")
_EXEC_EPOCH = re.compile(r"exec-(\d+\.\d+)-")
_EXEC_DATE = re.compile(r"exec-\d+-(\d{4}-\d{2}-\d{2})_(\d{2})\.(\d{2})\.(\d{2})\.(\d{6})")


def container_of(queue: Path) -> tuple[str, str]:
    """(container type, container id) of one queue folder, in every layout."""
    meta = _metadata(queue)
    if meta.get("containerId"):
        return str(meta.get("containerType") or "run"), str(meta["containerId"])
    name = queue.name
    if name.startswith("exec-"):
        owner = queue.parent.name.split("__")
        if len(owner) >= 2 and owner[0] in CONTAINER_TYPES:
            return owner[0], owner[1]
        typ = "run"
        try:
            typ = (queue / "container_type").read_text().strip() or "run"   # 0.14
        except OSError:
            pass
        return typ, queue.parent.name
    parts = name.split("__")
    if len(parts) >= 2 and parts[0] in CONTAINER_TYPES:
        return parts[0], parts[1]
    return "run", name


def _started(queue: Path) -> tuple[float, str]:
    """When an execution started: metadata.json `createdAt`, else the time in the exec
    folder's name, else the first operation's `at`.  0.x names carry the writer's local
    time, compared only with the other executions of the same container."""
    meta = _metadata(queue)
    if meta.get("createdAt"):
        from .reader3 import ms_from_iso

        return ms_from_iso(meta["createdAt"]) / 1000, queue.name
    if queue.name == "exec-0-offline":      # an offline run `neptune sync` moved into async/
        return -math.inf, queue.name
    m = _EXEC_EPOCH.match(queue.name)
    if m:
        return float(m.group(1)), queue.name
    m = _EXEC_DATE.match(queue.name)
    if m:
        day, hh, mm, ss, us = m.groups()
        when = datetime.fromisoformat(f"{day}T{hh}:{mm}:{ss}.{us}").replace(tzinfo=timezone.utc)
        return when.timestamp(), queue.name
    for entry in _lines(queue, str(queue), []):
        if entry.get("at") is not None:
            return float(entry["at"]), queue.name
        break
    return math.inf, queue.name


def containers(queues) -> list[list[Path]]:
    """Queue folders grouped by container, each group's executions in the order they started."""
    groups: dict[tuple[str, str], list[Path]] = {}
    for q in queues:
        groups.setdefault(container_of(q), []).append(q)
    return [sorted(qs, key=_started) for _, qs in sorted(groups.items())]


def identity2(queues: list[Path], source) -> tuple[str, str]:
    container = container_of(queues[0])[1]
    origin_project = origin_run = custom = None
    for queue in queues:
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
    for queue in queues:
        for entry in _lines(queue, str(queue), [], only="custom_run_id"):
            op = entry.get("obj") or {}
            if op.get("path") == ["sys", "custom_run_id"] and op.get("type") == "AssignString":
                custom = op.get("value")
    return source.default_project, custom or container


def _step(value: Any) -> int | None:
    if value is None:
        return None
    d = Decimal(value) * _MICRO
    return int(d.to_integral_value(ROUND_HALF_EVEN))


def _ms(value: Any) -> int | None:
    """A point's `ts` (float seconds) as the client sends it: `int(value.ts * 1000)` in float
    arithmetic (neptune/internal/backends/operation_api_object_converter.py, the same in 0.9)."""
    if value is None:
        return None
    return int(float(value) * 1000)


def _datetime_ms(value: Any) -> int:
    """An AssignDatetime's queued ms as the client sends it: `from_dict` makes
    `datetime.fromtimestamp(ms / 1000)`, the converter sends `int(1000 * dt.timestamp())`."""
    return int(1000 * datetime.fromtimestamp(int(value) / 1000).timestamp())


def _float(value: Any) -> float:
    return float(value)


def read_run2(queues: list[Path], source) -> ReadRun:
    """One container: every execution's queue replayed in order into one run."""
    label = str(queues[0])
    project_id, run_id = identity2(queues, source)
    ctype, container = container_of(queues[0])
    b = RunBuilder()
    for queue in queues:
        _replay(queue, b, source)
    if ctype != "run":
        # a model / model version / project container, moved as a run (docs/neptune.md)
        b.assign(mp.CONTAINER_TYPE, "string", ctype)
        b.count("container_as_run", f"{ctype} {container}")
    # The server sets sys/creation_time; offline the queue's creation is the best record of it.
    origin_uri, o_project, o_run = origin_identity(b.singles)
    restore = None
    meta = _metadata(queues[0])
    if o_project and o_run:
        got = b.files.get(mp.RESTORE)
        restore = Path(got[0][3]) if got else None
    elif "sys/creation_time" not in b.singles and meta.get("createdAt"):
        from .reader3 import ms_from_iso

        b.assign("sys/creation_time", "datetime", ms_from_iso(meta["createdAt"]))
    return ReadRun(project_id, run_id, b, origin_uri, restore, label, source.scratch())


def _replay(queue: Path, b: RunBuilder, source) -> None:
    label = str(queue)
    torn: list[str] = []
    acked = _acked(queue)
    upload_dir = queue / "upload_path"
    scratch = source.scratch() / hashlib.blake2b(label.encode(), digest_size=8).hexdigest()
    first_version = None
    for entry in _lines(queue, label, torn):
        op = entry.get("obj") or {}
        kind = op.get("type")
        path = "/".join(op.get("path") or [])
        version = entry.get("version")
        if first_version is None and isinstance(version, int):
            first_version = version
        sent = isinstance(version, int) and version <= acked
        if kind == "AssignFloat":
            b.assign(path, "float", _float(op["value"]))
        elif kind == "AssignInt":
            b.assign(path, "int", int(op["value"]))
        elif kind == "AssignBool":
            b.assign(path, "bool", bool(op["value"]))
        elif kind == "AssignString":
            b.assign(path, "string", op["value"])
        elif kind == "AssignDatetime":
            b.assign(path, "datetime", _datetime_ms(op["value"]))
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
                step = b.step_of(path, _step(v.get("step")))
                scratch.mkdir(parents=True, exist_ok=True)
                local = scratch / f"img-{version}-{i}.png"
                local.write_bytes(base64.b64decode(data or ""))
                b.file(path, "file_series", str(local), step, _ms(v.get("ts")), append=True)
        elif kind in ("ClearFloatLog", "ClearStringLog", "ClearImageLog"):
            b.clear_series(path)
        elif kind == "UploadFile":
            local = op.get("file_path")
            if not local and op.get("tmp_file_name"):
                local = str(upload_dir / op["tmp_file_name"])
            if _present(local, path, sent, b, label):
                b.file(path, "file", local)
        elif kind == "UploadFileContent":
            scratch.mkdir(parents=True, exist_ok=True)
            local = scratch / f"content-{version}.{op.get('ext') or 'bin'}"
            local.write_bytes(base64.b64decode(op.get("file_content") or ""))
            b.file(path, "file", str(local))
        elif kind == "UploadFileSet":
            reset = str(op.get("reset")) != "False"
            if reset:
                b.drop_files(path)
            for glob in op.get("file_globs") or []:
                _file_set_glob(b, path, glob, sent, label)
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
    if first_version is not None and first_version > 1:
        # async mode: the disk queue deletes a data file once every operation in it was
        # acknowledged (neptune/core/components/queue/disk_queue.py `_clean_log_files_up_to`)
        note = (f"{queue.name}: operations 1 to {first_version - 1} were uploaded to Neptune and are no "
                f"longer on disk; read them with the neptune2:// API source")
        b.notes.append(note)
        log.warning("%s: %s", label, note)


def _acked(queue: Path) -> int:
    try:
        return int((queue / "last_ack_version").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _present(local: str | None, attr: str, sent: bool, b: RunBuilder, label: str,
             what: str = "the file", replace: bool = True) -> bool:
    """Whether an upload's file is here.  Once the server acknowledged an upload the client
    deletes its temporary copy (UploadFile.clean, called by HostedNeptuneBackend.execute_operations):
    a counted, declared drop.  A pending upload whose file is missing is an error for that
    attribute alone (an undeclared drop); the rest of the run moves."""
    if local and Path(local).exists():
        return True
    if replace:
        b.delete(attr)      # the upload replaced whatever the attribute held before
    if sent:
        b.count(mp.UPLOAD_ALREADY_SENT, f"{attr}: {what} {local}: already uploaded to Neptune; the bytes "
                                        f"are no longer on disk", drop=True)
    else:
        b.count(mp.UPLOAD_MISSING, f"{attr}: {what} {local} of a pending upload is missing on this machine "
                                   f"(queue {label}); fix: restore it at that path", drop=True)
        log.error("%s: attribute %s: %s %s of a pending upload is missing on this machine", label, attr, what, local)
    return False


def _file_set_glob(b: RunBuilder, attr: str, glob: str, sent: bool, label: str) -> None:
    p = Path(glob)
    if p.is_dir() or p.is_file():
        b.file(attr, "file_set", str(p), append=True)
        return
    import glob as globmod

    hits = sorted(globmod.glob(glob, recursive=True))
    if not hits:
        # the members found so far stay; this glob's files are counted as dropped
        _present(glob, attr, sent, b, label, what="file set glob (matching nothing)", replace=False)
        return
    for hit in hits:
        b.file(attr, "file_set", hit, append=True)
