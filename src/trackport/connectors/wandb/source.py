"""`wandb:PATH` — W&B offline run directories -> canonical rows.

Reads each run's `.wandb` transaction log (datastore.LogReader) and replays its
records: run, config, summary, history, stats (system metrics), output_raw
(console), telemetry, exit, artifact, metric (define_metric); then the run's `files/` directory.  The
protobuf classes come from the installed wandb package (`wandb.proto`, loaded in
client.py); the log itself is parsed here.

Several folders of one run id (a run resumed offline, a run a sweep agent
started twice) are one run: their logs are replayed in time order, as W&B's
server merges a resumed run (history once per step, the later config, summary
and files winning); the merge is counted and named in the run's report.

Memory stays bounded: history points go into column lists that become an Arrow
table every `_BATCH_ROWS` points; only config/summary (latest values) and the
current console line are held for the whole run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa

from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError, UsageError
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.schema import (
    ARTIFACTS_CLASS,
    FILE_TYPE,
    SCHEMA,
    STEP_TYPE,
    TIMESTAMP_TYPE,
    VALUE_COLUMN,
    SeriesColumns,
    rows_to_table,
)

from . import artifacts as art_map
from . import mapping as mp
from . import offline_artifacts
from .datastore import DatastoreError, LogReader

log = logging.getLogger(__name__)

_BATCH_ROWS = 50_000
_RUN_DIR = re.compile(r"^(offline-run|run)-\d{8}_\d{6}-(?P<id>.+)$")
# The origin of every offline run: with its entity/project and run id, which W&B makes unique
# (docs/wandb.md, "Origin").
OFFLINE_ORIGIN = "wandb:offline"
_RUN_RECORD_PEEK = 200   # records to look at for the run record when listing


@dataclass(frozen=True)
class Locator:
    run_dir: Path       # the run's (latest) folder
    log_file: Path
    # every folder of the run id as (run dir, log file), in time order, when there are several
    parts: tuple[tuple[Path, Path], ...] = ()

    @property
    def folders(self) -> tuple[tuple[Path, Path], ...]:
        return self.parts or ((self.run_dir, self.log_file),)


@dataclass
class _Found:
    """One run folder as listed: its identity and start time (None without a run record)."""

    run_dir: Path
    log_file: Path
    project: str
    run_id: str
    start_ms: int | None
    has_run_record: bool


def find_run_dirs(root: Path) -> list[Path]:
    """Run directories under `root` (a run dir, a `wandb/` dir, or a dir holding `wandb/`)."""
    if not root.exists():
        raise UsageError(f"wandb:{root}: no such folder")
    if _log_file(root) is not None:
        return [root]
    for base in (root, root / "wandb"):
        if base.is_dir():
            dirs = sorted(p for p in base.iterdir()
                          if p.is_dir() and not p.is_symlink() and _RUN_DIR.match(p.name)
                          and _log_file(p) is not None)
            if dirs:
                return dirs
    raise UsageError(f"wandb:{root}: no W&B run directory (offline-run-* / run-* with a .wandb file) "
                     f"in it, nor in {root / 'wandb'}")


def _log_file(run_dir: Path) -> Path | None:
    if not run_dir.is_dir():
        return None
    logs = sorted(run_dir.glob("*.wandb"))
    return logs[0] if logs else None


class RunFiles(FileAccess):
    """`file_value.path` = `<run dir name>/files/<relative path>` under the run's parent dir."""

    def __init__(self, base: Path, ref: RunRef, written: dict[str, str] | None = None):
        self.base = base
        self.ref = ref
        # runs trackport wrote: original file path -> `<run dir name>/files/<rel>`
        self.written = written or {}

    def local_path(self, path: str) -> Path | None:
        path = self.written.get(path, path)
        parts = path.split("/")
        if not path or ".." in parts or path.startswith("/"):
            raise RunError("bad file path", project_id=self.ref.project_id, run_id=self.ref.run_id, file=path)
        local = self.base / path
        if local.is_symlink() and not local.exists():
            raise RunError(
                f"dangling symlink to {os.readlink(local)} (run.save links the original file, which "
                f"is gone); copy the file into {local.parent} to move it",
                project_id=self.ref.project_id, run_id=self.ref.run_id, file=path)
        return local

    def open(self, path: str) -> BinaryIO:
        local = self.local_path(path)
        return open(local, "rb")


