"""MLflow source: MLflow runs -> canonical rows.

Runs trackport wrote (origin tags + `trackport/attributes.json`) are decoded
with their manifest, so they come back as the canonical rows they were made
from, under their origin project and run ids.  Any other run ("foreign") maps
as: run name -> sys/name, start/end time -> sys/creation_time /
sys/modification_time, status FAILED -> sys/failed (KILLED, RUNNING, SCHEDULED
also -> string mlflow/status), mlflow.note.content -> sys/description,
mlflow.parentRunId -> sys/forking/parent, params -> string attributes (named
`mlflow/params/<key>` when the key would read back as a run field or a tag),
metrics -> float_series (full history), tags with an empty value
-> sys/tags, other tags -> string `mlflow/tags/<key>`, artifacts -> file
attributes at their artifact path.  MLflow 3 logged models follow the runs, as runs of
project `mlflow-models/<experiment>` (models_source.py), then registered model versions, as
runs of project `mlflow-registry/<model>` (registry_source.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import pyarrow as pa

from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError, RunScoped
from trackport.core.model import RunRef, Selection
from trackport.core.schema import SCHEMA, STEP_SCALE, TIMESTAMP_TYPE, VALUE_COLUMN, rows_to_table
from trackport.core.steps import decimal_steps

from . import source_mapping as sm
from .artifacts import ARTIFACT_DIR
from .client import ArtifactsUnreachable, Tracking, errors, is_missing
from .keys import FOREIGN_TAG_PREFIX, STATUSES, STATUS_PATH, foreign_metric_path, foreign_param_path
from .manifest import MANIFEST_PATH, AttributeEntry, Manifest
from .mapping import CAPABILITIES
from .points import copies_per_point, restore_values, unscaled_from_dest
from .models import is_models_project
from .models_source import ModelLocator, ModelReader
from .registry import is_registry_project
from .registry_source import RegistryLocator, RegistryReader
from .tags import (
    RESERVED_TAGS, TAG_MANIFEST, TAG_NOTE, TAG_ORIGIN_PROJECT, TAG_ORIGIN_RUN, TAG_PARENT, TRACKPORT_TAG_PREFIX,
    search_value,
)
from .values import datetime_from_ms, param_value

log = logging.getLogger(__name__)


_ROWS_PER_TABLE = 50_000
_MAX_FOREIGN_STEP = (10**18 - 1) // 10**STEP_SCALE


@dataclass(frozen=True)
class Locator:
    """Private part of a RunRef made by this source."""

    run_id: str            # MLflow run id
    experiment_id: str = ""
    experiment_name: str = ""
    deleted: bool = False  # the run, or its experiment, is deleted (moved with --include-deleted)


def _mlflow_id(ref: RunRef) -> str | None:
    loc = ref.locator
    if isinstance(loc, Locator):
        return loc.run_id
    if isinstance(loc, str) and loc:
        return loc
    return None


class MlflowSource(Source):
    capabilities = CAPABILITIES

    def __init__(self, tracking: Tracking, uri: str, options: dict[str, Any] | None = None):
        self.tracking = tracking
        self.uri = uri
        self.options = dict(options or {})
        self._lock = threading.Lock()
        self._manifests: OrderedDict[str, Manifest | None] = OrderedDict()
        self._tmp: Path | None = None
        self._finalizer = None
        self._downloads: dict[str, threading.Lock] = {}
        self.include_deleted = bool(self.options.get("include_deleted"))
        self._left_out: Counter = Counter()       # deleted runs not moved: kind -> count
        self._run_notes: dict[tuple[str, str], dict[str, Any]] = {}
        self._experiments: dict[str, Any] = {}
        self._model_by_id: dict[str, Any] = {}   # logged models read (models_source.py)
        local = tracking.local_store
        self._file_root = local if local is not None and local.is_dir() else None
        self.registry = RegistryReader(self)
        self.models = ModelReader(self)

    # -- what the report says -------------------------------------------------------

    def source_notes(self) -> list[str]:
        notes = list(self.tracking.notes)
        left = self._left_out
        total = sum(left.values())
        if total:
            trash = left.get("trash_active", 0)
            extra = (f", {trash} of them in experiments under mlruns/.trash whose meta.yaml still says "
                     f"active" if trash else "")
            notes.append(f"{total} deleted MLflow run(s) not moved (deleted runs and runs of deleted "
                         f"experiments{extra}): pass --include-deleted to move them (marked sys/trashed)")
        return notes

    def _note(self, project_id: str, run_id: str, warning: str | None = None,
              drop: tuple[str, int, str] | None = None) -> None:
        with self._lock:
            notes = self._run_notes.setdefault((project_id, run_id), {"warnings": [], "drops": {}})
            if warning and warning not in notes["warnings"]:
                notes["warnings"].append(warning)
            if drop is not None:
                notes["drops"][drop[0]] = (drop[1], drop[2])

    def account(self, run: RunRef, report) -> None:
        with self._lock:
            notes = self._run_notes.get((run.project_id, run.run_id), {"warnings": [], "drops": {}})
        for warning in notes["warnings"]:
            report.warn(warning)
        for kind, (count, example) in sorted(notes["drops"].items()):
            report.dropped(kind, count, example)

    # -- experiments ------------------------------------------------------------------

    def _in_trash(self, experiment_id: str) -> bool:
        """A file store experiment under `.trash` is deleted whatever its meta.yaml says (old
        MLflow versions moved it there without rewriting `lifecycle_stage`)."""
        root = self._file_root
        return (root is not None and (root / ".trash" / str(experiment_id)).is_dir()
                and not (root / str(experiment_id)).is_dir())

    def _experiment(self, experiment_id: str):
        with self._lock:
            got = self._experiments.get(experiment_id)
        if got is None:
            with errors():
                got = self.tracking.client.get_experiment(experiment_id)
            with self._lock:
                self._experiments[experiment_id] = got
        return got

    def _experiment_deleted(self, exp) -> bool:
        return exp.lifecycle_stage == "deleted" or self._in_trash(exp.experiment_id)

    # -- listing ---------------------------------------------------------------

    def _ids(self, run, experiment_name: str) -> tuple[str, str]:
        tags = run.data.tags
        if TAG_ORIGIN_RUN in tags and TAG_ORIGIN_PROJECT in tags:
            return tags[TAG_ORIGIN_PROJECT], tags[TAG_ORIGIN_RUN]
        return experiment_name, run.info.run_id

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        if not self.tracking.exists():
            return
        # Deleted experiments and runs are listed too: moved with --include-deleted, else counted.
        self._left_out.clear()
        experiments = sorted(self.tracking.experiments(deleted=True), key=lambda e: (e.name, e.experiment_id))
        listed = []
        model_experiments = []
        for exp in experiments:
            if self.include_deleted or not self._experiment_deleted(exp):
                model_experiments.append(exp)
            if select.projects and exp.name not in select.projects:
                continue
            with self._lock:
                self._experiments[exp.experiment_id] = exp
            exp_deleted = self._experiment_deleted(exp)
            runs = sorted(self.tracking.search_runs([exp.experiment_id], deleted=True),
                          key=lambda r: (r.info.start_time or 0, r.info.run_id))
            for run in runs:
                deleted = exp_deleted or run.info.lifecycle_stage == "deleted"
                if deleted and not self.include_deleted:
                    if select.wants_run(exp.name, run.info.run_id):
                        kind = "trash_active" if (self._in_trash(exp.experiment_id)
                                                  and exp.lifecycle_stage != "deleted") else "deleted"
                        self._left_out[kind] += 1
                    continue
                listed.append((exp, run, deleted))
        # A run's own ids (experiment name, MLflow id) are taken first; a run trackport
        # wrote claims its origin's ids only when no other run holds them already
        # (e.g. a copy of a foreign run loaded back into the same server keeps its own ids).
        taken = {(exp.name, run.info.run_id) for exp, run, _ in listed}
        for exp, run, deleted in listed:
            project, run_id = self._ids(run, exp.name)
            own = (exp.name, run.info.run_id)
            if (project, run_id) != own:
                if (project, run_id) in taken:
                    project, run_id = own
                else:
                    taken.add((project, run_id))
            if not (select.wants_run(project, run_id) or select.wants_run(exp.name, run_id)):
                continue
            yield RunRef(project, run_id, Locator(run.info.run_id, exp.experiment_id, exp.name, deleted))
        # MLflow 3 logged models, after every run (a destination links each to its run), then
        # registered model versions (linked to their run, and to their logged model).
        yield from self.models.list_entries(select, model_experiments)
        yield from self.registry.list_entries(select)

    def _is_registry(self, ref: RunRef) -> bool:
        return isinstance(ref.locator, RegistryLocator) or (
            is_registry_project(ref.project_id) and not isinstance(ref.locator, (Locator, str)))

    def _is_model(self, ref: RunRef) -> bool:
        return isinstance(ref.locator, ModelLocator) or (
            is_models_project(ref.project_id) and ref.locator is None)

    def _resolve(self, ref: RunRef) -> str:
        mlflow_id = _mlflow_id(ref)
        if mlflow_id is not None:
            return mlflow_id
        for exp in self.tracking.experiments(deleted=self.include_deleted):
            flt = None
            quoted = search_value(ref.run_id)
            if quoted:
                flt = f'tags."{TAG_ORIGIN_RUN}" = {quoted}'
            for run in self.tracking.search_runs([exp.experiment_id], flt or "", deleted=self.include_deleted):
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
                self._tmp = Path(tempfile.mkdtemp(prefix="trackport-mlflow-src-"))
                self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
            return self._tmp

    def _manifest(self, run) -> Manifest | None:
        run_id = run.info.run_id
        with self._lock:
            if run_id in self._manifests:
                self._manifests.move_to_end(run_id)
                return self._manifests[run_id]
        manifest = None
        if TAG_ORIGIN_RUN in run.data.tags:
            # A small manifest is a tag, a bigger one an artifact (sink.py, commit).
            text = run.data.tags.get(TAG_MANIFEST) or self._read_text(run, MANIFEST_PATH, missing_ok=True)
            if text is not None:
                try:
                    manifest = Manifest.loads(text)
                except ValueError as exc:
                    raise RunError(f"unreadable {MANIFEST_PATH}: {exc}",
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
        try:
            base = self.tracking.local_artifact_dir(run.info.artifact_uri)
        except ArtifactsUnreachable as exc:
            raise RunError(unreachable_message(exc.artifact_uri), run_id=run.info.run_id, file=artifact) from None
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
                return self.tracking.download_run_artifact(run.info.artifact_uri, artifact, dst)
        except RunError as exc:
            if isinstance(exc.__cause__, Exception) and (
                    is_missing(exc.__cause__) or isinstance(exc.__cause__, FileNotFoundError)
                    or "not found" in str(exc.__cause__).lower() or "404" in str(exc.__cause__)):
                raise FileNotFoundError(artifact) from None
            raise

    def files(self, run: RunRef) -> FileAccess:
        if self._is_registry(run):
            return self.registry.files(run)
        if self._is_model(run):
            return self.models.files(run)
        mlflow_id = self._resolve(run)
        with errors(run.project_id, run.run_id):
            mlrun = self.tracking.client.get_run(mlflow_id)
        manifest = self._manifest(mlrun)
        mapping = manifest.file_map() if manifest is not None else {}
        return MlflowFiles(self, mlrun, mapping, run)

    # -- reading -----------------------------------------------------------------

    def run_version(self, run: RunRef) -> str | None:
        """A digest of what one `get_run` says of the run: status, end time, params, tags and
        each metric's latest point (step, timestamp, value): a training logging new steps,
        ending or being tagged changes it; nothing of the metric history is read.  A registry
        entry (a model version) has none: once complete in the destination it is skipped."""
        if self._is_registry(run) or self._is_model(run):
            return None
        mlflow_id = self._resolve(run)
        with errors(run.project_id, run.run_id):   # not Tracking.get_run: no artifact repository
            mlrun = self.tracking.client.get_run(mlflow_id)
        info, data = mlrun.info, mlrun.data
        latest = getattr(data, "_metric_objs", None)
        metrics = sorted((m.key, m.step, m.timestamp, repr(m.value)) for m in latest) if latest is not None \
            else sorted((k, repr(v)) for k, v in data.metrics.items())
        state = [info.status, info.end_time, info.lifecycle_stage, sorted(data.params.items()),
                 sorted(data.tags.items()), metrics]
        return hashlib.blake2b(json.dumps(state, default=str).encode(), digest_size=12).hexdigest()

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        if self._is_registry(run):
            yield from self.registry.read(run, select)
            return
        if self._is_model(run):
            yield from self.models.read(run, select)
            return
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

    def _unprefixed(self, path: str) -> str:
        """The artifact path of a foreign run's file, named `<MLflow run id>/<artifact path>`
        so that runs of one experiment never share a file path in an export."""
        prefix = self.run.info.run_id + "/"
        if path not in self.mapping and path.startswith(prefix):
            return path[len(prefix):]
        return path

    def _artifact(self, path: str) -> str:
        artifact = self.mapping.get(path, path)
        if not artifact or artifact.startswith(("/", "\\")) or ".." in artifact.split("/"):
            raise ValueError(f"file path {path!r} is not inside the run's artifacts")
        return artifact

    def local_path(self, path: str) -> Path | None:
        path = self._unprefixed(path)
        return self.source._artifact_local(self.run, self._artifact(path))

    def open(self, path: str) -> BinaryIO:
        local = self.local_path(path)
        return open(local, "rb")

    def size(self, path: str) -> int | None:
        local = self.local_path(path)
        if local.is_dir():
            return sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        return local.stat().st_size


class _RunReader(RunScoped):
    """Builds the canonical tables of one MLflow run."""

    def __init__(self, source: MlflowSource, run, project_id: str, run_id: str, select: Selection,
                 manifest: Manifest | None):
        self.source = source
        self.tracking = source.tracking
        self.run = run
        self.project_id = project_id
        self.run_id = run_id
        self.err_run = RunRef(project_id, run_id)
        self.select = select
        self.manifest = manifest
        self.ours = TAG_ORIGIN_RUN in run.data.tags
        self.types = select.types

    def wanted(self, path: str, attribute_type: str) -> bool:
        if attribute_type not in self.types:
            return False
        pattern = self.select.attribute_pattern
        return pattern is None or path.startswith("sys/") or pattern.search(path) is not None

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
        later: list[AttributeEntry] = []
        for entry in manifest.attributes.values():
            if not self.wanted(entry.path, entry.type):
                continue
            if entry.kind == "param":
                rows.append(self._param_row(entry, params))
            elif entry.kind == "run":   # run-level values: exact in the manifest
                rows.append(self._run_row(entry))
            elif entry.kind == "file":
                for step, ts, source_path, _artifact in entry.files:
                    rows.append({
                        "attribute_path": entry.path, "attribute_type": entry.type,
                        "step": None if step is None else Decimal(step),
                        "timestamp": None if ts is None else datetime_from_ms(ts),
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
        tag_keys = set(manifest.tags) | RESERVED_TAGS
        artifacts = manifest.artifact_paths()
        yield from self._foreign(manifest.param_keys(), manifest.metric_keys(), tag_keys, artifacts,
                                 with_run_fields=False)

    def _run_row(self, entry: AttributeEntry) -> dict:
        value: Any = None
        if not entry.null:
            try:
                value = param_value(entry.type, entry.value or "")
            except ValueError as exc:
                raise self._err(f"{MANIFEST_PATH}: attribute {entry.path!r}: {exc}") from None
            if entry.path == "sys/creation_time" and entry.type == "datetime" \
                    and self.run.info.start_time is not None:
                # the start MLflow shows, not the manifest's copy of it: a run started at the
                # time of the copy reads back so
                value = datetime_from_ms(self.run.info.start_time)
        return {"attribute_path": entry.path, "attribute_type": entry.type,
                VALUE_COLUMN[entry.type]: value}

    def _param_row(self, entry: AttributeEntry, params: dict[str, str]) -> dict:
        value: Any = None
        if not entry.null:
            text = params.get(entry.key)
            if text is None:
                raise self._err(f"param {entry.key!r} of attribute {entry.path!r} is missing "
                                f"from the MLflow run")
            if entry.artifact:
                text = self.source._read_text(self.run, entry.artifact)
            try:
                value = param_value(entry.type, text)
            except ValueError as exc:
                raise self._err(f"param {entry.key!r}: {exc}") from None
        return {"attribute_path": entry.path, "attribute_type": entry.type,
                VALUE_COLUMN[entry.type]: value}

    def _series(self, entry: AttributeEntry) -> Iterator[pa.Table]:
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
                    "timestamp": None if ts is None else datetime_from_ms(ts),
                    column: item.get("value"),
                })
                if len(rows) >= _ROWS_PER_TABLE:
                    yield from self._rows_table(rows)
                    rows = []
        yield from self._rows_table(rows)

    # -- metrics -------------------------------------------------------------------

    def _metric(self, path: str, key: str, multiplier: int, entry: AttributeEntry | None
                ) -> Iterator[pa.Table]:
        for page in self.tracking.metric_history(self.run.info.run_id, key):
            n = len(page)
            steps = np.fromiter((m.step for m in page), np.int64, n)
            ts = np.fromiter((m.timestamp for m in page), np.int64, n)
            values = np.fromiter((m.value for m in page), np.float64, n)
            if entry is not None:
                copies = copies_per_point(steps, ts, values, entry)
                if copies.size and int(copies.max()) > 1:   # points sent more than once
                    steps, ts, values = (np.repeat(a, copies) for a in (steps, ts, values))
                    n = steps.size
                unscaled = unscaled_from_dest(steps, multiplier)
                values = restore_values(values, steps, ts, entry)
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

        if with_run_fields:
            # An empty run name stays empty (MLflow 1.x runs had none): no id stands in for it.
            add("sys/name", "string", "string_value", info.run_name or "")
            if info.start_time:
                add("sys/creation_time", "datetime", "datetime_value", datetime_from_ms(info.start_time))
            if info.end_time:
                add("sys/modification_time", "datetime", "datetime_value", datetime_from_ms(info.end_time))
            if info.status in ("FINISHED", "FAILED", "KILLED"):
                add("sys/failed", "bool", "bool_value", info.status == "FAILED")
            if info.status not in ("FINISHED", "FAILED") and info.status in STATUSES:
                add(STATUS_PATH, "string", "string_value", info.status)
            if tags.get(TAG_NOTE):
                add("sys/description", "string", "string_value", tags[TAG_NOTE])
            parent = tags.get(TAG_PARENT)
            if parent:
                add("sys/forking/parent", "string", "string_value", self._parent_id(parent))
            for path, attribute_type, column, value in self._mlflow_extras():
                add(path, attribute_type, column, value)
        elements = []
        for key in sorted(tags):
            if key in skip_tags or key in RESERVED_TAGS or key.startswith(TRACKPORT_TAG_PREFIX):
                continue
            value = tags[key]
            if value == "":
                elements.append(key)
            else:
                add(FOREIGN_TAG_PREFIX + key, "string", "string_value", value)
        if elements and with_run_fields:
            add("sys/tags", "string_set", "string_set_value", elements)
        elif elements:
            for key in elements:
                add(FOREIGN_TAG_PREFIX + key, "string", "string_value", "")
        for key in sorted(run.data.params):
            if key in skip_params:
                continue
            # A param named like a run field or a tag is `mlflow/params/<key>` (given back its key).
            add(foreign_param_path(key), "string", "string_value", run.data.params[key])
        yield from self._rows_table(rows)
        for key in sorted(run.data.metrics):
            path = foreign_metric_path(key, run.data.metrics)   # system/<name> -> monitoring/<name>
            if key in skip_metrics or not self.wanted(path, "float_series"):
                continue
            yield from self._metric(path, key, 1, None)
        if "file" in self.types:
            yield from self._foreign_files(skip_artifacts)

    def _mlflow_extras(self) -> list[tuple[str, str, str, Any]]:
        """What MLflow keeps beside a run's params, metrics and tags (docs/mlflow.md): deletion,
        experiment tags, dataset inputs; and the run folder's state."""
        run = self.run
        out: list[tuple[str, str, str, Any]] = []
        exp = self.source._experiment(run.info.experiment_id)
        if run.info.lifecycle_stage == "deleted" or (exp is not None and self.source._experiment_deleted(exp)):
            out.append(("sys/trashed", "bool", "bool_value", True))
        if exp is not None:
            for key, value in sorted((exp.tags or {}).items()):
                out.append((sm.EXPERIMENT_TAG_PREFIX + key, "string", "string_value", value))
        inputs = getattr(run, "inputs", None)
        datasets = sm.dataset_inputs_json(getattr(inputs, "dataset_inputs", None) or [])
        if datasets is not None:
            out.append((sm.DATASETS_PATH, "string", "string_value", datasets))
        root = self.source._file_root
        if root is not None:
            missing = sm.missing_run_folders(root, run.info.experiment_id, run.info.run_id)
            if missing:
                self.source._note(self.project_id, self.run_id, warning=(
                    f"run folder has no {', '.join(m + '/' for m in missing)} (git keeps no empty folder): "
                    f"read as empty"))
        return out

    def _foreign_files(self, skip: set[str]) -> Iterator[pa.Table]:
        dirs = tuple(a.rstrip("/") + "/" for a in skip)
        rows = []
        try:
            infos = list(self.tracking.walk_run_artifacts(self.run.info.artifact_uri))
        except ArtifactsUnreachable as exc:
            self.source._note(self.project_id, self.run_id, drop=(
                "artifacts_unreachable", 1, unreachable_message(exc.artifact_uri)))
            return
        for info in infos:
            path = info.path
            # trackport's own folder only in runs trackport wrote: elsewhere it is the user's.
            if (self.ours and path.startswith(ARTIFACT_DIR + "/")) or path in skip or path.startswith(dirs):
                continue
            if not self.wanted(path, "file"):
                continue
            rows.append({"attribute_path": path, "attribute_type": "file",
                         "file_value": {"path": self._file_name(path)}})
        yield from self._rows_table(rows)

    def _file_name(self, artifact_path: str) -> str:
        """A foreign file's `file_value.path`: unique per run (see MlflowFiles._unprefixed)."""
        return f"{self.run.info.run_id}/{artifact_path}"

    def _parent_id(self, parent_mlflow_id: str) -> str:
        """The parent as this source names it: its origin run id when trackport wrote it."""
        try:
            with errors():
                parent = self.tracking.client.get_run(parent_mlflow_id)
        except RunError:
            return parent_mlflow_id
        return parent.data.tags.get(TAG_ORIGIN_RUN, parent_mlflow_id)



def unreachable_message(artifact_uri: str) -> str:
    return (f"artifacts at {artifact_uri} are kept by the MLflow tracking server that logged the run, "
            f"not by this store: pass --mlflow-artifacts-root with that server's "
            f"--artifacts-destination folder (or the server's http(s) URL) to move them")
