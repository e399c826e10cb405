"""`wandb://ENTITY[/PROJECT]` — runs read through the W&B public API (`wandb.Api`).

Server: WANDB_BASE_URL (dedicated / self-hosted) or https://api.wandb.ai;
credentials: WANDB_API_KEY or `wandb login`, used by the SDK and never stored.

Per run, in this order (all through api.py, the module that talks to wandb):
- run attributes, config (`config/a/b`, types kept) and summary (`summary/`),
  mapped by the shared mapping.py like the offline source;
- EVERY history row (`scan_history`: the run's exported history parquet files
  plus the not-yet-exported rows page by page; never the sampled
  `run.history()`), `_step` as step and `_timestamp` as timestamp;
- system metrics under `monitoring/` (the one `system.` prefix the API adds removed,
  named as the offline source names them: mapping.system_metric_points): the run's
  `wandb-events.jsonl` file when the server has one (every point), otherwise
  the server's `events` stream asked for every point (a server may sample it:
  the count is reported);
- `output.log` as `monitoring/stdout` lines, and every run file as a `file`
  attribute, downloaded on demand into a temporary folder by absolute path;
- the artifact versions it used, as `wandb/used_artifacts` (artifacts.py).

With the `artifacts` class selected, each artifact version a run logged is listed after
the run, as the offline source lists them (artifacts.py: the same rows), its files
downloaded on first use.

File paths (`file_value.path`) are `<run id>/files/<path in the run>`, relative
to the project's files folder of an export.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Iterator
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa

from trackport.core.capabilities import Capabilities
from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError, RunScoped, TransientError, UsageError
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.registry import ParsedUri
from trackport.core.schema import ARTIFACTS_CLASS, FILE_TYPES, VALUE_COLUMN, SeriesColumns, rows_to_table
from trackport.core.steps import decimal_steps

from . import artifacts as art_map
from . import mapping as mp
from .api import EVENTS_SAMPLES   # a constant; api.py imports wandb only inside its functions

log = logging.getLogger(__name__)

OUTPUT_LOG = "output.log"
EVENTS_FILE = "wandb-events.jsonl"
_BATCH_ROWS = 50_000
_NAME = re.compile(r"^[^/?#\s]+$")

# Run attributes of the API that become sys/* (or are config, summary, history)
# rather than `wandb/<name>`; `historyKeys` is the server's index of the history
# (derived from it, so not copied).
_CONSUMED = {
    "id", "name", "displayName", "tags", "state", "config", "rawconfig", "group", "jobType",
    "createdAt", "heartbeatAt", "description", "notes", "summaryMetrics", "historyKeys", "projectId",
}

# What this source may report, beyond mapping.SOURCE_TRANSFORMATIONS (to merge there).
API_SOURCE_TRANSFORMATIONS: dict[str, str] = {
    "stdout_line_step": "output.log lines as monitoring/stdout points stepped 0,1,2,... "
    "(the file has no per-line time; the file itself is kept too)",
    "system_bookkeeping_left_out": "`_wandb`/`_runtime` markers of system metric rows are not series "
    "(the point's timestamp is kept)",
    "system_metrics_sampled": "the server returned as many system metric points as asked "
    "(events(samples=N)); it may have sampled them (no wandb-events.jsonl file to read instead)",
}
API_SOURCE_DROPS: dict[str, str] = {
    "history_row_without_step": mp.SOURCE_DROPS["history_row_without_step"],
}

CAPABILITIES = Capabilities(replayable=False, transformations={
    **mp.SOURCE_TRANSFORMATIONS, **API_SOURCE_TRANSFORMATIONS})


# -- URI ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    entity: str
    project: str | None
    base_url: str
    host_suffix: str       # "" for api.wandb.ai, else "?host=HOST[:PORT][/PATH]"

    def uri(self, project: str | None = None) -> str:
        project = project if project is not None else self.project
        path = f"{self.entity}/{project}" if project else self.entity
        return f"wandb://{path}{self.host_suffix}"


def parse_target(parsed: ParsedUri, base_url: str | None = None) -> Target:
    """`//ENTITY[/PROJECT]` (what follows `wandb:`) and WANDB_BASE_URL -> Target."""
    rest = parsed.rest
    if not rest.startswith("//"):
        raise UsageError(f"{parsed.display}: the W&B API source is wandb://ENTITY[/PROJECT]")
    rest = rest[2:].split("?", 1)[0].split("#", 1)[0].strip("/")
    parts = [p for p in rest.split("/")]
    if not rest or len(parts) > 2 or not all(_NAME.match(p) for p in parts):
        raise UsageError(f"{parsed.display}: expected wandb://ENTITY or wandb://ENTITY/PROJECT "
                         f"(the server comes from WANDB_BASE_URL)")
    if "@" in parts[0]:
        raise UsageError("credentials do not belong in a wandb:// URI; set WANDB_API_KEY")
    base = (base_url or os.environ.get("WANDB_BASE_URL") or "").strip() or "https://api.wandb.ai"
    split = urlsplit(base)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise UsageError(f"WANDB_BASE_URL must be an http(s) URL, got {split.scheme or 'no scheme'}")
    if split.username or split.password:
        raise UsageError("WANDB_BASE_URL must not carry credentials; set WANDB_API_KEY instead")
    host = split.hostname + (f":{split.port}" if split.port else "")
    path = split.path.rstrip("/")
    clean_base = f"{split.scheme}://{host}{path}"
    suffix = "" if host in ("api.wandb.ai", "wandb.ai") and not path else f"?host={host}{path}"
    return Target(parts[0], parts[1] if len(parts) > 1 else None, clean_base, suffix)


def open_api_source(parsed: ParsedUri, options: dict[str, Any]) -> "WandbApiSource":
    return WandbApiSource(parse_target(parsed), options)


# -- the source -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Locator:
    entity: str
    project: str
    run_id: str


@dataclass(frozen=True)
class ArtifactLocator:
    """An artifact version a run logged: the SDK's Artifact and the run that logged it."""

    handle: Any = field(compare=False, hash=False)
    project: str                 # the W&B project of the run that logged it
    producer_project: str        # that run as this source lists it
    producer_run: str


