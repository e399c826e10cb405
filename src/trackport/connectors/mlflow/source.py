"""MLflow source: MLflow runs -> canonical rows.

Runs trackport wrote (origin tags + `trackport/attributes.json`) are decoded
with their manifest, so they come back as the canonical rows they were made
from, under their origin project and run ids.  Any other run ("foreign") maps
as: run name -> sys/name, start/end time -> sys/creation_time /
sys/modification_time, status FAILED -> sys/failed, mlflow.note.content ->
sys/description, mlflow.parentRunId -> sys/forking/parent, params -> string
attributes, metrics -> float_series (full history), tags with an empty value
-> sys/tags, other tags -> string `mlflow/tags/<key>`, artifacts -> file
attributes at their artifact path.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import pyarrow as pa

from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError
from trackport.core.model import RunRef, Selection
from trackport.core.schema import SCHEMA, STEP_SCALE, TIMESTAMP_TYPE, VALUE_COLUMN, rows_to_table
from trackport.core.steps import decimal_steps

from . import mapping as mp
from .client import Tracking, errors, is_missing

log = logging.getLogger(__name__)


_ROWS_PER_TABLE = 50_000
_MAX_FOREIGN_STEP = (10**18 - 1) // 10**STEP_SCALE


@dataclass(frozen=True)
class Locator:
    """Private part of a RunRef made by this source."""

    run_id: str            # MLflow run id
    experiment_id: str = ""
    experiment_name: str = ""


def _mlflow_id(ref: RunRef) -> str | None:
    loc = ref.locator
    if isinstance(loc, Locator):
        return loc.run_id
    if isinstance(loc, str) and loc:
        return loc
    return None


class MlflowSource(Source):
    capabilities = mp.CAPABILITIES

    def __init__(self, tracking: Tracking, uri: str, options: dict[str, Any] | None = None):
        self.tracking = tracking
        self.uri = uri
        self.options = dict(options or {})
        self._lock = threading.Lock()
        self._manifests: OrderedDict[str, mp.Manifest | None] = OrderedDict()
        self._tmp: Path | None = None
        self._finalizer = None
        self._downloads: dict[str, threading.Lock] = {}

    # -- listing ---------------------------------------------------------------

    def _ids(self, run, experiment_name: str) -> tuple[str, str]:
        tags = run.data.tags
        if mp.TAG_ORIGIN_RUN in tags and mp.TAG_ORIGIN_PROJECT in tags:
            return tags[mp.TAG_ORIGIN_PROJECT], tags[mp.TAG_ORIGIN_RUN]
        return experiment_name, run.info.run_id

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        if not self.tracking.exists():
            return
        experiments = sorted(self.tracking.experiments(), key=lambda e: (e.name, e.experiment_id))
        listed = []
        for exp in experiments:
            if select.projects and exp.name not in select.projects:
                continue
            runs = sorted(self.tracking.search_runs([exp.experiment_id]),
                          key=lambda r: (r.info.start_time or 0, r.info.run_id))
            listed.extend((exp, run) for run in runs)
        # A run's own ids (experiment name, MLflow id) are taken first; a run trackport
        # wrote claims its origin's ids only when no other run holds them already
        # (e.g. a copy of a foreign run loaded back into the same server keeps its own ids).
        taken = {(exp.name, run.info.run_id) for exp, run in listed}
        for exp, run in listed:
            project, run_id = self._ids(run, exp.name)
            own = (exp.name, run.info.run_id)
            if (project, run_id) != own:
                if (project, run_id) in taken:
                    project, run_id = own
                else:
                    taken.add((project, run_id))
            if not (select.wants_run(project, run_id) or select.wants_run(exp.name, run_id)):
                continue
            yield RunRef(project, run_id, Locator(run.info.run_id, exp.experiment_id, exp.name))

    def _resolve(self, ref: RunRef) -> str:
        mlflow_id = _mlflow_id(ref)
        if mlflow_id is not None:
            return mlflow_id
        for exp in self.tracking.experiments():
            flt = None
            quoted = mp.search_value(ref.run_id)
            if quoted:
                flt = f'tags."{mp.TAG_ORIGIN_RUN}" = {quoted}'
            for run in self.tracking.search_runs([exp.experiment_id], flt or ""):
                if self._ids(run, exp.name) == (ref.project_id, ref.run_id):
                    return run.info.run_id
        try:
            with errors(ref.project_id, ref.run_id):
                return self.tracking.client.get_run(ref.run_id).info.run_id
        except RunError:
            raise RunError("no such MLflow run", project_id=ref.project_id, run_id=ref.run_id) from None

    def describe_run(self, run: RunRef) -> str:
        mlflow_id = _mlflow_id(run)
        base = f"{run.project_id}/{run.run_id}"
        return f"{base} (MLflow run {mlflow_id})" if mlflow_id and mlflow_id != run.run_id else base

    # -- manifests and files -----------------------------------------------------

    def _tmpdir(self) -> Path:
        with self._lock:
            if self._tmp is None:
                self._tmp = Path(tempfile.mkdtemp(prefix="trackport-mlflow-src-",
                                                  dir=self.options.get("tmp_dir")))
                self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
            return self._tmp

    def _manifest(self, run) -> mp.Manifest | None:
        run_id = run.info.run_id
        with self._lock:
            if run_id in self._manifests:
                self._manifests.move_to_end(run_id)
                return self._manifests[run_id]
        manifest = None
        if mp.TAG_ORIGIN_RUN in run.data.tags:
            text = self._read_text(run, mp.MANIFEST_PATH, missing_ok=True)
            if text is not None:
                try:
                    manifest = mp.Manifest.loads(text)
                except ValueError as exc:
                    raise RunError(f"unreadable {mp.MANIFEST_PATH}: {exc}",
                                   run_id=run_id) from None
        with self._lock:
            self._manifests[run_id] = manifest
            while len(self._manifests) > 256:
                self._manifests.popitem(last=False)
        return manifest

    def _read_text(self, run, artifact: str, missing_ok: bool = False) -> str | None:
        try:
            local = self._artifact_local(run, artifact)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise RunError(f"artifact {artifact} is missing", run_id=run.info.run_id, file=artifact) from None
        return local.read_text(encoding="utf-8")

    def _artifact_local(self, run, artifact: str) -> Path:
        """A local path of one artifact (file or directory), downloading when it is remote."""
        base = self.tracking.local_artifact_dir(run.info.artifact_uri)
        if base is not None:
            local = base / artifact
            if not local.exists():
                raise FileNotFoundError(artifact)
            return local
        dst = self._tmpdir() / run.info.run_id
        target = dst / artifact
        with self._lock:
            lock = self._downloads.setdefault(run.info.run_id, threading.Lock())
        with lock:
            if target.exists():
                return target
            return self._download(run, artifact, dst)

    def _download(self, run, artifact: str, dst: Path) -> Path:
        try:
            with errors(run_id=run.info.run_id, file=artifact):
                return self.tracking.download(run.info.run_id, artifact, dst)
        except RunError as exc:
            if isinstance(exc.__cause__, Exception) and (
                    is_missing(exc.__cause__) or isinstance(exc.__cause__, FileNotFoundError)
                    or "not found" in str(exc.__cause__).lower() or "404" in str(exc.__cause__)):
                raise FileNotFoundError(artifact) from None
            raise

    def files(self, run: RunRef) -> FileAccess:
        mlflow_id = self._resolve(run)
        with errors(run.project_id, run.run_id):
            mlrun = self.tracking.client.get_run(mlflow_id)
        manifest = self._manifest(mlrun)
        mapping = manifest.file_map() if manifest is not None else {}
        return MlflowFiles(self, mlrun, mapping, run)

    # -- reading -----------------------------------------------------------------

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        mlflow_id = self._resolve(run)
        with errors(run.project_id, run.run_id):
            mlrun = self.tracking.client.get_run(mlflow_id)
        manifest = self._manifest(mlrun)
        reader = _RunReader(self, mlrun, run.project_id, run.run_id, select, manifest)
        for table in reader.tables():
            if table.num_rows:
                yield select.filter(table)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


class MlflowFiles(FileAccess):
    """Files of one MLflow run: artifact paths, or the source paths its manifest recorded."""

    def __init__(self, source: MlflowSource, run, mapping: dict[str, str], ref: RunRef):
        self.source = source
        self.run = run
        self.mapping = mapping
        self.ref = ref

    def _artifact(self, path: str) -> str:
        artifact = self.mapping.get(path, path)
        if not artifact or artifact.startswith(("/", "\\")) or ".." in artifact.split("/"):
            raise ValueError(f"file path {path!r} is not inside the run's artifacts")
        return artifact

    def local_path(self, path: str) -> Path | None:
        return self.source._artifact_local(self.run, self._artifact(path))

    def open(self, path: str) -> BinaryIO:
        local = self.local_path(path)
        return open(local, "rb")

    def size(self, path: str) -> int | None:
        local = self.local_path(path)
        if local.is_dir():
            return sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        return local.stat().st_size


class _RunReader:
    """Builds the canonical tables of one MLflow run."""

    def __init__(self, source: MlflowSource, run, project_id: str, run_id: str, select: Selection,
                 manifest: mp.Manifest | None):
        self.source = source
        self.tracking = source.tracking
        self.run = run
        self.project_id = project_id
        self.run_id = run_id
        self.select = select
        self.manifest = manifest
        self.ours = mp.TAG_ORIGIN_RUN in run.data.tags
        self.types = select.types

    def wanted(self, path: str, attribute_type: str) -> bool:
        if attribute_type not in self.types:
            return False
        pattern = self.select.attribute_pattern
        return pattern is None or path.startswith("sys/") or pattern.search(path) is not None

    def _err(self, message: str, file: str | None = None) -> RunError:
        return RunError(message, project_id=self.project_id, run_id=self.run_id, file=file)

    def tables(self) -> Iterator[pa.Table]:
        with errors(self.project_id, self.run_id):
            if self.manifest is not None:
                yield from self._ours()
            else:
                yield from self._foreign(set(), set(), set(), set(), with_run_fields=True)

    # -- rows --------------------------------------------------------------------

    def _rows_table(self, rows: list[dict]) -> Iterator[pa.Table]:
        for i in range(0, len(rows), _ROWS_PER_TABLE):
            yield rows_to_table(rows[i:i + _ROWS_PER_TABLE],
                                {"project_id": self.project_id, "run_id": self.run_id})

    def _columns(self, n: int, path: str, attribute_type: str, **cols: pa.Array) -> pa.Table:
        base = pa.array([self.project_id, self.run_id, path, attribute_type], pa.string())
        zeros = np.zeros(n, dtype=np.int32)
        arrays = []
        for field in SCHEMA:
            name = field.name
            if name == "project_id":
                arrays.append(base.take(zeros))
            elif name == "run_id":
                arrays.append(base.take(zeros + 1))
            elif name == "attribute_path":
                arrays.append(base.take(zeros + 2))
            elif name == "attribute_type":
                arrays.append(base.take(zeros + 3))
            elif name in cols:
                arrays.append(cols[name])
            else:
                arrays.append(pa.nulls(n, field.type))
        return pa.Table.from_arrays(arrays, schema=SCHEMA)

    # -- runs trackport wrote ------------------------------------------------------

    def _ours(self) -> Iterator[pa.Table]:
        manifest = self.manifest
        params = self.run.data.params
        rows: list[dict] = []
        later: list[mp.AttributeEntry] = []
        for entry in manifest.attributes.values():
            if not self.wanted(entry.path, entry.type):
                continue
            if entry.kind == "param":
                rows.append(self._param_row(entry, params))
            elif entry.kind == "file":
                for step, ts, source_path, _artifact in entry.files:
                    rows.append({
                        "attribute_path": entry.path, "attribute_type": entry.type,
                        "step": None if step is None else Decimal(step),
                        "timestamp": None if ts is None else mp.datetime_from_ms(ts),
                        "file_value": {"path": source_path},
                    })
            else:
                later.append(entry)
        yield from self._rows_table(rows)
        for entry in later:
            if entry.kind == "metric":
                yield from self._metric(entry.path, entry.key, manifest.step_multiplier, entry)
            elif entry.kind == "series":
                yield from self._series(entry)
        # Whatever was added to the run outside trackport, read as a foreign run would be.
        tag_keys = set(manifest.tags) | mp.RESERVED_TAGS
        artifacts = manifest.artifact_paths()
        yield from self._foreign(manifest.param_keys(), manifest.metric_keys(), tag_keys, artifacts,
                                 with_run_fields=False)

    def _param_row(self, entry: mp.AttributeEntry, params: dict[str, str]) -> dict:
        value: Any = None
        if not entry.null:
            text = params.get(entry.key)
            if text is None:
                raise self._err(f"param {entry.key!r} of attribute {entry.path!r} is missing "
                                f"from the MLflow run")
            if entry.artifact:
                text = self.source._read_text(self.run, entry.artifact)
            try:
                value = mp.param_value(entry.type, text)
            except ValueError as exc:
                raise self._err(f"param {entry.key!r}: {exc}") from None
        return {"attribute_path": entry.path, "attribute_type": entry.type,
                VALUE_COLUMN[entry.type]: value}

    def _series(self, entry: mp.AttributeEntry) -> Iterator[pa.Table]:
        try:
            local = self.source._artifact_local(self.run, entry.artifact)
        except FileNotFoundError:
            raise self._err(f"series artifact {entry.artifact} is missing", file=entry.artifact) from None
        column = "string_value" if entry.type == "string_series" else "histogram_value"
        rows: list[dict] = []
        with open(local, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                item = json.loads(line)
                step = item.get("step")
                ts = item.get("timestamp")
                rows.append({
                    "attribute_path": entry.path, "attribute_type": entry.type,
                    "step": None if step is None else Decimal(step),
                    "timestamp": None if ts is None else mp.datetime_from_ms(ts),
                    column: item.get("value"),
                })
                if len(rows) >= _ROWS_PER_TABLE:
                    yield from self._rows_table(rows)
                    rows = []
        yield from self._rows_table(rows)

    # -- metrics -------------------------------------------------------------------

    def _metric(self, path: str, key: str, multiplier: int, entry: mp.AttributeEntry | None
                ) -> Iterator[pa.Table]:
        for page in self.tracking.metric_history(self.run.info.run_id, key):
            n = len(page)
            steps = np.fromiter((m.step for m in page), np.int64, n)
            ts = np.fromiter((m.timestamp for m in page), np.int64, n)
            values = np.fromiter((m.value for m in page), np.float64, n)
            if entry is not None:
                copies = mp.copies_per_point(steps, ts, values, entry)
                if copies.size and int(copies.max()) > 1:   # points sent more than once
                    steps, ts, values = (np.repeat(a, copies) for a in (steps, ts, values))
                    n = steps.size
                unscaled = mp.unscaled_from_dest(steps, multiplier)
                values = mp.restore_values(values, steps, ts, entry)
                ts_valid = ts != 0 if entry.null_timestamps else np.ones(n, dtype=bool)
                step_valid = None
            else:
                if n and int(np.abs(steps).max()) > _MAX_FOREIGN_STEP:
                    raise self._err(f"metric {key!r} has step {int(np.abs(steps).max())}, beyond "
                                    f"what a decimal(18,6) step holds")
                unscaled = steps * 10**STEP_SCALE
                ts_valid = ts != 0
                step_valid = None
            ts_arr = pa.array(ts, pa.int64(), mask=~ts_valid).cast(TIMESTAMP_TYPE)
            yield self._columns(
                n, path, "float_series",
                step=decimal_steps(unscaled, step_valid),
                timestamp=ts_arr,
                float_value=pa.array(values, pa.float64()),
            )

    # -- foreign runs (and additions to runs trackport wrote) -------------------------------

    def _foreign(self, skip_params: set[str], skip_metrics: set[str], skip_tags: set[str],
                 skip_artifacts: set[str], with_run_fields: bool) -> Iterator[pa.Table]:
        run = self.run
        info = run.info
        tags = run.data.tags
        rows: list[dict] = []

        def add(path: str, attribute_type: str, column: str, value: Any) -> None:
            if value is None or not self.wanted(path, attribute_type):
                return
            rows.append({"attribute_path": path, "attribute_type": attribute_type, column: value})

        taken: set[str] = set()
        if with_run_fields:
            if info.run_name:
                add("sys/name", "string", "string_value", info.run_name)
            if info.start_time:
                add("sys/creation_time", "datetime", "datetime_value", mp.datetime_from_ms(info.start_time))
            if info.end_time:
                add("sys/modification_time", "datetime", "datetime_value", mp.datetime_from_ms(info.end_time))
            if info.status in ("FINISHED", "FAILED", "KILLED"):
                add("sys/failed", "bool", "bool_value", info.status == "FAILED")
            if tags.get(mp.TAG_NOTE):
                add("sys/description", "string", "string_value", tags[mp.TAG_NOTE])
            parent = tags.get(mp.TAG_PARENT)
            if parent:
                add("sys/forking/parent", "string", "string_value", self._parent_id(parent))
            taken = {r["attribute_path"] for r in rows} | {"sys/name", "sys/creation_time",
                                                          "sys/modification_time", "sys/failed"}
        elements = []
        for key in sorted(tags):
            if key in skip_tags or key in mp.RESERVED_TAGS or key.startswith(mp.TRACKPORT_TAG_PREFIX):
                continue
            value = tags[key]
            if value == "":
                elements.append(key)
            else:
                add(mp.FOREIGN_TAG_PREFIX + key, "string", "string_value", value)
        if elements and with_run_fields:
            add("sys/tags", "string_set", "string_set_value", elements)
        elif elements:
            for key in elements:
                add(mp.FOREIGN_TAG_PREFIX + key, "string", "string_value", "")
        for key in sorted(run.data.params):
            if key in skip_params or key in taken:
                continue
            add(key, "string", "string_value", run.data.params[key])
        yield from self._rows_table(rows)
        for key in sorted(run.data.metrics):
            if key in skip_metrics or not self.wanted(key, "float_series"):
                continue
            yield from self._metric(key, key, 1, None)
        if "file" in self.types:
            yield from self._foreign_files(skip_artifacts)

    def _foreign_files(self, skip: set[str]) -> Iterator[pa.Table]:
        dirs = tuple(a.rstrip("/") + "/" for a in skip)
        rows = []
        for info in self.tracking.walk_artifacts(self.run.info.run_id):
            path = info.path
            if path.startswith(mp.ARTIFACT_DIR + "/") or path in skip or path.startswith(dirs):
                continue
            if not self.wanted(path, "file"):
                continue
            rows.append({"attribute_path": path, "attribute_type": "file", "file_value": {"path": path}})
        yield from self._rows_table(rows)

    def _parent_id(self, parent_mlflow_id: str) -> str:
        """The parent as this source names it: its origin run id when trackport wrote it."""
        try:
            with errors():
                parent = self.tracking.client.get_run(parent_mlflow_id)
        except RunError:
            return parent_mlflow_id
        return parent.data.tags.get(mp.TAG_ORIGIN_RUN, parent_mlflow_id)

