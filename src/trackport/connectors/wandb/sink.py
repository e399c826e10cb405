"""W&B destination: `wandb://ENTITY/PROJECT` (or `wandb://ENTITY`: one W&B project per source project).

`--wandb-mode online` (default) logs to the W&B server (WANDB_API_KEY, WANDB_BASE_URL);
`--wandb-mode offline` writes offline run directories under `--wandb-dir` (default
$WANDB_DIR, else the current directory) `/wandb/offline-run-*`, for `wandb sync` or for
reading back with `wandb:DIR`.

How one run is written (mapping.py has the encoding):
1. `wandb.init` with a run id derived from the source origin (`mapping.dest_run_id`),
   name/notes/tags/group from `sys/*`, config = every single value + `_trackport`
   (origin, complete=false);
2. `write()` spools series points (with the core's exact int64 `dest_step`) to an Arrow
   IPC file and copies files into the run's files dir (`run.save`, absolute paths);
3. `commit()` memory-maps the spool, orders it by step (stable), and logs one
   `run.log({...}, step=s)` per step with every value of that step and `_timestamp`;
   then saves `trackport/manifest.json`, logs the artifact version an entry of
   `wandb-artifacts/...` is (online: links it into its registry collections) and, online,
   `run.use_artifact`s the destination's copy of each version the run used
   (docs/wandb.md, "Artifacts"), sets config `_trackport.complete = true` LAST, and
   finishes the run.
   Online, wandb-core sends a config change at once (GraphQL `UpsertBucket`) but
   batches history into its file_stream, so a mark set before `finish()` would reach
   the server BEFORE the history; the run is therefore finished first (everything
   flushed, file_stream `complete`), then the mark is set on the finished run through
   the public API (`wandb.Api().run(...)`, `Run.update()`).
W&B accepts only increasing steps per run, hence the spool: nothing is dropped for
arriving out of order.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped, UsageError
from trackport.core.files import materialise
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.registry import ParsedUri
from trackport.core.schema import DEST_STEP, FILE_TYPES, HISTOGRAM_TYPE, VALUE_COLUMN, ms_from_datetime

from . import artifacts
from . import mapping as mp
from .datastore import DatastoreError, LogReader

log = logging.getLogger(__name__)

_SERIES_TYPES = ("float_series", "string_series", "histogram_series")
_SPOOL_SCHEMA = pa.schema([
    pa.field("dest_step", pa.int64()),
    pa.field("key", pa.string()),
    pa.field("attribute_type", pa.string()),
    pa.field("ts", pa.int64()),
    pa.field("float_value", pa.float64()),
    pa.field("string_value", pa.string()),
    pa.field("histogram_value", HISTOGRAM_TYPE),
])
_LOG_CHUNK = 20_000


def open_wandb_sink(parsed: ParsedUri, options: dict[str, Any], read_only: bool = False) -> "WandbSink":
    parts = [p for p in parsed.rest[2:].split("/") if p]
    if not parts or len(parts) > 2:
        raise UsageError(f"bad W&B destination {parsed.display!r}: use wandb://ENTITY/PROJECT or wandb://ENTITY")
    mode = options.get("wandb_mode") or "online"
    if mode not in ("online", "offline"):
        raise UsageError(f"--wandb-mode must be online or offline, not {mode!r}")
    base = options.get("wandb_dir") or os.environ.get("WANDB_DIR") or os.getcwd()
    base = Path(base).expanduser()
    if not base.is_absolute():
        base = Path.cwd() / base
    return WandbSink(parts[0], parts[1] if len(parts) == 2 else None, mode, base, options, read_only=read_only)


@dataclass
class _Found:
    run_dirs: list[Path]


class WandbSink(Sink):
    capabilities = mp.SINK_CAPABILITIES

    def __init__(self, entity: str, project: str | None, mode: str, base_dir: Path, options: dict[str, Any],
                 read_only: bool = False):
        self.entity = entity
        self.read_only = read_only
        self.project = project
        self.mode = mode
        self.base_dir = base_dir
        self.options = dict(options)
        self.uri = f"wandb://{entity}/{project}" if project else f"wandb://{entity}"
        # Online lineage (docs/wandb.md, "Artifacts"): a consumer copied before the version it used
        # waits here (version ref -> consumers) until that version is logged; `_logged` holds the
        # refs of versions logged by this sink.
        self._lineage_lock = threading.Lock()
        self._logged: set[str] = set()
        self._pending_uses: dict[str, list[tuple[str, str, Any]]] = {}   # ref -> (project, run id, report)

    def preflight(self, read_only: bool = False) -> None:
        """Offline: the folder the run files go to takes files."""
        if self.mode == "offline":
            from trackport.core.connector import check_output_folder

            check_output_folder(self.base_dir, f"{self.uri} (--wandb-dir)",
                                read_only or self.read_only)

    # -- identity ----------------------------------------------------------------

    def project_for(self, origin: Origin) -> str:
        project = origin.project_id
        if artifacts.is_artifact_project(project):   # an artifact version goes beside its runs
            project = artifacts.producer_project_of(project)
        return self.project or mp.dest_project(project)

    def run_id_for(self, origin: Origin) -> str:
        return mp.dest_run_id(origin.uri, origin.project_id, origin.run_id)

    def _offline_dirs(self, run_id: str) -> list[Path]:
        wandb_dir = self.base_dir / "wandb"
        if not wandb_dir.is_dir():
            return []
        return sorted(p for p in wandb_dir.glob(f"offline-run-*-{run_id}")
                      if p.is_dir() and not p.is_symlink())

    def claim_dir(self) -> Path | None:
        """Offline: inside the `wandb` folder, for every process on this machine; online: per
        user on this machine (core/claims.py)."""
        if self.mode == "offline":
            from trackport.core.claims import LOCK_DIR_NAME

            return self.base_dir / "wandb" / LOCK_DIR_NAME
        return super().claim_dir()

    def server(self) -> str:
        from .client import current_base_url

        return current_base_url() or "https://api.wandb.ai"

    def find_run(self, origin: Origin) -> DestRun | None:
        """Read-only: the offline run dirs (offline mode) or the server (online mode)."""
        run_id = self.run_id_for(origin)
        if self.mode == "offline":
            dirs = self._offline_dirs(run_id)
            if not dirs:
                return None
            marks = [m for m in (_offline_mark(d) for d in dirs) if mp.is_complete(m)]
            return DestRun(run_id, bool(marks), None, _Found(dirs), version=_version(marks[-1] if marks else {}))
        from .client import find_online_run

        config = find_online_run(self.entity, self.project_for(origin), run_id)
        if config is None:
            return None
        return DestRun(run_id, mp.is_complete(config), None, config.get(mp.TRACKPORT_KEY),
                       version=_version(config))

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this W&B sink was opened read-only", project_id=plan.origin.project_id,
                           run_id=plan.origin.run_id)
        after = None
        if resume is not None and resume.complete and self.mode != "offline":
            # complete, but the source run grew since (another run_version): append its new steps
            after = _append_after(resume.locator, plan)
        if resume is not None and after is None:
            if self.mode == "offline" and isinstance(resume.locator, _Found):
                # A partial offline run is ours (same deterministic id) and was never synced:
                # start it again from nothing rather than append to it.
                for run_dir in resume.locator.run_dirs:
                    shutil.rmtree(run_dir)
            else:
                # W&B keeps the steps a run already has and drops a step logged again at or
                # below its last one (wandb-core resumes at the server's last _step + 1), so a
                # partial run cannot be completed from the start without losing points.
                raise RunError(
                    f"W&B run {self.entity}/{self.project_for(plan.origin)}/{resume.id} was left "
                    "incomplete by an earlier copy (no completion mark `_trackport.complete` in its "
                    "config); W&B would drop the steps it already holds if logged again, so trackport "
                    "does not write into it. Fix: delete that run in W&B and rerun the copy (or copy "
                    "into another project)", project_id=plan.ref.project_id, run_id=plan.ref.run_id)
        return WandbRunWriter(self, plan, after)

    def close(self) -> None:
        """A consumer whose used version was not logged by this copy (not selected, kept as a
        run only, or not found in the destination) keeps the use as a value: counted."""
        with self._lineage_lock:
            left, self._pending_uses = self._pending_uses, {}
        counted = set()
        for ref, consumers in sorted(left.items()):
            for project, run_id, report in consumers:
                log.warning("W&B run %s/%s/%s: the artifact version it used (%s) is not in the destination; "
                            "kept as %s", self.entity, project, run_id, ref, artifacts.USED_ARTIFACTS)
                if (project, run_id) not in counted:   # once per run, as the writer counts
                    counted.add((project, run_id))
                    report.transformed("artifact_use_recorded", 1, artifacts.USED_ARTIFACTS)

    def version_logged(self, ref: str) -> list[tuple[str, str, Any]]:
        """Note that the version `ref` is logged; the consumers that waited for it."""
        with self._lineage_lock:
            self._logged.add(ref)
            return self._pending_uses.pop(ref, [])

    def wait_for_version(self, ref: str, project: str, run_id: str, report) -> bool:
        """Register a consumer of `ref` to be recorded when it is logged; False when it was
        logged meanwhile (the caller looks again)."""
        with self._lineage_lock:
            if ref in self._logged:
                return False
            self._pending_uses.setdefault(ref, []).append((project, run_id, report))
            return True

    def carrier_of(self, ref: str, uri: str) -> tuple[str, str, str, str] | None:
        """(project, run id, artifact name, digest) of the destination run carrying the version
        `ref` (`<wandb-artifacts/...>/<digest>`) of a source `uri`; None for a ref not of that form."""
        project_id, _, digest = ref.rpartition("/")
        if not artifacts.is_artifact_project(project_id) or not digest:
            return None
        origin = Origin(uri, project_id, digest)
        return self.project_for(origin), self.run_id_for(origin), project_id.rsplit("/", 1)[1], digest

    def as_source(self):
        if self.mode != "offline":
            # online: the API source (WANDB_BASE_URL, WANDB_API_KEY), which decodes runs
            # trackport wrote through their manifest
            from .api_source import WandbApiSource, parse_target
            from trackport.core.registry import ParsedUri

            path = f"{self.entity}/{self.project}" if self.project else self.entity
            target = parse_target(ParsedUri("wandb", f"//{path}", f"wandb://{path}"))
            return WandbApiSource(target, self.options)
        from .source import WandbOfflineSource

        return WandbOfflineSource(self.base_dir, self.options)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        if self.mode != "offline":
            from .api_source import Locator as ApiLocator

            return RunRef(origin.project_id, origin.run_id,
                          ApiLocator(self.entity, self.project_for(origin), dest.id))
        from .source import Locator

        for run_dir in self._offline_dirs(self.run_id_for(origin)):
            logs = sorted(run_dir.glob("*.wandb"))
            if logs:
                return RunRef(origin.project_id, origin.run_id, Locator(run_dir, logs[0]))
        raise RunError(f"W&B offline run {dest.id} not found under {self.base_dir / 'wandb'}",
                       project_id=origin.project_id, run_id=origin.run_id)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        origin = plan.origin
        lines = [f"W&B run {self.entity}/{self.project_for(origin)}/{self.run_id_for(origin)} "
                 f"({self.mode})"]
        parent = plan.scan.value(mp.FORK_PARENT)
        if parent:
            plan.report.transformed("fork_recorded", 1, str(parent))
        defined = _metric_definitions(plan.scan.values, lambda kind, path: plan.report.transformed(kind, 1, path))
        if defined:
            lines.append(f"{len(defined)} metric definition(s) (define_metric: custom x-axes)")
        return lines


def _metric_definitions(singles, count) -> list[tuple[str, dict]]:
    """(path, fields) of every `wandb/define_metric/<name>` single value, in path order; `count(kind,
    path)` is called for a definition written short (`metric_definition_partial`)."""
    out = []
    for path, (kind, value) in sorted(singles.items()):
        if not path.startswith(mp.DEFINE_METRIC_PREFIX) or len(path) == len(mp.DEFINE_METRIC_PREFIX):
            continue
        fields = mp.metric_definition(value) if kind == "string" else None
        if fields is None or mp.metric_unwritable(fields):
            count("metric_definition_partial", path)
        if fields is not None:
            out.append((path, fields))
    return out


def _append_after(mark: Any, plan: RunPlan) -> tuple[int, int, dict] | None:
    """(last step, points, mark) the completion mark of a run copied before records, when the
    run can be grown in place (same step multiplier).  None: a mark without them (an earlier
    release) or another multiplier: refused like a partial run."""
    if not isinstance(mark, dict) or not isinstance(mark.get("last_step"), int) or \
            not isinstance(mark.get("points"), int):
        return None
    multiplier = plan.steps.multiplier if plan.steps is not None else 1
    if mark.get("multiplier") != multiplier:
        return None
    return mark["last_step"], mark["points"], mark


def _version(config: dict) -> str | None:
    """The source's run_version recorded with a complete mark (None: none recorded)."""
    mark = config.get(mp.TRACKPORT_KEY)
    return mark.get("source_version") if mp.is_complete(config) and isinstance(mark, dict) else None