class WandbApiSource(Source):
    capabilities = CAPABILITIES

    def __init__(self, target: Target, options: dict[str, Any] | None = None, api=None):
        self.target = target
        self.uri = target.uri()
        self.options = dict(options or {})
        self._api = api
        self._lock = threading.Lock()
        self._tmp: Path | None = None
        self._finalizer = None
        self._run_files: dict[tuple[str, str], "ApiRunFiles"] = {}
        self._serial = 0
        # Per run: what the pipeline's report should show (see `run_notes`).
        self._notes: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def api(self):
        with self._lock:
            if self._api is None:
                from .api import WandbApi

                self._api = WandbApi(self.target.base_url, self.target.entity)
            return self._api

    # -- listing ----------------------------------------------------------------
    def _projects(self, select: Selection) -> list[str]:
        if self.target.project:
            names = [self.target.project]
        else:
            names = self.api.projects()
        out = []
        for name in names:
            pid = mp.project_id(self.target.entity, name)
            if not select.projects or pid in select.projects or name in select.projects or any(
                    art_map.is_artifact_project(p) and art_map.producer_project_of(p) == pid for p in select.projects):
                out.append(name)
        return out

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        """Each run, then (with the `artifacts` class) each artifact version it logged."""
        wants_artifacts = ARTIFACTS_CLASS in select.classes and (
            not select.projects or any(art_map.is_artifact_project(p) for p in select.projects))
        listed: set[tuple[str, str]] = set()
        for project in _retrying("listing projects", lambda: self._projects(select)):
            pid = mp.project_id(self.target.entity, project)
            # Listing is retried as a whole (ids only, so a retry repeats no work).
            runs = _retrying(f"listing the runs of {pid}",
                             lambda: [(r, _written_origin(r)) for r in self.api.runs(project, full=True)])
            for wrun, origin in runs:
                # A run trackport wrote is listed under its origin's ids, as the offline source does.
                project_id, run_id = origin or (pid, wrun.id)
                if select.wants_run(project_id, run_id) or select.wants_run(pid, wrun.id):
                    yield RunRef(project_id, run_id, Locator(self.target.entity, project, wrun.id))
                if wants_artifacts and origin is None:   # a run trackport wrote carries a version: it is that version
                    yield from self._logged_versions(wrun, project, project_id, run_id, select, listed)

    def _logged_versions(self, wrun, project: str, project_id: str, run_id: str, select: Selection,
                         listed: set) -> Iterator[RunRef]:
        handles = _retrying(f"listing the artifacts of {project_id}/{run_id}",
                            lambda: self.api.logged_artifacts(wrun))
        for handle in handles:
            key = (art_map.project_of(handle.source_entity, handle.source_project, handle.source_name.split(":")[0]),
                   handle.digest)
            if key not in listed and select.wants_run(*key):
                listed.add(key)
                yield RunRef(*key, ArtifactLocator(handle, project, project_id, run_id))

    def _locator(self, ref: RunRef) -> Locator:
        if isinstance(ref.locator, Locator):
            return ref.locator
        entity, _, project = ref.project_id.partition("/")
        if entity != self.target.entity or not project:
            raise RunError(f"not a run of {self.uri}", project_id=ref.project_id, run_id=ref.run_id)
        return Locator(entity, project, ref.run_id)

    def origin(self, run: RunRef) -> Origin:
        loc = run.locator if isinstance(run.locator, ArtifactLocator) else self._locator(run)
        return Origin(self.target.uri(loc.project), run.project_id, run.run_id)

    def describe_run(self, run: RunRef) -> str:
        if isinstance(run.locator, ArtifactLocator):
            loc = run.locator
            return f"artifact {run.project_id} (digest {run.run_id}) logged by {loc.producer_project}/{loc.producer_run}"
        return f"{run.project_id}/{run.run_id}"

    def run_notes(self, run: RunRef) -> dict[str, Any]:
        """Transformations, drops and details of the last read of `run`."""
        with self._lock:
            return dict(self._notes.get((run.project_id, run.run_id), {}))

    def account(self, run: RunRef, report) -> None:
        notes = self.run_notes(run)
        for kind, count in sorted(notes.get("transformations", {}).items()):
            report.transformed(kind, count)
        for kind, count in sorted(notes.get("drops", {}).items()):
            report.dropped(kind, count)
        if notes.get("details"):
            report.details["source"] = notes["details"]

    # -- files ------------------------------------------------------------------
    def _tmpdir(self) -> Path:
        with self._lock:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="trackport-wandb-api-")).resolve()
                self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
            return self._tmp

    def _files_for(self, ref: RunRef, run, remote: list | None = None) -> "ApiRunFiles":
        key = (ref.project_id, ref.run_id)
        with self._lock:
            got = self._run_files.get(key)
        if got is not None and remote is None:
            return got
        if remote is None:
            remote = self.api.files(run)
        tmp = self._tmpdir()
        with self._lock:
            self._serial += 1
            files = ApiRunFiles(self, run, ref, remote, tmp / f"{self._serial:06d}")
            self._run_files[key] = files
        return files

    def files(self, run: RunRef) -> FileAccess:
        key = (run.project_id, run.run_id)
        with self._lock:
            got = self._run_files.get(key)
        if got is not None:
            return got
        if isinstance(run.locator, ArtifactLocator):
            tmp = self._tmpdir()
            with self._lock:
                self._serial += 1
                files = ApiArtifactFiles(self, run, tmp / f"{self._serial:06d}")
                self._run_files[key] = files
            return files
        loc = self._locator(run)
        return self._files_for(run, self.api.run(loc.project, loc.run_id))

    # -- reading ----------------------------------------------------------------
    def run_version(self, run: RunRef) -> str:
        """A digest of what one run query says of the run (no history is read): its state,
        heartbeat, history and console line counts and summary (its `_step`).  A training
        logging a step moves the line count, the heartbeat and the summary."""
        if isinstance(run.locator, ArtifactLocator):   # a version's files never change; its aliases may
            handle = run.locator.handle
            return hashlib.blake2b(json.dumps([handle.digest, sorted(handle.aliases)]).encode(),
                                   digest_size=12).hexdigest()
        loc = self._locator(run)
        wrun = _retrying(f"reading run {loc.run_id}", lambda: self.api.run(loc.project, loc.run_id))
        attrs = getattr(wrun, "_attrs", None) or {}
        state = [attrs.get(k) for k in ("state", "heartbeatAt", "historyLineCount", "logLineCount",
                                        "summaryMetrics")]
        return hashlib.blake2b(json.dumps(state, default=str).encode(), digest_size=12).hexdigest()

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        if isinstance(run.locator, ArtifactLocator):
            yield from self._read_version(run, select)
            return
        loc = self._locator(run)
        wrun = self.api.run(loc.project, loc.run_id)
        reader = _RunReader(self, run, wrun, select)
        try:
            for table in reader.tables():
                if table.num_rows:
                    table = select.filter(table)
                    if table.num_rows:
                        yield table
        finally:
            with self._lock:
                self._notes[(run.project_id, run.run_id)] = reader.notes()

    def _read_version(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        """An artifact version's rows, as the offline source gives them (artifacts.py)."""
        loc: ArtifactLocator = run.locator
        artifact = self.api.artifact(loc.handle, loc.producer_project, loc.producer_run)
        with self._lock:
            self._notes[(run.project_id, run.run_id)] = {}
        rows = art_map.single_rows(artifact) + art_map.file_rows(artifact)
        table = select.filter(rows_to_table(
            ({"attribute_path": r.path, "attribute_type": r.type, VALUE_COLUMN[r.type]: r.value} for r in rows),
            {"project_id": run.project_id, "run_id": run.run_id}))
        if table.num_rows:
            yield table

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


class ApiRunFiles(FileAccess):
    """One run's files: listed from the server, downloaded on first use by absolute path."""

    def __init__(self, source: WandbApiSource, run, ref: RunRef, remote: list, root: Path):
        self.source = source
        self.run = run
        self.ref = ref
        self.remote = {f.name: f for f in remote}
        self.root = root
        self.prefix = f"{ref.run_id}/files/"
        # runs trackport wrote: the original file path (manifest "source") -> name in the run
        self.written: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def path_of(self, name: str) -> str:
        return self.prefix + name

    def _name(self, path: str) -> str:
        if path in self.written:
            return self.written[path]
        if not path.startswith(self.prefix):
            raise RunError("not a file of this run", project_id=self.ref.project_id,
                           run_id=self.ref.run_id, file=path)
        name = path[len(self.prefix):]
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise RunError("bad file path", project_id=self.ref.project_id, run_id=self.ref.run_id, file=path)
        return name

    def local_path(self, path: str) -> Path | None:
        name = self._name(path)
        remote = self.remote.get(name)
        if remote is None:
            inside = sorted(n for n in self.remote if n.startswith(name.rstrip("/") + "/"))
            if not inside:
                raise RunError("the server lists no such file", project_id=self.ref.project_id,
                               run_id=self.ref.run_id, file=name)
            for member in inside:   # a folder (a file_set): every file under it
                self.local_path(self.path_of(member))
            return self.root / name
        with self._lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            local = self.root / name
            if local.is_file() and (remote.size is None or local.stat().st_size == remote.size):
                return local
            local = self.source.api.download(self.run, remote, self.root)
            if remote.size is not None and local.stat().st_size != remote.size:
                raise RunError(f"downloaded {local.stat().st_size} bytes, the server lists {remote.size}",
                               project_id=self.ref.project_id, run_id=self.ref.run_id, file=name)
            return local

    def open(self, path: str) -> BinaryIO:
        return open(self.local_path(path), "rb")

    def size(self, path: str) -> int | None:
        name = self._name(path)
        remote = self.remote.get(name)
        if remote is not None:
            return remote.size
        inside = [f.size for n, f in self.remote.items() if n.startswith(name.rstrip("/") + "/")]
        return sum(inside) if inside and None not in inside else None


_MAX_STEP = (10**18 - 1) // 10**6   # the largest integer a decimal(18,6) step holds


def integer_steps(steps: list) -> pa.Array:
    """decimal(18,6) steps from integers (or exact Decimals), with no float in between.

    Arrow's int64 -> decimal(18,6) cast refuses (it wants precision 25), so the
    decimal's two 64-bit words are built from the scaled integers directly.
    """
    if all(type(s) is int for s in steps):
        values = np.asarray(steps, dtype=np.int64)
        if values.size and int(np.abs(values).max()) > _MAX_STEP:
            raise OverflowError(f"step {int(np.abs(values).max())} does not fit a decimal(18,6) step")
        scaled = values * 10**6
    else:   # decoded steps of a run trackport wrote with a step multiplier
        units = [int(Decimal(s).scaleb(6)) for s in steps]
        if units and max(abs(u) for u in units) > 10**18 - 1:
            raise OverflowError("step does not fit a decimal(18,6) step")
        scaled = np.asarray(units, dtype=np.int64)
    return decimal_steps(scaled)


_SERIES_TYPES = frozenset({"float_series", "string_series", "histogram_series", "file_series"})


class ApiArtifactFiles(FileAccess):
    """An artifact version's files (`<digest>/<path in the artifact>`), all downloaded on first use."""

    def __init__(self, source: WandbApiSource, ref: RunRef, root: Path):
        self.source = source
        self.ref = ref
        self.root = root
        self.prefix = art_map.file_name(ref.run_id, "")
        self._lock = threading.Lock()
        self._done = False

    def local_path(self, path: str) -> Path | None:
        name = path[len(self.prefix):] if path.startswith(self.prefix) else ""
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise RunError("not a file of this artifact", project_id=self.ref.project_id,
                           run_id=self.ref.run_id, file=path)
        with self._lock:
            if not self._done:
                self.source.api.download_artifact(self.ref.locator.handle, self.root, self.ref.project_id,
                                                  self.ref.run_id)
                self._done = True
        local = self.root / name
        if not local.is_file():
            raise RunError("the artifact's download holds no such file", project_id=self.ref.project_id,
                           run_id=self.ref.run_id, file=name)
        return local

    def open(self, path: str) -> BinaryIO:
        return open(self.local_path(path), "rb")


def _parse_time(text: Any) -> datetime | None:
    """An API time (`2026-01-02T03:04:05`, UTC, optional fraction/zone) -> aware datetime."""
    if not text or not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return mp.datetime_from_seconds(value.timestamp())   # to the ms, rounded as for `_timestamp`


def _step_of(row: dict) -> int | None:
    step = row.get("_step")
    if isinstance(step, bool) or step is None:
        return None
    if isinstance(step, float):
        if not step.is_integer():
            return None
        return int(step)
    if isinstance(step, int):
        return step
    return None


def _ms_of(row: dict) -> int | None:
    ts = row.get("_timestamp")
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return mp.ms_from_seconds(ts)
    return None


class _RunReader(RunScoped):
    """One run, read once: single values, history pages, system metrics, console, files."""

    def __init__(self, source: WandbApiSource, ref: RunRef, run, select: Selection):
        self.source = source
        self.api = source.api
        self.ref = ref
        self.err_run = ref
        self.run = run
        self.select = select
        self.types = select.types
        self.hits: dict[str, int] = {}
        self.drops: Counter = Counter()
        self.details: dict[str, Any] = {}
        self.cols = SeriesColumns()
        self.media_files: set[str] = set()   # run files a history point refers to

    def notes(self) -> dict[str, Any]:
        return {"transformations": dict(self.hits), "drops": dict(self.drops), "details": dict(self.details)}

    def _flush(self) -> pa.Table:
        cols, self.cols = self.cols, SeriesColumns()
        try:
            return cols.table(self.ref.project_id, self.ref.run_id, integer_steps(cols.step))
        except OverflowError as exc:
            raise self._err(f"{exc}; W&B steps beyond 10**12 cannot be exported") from None

    # -- a run trackport wrote (mapping.py "runs trackport wrote") ------------------------
    def _decoder(self, files: "ApiRunFiles") -> "mp.Decoder | None":
        origin = _written_origin(self.run)
        if origin is None or origin != (self.ref.project_id, self.ref.run_id):
            return None
        if mp.MANIFEST_PATH not in files.remote:
            raise self._err(f"W&B run {self.run.id} was written by trackport but has no {mp.MANIFEST_PATH} "
                            f"(an unfinished copy?); rerun the copy into it, or read it by its W&B id")
        local = files.local_path(files.path_of(mp.MANIFEST_PATH))
        try:
            return mp.Decoder(json.loads(local.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise self._err(f"unreadable {mp.MANIFEST_PATH}: {exc}", file=mp.MANIFEST_PATH) from None

    def _decoded(self, decoder: "mp.Decoder", files: "ApiRunFiles") -> Iterator[pa.Table]:
        """The canonical rows the run was made from (its single values, series and files)."""
        self.details["decoded"] = "written by trackport: read back through its manifest"
        yield rows_to_table(
            ({"attribute_path": r.path, "attribute_type": r.type, VALUE_COLUMN[r.type]: r.value}
             for r in decoder.single_rows()),
            {"project_id": self.ref.project_id, "run_id": self.ref.run_id},
        )
        if self.types & _SERIES_TYPES:
            for page in self.api.history(self.run):
                for row in page:
                    wandb_step = _step_of(row)
                    if wandb_step is None:
                        self.drops["history_row_without_step"] += 1
                        continue
                    rest = {k: v for k, v in row.items() if k not in ("_step", "_timestamp")}
                    step = decoder.step(wandb_step)
                    for path, kind, ts, value in decoder.history_row(rest, _ms_of(row), wandb_step):
                        self.cols.add(path, kind, step, ts, value)
                    if len(self.cols) >= _BATCH_ROWS:
                        yield self._flush()
            if len(self.cols):
                yield self._flush()
        entries = decoder.file_rows()
        files.written.update({e["source"]: e["rel"] for e in entries if e.get("source")})
        if entries:
            yield rows_to_table(
                ({"attribute_path": e["path"], "attribute_type": e["type"],
                  "step": None if e.get("step") is None else Decimal(e["step"]),
                  "timestamp": None if e.get("ts") is None else mp.datetime_from_seconds(e["ts"] / 1000),
                  "file_value": {"path": e.get("source") or files.path_of(e["rel"])}} for e in entries),
                {"project_id": self.ref.project_id, "run_id": self.ref.run_id},
            )

    def tables(self) -> Iterator[pa.Table]:
        remote = self.api.files(self.run)
        files = self.source._files_for(self.ref, self.run, remote)
        decoder = self._decoder(files)
        if decoder is not None:
            yield from self._decoded(decoder, files)
            return
        yield self._single_values()
        if self.types & _SERIES_TYPES:
            yield from self._history(files)
            yield from self._system_metrics(files)
            if "string_series" in self.types and OUTPUT_LOG in files.remote:
                yield from self._stdout(files)
        if self.types & FILE_TYPES:
            table = self._file_rows(files)
            if table is not None:
                yield table
        if len(self.cols):
            yield self._flush()
        if self.hits or self.drops:
            log.info("run %s/%s: %s", self.ref.project_id, self.ref.run_id,
                     ", ".join(f"{k} x{v}" for k, v in sorted({**self.hits, **self.drops}.items())))

    # -- single values --------------------------------------------------------------
    def _single_values(self) -> pa.Table:
        run = self.run
        attrs = dict(getattr(run, "_attrs", {}) or {})
        info = mp.RunInfo(
            run_id=run.id,
            entity=self.ref.project_id.split("/", 1)[0],
            project=self.ref.project_id.split("/", 1)[1],
            display_name=run.name or "",
            notes=run.notes or "",
            tags=tuple(run.tags or ()),
            group=run.group or "",
            job_type=run.job_type or "",
            created=_parse_time(attrs.get("createdAt")),
            heartbeat=_parse_time(attrs.get("heartbeatAt")),
            state=run.state or "",
            extra=self._extra(attrs),
        )
        config = mp.unwrap_api_config(run.rawconfig or {})
        wandb_config = config.get("_wandb")
        rows = mp.run_rows(info, self.hits) + mp.config_rows(config, self.hits) + \
            mp.summary_rows(run.summary_metrics or {}, self.hits) + \
            mp.metric_config_rows(wandb_config.get("m") if isinstance(wandb_config, dict) else None)
        used = self.api.used_refs(run)
        if used:
            rows.append(mp.Row(art_map.USED_ARTIFACTS, "string_set", used))
        return rows_to_table(
            ({"attribute_path": r.path, "attribute_type": r.type, VALUE_COLUMN[r.type]: r.value} for r in rows),
            {"project_id": self.ref.project_id, "run_id": self.ref.run_id},
        )

    def _extra(self, attrs: dict) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        for key, value in attrs.items():
            if key in _CONSUMED:
                continue
            if key == "user" and isinstance(value, dict):
                value = value.get("username") or value.get("name")
            elif key == "systemMetrics" and isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            extra[_snake(key)] = value
        return extra

    # -- history --------------------------------------------------------------------
    def _history(self, files: ApiRunFiles) -> Iterator[pa.Table]:
        rows_seen = 0
        pages = 0
        for page in self.api.history(self.run):
            pages += 1
            for row in page:
                rows_seen += 1
                step = _step_of(row)
                if step is None:
                    self.drops["history_row_without_step"] += 1
                    continue
                ts = _ms_of(row)
                for key, value in row.items():
                    if key in ("_step", "_timestamp"):
                        continue
                    if isinstance(value, dict):
                        value = _sorted_keys(value)
                    for point in mp.history_points(key, value, self.hits):
                        value_out = point.value
                        if point.type == "file_series":
                            self.media_files.add(value_out)
                            value_out = files.path_of(value_out)
                        self.cols.add(point.path, point.type, step, ts, value_out)
                if len(self.cols) >= _BATCH_ROWS:
                    yield self._flush()
        self.details["history_rows"] = rows_seen
        line_count = getattr(self.run, "_attrs", {}).get("historyLineCount")
        if isinstance(line_count, int) and line_count > rows_seen:
            # The server counts more rows than it handed out: never silently short.
            raise self._err(f"the server reports {line_count} history rows but scan_history returned "
                            f"{rows_seen}; nothing of this run was written. Rerun later (the run may "
                            f"still be exporting its history)")

    # -- system metrics ------------------------------------------------------------------
    def _system_metrics(self, files: ApiRunFiles) -> Iterator[pa.Table]:
        if "float_series" not in self.types and "string_series" not in self.types:
            return
        if EVENTS_FILE in files.remote:
            local = files.local_path(files.path_of(EVENTS_FILE))
            rows = _jsonl(local)
            self.details["system_metrics"] = f"{EVENTS_FILE}: every point"
        else:
            samples = EVENTS_SAMPLES
            rows = self.api.system_events(self.run, samples)
            self.details["system_metrics"] = f"events stream: {len(rows)} points (asked for up to {samples})"
            if len(rows) >= samples:
                self.hits["system_metrics_sampled"] = self.hits.get("system_metrics_sampled", 0) + 1
        index: dict[str, int] = {}
        for row in rows:
            ts = _ms_of(row)
            for key, value in row.items():
                if key == "_timestamp":
                    continue
                if key in ("_wandb", "_runtime"):
                    self.hits["system_bookkeeping_left_out"] = self.hits.get("system_bookkeeping_left_out", 0) + 1
                    continue
                for point in mp.system_metric_points(key, value, self.hits):
                    step = index.get(point.path, 0)
                    index[point.path] = step + 1
                    self.hits["system_metric_index_step"] = self.hits.get("system_metric_index_step", 0) + 1
                    self.cols.add(point.path, point.type, step, ts, point.value)
            if len(self.cols) >= _BATCH_ROWS:
                yield self._flush()

    # -- console ------------------------------------------------------------------------
    def _stdout(self, files: ApiRunFiles) -> Iterator[pa.Table]:
        local = files.local_path(files.path_of(OUTPUT_LOG))
        with open(local, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            for index, line in enumerate(fh):
                text = line.rstrip("\n").rstrip("\r")
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    self.hits["stdout_invalid_utf8"] = self.hits.get("stdout_invalid_utf8", 0) + 1
                self.cols.add(mp.STDOUT, "string_series", index, None, text)
                self.hits["stdout_line_step"] = self.hits.get("stdout_line_step", 0) + 1
                if len(self.cols) >= _BATCH_ROWS:
                    yield self._flush()

    # -- files ---------------------------------------------------------------------------
    def _file_rows(self, files: ApiRunFiles) -> pa.Table | None:
        rows = []
        for name in sorted(files.remote):
            if name in self.media_files:
                continue   # exported once, as its point of the media key's file_series
            path, kind = mp.classify_file(name)
            rows.append({"attribute_path": path, "attribute_type": kind, "file_value": {"path": files.path_of(name)}})
        if not rows:
            return None
        return rows_to_table(rows, {"project_id": self.ref.project_id, "run_id": self.ref.run_id})


def _written_origin(run) -> tuple[str, str] | None:
    """(project_id, run_id) of the source run a trackport-written W&B run came from."""
    config = getattr(run, "_attrs", {}).get("rawconfig")
    if config is None:
        config = run.rawconfig or {}
    return mp.origin_from_config(mp.unwrap_api_config(config))


def _sorted_keys(value: Any) -> Any:
    """A dict with its keys sorted, recursively.

    History rows reach Python through wandb-core, which decodes each value into a
    Go map and encodes it again (wandb/apis/public/history.py reads `value_json`),
    so a media dict's key order changes from one read to the next; sorted keys
    make its JSON text (wandb/media/<key>) the same on every read.
    """
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


def _retrying(what: str, fn, attempts: int = 5):
    """`fn()`, retried on TransientError (listing happens before the pipeline's own retries)."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except TransientError as exc:
            if attempt == attempts:
                raise UsageError(f"W&B API: {what} failed {attempts} times, last: {exc}") from None
            delay = exc.retry_after if exc.retry_after is not None else min(30.0, 2.0 ** attempt)
            log.warning("W&B API: %s: %s; retrying in %.0fs", what, exc, delay)
            time.sleep(delay)


def _jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                item = json.loads(line)
                if isinstance(item, dict):
                    rows.append(item)
    return rows


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()
