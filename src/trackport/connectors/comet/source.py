"""Comet offline archive source: `comet:PATH`, every `OfflineExperiment` zip below PATH.

An archive trackport wrote (it holds trackport/manifest.json) is read back exactly: float points
from Comet's own metric messages, every other row from trackport/rows.jsonl, files from the
archive's assets.  An archive Comet's SDK wrote is read by the mapping in docs/comet.md.  A zip
is only ever read (zipfile, mode "r"); nothing below PATH changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa

from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.schema import VALUE_COLUMN, SeriesColumns, rows_to_table

from . import mapping as mp

log = logging.getLogger(__name__)
BATCH_POINTS = 50_000
ORIGIN_URI = "comet"


class Archive:
    """What one archive says about itself, read once: its experiment.json and, when trackport
    wrote it, its manifest."""

    def __init__(self, path: Path):
        self.path = path
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if mp.EXPERIMENT not in names or mp.MESSAGES not in names:
                raise zipfile.BadZipFile(f"no {mp.EXPERIMENT} / {mp.MESSAGES}: not a finished Comet archive")
            self.meta = json.loads(zf.read(mp.EXPERIMENT))
            self.assets: dict[str, dict] = {}         # fileName -> file_upload payload
            self.manifest = None
            for message in iter_messages(zf):
                if message.get("type") == "file_upload":
                    payload = message["payload"]
                    name = (payload.get("additional_params") or {}).get("fileName")
                    if name in (mp.MANIFEST_ASSET, mp.ROWS_ASSET) and payload["file_path"] in names:
                        self.assets[name] = payload
            if mp.MANIFEST_ASSET in self.assets:
                self.manifest = json.loads(zf.read(self.assets[mp.MANIFEST_ASSET]["file_path"]))

    @property
    def key(self) -> str:
        return self.meta.get("offline_id") or self.path.stem

    @property
    def origin(self) -> dict | None:
        return (self.manifest or {}).get("origin")

    def identity(self) -> tuple[str, str]:
        if self.origin:
            return self.origin["project_id"], self.origin["run_id"]
        return f"{self.meta.get('workspace') or ''}/{self.meta.get('project_name') or ''}", self.key


def iter_messages(zf: zipfile.ZipFile) -> Iterator[dict]:
    with zf.open(mp.MESSAGES) as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def archives(root: Path) -> list[Path]:
    """The archives below root, in a deterministic order (the staging folder is not read)."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.zip") if mp.STAGING not in p.relative_to(root).parts)


class CometArchiveSource(Source):
    capabilities = mp.SOURCE_CAPABILITIES

    def __init__(self, root: Path, uri: str, options=None):
        self.root, self.uri, self.options = root, uri, options or {}
        self._lock = threading.Lock()
        self._accounts: dict[tuple[str, str], dict] = {}
        self._skipped: list[str] = []

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        for path in archives(self.root):
            try:
                archive = Archive(path)
            except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
                log.warning("skipping %s: not a readable Comet offline archive (%s)", path, exc)
                self._skipped.append(f"{path}: {exc}")
                continue
            project_id, run_id = archive.identity()
            if select.wants_run(project_id, run_id):
                yield RunRef(project_id, run_id, archive)

    def source_notes(self) -> list[str]:
        return [f"left out (unreadable or unfinished archive): {s}" for s in self._skipped]

    def _archive(self, run: RunRef) -> Archive:
        if isinstance(run.locator, Archive):
            return run.locator
        if isinstance(run.locator, (str, Path)):
            return Archive(Path(run.locator))
        for path in archives(self.root):
            try:
                archive = Archive(path)
            except (zipfile.BadZipFile, OSError, ValueError, KeyError):
                continue
            if archive.identity() == (run.project_id, run.run_id):
                return archive
        raise RunError(f"no Comet archive of this run in {self.root}", project_id=run.project_id,
                       run_id=run.run_id)

    def origin(self, run: RunRef) -> Origin:
        recorded = self._archive(run).origin
        if recorded:
            return Origin(recorded["uri"], recorded["project_id"], recorded["run_id"])
        return Origin(ORIGIN_URI, run.project_id, run.run_id)

    def describe_run(self, run: RunRef) -> str:
        return str(self._archive(run).path)

    def run_version(self, run: RunRef) -> str | None:
        archive = self._archive(run)
        if archive.manifest:
            return archive.manifest.get("version")
        digest = hashlib.blake2b(digest_size=12)
        with archive.path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def account(self, run: RunRef, report) -> None:
        with self._lock:
            acc = self._accounts.pop((run.project_id, run.run_id), None)
        for kind, (count, example) in sorted((acc or {}).items()):
            report.transformed(kind, count, example)

    def files(self, run: RunRef) -> FileAccess:
        return ArchiveFiles(self._archive(run), run)

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        archive = self._archive(run)
        acc: dict[str, tuple[int, str]] = {}
        reader = TrackportReader if archive.manifest else NativeReader
        try:
            with zipfile.ZipFile(archive.path) as zf:
                for table in reader(zf, archive, run, acc).tables():
                    table = select.filter(table)
                    if table.num_rows:
                        yield table
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise RunError(f"cannot read the Comet archive: {exc}. Fix: restore the archive or move it out "
                           f"of {self.root}", project_id=run.project_id, run_id=run.run_id,
                           file=str(archive.path)) from None
        with self._lock:
            self._accounts[(run.project_id, run.run_id)] = acc