def _offline_mark(run_dir: Path) -> dict:
    """The run's `_trackport` config as its log holds it (reads only): {} when unreadable."""
    from .client import internal_pb2

    pb = internal_pb2()
    logs = sorted(run_dir.glob("*.wandb"))
    if not logs:
        return {}
    config: dict = {}
    needle = mp.TRACKPORT_KEY.encode()
    try:
        for payload in LogReader(logs[0]):
            if needle not in payload:
                continue
            record = pb.Record()
            record.ParseFromString(payload)
            kind = record.WhichOneof("record_type")
            updates = record.run.config.update if kind == "run" else (
                record.config.update if kind == "config" else ())
            for item in updates:
                keys = list(item.nested_key) or [item.key]
                if keys[0] == mp.TRACKPORT_KEY:
                    mp.set_nested(config, keys, mp.load_json(item.value_json))
    except (DatastoreError, OSError, ValueError):
        return {}
    return config


class WandbRunWriter(RunScoped, RunWriter):
    def __init__(self, sink: WandbSink, plan: RunPlan, after: tuple[int, int, dict] | None = None):
        self.sink = sink
        self.plan = plan
        # a grown run: (last step, points, mark) already on the server; only later steps are logged
        self._after = after
        self._extent: tuple[int, int] | None = None   # (last step, points) of this copy, for the mark
        self.report = plan.report
        self.origin = plan.origin
        self.project_id = plan.ref.project_id
        self.source_run = plan.ref.run_id
        self.err_run = plan.ref
        self.run_id = sink.run_id_for(plan.origin)
        self.tmp = Path(tempfile.mkdtemp(prefix="trackport-wandb-"))
        self.spool_path = self.tmp / "series.arrow"
        self._spool = None
        self._sink_file = None
        self.manifest: dict[str, Any] = {
            "format": mp.MANIFEST_FORMAT,
            "version": mp.MANIFEST_VERSION,
            "origin": self._origin_json(),
            "step_multiplier": plan.steps.multiplier if plan.steps is not None else 1,
            "singles": {},
            "series": {},
            "hist_types": {},
            "hist_json": [],
            "neg_zero": [],
            "files": [],
        }
        self._counted: set[tuple[str, str]] = set()
        self._files_n = 0
        self._closed = False
        self._finished = False   # online: the SDK run finished, only the mark is left
        self.run = self._init()
        self.files_dir = Path(self.run.dir)

    def _origin_json(self) -> dict:
        return {"uri": self.origin.uri, "project_id": self.origin.project_id, "run_id": self.origin.run_id}

    def _count(self, kind: str, path: str) -> None:
        if (kind, path) not in self._counted:
            self._counted.add((kind, path))
            self.report.transformed(kind, 1, path)

    # -- init ------------------------------------------------------------------

    def _settings(self):
        from .client import settings

        return settings(
            mode=self.sink.mode, x_disable_meta=True, x_disable_machine_info=True, save_code=False,
            x_disable_stats=True, console="off", x_save_requirements=False, disable_git=True,
            silent=True, reinit="create_new",
        )

    def _init(self):
        from .client import forget_start_time, set_start_time, wandb_init

        scan = self.plan.scan
        config = {path: mp.single_json(kind, value) for path, (kind, value) in sorted(scan.values.items())
                  if value is not None}
        config[mp.TRACKPORT_KEY] = self._mark(False)
        tags = []
        for tag in scan.value(mp.TAGS) or []:
            if tag and len(tag) <= mp.MAX_TAG_LENGTH:
                tags.append(tag)
            else:
                self._count("tag_skipped", mp.TAGS)
        groups = sorted(scan.value(mp.GROUP_TAGS) or [])
        name = scan.value(mp.NAME)
        notes = scan.value(mp.DESCRIPTION)
        if scan.value(mp.FORK_PARENT):
            self._count("fork_recorded", mp.FORK_PARENT)
        if self.sink.mode == "offline":
            # wandb 0.31 refuses use_artifact / link_artifact offline (wandb/sdk/wandb_run.py:3111,
            # :3036): kept as values.  Online they are made (`_use_artifacts`, `_link`).
            for path, kind in ((artifacts.USED_ARTIFACTS, "artifact_use_recorded"),
                               (artifacts.LINKS, "artifact_link_recorded")):
                if scan.value(path):
                    self._count(kind, path)
        self.sink.base_dir.mkdir(parents=True, exist_ok=True)
        wb_settings = self._settings()
        created = ms_from_datetime(scan.value(mp.CREATION_TIME))
        if created is not None:
            set_start_time(self.run_id, created)   # the run record starts when the source run did
            if self.sink.mode == "online":
                self._count("creation_time_at_copy", mp.CREATION_TIME)
        try:
            return wandb_init(
                id=self.run_id, project=self.sink.project_for(self.origin), entity=self.sink.entity,
                name=str(name) if name else self.source_run, notes=str(notes) if notes else None,
                tags=tags or None, group=groups[0] if groups else None, config=config,
                resume="allow", dir=str(self.sink.base_dir), settings=wb_settings,
            )
        except Exception as exc:  # the SDK raises many kinds (CommError, UsageError, ...)
            forget_start_time(self.run_id)
            raise self._err(f"wandb.init failed: {type(exc).__name__}: {exc}") from None

    # -- write -------------------------------------------------------------------

    def write(self, batch: pa.Table) -> None:
        types = batch.column("attribute_type")
        single = batch.filter(pc.is_null(batch.column("step")))
        single = single.filter(pc.invert(pc.is_in(single.column("attribute_type"),
                                                  value_set=pa.array(sorted(FILE_TYPES)))))
        value_columns = sorted({VALUE_COLUMN[t] for t in pc.unique(single.column("attribute_type")).to_pylist()})
        for row in single.select(["attribute_path", "attribute_type"] + value_columns).to_pylist():
            kind = row["attribute_type"]
            self.manifest["singles"][row["attribute_path"]] = [kind, mp.single_json(kind, row[VALUE_COLUMN[kind]])]
        files = batch.filter(pc.is_in(types, value_set=pa.array(sorted(FILE_TYPES))))
        if files.num_rows:
            self._write_files(files)
        series = batch.filter(pc.is_in(types, value_set=pa.array(_SERIES_TYPES)))
        if series.num_rows:
            self._spool_series(series)

    def _spool_series(self, table: pa.Table) -> None:
        if DEST_STEP not in table.column_names:
            raise self._err("the pipeline gave no integer dest_step column")
        steps = table.column(DEST_STEP)
        if steps.null_count:
            raise self._err("series point without a step: W&B needs one")
        if pc.min(steps).as_py() < 0:
            raise self._err("negative step: W&B takes steps >= 0 only")
        paths = table.column("attribute_path")
        kinds = table.column("attribute_type")
        unique = table.select(["attribute_path", "attribute_type"]).group_by(
            ["attribute_path", "attribute_type"]).aggregate([])
        for path, kind in zip(unique.column("attribute_path").to_pylist(),
                              unique.column("attribute_type").to_pylist()):
            known = self.manifest["series"].setdefault(path, kind)
            if known != kind:
                raise self._err(f"attribute {path!r} is both {known} and {kind}")
            if mp.wandb_key(path) != path:
                self._count("key_escaped", path)
        keys = pc.if_else(pc.starts_with(paths, "_"),
                          pc.binary_join_element_wise(pa.scalar(mp.ESCAPED_PREFIX), paths, ""), paths)
        spool = pa.table({
            "dest_step": steps.cast(pa.int64()),
            "key": keys,
            "attribute_type": kinds,
            "ts": pc.cast(table.column("timestamp"), pa.int64()),
            "float_value": table.column("float_value"),
            "string_value": table.column("string_value"),
            "histogram_value": table.column("histogram_value"),
        }, schema=_SPOOL_SCHEMA)
        if self._spool is None:
            self._sink_file = pa.OSFile(str(self.spool_path), "wb")
            self._spool = pa.ipc.new_file(self._sink_file, _SPOOL_SCHEMA)
        self._spool.write_table(spool)

    def _write_files(self, table: pa.Table) -> None:
        from decimal import Decimal

        rows = table.select(["attribute_path", "attribute_type", "step", "timestamp", "file_value"]).to_pylist()
        for row in rows:
            source = (row["file_value"] or {}).get("path")
            path, kind = row["attribute_path"], row["attribute_type"]
            if not source:
                self.report.dropped("file_missing_path", 1, path)
                continue
            local = self._local(source)
            self._files_n += 1
            rel_dir = f"{mp.FILES_DIR}/{self._files_n}"
            target = self.files_dir / rel_dir
            target.mkdir(parents=True, exist_ok=True)
            if local.is_dir():
                dest = target / (local.name or "dir")
                shutil.copytree(local, dest)
                saved = [p for p in dest.rglob("*") if p.is_file()]
            else:
                dest = target / (local.name or "file")
                shutil.copyfile(local, dest)
                saved = [dest]
            for item in saved:
                self.report.files += 1
                self.report.bytes += item.stat().st_size
                self.run.save(str(item), base_path=str(self.files_dir), policy="now")
            step = row["step"]
            ts = row["timestamp"]
            self.manifest["files"].append({
                "path": path, "type": kind,
                "step": None if step is None else str(Decimal(step).quantize(Decimal("0.000001"))),
                "ts": None if ts is None else mp.single_json("datetime", ts),
                "rel": dest.relative_to(self.files_dir).as_posix(),
                "source": source,
            })

    def _local(self, source: str) -> Path:
        return materialise(self.plan.files, source, self.tmp / "in", self._err)

    # -- commit ------------------------------------------------------------------

    def _log_series(self) -> None:
        if self._spool is None:
            return
        self._spool.close()
        self._sink_file.close()
        self._spool = None
        from .client import histogram

        with pa.memory_map(str(self.spool_path), "r") as source:
            table = pa.ipc.open_file(source).read_all()
            steps = table.column("dest_step").to_numpy()
            self._extent = (int(steps.max()), int(len(steps))) if len(steps) else None
            if self._after is not None and int((steps <= self._after[0]).sum()) != self._after[1]:
                raise self._err(
                    f"the source run grew with points at or below step {self._after[0]}, the last step "
                    f"W&B run {self.run_id} holds; W&B drops a step logged again at or below its last "
                    "one, so they cannot be added. Fix: delete that run in W&B and rerun the copy")
            order = np.argsort(steps, kind="stable")
            pending_step = None
            pending: dict[str, Any] = {}
            pending_ts: dict[str, int | None] = {}
            for start in range(0, len(order), _LOG_CHUNK):
                chunk = table.take(pa.array(order[start:start + _LOG_CHUNK])).to_pylist()
                for row in chunk:
                    step = row["dest_step"]
                    if step != pending_step:
                        if pending_step is not None:
                            self._log_step(pending_step, pending, pending_ts)
                        pending_step, pending, pending_ts = step, {}, {}
                    key = row["key"]
                    kind = row["attribute_type"]
                    if kind == "float_series":
                        value = row["float_value"]
                        if value == 0.0 and math.copysign(1.0, value) < 0:
                            # W&B stores -0.0 as 0 (its JSON); the manifest says where it was
                            self.manifest["neg_zero"].append([key, step])
                    elif kind == "string_series":
                        value = row["string_value"]
                    else:
                        value = self._histogram(key, row["histogram_value"], histogram)
                    pending[key] = value
                    pending_ts[key] = row["ts"]
            if pending_step is not None:
                self._log_step(pending_step, pending, pending_ts)
            del table

    def _histogram(self, key: str, value: dict | None, histogram) -> Any:
        path = key[len(mp.ESCAPED_PREFIX):] if key.startswith(mp.ESCAPED_PREFIX) else key
        if value is None:
            return None
        self.manifest["hist_types"][path] = value.get("type")
        edges, counts = value.get("edges") or [], value.get("values") or []
        if len(edges) != len(counts) + 1 or not counts or len(counts) > mp.MAX_HISTOGRAM_BINS:
            if path not in self.manifest["hist_json"]:
                self.manifest["hist_json"].append(path)
            self._count("histogram_as_json", path)
            return mp.json_text(value)
        if path in self.manifest["hist_json"]:
            return mp.json_text(value)
        return histogram(counts, edges)

    def _log_step(self, step: int, values: dict[str, Any], stamps: dict[str, int | None]) -> None:
        if self._after is not None and step <= self._after[0]:
            return   # on the server already (a grown run: only later steps are new)
        known = [t for t in stamps.values() if t is not None]
        row_ts = min(known) if known else None
        data = dict(values)
        for key, ts in stamps.items():
            if ts != row_ts or ts is None:
                data[mp.TS_PREFIX + key] = ts
        if row_ts is not None:
            data["_timestamp"] = row_ts / 1000
        try:
            self.run.log(data, step=int(step))
        except Exception as exc:
            raise self._err(f"run.log failed at step {step}: {type(exc).__name__}: {exc}") from None

    def commit(self) -> DestRun:
        try:
            self._log_series()
            self._define_metrics()
            manifest = self.files_dir / mp.MANIFEST_PATH
            manifest.parent.mkdir(parents=True, exist_ok=True)
            manifest.write_text(mp.dumps_manifest(self.manifest), encoding="utf-8")
            self.run.save(str(manifest), base_path=str(self.files_dir), policy="now")
            if artifacts.is_artifact_project(self.project_id):
                self._log_artifact()
            if self.sink.mode == "online":
                self._use_artifacts()
            url = getattr(self.run, "url", None) if self.sink.mode == "online" else None
            if self.sink.mode == "online":
                # everything on the server first (history, files, file_stream `complete`) ...
                self.run.finish()
                self._finished = True
                # ... then the completion mark, last, through the public API
                self._mark_online()
                self._remove_local_run_dir()
            else:
                # offline: the log is written in order, the mark is its last config record
                self.run.config.update({mp.TRACKPORT_KEY: self._mark(True)}, allow_val_change=True)
                self.run.finish()
        except BaseException:
            self.abort()
            raise
        self._cleanup()
        return DestRun(self.run_id, True, url, None, version=self.plan.source_version)

    def _log_artifact(self) -> None:
        """An artifact version's entry (docs/wandb.md, "Artifacts") is logged again as an
        artifact, from the run that carries it: same name, type, description, metadata,
        aliases, files and references, so W&B computes the same digest.  Online, once the
        server committed it: `run.link_artifact` for each of its registry links, and the use
        recorded for every consumer copied before it (`WandbSink.version_logged`)."""
        relog = artifacts.relog_of({path: value for path, (_kind, value) in self.plan.scan.values.items()})
        if relog is None:
            self._count("artifact_kept_as_run", self.project_id)
            if self.sink.mode == "online" and self.plan.scan.value(artifacts.LINKS):
                self._count("artifact_link_recorded", artifacts.LINKS)   # no version to link
            return
        from .client import new_artifact

        try:
            artifact = new_artifact(relog.name, relog.type, relog.description, relog.metadata)
        except (ValueError, TypeError) as exc:   # a name or metadata W&B refuses
            raise self._err(f"artifact {relog.name!r} ({relog.type}) refused by wandb.Artifact: {exc}") from None
        for entry in self.manifest["files"]:
            if entry["type"] == "file" and entry["path"].startswith(artifacts.FILES):
                artifact.add_file(str(self.files_dir / entry["rel"]), name=entry["path"][len(artifacts.FILES):])
        for path, uri in relog.references.items():
            try:
                artifact.add_reference(uri, name=path, checksum=False)
            except Exception as exc:   # a scheme whose handler needs a package (s3: boto3)
                raise self._err(f"artifact {relog.name}: reference {path} -> {uri} not accepted by W&B "
                                f"({type(exc).__name__}: {exc})") from None
        try:
            logged = self.run.log_artifact(artifact, aliases=relog.aliases or None)
            if self.sink.mode == "online":
                logged.wait()    # committed by the server (links and uses need the version)
        except Exception as exc:
            raise self._err(f"log_artifact({relog.name!r}) failed: {type(exc).__name__}: {exc}") from None
        if self.sink.mode != "online":
            return
        links = artifacts.links_of(self.plan.scan.value(artifacts.LINKS))
        for link in links:
            self._link(logged, link)
        ref = f"{self.origin.project_id}/{self.origin.run_id}"
        for project, run_id, report in self.sink.version_logged(ref):
            try:   # a consumer copied before this version: recorded now, through the public API
                from .client import record_use

                record_use(self.sink.entity, project, run_id, logged)
            except Exception as exc:
                log.warning("W&B run %s/%s/%s: recording its use of %s failed (%s: %s); kept as %s",
                            self.sink.entity, project, run_id, ref, type(exc).__name__, exc,
                            artifacts.USED_ARTIFACTS)
                report.transformed("artifact_use_recorded", 1, artifacts.USED_ARTIFACTS)

    def _link(self, logged, link: artifacts.Link) -> None:
        """`run.link_artifact` into the registry collection of `link`, in the destination's
        entity (a W&B registry belongs to an entity); a `wandb-registry-*` target is passed
        without entity, for the SDK to find the organization (wandb/sdk/wandb_run.py:3050).
        Refused: the link stays a value (`artifact_link_recorded`)."""
        _entity, project, collection = (link.target.split("/", 2) + ["", "", ""])[:3]
        target = f"{project}/{collection}" if project.startswith("wandb-registry-") else \
            f"{self.sink.entity}/{project}/{collection}"
        try:
            self.run.link_artifact(logged, target, aliases=list(link.aliases) or None)
        except Exception as exc:
            log.warning("W&B run %s: link_artifact(%s) failed (%s: %s); kept as %s", self.run_id, target,
                        type(exc).__name__, exc, artifacts.LINKS)
            self._count("artifact_link_recorded", artifacts.LINKS)

    def _use_artifacts(self) -> None:
        """`run.use_artifact` of the destination's copy of each version the source run used
        (`wandb/used_artifacts`), found as the version its carrying run logged; a version not
        logged yet is recorded when it is (`WandbSink.version_logged`), or counted at the end."""
        from .client import logged_version

        for ref in self.plan.scan.value(artifacts.USED_ARTIFACTS) or []:
            carrier = self.sink.carrier_of(str(ref), self.origin.uri)
            if carrier is None:
                self._count("artifact_use_recorded", artifacts.USED_ARTIFACTS)
                continue
            project, run_id, name, digest = carrier
            for _attempt in range(2):
                try:
                    version = logged_version(self.sink.entity, project, run_id, name, digest)
                    if version is not None:
                        self.run.use_artifact(version)
                        break
                except Exception as exc:
                    log.warning("W&B run %s: use_artifact(%s) failed (%s: %s); kept as %s", self.run_id, ref,
                                type(exc).__name__, exc, artifacts.USED_ARTIFACTS)
                    self._count("artifact_use_recorded", artifacts.USED_ARTIFACTS)
                    break
                if self.sink.wait_for_version(str(ref), self.sink.project_for(self.origin), self.run_id,
                                              self.report):
                    break

    def _define_metrics(self) -> None:
        """`run.define_metric` for every `wandb/define_metric/<name>` value, AFTER the history:
        a definition is run-level (config `_wandb.m`, what W&B's UI plots by), and defined
        before the history its `step_sync` would make the SDK add step-metric values to rows
        that did not have them."""
        singles = {path: (kind, value) for path, (kind, value) in self.manifest["singles"].items()}
        for path, fields in _metric_definitions(singles, self._count):
            name = path[len(mp.DEFINE_METRIC_PREFIX):]
            summary = [op for op in fields.get("summary") or () if op in mp.METRIC_WRITABLE_SUMMARY]
            step_metric = fields.get("step_metric")
            try:
                self.run.define_metric(
                    name, step_metric=step_metric if isinstance(step_metric, str) and step_metric else None,
                    step_sync=bool(fields.get("step_sync")), hidden=bool(fields.get("hidden")) or None,
                    summary=",".join(summary) or None)
            except Exception as exc:  # wandb.Error for a name it refuses ('*' inside the name)
                self._count("metric_definition_partial", path)
                log.warning("W&B run %s: define_metric(%r) refused (%s: %s); kept in config as %s",
                            self.run_id, name, type(exc).__name__, exc, path)

    def _mark(self, complete: bool) -> dict:
        if not complete and self._after is not None:
            # a grown run keeps its old mark while steps are appended: a failed append is
            # appended again after the same last step (W&B holds what it already got once)
            return self._after[2]
        mark = {"format": mp.MANIFEST_VERSION, "origin": self._origin_json(), "complete": complete}
        if complete and self.plan.source_version is not None:
            mark["source_version"] = self.plan.source_version   # find_run's DestRun.version
        if complete:   # what a later copy of the grown run appends after (_append_after)
            mark["multiplier"] = self.plan.steps.multiplier if self.plan.steps is not None else 1
            mark["last_step"], mark["points"] = self._extent or (-1, 0)
        return mark

    def _mark_online(self, attempts: int = 5) -> None:
        """Config `_trackport.complete = true` on the finished run (`Run.update()`).

        Retried here: a run finished without its mark is refused by later copies."""
        from .client import mark_online_run

        for attempt in range(1, attempts + 1):
            try:
                mark_online_run(self.sink.entity, self.sink.project_for(self.origin), self.run_id,
                                mp.TRACKPORT_KEY, self._mark(True))
                return
            except Exception as exc:  # the SDK raises many kinds (CommError, ...)
                if attempt == attempts:
                    raise self._err(
                        f"the run was written but its completion mark could not be set "
                        f"({type(exc).__name__}: {exc}); set config {mp.TRACKPORT_KEY}.complete = true "
                        f"on W&B run {self.run_id} once its data is checked, or delete it and rerun") from None
                log.warning("W&B run %s: setting the completion mark failed (%s); retrying",
                            self.run_id, type(exc).__name__)
                time.sleep(2.0 ** (attempt - 1))

    def _remove_local_run_dir(self) -> None:
        """Online: the SDK's local copy of the uploaded run (`DIR/wandb/run-*-ID`, with a copy
        of every file) is not needed once the server has it all and the mark is set."""
        run_dir = self.files_dir.parent
        wandb_dir = (self.sink.base_dir / "wandb").resolve()
        if run_dir.name.startswith("run-") and run_dir.name.endswith(f"-{self.run_id}") and \
                run_dir.resolve().parent == wandb_dir and not run_dir.is_symlink():
            shutil.rmtree(run_dir, ignore_errors=True)

    def abort(self) -> None:
        if self._closed:
            return
        try:
            if not self._finished:
                self.run.finish(exit_code=1)
        except Exception:  # finishing a broken run must not hide the original error
            log.debug("finish after failure failed", exc_info=True)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        from .client import forget_start_time

        forget_start_time(self.run_id)
        if self._spool is not None:
            try:
                self._spool.close()
                self._sink_file.close()
            except Exception:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