class WandbOfflineSource(Source):
    capabilities = mp.SOURCE_CAPABILITIES

    def __init__(self, root: Path, options: dict[str, Any] | None = None):
        self.root = root
        self.uri = f"wandb:{root}"
        self.options = dict(options or {})
        self._pb = None
        self._notes: dict[tuple[str, str], dict[str, Any]] = {}

    def account(self, run: RunRef, report) -> None:
        notes = self._notes.get((run.project_id, run.run_id), {"transformations": {}, "warnings": []})
        for kind, count in sorted(notes["transformations"].items()):
            report.transformed(kind, count)
        for kind, count in sorted(notes.get("drops", {}).items()):
            report.dropped(kind, count)
        for warning in notes["warnings"]:
            report.warn(warning)
        if notes.get("details"):
            report.details["source"] = dict(notes["details"])

    @property
    def pb(self):
        if self._pb is None:
            from .client import internal_pb2

            self._pb = internal_pb2()
        return self._pb

    # -- listing ----------------------------------------------------------------

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        """Each run, then each artifact version it logged (docs/wandb.md, "Artifacts")."""
        listed: set[tuple[str, str]] = set()
        # reading whole logs for artifacts only when the selection may want one
        wants_artifacts = ARTIFACTS_CLASS in select.classes and (
            not select.projects or any(art_map.is_artifact_project(p) for p in select.projects))
        for project, run_id, folders in self._grouped():
            if select.wants_run(project, run_id):
                last = folders[-1]
                parts = tuple((f.run_dir, f.log_file) for f in folders) if len(folders) > 1 else ()
                yield RunRef(project, run_id, Locator(last.run_dir, last.log_file, parts))
            if art_map.is_artifact_project(project) or not wants_artifacts:
                continue   # a run the W&B sink wrote to carry an artifact version: it is that version
            for folder in folders:
                for loc in offline_artifacts.scan(self.pb, folder.log_file, project, run_id):
                    key = (loc.artifact.project_id, loc.artifact.digest)
                    if key not in listed and select.wants_run(*key):
                        listed.add(key)     # a version logged again (a resumed run) is one version
                        yield RunRef(*key, loc)

    def _grouped(self) -> list[tuple[str, str, list[_Found]]]:
        """Run folders grouped by (project, run id), each group in time order.

        A resumed offline run, or a run a sweep agent started twice, leaves several
        `offline-run-*-<id>` folders; W&B's server holds them as one run, and so do we.
        A folder whose log has no run record (an empty or torn log) joins the run of its
        id when exactly one project holds that id.  Groups come in the directory-name
        order of their first folder.
        """
        found = [self._identity(d, _log_file(d)) for d in find_run_dirs(self.root)]
        projects: dict[str, set[str]] = {}
        for f in found:
            if f.has_run_record:
                projects.setdefault(f.run_id, set()).add(f.project)
        groups: dict[tuple[str, str], list[_Found]] = {}
        for f in found:
            known = projects.get(f.run_id, set())
            if not f.has_run_record and len(known) == 1:
                f.project = next(iter(known))
            groups.setdefault((f.project, f.run_id), []).append(f)
        out = []
        for (project, run_id), folders in groups.items():
            if all(f.start_ms is not None for f in folders):
                folders.sort(key=lambda f: (f.start_ms, f.run_dir.name))
            else:   # the folder name starts with the run's start time (local time of the machine)
                folders.sort(key=lambda f: f.run_dir.name.split("-", 2)[-1])
            out.append((project, run_id, folders))
        return out

    def _identity(self, run_dir: Path, log_file: Path) -> _Found:
        """Identity from the first run record; a trackport-written run gives its origin."""
        match = _RUN_DIR.match(run_dir.name)
        run_id = match["id"] if match else run_dir.name
        try:
            for n, payload in enumerate(LogReader(log_file)):
                if n > _RUN_RECORD_PEEK:
                    break
                record = self.pb.Record()
                record.ParseFromString(payload)
                if record.WhichOneof("record_type") == "run":
                    run = record.run
                    start = _ms_of(run.start_time) if run.HasField("start_time") else None
                    origin = mp.origin_from_config(_config_items(run.config))
                    if origin is not None and load_manifest(run_dir) is not None:
                        return _Found(run_dir, log_file, origin[0], origin[1], start, True)
                    return _Found(run_dir, log_file, mp.project_id(run.entity, run.project),
                                  run.run_id or run_id, start, True)
        except (DatastoreError, OSError) as exc:
            log.warning("%s: %s", log_file, exc)
        except Exception as exc:  # protobuf DecodeError: the run fails when it is read, with the file
            log.warning("%s: record is not a W&B Record (%s)", log_file, exc)
        return _Found(run_dir, log_file, mp.project_id("", ""), run_id, None, False)

    def files(self, run: RunRef) -> FileAccess:
        if isinstance(run.locator, offline_artifacts.ArtifactLocator):
            return offline_artifacts.ArtifactFiles(offline_artifacts.load(run.locator, run), run)
        run_dir = run.locator.run_dir
        written = {}
        manifest = load_manifest(run_dir)
        if manifest is not None and manifest.get("origin", {}).get("run_id") == run.run_id:
            for entry in manifest.get("files", []):
                if entry.get("source"):
                    written[entry["source"]] = f"{run_dir.name}/files/{entry['rel']}"
        return RunFiles(run_dir.parent, run, written)

    def describe_run(self, run: RunRef) -> str:
        if isinstance(run.locator, offline_artifacts.ArtifactLocator):
            art = run.locator.artifact
            return (f"artifact {art.name} ({art.type}, digest {art.digest}) logged by "
                    f"{art.producer_project}/{art.producer_run}")
        dirs = " + ".join(str(d) for d, _ in run.locator.folders)
        return f"{run.project_id}/{run.run_id} ({dirs})"

    def origin(self, run: RunRef) -> Origin:
        """An offline run is its entity/project and run id (docs/wandb.md, "Origin"), not the folder
        it lies in: a moved or copied `wandb/` folder finds its destination runs again."""
        return Origin(OFFLINE_ORIGIN, run.project_id, run.run_id)

    def legacy_origins(self, run: RunRef) -> list[Origin]:
        if isinstance(run.locator, offline_artifacts.ArtifactLocator):
            return []                                           # earlier releases did not move them
        return [Origin(self.uri, run.project_id, run.run_id)]   # what earlier releases recorded

    def run_version(self, run: RunRef) -> str:
        """A digest of the sizes of the run's `.wandb` logs and saved files (per folder): the
        log is append-only, so it grows while a training writes, and nothing is read."""
        if isinstance(run.locator, offline_artifacts.ArtifactLocator):
            return offline_artifacts.version(run.locator, run)
        sizes = []
        for run_dir, log_file in run.locator.folders:
            try:
                sizes.append((run_dir.name, log_file.name, log_file.stat().st_size))
            except OSError:
                sizes.append((run_dir.name, log_file.name, None))
            files = run_dir / "files"
            for top, dirs, names in os.walk(files):
                dirs.sort()
                for name in sorted(names):
                    p = Path(top) / name
                    try:
                        sizes.append((run_dir.name, p.relative_to(files).as_posix(), p.stat().st_size))
                    except OSError:
                        continue
        return hashlib.blake2b(json.dumps(sizes).encode(), digest_size=12).hexdigest()

    # -- reading ----------------------------------------------------------------

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        if isinstance(run.locator, offline_artifacts.ArtifactLocator):
            notes: dict[str, Any] = {"transformations": {}, "drops": {}, "warnings": [], "details": {}}
            self._notes[(run.project_id, run.run_id)] = notes
            yield select.filter(_rows_table(offline_artifacts.read(run.locator, run, notes),
                                            run.project_id, run.run_id))
            return
        loc: Locator = run.locator
        replay = Replay(run, loc, self.pb)
        self._notes[(run.project_id, run.run_id)] = replay.notes
        try:
            for table in replay.tables():
                yield select.filter(table)
        except DatastoreError as exc:
            raise RunError(str(exc), project_id=run.project_id, run_id=run.run_id,
                           file=str(replay.log_file)) from None