class ArchiveFiles(FileAccess):
    """A run's files, extracted from its archive on first use into a private temporary folder."""

    def __init__(self, archive: Archive, run: RunRef):
        self.archive, self.run = archive, run
        self._tmp: Path | None = None
        self._members: dict[str, list[tuple[str, str]]] | None = None   # canonical path -> [(rel, member)]

    def _index(self) -> dict[str, list[tuple[str, str]]]:
        if self._members is None:
            members: dict[str, list[tuple[str, str]]] = {}
            with zipfile.ZipFile(self.archive.path) as zf:
                for message in iter_messages(zf):
                    if message.get("type") != "file_upload":
                        continue
                    payload = message["payload"]
                    meta = payload.get("metadata") or {}
                    if isinstance(meta, str):
                        meta = json.loads(meta)
                    name = (payload.get("additional_params") or {}).get("fileName") or payload["file_path"]
                    if self.archive.manifest:
                        if "trackport_path" not in meta:
                            continue
                        members.setdefault(meta["trackport_path"], []).append(
                            (meta.get("trackport_rel", ""), payload["file_path"]))
                    else:
                        members.setdefault(native_file_path(self.run.run_id, name, payload), []).append(
                            ("", payload["file_path"]))
            self._members = members
        return self._members

    def local_path(self, path: str) -> Path:
        members = self._index().get(path)
        if not members and path in (self.archive.manifest or {}).get("empty_dirs", []):
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="trackport-comet-"))
            target = self._tmp / hashlib.blake2b(path.encode(), digest_size=8).hexdigest()
            target.mkdir(exist_ok=True)           # a file set without files: nothing to log as an asset
            return target
        if not members:
            raise RunError("file not in the Comet archive", project_id=self.run.project_id,
                           run_id=self.run.run_id, file=path)
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="trackport-comet-"))
        target = self._tmp / hashlib.blake2b(path.encode(), digest_size=8).hexdigest()
        if not target.exists():
            with zipfile.ZipFile(self.archive.path) as zf:
                for rel, member in members:
                    dest = target / rel if rel else target
                    if rel:
                        from trackport.core.layout import resolve_inside

                        dest = resolve_inside(target, rel)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, dest.open("wb") as out:
                        shutil.copyfileobj(src, out)
                if all(rel for rel, _ in members):
                    target.mkdir(parents=True, exist_ok=True)
        return target

    def open(self, path: str) -> BinaryIO:
        return self.local_path(path).open("rb")

    def __del__(self):
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def native_file_path(run_id: str, file_name: str, payload: dict) -> str:
    """Where a file of an archive Comet's SDK wrote lies in the canonical file tree."""
    return f"{run_id}/assets/{payload.get('message_id', 0)}/{file_name}"


class _Batches:
    def __init__(self, run: RunRef, acc: dict):
        self.run, self.acc = run, acc
        self.cols = SeriesColumns()

    def add(self, path, kind, step_micro, ms, value) -> Iterator[pa.Table]:
        self.cols.add(path, kind, step_micro, ms, value)
        if len(self.cols) + self.cols.weight >= BATCH_POINTS:
            yield self.cols.take_micro(self.run.project_id, self.run.run_id)

    def rest(self) -> Iterator[pa.Table]:
        if len(self.cols):
            yield self.cols.take_micro(self.run.project_id, self.run.run_id)

    def count(self, kind: str, example: str) -> None:
        n, first = self.acc.get(kind, (0, example))
        self.acc[kind] = (n + 1, first)

    def singles(self, rows: list[dict]) -> Iterator[pa.Table]:
        if rows:
            yield rows_to_table(rows, {"project_id": self.run.project_id, "run_id": self.run.run_id})


def single_row(path: str, typ: str, value: Any, step_micro: int | None = None, ms: int | None = None) -> dict:
    if typ in ("file", "file_set", "artifact"):
        value = None if value is None else {"path": value}
    return {"attribute_path": path, "attribute_type": typ, VALUE_COLUMN[typ]: value,
            "step": None if step_micro is None else Decimal(int(step_micro)).scaleb(-6),
            "timestamp": mp.ms_datetime(ms)}


class TrackportReader(_Batches):
    """An archive trackport wrote: float points from metric messages, the rest from rows.jsonl."""

    def __init__(self, zf: zipfile.ZipFile, archive: Archive, run: RunRef, acc: dict):
        super().__init__(run, acc)
        self.zf, self.archive = zf, archive
        self.multiplier = int(archive.manifest.get("step_multiplier") or 1)

    def tables(self) -> Iterator[pa.Table]:
        singles: list[dict] = []
        rows_asset = self.archive.assets.get(mp.ROWS_ASSET)
        if rows_asset is not None:
            with self.zf.open(rows_asset["file_path"]) as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    path, typ, step, ms, value = mp.row_from_json(line.decode("utf-8"))
                    if typ in mp.SERIES_TYPES:
                        yield from self.add(path, typ, step, ms, value)
                    else:
                        singles.append(single_row(path, typ, value, step, ms))
        yield from self.singles(singles)
        for message in iter_messages(self.zf):
            kind = message.get("type")
            payload = message.get("payload") or {}
            if kind == "log_other" and payload.get("key") == mp.OTHER_MARK:
                break           # what follows is the SDK's own end-of-run bookkeeping ("process duration")
            if kind != "metric_msg" or not payload.get("metric"):
                continue
            metric = payload["metric"]
            yield from self.add(metric["metricName"], "float_series",
                                mp.step_micro(metric.get("step"), self.multiplier),
                                payload.get("local_timestamp"), mp.from_metric_value(metric.get("metricValue")))
        yield from self.rest()


class NativeReader(_Batches):
    """An archive Comet's SDK wrote (docs/comet.md, "Reading archives Comet wrote")."""

    def __init__(self, zf: zipfile.ZipFile, archive: Archive, run: RunRef, acc: dict):
        super().__init__(run, acc)
        self.zf, self.archive = zf, archive

    def tables(self) -> Iterator[pa.Table]:
        meta = self.archive.meta
        singles: dict[str, tuple[str, Any]] = {}
        files: list[dict] = []
        texts: dict[str, list[Any]] = {}
        if meta.get("tags"):
            singles["sys/tags"] = ("string_set", sorted(meta["tags"]))
        for key, path in (("start_time", "sys/creation_time"), ("stop_time", "sys/modification_time")):
            if meta.get(key) is not None:
                singles[path] = ("datetime", mp.ms_datetime(int(meta[key])))
                self.count("comet_meta_as_sys", path)
        singles["sys/custom_run_id"] = ("string", self.archive.key)
        for message in iter_messages(self.zf):
            kind = message.get("type")
            payload = message.get("payload") or {}
            if kind == "metric_msg" and payload.get("metric"):
                metric = payload["metric"]
                name = metric["metricName"]
                if payload.get("context"):
                    name = f"{payload['context']}_{name}"        # Comet's full name (experiment.py _fullname)
                step = mp.native_step_micro(metric.get("step"))
                ms = payload.get("local_timestamp")
                yield from self.add(name, "float_series", step, ms, mp.from_metric_value(metric.get("metricValue")))
                if metric.get("epoch") is not None:
                    self.count("epoch_as_series", name)
                    yield from self.add(f"comet/epoch/{name}", "float_series", step, ms, float(metric["epoch"]))
            elif kind == "parameter_msg":
                param = payload.get("param") or payload.get("params") or {}
                if "paramName" in param:
                    # Comet keeps a parameter's last value (experiment.py log_parameter docstring)
                    singles[f"parameters/{param['paramName']}"] = mp.typed_value(param.get("paramValue"))
            elif kind == "log_other":
                key, value = payload.get("key"), payload.get("value")
                if key == "Name":
                    singles["sys/name"] = ("string", str(value))
                    self.count("comet_meta_as_sys", "sys/name")
                elif key not in mp.SDK_OTHERS:
                    singles[f"others/{key}"] = mp.typed_value(value)
            elif kind == "standard_output":
                stream = "stderr" if payload.get("stderr") else "stdout"
                yield from self.add(f"monitoring/{stream}", "string_series", None,
                                    payload.get("local_timestamp"), payload.get("output"))
            elif kind == "file_upload":
                name = (payload.get("additional_params") or {}).get("fileName") or payload.get("file_path")
                files.append(single_row(f"assets/{payload.get('message_id', 0)}/{name}", "file",
                                        native_file_path(self.run.run_id, name, payload)))
            else:
                texts.setdefault(f"comet/{kind}", []).append(payload)
        for path, payloads in texts.items():
            self.count("comet_message_as_text", path)
            text = payloads[0] if len(payloads) == 1 else payloads
            singles[path] = ("string", json.dumps(text, ensure_ascii=False, sort_keys=True))
        rows = [single_row(p, t, v) for p, (t, v) in singles.items()] + files
        yield from self.singles(rows)
        yield from self.rest()