def _config_items(config) -> dict:
    out: dict = {}
    for item in config.update:
        keys = list(item.nested_key) or [item.key]
        try:
            mp.set_nested(out, keys, mp.load_json(item.value_json))
        except ValueError:
            mp.set_nested(out, keys, item.value_json)
    return out


def _ts_seconds(timestamp) -> float:
    return timestamp.seconds + timestamp.nanos / 1e9


def _ms_of(timestamp) -> int:
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


class Replay:
    """One pass over a run's records, yielding canonical tables."""

    def __init__(self, ref: RunRef, loc: Locator, pb):
        self.ref = ref
        self.loc = loc
        self.pb = pb
        self.project_id = ref.project_id
        self.run_id = ref.run_id
        # the folder being replayed (one of loc.folders)
        self.run_dir, self.log_file = loc.folders[0]
        self.file_prefix = f"{self.run_dir.name}/files/"
        self.torn = False
        # several folders of one run id: the steps each series holds from earlier folders
        self.held = _HeldSteps() if len(loc.folders) > 1 else None
        self.hits: dict[str, int] = {}
        self.drops: dict[str, int] = {}
        self.tears: list[str] = []
        self.cols = SeriesColumns()
        self.config: dict = {}
        self.summary: dict = {}
        self.info = mp.RunInfo(run_id="")
        self.extra: dict[str, Any] = {}
        self.telemetry: str | None = None
        self.exit_code: int | None = None
        self.last_ms: int | None = None
        self.console: dict[str, _Console] = {}
        self.stats_index: dict[str, int] = {}
        self.media_files: set[str] = set()
        self.artifacts: dict[str, str] = {}
        self.metrics: list = []     # MetricRecords (define_metric), in log order
        self.origin: tuple[str, str] | None = None
        self.notes: dict[str, Any] = {"transformations": {}, "drops": {}, "warnings": [], "details": {}}
        self.decoder: mp.Decoder | None = None

    def _seen(self, ms: int) -> None:
        if self.last_ms is None or ms > self.last_ms:
            self.last_ms = ms

    def tables(self) -> Iterator[pa.Table]:
        folders = self.loc.folders
        if len(folders) > 1:
            names = [d.name for d, _ in folders]
            self.hits["resumed_runs_merged"] = len(folders) - 1
            self.notes["details"]["merged_run_dirs"] = names
            self.extra["offline_run_dirs"] = mp.json_text(names)
            log.info("run %s/%s: %d folders of one run id read as one run, in time order: %s",
                     self.project_id, self.run_id, len(folders), ", ".join(names))
        for n, (run_dir, log_file) in enumerate(folders):
            self.run_dir, self.log_file = run_dir, log_file
            self.file_prefix = f"{run_dir.name}/files/"
            self.exit_code = None      # the state is the last folder's
            yield from self._replay_folder()
            if self.held is not None and n < len(folders) - 1:
                self.held.next_folder(last=n + 1 == len(folders) - 1)
        if len(self.cols):
            yield self._flush()
        yield self._single_values()
        files = self._files()
        if files is not None:
            yield files
        self.notes["transformations"] = dict(self.hits)
        self.notes["drops"] = dict(self.drops)
        if self.hits or self.drops:
            log.info("run %s/%s: %s", self.project_id, self.run_id,
                     ", ".join(f"{k} x{v}" for k, v in sorted({**self.hits, **self.drops}.items())))

    def _replay_folder(self) -> Iterator[pa.Table]:
        reader = LogReader(self.log_file)
        for payload in reader:
            record = self.pb.Record()
            try:
                record.ParseFromString(payload)
            except Exception as exc:  # protobuf DecodeError: a corrupt payload that passed the CRC
                raise DatastoreError(f"record {reader.records} is not a W&B Record ({exc})") from None
            kind = record.WhichOneof("record_type")
            handler = getattr(self, f"_on_{kind}", None)
            if handler is not None:
                handler(getattr(record, kind))
            if len(self.cols) >= _BATCH_ROWS:
                yield self._flush()
        self.torn = reader.tear is not None
        if reader.tear is not None:
            message = f"{self.log_file}: read up to a tear ({reader.tear}); the records before it are kept"
            log.warning("run %s/%s: %s", self.project_id, self.run_id, message)
            self.notes["warnings"].append(message)
            self.tears.append(message)
            self.extra["transaction_log_tear"] = "; ".join(self.tears)
        for console in self.console.values():
            console.finish()

    def _flush(self) -> pa.Table:
        cols, self.cols = self.cols, SeriesColumns()
        return cols.table(self.project_id, self.run_id, _steps_array(cols.step))

    def _add(self, path: str, kind: str, step: int, ts_ms: int | None, value: Any) -> None:
        """A series point; a media file's path is relative to the run's files/."""
        self.cols.add(path, kind, step, ts_ms, self.file_prefix + value if kind == "file_series" else value)

    # -- records ----------------------------------------------------------------

    def _on_run(self, run) -> None:
        info = self.info
        info.run_id = run.run_id or info.run_id
        info.entity = run.entity or info.entity
        info.project = run.project or info.project
        info.display_name = run.display_name or info.display_name
        info.notes = run.notes or info.notes
        info.tags = tuple(run.tags) or info.tags
        info.group = run.run_group or info.group
        info.job_type = run.job_type or info.job_type
        if run.HasField("start_time") and info.created is None:
            info.created = mp.datetime_from_seconds(_ts_seconds(run.start_time))
            self._seen(_ms_of(run.start_time))
        for name in ("host", "sweep_id", "storage_id"):
            value = getattr(run, name)
            if value:
                self.extra[name] = value
        if run.starting_step:
            self.extra["starting_step"] = run.starting_step
        if run.resumed:
            self.extra["resumed"] = True
        if run.HasField("git") and (run.git.remote_url or run.git.commit):
            self.extra["git"] = {"remote_url": run.git.remote_url, "commit": run.git.commit}
        if run.HasField("branch_point") and run.branch_point.run and run.branch_point.run != run.run_id:
            info.fork_parent = run.branch_point.run
            value = run.branch_point.value
            info.fork_step = int(value) if float(value).is_integer() else value
            if run.branch_point.metric and run.branch_point.metric != "_step":
                self.extra["fork_metric"] = run.branch_point.metric
        self._apply(self.config, run.config.update, ())
        self._apply(self.summary, run.summary.update, run.summary.remove)
        self._check_origin()

    def _check_origin(self) -> None:
        if self.origin is None and self.decoder is None:
            origin = mp.origin_from_config(self.config)
            if origin is not None and origin == (self.project_id, self.run_id):
                manifest = load_manifest(self.run_dir)
                if manifest is not None:
                    self.origin = origin
                    self.decoder = mp.Decoder(manifest)

    def _apply(self, target: dict, updates, removes) -> None:
        for item in updates:
            keys = list(item.nested_key) or [item.key]
            try:
                value = mp.load_json(item.value_json)
            except ValueError:
                value = item.value_json
            mp.set_nested(target, keys, value)
        for item in removes:
            mp.remove_nested(target, list(item.nested_key) or [item.key])

    def _on_config(self, config) -> None:
        self._apply(self.config, config.update, config.remove)
        self._check_origin()

    def _on_summary(self, summary) -> None:
        self._apply(self.summary, summary.update, summary.remove)

    def _on_history(self, history) -> None:
        row: dict = {}
        for item in history.item:
            keys = list(item.nested_key) or [item.key]
            mp.set_nested(row, keys, _item_value(item))
        step = row.pop("_step", None)
        if step is None and history.HasField("step"):
            step = history.step.num
        ts = row.pop("_timestamp", None)
        ts_ms = mp.ms_from_seconds(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None
        if ts_ms is not None:
            self._seen(ts_ms)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or \
                (isinstance(step, float) and not step.is_integer()):
            # W&B gives every row a `_step` (the API source drops such a row the same way)
            self.drops["history_row_without_step"] = self.drops.get("history_row_without_step", 0) + 1
            return
        step = int(step)
        if self.decoder is not None:
            points = self.decoder.history_row(row, ts_ms, step)
            canonical = self.decoder.step(step)
            for path, kind, ts, value in points:
                if self.held is None or self._new_point(path, step):
                    self._add(path, kind, canonical, ts, value)
            return
        held = self.held
        for key, value in row.items():
            for point in mp.history_points(key, value, self.hits):
                if held is not None and not self._new_point(point.path, step):
                    continue
                if point.type == "file_series":
                    self.media_files.add(self.file_prefix + point.value)
                self._add(point.path, point.type, step, ts_ms, point.value)

    def _new_point(self, path: str, step: int) -> bool:
        """False for a point an earlier folder of the run holds at this step (W&B keeps that one)."""
        if self.held.holds(path, step):
            self.drops["resumed_step_repeated"] = self.drops.get("resumed_step_repeated", 0) + 1
            return False
        self.held.add(path, step)
        return True

    def _on_stats(self, stats) -> None:
        if self.decoder is not None:
            return  # the sink disables system metrics: not part of the canonical run
        ts_ms = _ms_of(stats.timestamp)
        self._seen(ts_ms)
        for item in stats.item:
            try:
                value = mp.load_json(item.value_json)
            except ValueError:
                value = item.value_json    # not JSON: kept as the text W&B holds
            # named as W&B's server names it (`system.` + key, nested values flattened), so the
            # API source gives the same paths
            for point in mp.system_metric_points(mp.stats_metric_name(item.key), value, self.hits):
                index = self.stats_index.get(point.path, 0)
                self.stats_index[point.path] = index + 1
                self.hits["system_metric_index_step"] = self.hits.get("system_metric_index_step", 0) + 1
                self.cols.add(point.path, point.type, index, ts_ms, point.value)

    def _on_output_raw(self, output) -> None:
        if self.decoder is not None:
            return  # the sink disables console capture: not part of the canonical run
        stream = mp.STDOUT if output.output_type == self.pb.OutputRawRecord.OutputType.STDOUT else mp.STDERR
        ts_ms = _ms_of(output.timestamp) if output.HasField("timestamp") else None
        if ts_ms is not None:
            self._seen(ts_ms)
        console = self.console.get(stream)
        if console is None:
            console = self.console[stream] = _Console(stream, self)
        console.feed(output.line, ts_ms)

    _on_output = _on_output_raw

    def _on_telemetry(self, telemetry) -> None:
        from google.protobuf import json_format

        self.telemetry = json.dumps(json_format.MessageToDict(telemetry), sort_keys=True)

    def _on_exit(self, exit_record) -> None:
        self.exit_code = exit_record.exit_code
        self.extra["runtime_seconds"] = exit_record.runtime

    def _on_metric(self, metric) -> None:
        if self.decoder is None:    # a run trackport wrote has its definitions in the manifest
            self.metrics.append(metric)

    def _on_artifact(self, artifact) -> None:
        self.artifacts[artifact.name or artifact.digest] = mp.json_text(
            {"type": artifact.type, "digest": artifact.digest, "aliases": list(artifact.aliases),
             "files": [c.path for c in artifact.manifest.contents]})

    # -- the end ----------------------------------------------------------------

    def _single_values(self) -> pa.Table:
        info = self.info
        info.run_id = info.run_id or self.run_id
        if self.exit_code is None:
            info.state = "crashed" if self.torn else "running"
        else:
            info.state = "finished" if self.exit_code == 0 else "failed"
            info.exit_code = self.exit_code
        if self.last_ms is not None:
            info.heartbeat = datetime.fromtimestamp(self.last_ms / 1000, tz=timezone.utc)
        extra = dict(self.extra)
        if self.telemetry:
            extra["telemetry"] = self.telemetry
        extra["offline_run_dir"] = self.run_dir.name
        for name, text in self.artifacts.items():
            extra[f"artifacts/{name}"] = text
        info.extra = extra
        if self.decoder is not None:
            # the run's start as W&B holds it (the run record), not the manifest's copy of the
            # source value: a copy that started the run at the time of the copy reads back so
            rows = [mp.Row(r.path, r.type, info.created) if r.path == mp.CREATION_TIME and info.created
                    else r for r in self.decoder.single_rows()]
        else:
            rows = mp.run_rows(info, self.hits) + mp.config_rows(self.config, self.hits) + \
                mp.summary_rows(self.summary, self.hits) + mp.metric_record_rows(self.metrics)
        return _rows_table(rows, self.project_id, self.run_id)

    def _files(self) -> pa.Table | None:
        if self.decoder is not None:
            return self._decoded_files()
        chosen: dict[str, str] = {}     # path in the run -> file_value.path (the latest folder's)
        for run_dir, _ in self.loc.folders:
            files_dir = run_dir / "files"
            if not files_dir.is_dir():
                continue
            prefix = f"{run_dir.name}/files/"
            for dirpath, dirnames, filenames in os.walk(files_dir):
                dirnames.sort()
                for name in sorted(filenames):
                    rel = (Path(dirpath) / name).relative_to(files_dir).as_posix()
                    if prefix + rel in self.media_files:
                        continue
                    if rel in chosen:
                        self.hits["resumed_file_replaced"] = self.hits.get("resumed_file_replaced", 0) + 1
                    chosen[rel] = prefix + rel
        rows = []
        for rel, value in chosen.items():
            path, kind = mp.classify_file(rel)
            rows.append(mp.Row(path, kind, {"path": value}))
        if not rows:
            return None
        return _rows_table(rows, self.project_id, self.run_id)

    def _decoded_files(self) -> pa.Table | None:
        entries = self.decoder.file_rows()
        if not entries:
            return None
        from decimal import Decimal

        n = len(entries)
        steps = [None if e.get("step") is None else Decimal(e["step"]) for e in entries]
        table = {
            "project_id": pa.array([self.project_id] * n, pa.string()),
            "run_id": pa.array([self.run_id] * n, pa.string()),
            "attribute_path": pa.array([e["path"] for e in entries], pa.string()),
            "attribute_type": pa.array([e["type"] for e in entries], pa.string()),
            "step": pa.array(steps, STEP_TYPE),
            "timestamp": pa.array([e.get("ts") for e in entries], pa.int64()).cast(TIMESTAMP_TYPE),
            "file_value": pa.array([{"path": e.get("source") or self.file_prefix + e["rel"]} for e in entries],
                                   FILE_TYPE),
        }
        cols = [table[f.name] if f.name in table else pa.nulls(n, f.type) for f in SCHEMA]
        return pa.Table.from_arrays(cols, schema=SCHEMA)


class _HeldSteps:
    """The steps each series holds from the folders replayed so far (8 bytes a point).

    W&B's SDK logs a run's steps in increasing order, so each folder's steps of a series
    are kept as one sorted array and looked up by bisection.
    """

    def __init__(self):
        self.done: dict[str, list[array]] = {}      # path -> sorted steps of each earlier folder
        self.current: dict[str, array] = {}
        self.unsorted: set[str] = set()
        self.recording = True                       # False for the last folder: nothing follows it

    def holds(self, path: str, step: int) -> bool:
        for steps in self.done.get(path, ()):
            i = bisect_left(steps, step)
            if i < len(steps) and steps[i] == step:
                return True
        return False

    def add(self, path: str, step: int) -> None:
        if not self.recording:
            return
        steps = self.current.get(path)
        if steps is None:
            steps = self.current[path] = array("q")
        elif step < steps[-1]:
            self.unsorted.add(path)
        steps.append(step)

    def next_folder(self, last: bool) -> None:
        for path, steps in self.current.items():
            if path in self.unsorted:
                steps = array("q", sorted(steps))
            self.done.setdefault(path, []).append(steps)
        self.current = {}
        self.unsorted = set()
        self.recording = not last


def load_manifest(run_dir: Path) -> dict | None:
    """The trackport manifest a W&B run written by the sink carries (None when absent/unreadable)."""
    path = run_dir / "files" / mp.MANIFEST_PATH
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == mp.MANIFEST_FORMAT else None


class _Console:
    """Joins console fragments into lines: one string_series point per line."""

    def __init__(self, path: str, replay: Replay):
        self.path = path
        self.replay = replay
        self.parts: list[str] = []
        self.first_ms: int | None = None
        self.index = 0

    def feed(self, text: str, ts_ms: int | None) -> None:
        while text:
            if not self.parts:
                self.first_ms = ts_ms
            head, newline, text = text.partition("\n")
            self.parts.append(head)
            if newline:
                self._emit()

    def _emit(self) -> None:
        line = "".join(self.parts)
        self.parts = []
        self.replay.hits["console_lines"] = self.replay.hits.get("console_lines", 0) + 1
        self.replay._add(self.path, "string_series", self.index, self.first_ms, line)
        self.index += 1

    def finish(self) -> None:
        if self.parts:
            self._emit()


def _item_value(item) -> Any:
    if item.value_json:
        try:
            return mp.load_json(item.value_json)
        except ValueError:
            return item.value_json
    which = item.WhichOneof("value")
    if which is None or which == "none":
        return None
    if which == "json":
        return mp.load_json(item.json)
    return getattr(item, which)


def _rows_table(rows: list[mp.Row], project_id: str, run_id: str) -> pa.Table:
    return rows_to_table(
        ({"attribute_path": r.path, "attribute_type": r.type, VALUE_COLUMN[r.type]: r.value} for r in rows),
        {"project_id": project_id, "run_id": run_id},
    )


def _steps_array(steps: list) -> pa.Array:
    """int (or Decimal) steps -> decimal128(18,6); out-of-range steps raise (never wrap)."""
    if all(type(s) is int for s in steps):
        return pa.array(steps, pa.int64()).cast(pa.decimal128(25, 6)).cast(STEP_TYPE)
    return pa.array(steps, STEP_TYPE)