# -- the REST API source: comet://WORKSPACE[/PROJECT] --------------------------------------------

class CometApiSource(Source):
    """Experiments of a Comet workspace (or one project) through `comet_ml.API` (REST v2).

    Comet's REST API returns parameter and other values as text (`valueCurrent`); they are read
    as strings (`api_values_as_text`).  Every metric point is read with its step, epoch and
    timestamp (experiment/metrics/get-metric); files are the experiment's assets."""

    capabilities = mp.API_SOURCE_CAPABILITIES

    def __init__(self, api, workspace: str, project: str | None, options=None):
        self.api, self.workspace, self.project = api, workspace, project
        self.uri = f"comet://{workspace}" + (f"/{project}" if project else "")
        self.options = options or {}
        self._lock = threading.Lock()
        self._accounts: dict[tuple[str, str], dict] = {}
        self._others: dict[str, list[dict]] = {}

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        projects = [self.project] if self.project else sorted(self.api.projects(self.workspace))
        for project in projects:
            project_id = f"{self.workspace}/{project}"
            for meta in sorted(self.api.experiments(self.workspace, project), key=lambda m: m["experimentKey"]):
                # an experiment trackport wrote is the run it came from (its trackport.origin other),
                # as an archive of it is (Archive.identity)
                recorded = self._recorded_origin(meta["experimentKey"])
                ident = (recorded.project_id, recorded.run_id) if recorded else (project_id, meta["experimentKey"])
                if select.wants_run(*ident):
                    yield RunRef(*ident, meta)

    def source_notes(self) -> list[str]:
        return ["Comet API source: experiment HTML, notes, console output, system details, code and git "
                "patch are not read yet (docs/comet.md, 'Not done yet'); assets, parameters, others, "
                "tags and every metric point are"]

    def _meta(self, run: RunRef) -> dict:
        if isinstance(run.locator, dict):
            return run.locator
        workspace, _, project = run.project_id.partition("/")
        for meta in self.api.experiments(workspace, project):
            if meta["experimentKey"] == run.run_id:
                return meta
        raise RunError("no such Comet experiment", project_id=run.project_id, run_id=run.run_id)

    def _others_of(self, key: str) -> list[dict]:
        with self._lock:
            got = self._others.get(key)
        if got is None:
            got = self.api.others(key)
            with self._lock:
                self._others[key] = got
        return got

    @staticmethod
    def key_of(run: RunRef) -> str:
        """The experiment key of a run (its run id, unless trackport wrote it: then the origin's)."""
        return run.locator["experimentKey"] if isinstance(run.locator, dict) else run.run_id

    def _recorded_origin(self, key: str) -> Origin | None:
        for other in self._others_of(key):
            if other.get("name") == mp.OTHER_ORIGIN:
                try:
                    recorded = json.loads(other.get("valueCurrent"))
                    return Origin(recorded["uri"], recorded["project_id"], recorded["run_id"])
                except (TypeError, ValueError, KeyError):
                    return None
        return None

    def origin(self, run: RunRef) -> Origin:
        return self._recorded_origin(self.key_of(run)) or Origin(f"comet://{self.workspace}", run.project_id,
                                                                   run.run_id)

    def run_version(self, run: RunRef) -> str | None:
        meta = self._meta(run)
        return f"{meta.get('endTimeMillis')}-{meta.get('running')}"

    def account(self, run: RunRef, report) -> None:
        with self._lock:
            acc = self._accounts.pop((run.project_id, run.run_id), None)
        for kind, (count, example) in sorted((acc or {}).items()):
            report.transformed(kind, count, example)

    def files(self, run: RunRef) -> FileAccess:
        return ApiFiles(self.api, run, self.key_of(run))

    def _manifest(self, key: str, assets: list[dict]) -> tuple[dict | None, dict | None]:
        """(manifest, rows asset) of an experiment trackport wrote; (None, None) otherwise."""
        by_name = {a.get("fileName"): a for a in assets}
        if mp.MANIFEST_ASSET not in by_name:
            return None, None
        manifest = json.loads(self.api.asset(key, by_name[mp.MANIFEST_ASSET]["assetId"]))
        return manifest, by_name.get(mp.ROWS_ASSET)

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        key = self.key_of(run)
        manifest, rows_asset = self._manifest(key, self.api.assets(key))
        if manifest is not None:
            yield from self._read_trackport(run, select, manifest, rows_asset)
        else:
            yield from self._read_native(run, select)

    def _read_trackport(self, run: RunRef, select: Selection, manifest: dict, rows_asset) -> Iterator[pa.Table]:
        """An experiment trackport wrote online, read exactly as its archive would be: every row but
        the float points from trackport/rows.jsonl, the float points from the metrics the manifest
        names (the SDK adds its own, e.g. "process duration": comet_ml/experiment.py _on_end)."""
        key, acc = self.key_of(run), {}
        batches = _Batches(run, acc)
        multiplier = int(manifest.get("step_multiplier") or 1)
        singles: list[dict] = []
        if rows_asset is not None:
            data = self.api.asset(key, rows_asset["assetId"])
            for line in (data if isinstance(data, bytes) else bytes(data)).decode("utf-8").splitlines():
                if not line.strip():
                    continue
                path, typ, step, ms, value = mp.row_from_json(line)
                if typ in mp.SERIES_TYPES:
                    for table in batches.add(path, typ, step, ms, value):
                        yield select.filter(table)
                else:
                    singles.append(single_row(path, typ, value, step, ms))
        for table in batches.singles(singles):
            table = select.filter(table)
            if table.num_rows:
                yield table
        counts = manifest.get("metrics")
        if counts is None:      # a manifest from before the counts: every metric but the SDK's own
            counts = {name: None for name in self.api.metric_names(key) if name not in mp.SDK_METRICS}
        for name, expected in sorted(counts.items()):
            points = self.api.metric(key, name)
            if expected is not None and len(points) != expected:
                raise RunError(f"Comet holds {len(points)} points of metric {name!r}, trackport sent {expected}",
                               project_id=run.project_id, run_id=run.run_id)
            for point in points:
                for table in batches.add(name, "float_series", mp.step_micro(point.get("step"), multiplier),
                                         point.get("timestamp"), mp.from_metric_value(point.get("metricValue"))):
                    yield select.filter(table)
        for table in batches.rest():
            yield select.filter(table)
        with self._lock:
            self._accounts[(run.project_id, run.run_id)] = acc

    def _read_native(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        acc: dict[str, tuple[int, str]] = {}
        batches = _Batches(run, acc)
        key, meta = self.key_of(run), self._meta(run)
        rows: list[dict] = []
        if meta.get("experimentName"):
            rows.append(single_row("sys/name", "string", meta["experimentName"]))
        for field, path in (("startTimeMillis", "sys/creation_time"), ("endTimeMillis", "sys/modification_time")):
            if meta.get(field) is not None:
                rows.append(single_row(path, "datetime", mp.ms_datetime(int(meta[field]))))
        tags = self.api.tags(key)
        if tags:
            rows.append(single_row("sys/tags", "string_set", sorted(tags)))
        for param in self.api.parameters(key):
            rows.append(single_row(f"parameters/{param['name']}", "string", param.get("valueCurrent")))
            batches.count("api_values_as_text", f"parameters/{param['name']}")
        for other in self._others_of(key):
            if other.get("name") in mp.SDK_OTHERS or other.get("name") == "Name":
                continue
            rows.append(single_row(f"others/{other['name']}", "string", other.get("valueCurrent")))
            batches.count("api_values_as_text", f"others/{other['name']}")
        for asset in self.api.assets(key):
            name = asset.get("fileName") or asset["assetId"]
            rows.append(single_row(f"assets/{asset['assetId']}/{name}", "file", api_file_path(key, asset)))
        for table in batches.singles(rows):
            table = select.filter(table)
            if table.num_rows:
                yield table
        for name in self.api.metric_names(key):
            for point in self.api.metric(key, name):
                step = mp.native_step_micro(point.get("step"))
                ms = point.get("timestamp")
                for table in batches.add(name, "float_series", step, ms, mp.from_metric_value(point.get("metricValue"))):
                    yield select.filter(table)
                if point.get("epoch") is not None:
                    batches.count("epoch_as_series", name)
                    for table in batches.add(f"comet/epoch/{name}", "float_series", step, ms, float(point["epoch"])):
                        yield select.filter(table)
        for table in batches.rest():
            yield select.filter(table)
        with self._lock:
            self._accounts[(run.project_id, run.run_id)] = acc


def api_file_path(key: str, asset: dict) -> str:
    return f"{key}/assets/{asset['assetId']}/{asset.get('fileName') or asset['assetId']}"


class ApiFiles(FileAccess):
    """An experiment's assets, downloaded on first use into a private temporary folder.  In an
    experiment trackport wrote, a file row names its source path: the assets whose metadata carry
    that `trackport_path` (a file set: one asset per file, at `trackport_rel`)."""

    def __init__(self, api, run: RunRef, key: str):
        self.api, self.run, self.key = api, run, key
        self._tmp: Path | None = None
        self._members: dict[str, list[tuple[str, str]]] | None = None

    def _trackport_members(self) -> dict[str, list[tuple[str, str]]]:
        if self._members is None:
            members: dict[str, list[tuple[str, str]]] = {}
            for asset in self.api.assets(self.key):
                meta = asset.get("metadata") or {}
                if isinstance(meta, str):
                    try:
                        meta = json.loads(meta)
                    except ValueError:
                        meta = {}
                if isinstance(meta, dict) and "trackport_path" in meta:
                    members.setdefault(meta["trackport_path"], []).append(
                        (meta.get("trackport_rel", ""), asset["assetId"]))
            self._members = members
        return self._members

    def _scratch(self, path: str) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="trackport-comet-api-"))
        return self._tmp / hashlib.blake2b(path.encode(), digest_size=8).hexdigest()

    def local_path(self, path: str) -> Path:
        if not path.startswith(f"{self.key}/assets/") or path in self._trackport_members():
            return self._trackport_file(path)
        key, _, rest = path.partition("/assets/")
        asset_id = rest.split("/", 1)[0]
        if key != self.key or not asset_id:
            raise RunError("not an asset of this experiment", project_id=self.run.project_id,
                           run_id=self.run.run_id, file=path)
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="trackport-comet-api-"))
        target = self._tmp / hashlib.blake2b(path.encode(), digest_size=8).hexdigest()
        if not target.exists():
            data = self.api.asset(key, asset_id)
            target.write_bytes(data if isinstance(data, bytes) else bytes(data))
        return target

    def _trackport_file(self, path: str) -> Path:
        from trackport.core.layout import resolve_inside

        members = self._trackport_members().get(path)
        target = self._scratch(path)
        if not members:
            manifest_dirs = self._empty_dirs()
            if path in manifest_dirs:
                target.mkdir(parents=True, exist_ok=True)      # a file set without files
                return target
            raise RunError("file not among the Comet experiment's assets", project_id=self.run.project_id,
                           run_id=self.run.run_id, file=path)
        if not target.exists():
            for rel, asset_id in members:
                dest = resolve_inside(target, rel) if rel else target
                dest.parent.mkdir(parents=True, exist_ok=True)
                data = self.api.asset(self.key, asset_id)
                dest.write_bytes(data if isinstance(data, bytes) else bytes(data))
            if all(rel for rel, _ in members):
                target.mkdir(parents=True, exist_ok=True)
        return target

    def _empty_dirs(self) -> list[str]:
        for asset in self.api.assets(self.key):
            if asset.get("fileName") == mp.MANIFEST_ASSET:
                return json.loads(self.api.asset(self.key, asset["assetId"])).get("empty_dirs") or []
        return []

    def open(self, path: str) -> BinaryIO:
        return self.local_path(path).open("rb")

    def __del__(self):
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
