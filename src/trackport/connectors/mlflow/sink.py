"""MLflow sink: canonical runs -> MLflow runs (docs/mlflow.md; the pure mapping: see mapping.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.claims import available as claims_available
from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped, TransientError
from trackport.core.files import materialise
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import DEST_STEP, FILE_TYPES, PARAM_TYPES, SERIES_TYPES, VALUE_COLUMN
from trackport.core.steps import StepConverter

from .artifacts import (
    ArtifactLayout, file_artifact, file_artifacts, long_param_artifact, long_param_pointer,
    series_artifact,
)
from .batching import (
    MAX_BATCH_BYTES, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, HeldBatch, batches,
    entry_size, json_size,
)
from .bulk import RunRow, new_run_uuid, now_ms
from .client import Metric, Param, RunTag, Tracking, errors, validated
from .keys import STATUSES, STATUS_PATH, KeyMap, is_run_attribute, sanitize_key
from .manifest import MANIFEST_PATH, AttributeEntry, Manifest
from .mapping import CAPABILITIES
from .models import is_models_project
from .models_sink import Models, ModelWriter
from .origin_sql import origin_runs
from .registry import is_registry_project
from .registry_sink import RegistryWriter, Versions
from .points import FLOAT_MAX, PointIndex, fix_texts, point_identity, repeated_points
from .tags import (
    MAX_RUN_NAME_LENGTH, MAX_TAG_LENGTH, TAG_COMPLETE, TAG_MANIFEST, TAG_MULTIPLIER, TAG_ORIGIN_PROJECT,
    TAG_ORIGIN_RUN, TAG_ORIGIN_URI, TAG_PARENT, TAG_SOURCE_VERSION, TAG_USER,
    ORIGIN_KEY_VALUE, experiment_name as _experiment_name, origin_key_tag, search_value, tag_plan,
)
from .source_mapping import DATASETS_PATH, dataset_inputs_from_json
from .values import MAX_PARAM_LENGTH, ms_from_datetime, param_text, step_texts

log = logging.getLogger(__name__)


_PARAM_TYPES = pa.array(sorted(PARAM_TYPES), pa.string())
_SERIES_TYPES = pa.array(sorted(SERIES_TYPES), pa.string())
_FILE_TYPES = pa.array(sorted(FILE_TYPES), pa.string())
# trackport's tags a look for one origin's runs reads (origin_sql.origin_runs)
ORIGIN_TAGS = (TAG_ORIGIN_URI, TAG_ORIGIN_PROJECT, TAG_ORIGIN_RUN, TAG_COMPLETE, TAG_SOURCE_VERSION)


def _layout(scan) -> tuple[KeyMap, ArtifactLayout]:
    """The MLflow keys and the artifact layout of a run, from its scan alone (deterministic:
    a resumed load and `plan` compute the same)."""
    params = {p for p, (t, _) in scan.values.items() if not is_run_attribute(p, t)}
    paths = params | set(scan.series) | {f[0] for f in scan.files}
    metrics = {p for p, stats in scan.series.items() if stats.attribute_type == "float_series"}
    keys = KeyMap(sorted(paths), params=params, metrics=metrics)
    text_series = [p for p, stats in scan.series.items()
                   if stats.attribute_type in ("string_series", "histogram_series")]
    return keys, ArtifactLayout.of_scan(keys, text_series, scan.files)


class _Known:
    __slots__ = ("run_id", "complete", "start_time", "version", "others")

    def __init__(self, run_id: str, complete: bool, start_time: int = 0, version: str | None = None,
                 others: tuple[str, ...] = ()):
        self.run_id = run_id
        self.complete = complete
        self.start_time = start_time
        self.version = version
        self.others = others   # more MLflow runs of the same origin (duplicates)


class MlflowSink(Sink):
    capabilities = CAPABILITIES
    bulk = None  # --mlflow-bulk: a bulk.BulkStore, set by open_sink

    def __init__(self, tracking: Tracking, uri: str, options: dict[str, Any], read_only: bool = False):
        self.tracking = tracking
        self.read_only = read_only
        self.uri = uri
        self.options = options
        self._lock = threading.Lock()
        self._index_locks: dict[tuple[str, str], threading.Lock] = {}
        self._index: dict[tuple[str, str], dict[tuple[str, str], _Known]] = {}
        # child MLflow run id -> (experiment id, parent origin), waiting for the parent
        self._pending_parents: dict[str, tuple[str, Origin]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self.registry = Versions(self)   # registered model versions (project mlflow-registry/<model>)
        self.models = Models(self)       # MLflow 3 logged models (project mlflow-models/<experiment>)

    # What a run writer asks of its sink (MlflowRunWriter calls nothing else of it): search,
    # search_all and remember (the runs of an origin), parent_run, wait_for_parent and committed
    # (fork parents), request_pool.

    # -- finding runs ----------------------------------------------------------

    def experiment_name(self, project_id: str) -> str:
        try:
            return _experiment_name(self.options.get("mlflow_experiment"), project_id)
        except ValueError as exc:
            raise RunError(str(exc), project_id=project_id) from None

    def _runs_of(self, experiment_id: str, origin_uri: str) -> dict[tuple[str, str], _Known]:
        """Runs loaded from `origin_uri` in one experiment, by (project, run id): one search, cached."""
        cache_key = (experiment_id, origin_uri)
        with self._lock:
            got = self._index.get(cache_key)
            if got is not None:
                return got
            lock = self._index_locks.setdefault(cache_key, threading.Lock())
        with lock:
            with self._lock:
                got = self._index.get(cache_key)
            if got is not None:
                return got
            found = self.search(experiment_id, origin_uri)
            with self._lock:
                self._index[cache_key] = found
            return found

    def search(self, experiment_id: str, origin_uri: str, run_id: str | None = None
               ) -> dict[tuple[str, str], _Known]:
        """The run kept for each (project, run id) loaded from `origin_uri` (and `run_id`), asked
        of the store now (not the cache)."""
        return _ranked(self.search_all(experiment_id, origin_uri, run_id))

    def search_all(self, experiment_id: str, origin_uri: str, run_id: str | None = None,
                   project_id: str | None = None) -> dict[tuple[str, str], list[_Known]]:
        """Every active run loaded from `origin_uri` (and `run_id`), by (project, run id).  The
        look for one run is one SQL query on a database store (origin_sql.py), a search_runs
        elsewhere.  With `project_id` too, only runs carrying the origin's key tag
        (tags.origin_key_tag, which every run trackport writes or resumes gets) are found, by
        that key: a look whose cost does not grow with the store (the look after the mark)."""
        engine = None
        if run_id is not None:
            engine = self.bulk.engine if self.bulk is not None else self.tracking.database_engine()
        by_key = origin_key_tag(origin_uri, project_id, run_id) if (
            run_id is not None and project_id is not None) else None
        if engine is not None:
            every: dict[tuple[str, str], list[_Known]] = {}
            tag_key, tag_value = (by_key, ORIGIN_KEY_VALUE) if by_key else (TAG_ORIGIN_RUN, run_id)
            rows = origin_runs(engine, f"MLflow store {self.tracking.display_uri}", experiment_id,
                               tag_key, tag_value, ORIGIN_TAGS)
            for run_uuid, start, tags in rows:
                # exactly, as _search_sdk (and MySQL compares the run id without case)
                if tags.get(TAG_ORIGIN_URI) == origin_uri and tags.get(TAG_ORIGIN_RUN) == run_id:
                    _add_known(every, run_uuid, start, tags)
            return every
        return self._search_sdk(experiment_id, origin_uri, run_id, by_key)

    def _search_sdk(self, experiment_id: str, origin_uri: str, run_id: str | None = None,
                    by_key: str | None = None) -> dict[tuple[str, str], list[_Known]]:
        """The runs of `search_all`, by MLflow's search_runs."""
        if by_key is not None:
            flt = f'tags."{by_key}" = \'{ORIGIN_KEY_VALUE}\''
        else:
            quoted = search_value(origin_uri)
            flt = f'tags."{TAG_ORIGIN_URI}" = {quoted}' if quoted else f'tags."{TAG_ORIGIN_URI}" != \'\''
            quoted_run = search_value(run_id) if run_id is not None else None
            if quoted_run:
                flt += f' and tags."{TAG_ORIGIN_RUN}" = {quoted_run}'
        every: dict[tuple[str, str], list[_Known]] = {}
        for run in self.tracking.search_runs([experiment_id], flt):
            tags = run.data.tags
            if tags.get(TAG_ORIGIN_URI) != origin_uri:
                continue
            _add_known(every, run.info.run_id, run.info.start_time or 0, tags)
        return every

    def _lookup(self, origin: Origin, create_experiment: bool) -> tuple[str | None, _Known | None]:
        name = self.experiment_name(origin.project_id)
        eid = self.tracking.experiment_id(name, create=create_experiment)
        if eid is None:
            return None, None
        return eid, self._runs_of(eid, origin.uri).get((origin.project_id, origin.run_id))

    def remember(self, experiment_id: str, origin: Origin, known: _Known) -> None:
        """Cache `known` as the MLflow run of `origin` (a run created, completed or lost to
        another writer)."""
        runs = self._runs_of(experiment_id, origin.uri)
        with self._lock:
            runs[(origin.project_id, origin.run_id)] = known

    def claim_dir(self) -> Path | None:
        """Beside a SQLite store or a file store (every process on this machine takes turns);
        for a server or a database, per user on this machine (other machines: `_settle`)."""
        store = self.tracking.local_store
        if store is not None:
            from .client import store_lock_dir

            return store_lock_dir(store)
        return super().claim_dir()

    def forget(self, origin: Origin) -> None:
        if is_registry_project(origin.project_id) or is_models_project(origin.project_id):
            return   # model versions and logged models are always asked of the store
        if not self.tracking.exists():
            return
        eid = self.tracking.experiment_id(self.experiment_name(origin.project_id), create=False)
        if eid is None:
            return
        key = (origin.project_id, origin.run_id)
        known = self.search(eid, origin.uri, origin.run_id).get(key)
        runs = self._runs_of(eid, origin.uri)
        with self._lock:
            if known is None:
                runs.pop(key, None)
            else:
                runs[key] = known

    def find_run(self, origin: Origin) -> DestRun | None:
        if is_registry_project(origin.project_id):
            return self.registry.find_run(origin)
        if is_models_project(origin.project_id):
            return self.models.find_run(origin)
        found = self.find_loaded_run(origin)
        if found is None or not found.complete:   # moving in this command: a model version waits
            self.registry.moving(origin)
        return found

    def find_loaded_run(self, origin: Origin) -> DestRun | None:
        if not self.tracking.exists():
            return None
        eid, known = self._lookup(origin, create_experiment=False)
        if known is None:
            return None
        return DestRun(known.run_id, known.complete, self.tracking.run_url(eid, known.run_id), known.run_id,
                       known.version, known.others)

    def preflight(self, read_only: bool = False) -> None:
        self.tracking.preflight(read_only or self.read_only)

    def expected_view(self, table: pa.Table) -> pa.Table:
        """Declared and not undone on reading: a metric point's negative timestamp is sent as
        0 ms (`timestamp_filled`), which reads back as no timestamp."""
        ts = table.column("timestamp")
        if not ts.null_count == len(ts):
            negative = pc.fill_null(pc.and_(pc.equal(table.column("attribute_type"), "float_series"),
                                            pc.less(pc.cast(ts, pa.int64()), 0)), False)
            if pc.any(negative).as_py():
                fixed = pc.if_else(negative, pa.scalar(None, ts.type), ts)
                table = table.set_column(table.schema.get_field_index("timestamp"), "timestamp", fixed)
        return table

    # -- writing ---------------------------------------------------------------

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this MLflow sink was opened read-only", project_id=plan.origin.project_id,
                           run_id=plan.origin.run_id)
        origin = plan.origin
        if is_registry_project(origin.project_id):
            return RegistryWriter(self, self.registry, plan, resume)
        if is_models_project(origin.project_id):
            return ModelWriter(self, plan, resume)
        eid, known = self._lookup(origin, create_experiment=True)
        assert eid is not None
        if self.bulk is not None:   # the store exists now (MLflow made the experiment): check it once
            self.bulk.ensure_checked(origin.project_id, origin.run_id)
        if resume is None and known is None and not claims_available():
            # The cache may be older than a run another process created: ask once more, for
            # this run only, so that one origin never gets two MLflow runs.  Where claims are
            # taken, the pipeline asks again itself when another process of this machine wrote
            # the run meanwhile (core/claims.py), and `_settle` covers other machines.
            known = self.search(eid, origin.uri, origin.run_id).get((origin.project_id, origin.run_id))
            if known is not None:
                self.remember(eid, origin, known)
        run_id = resume.id if resume is not None else (known.run_id if known is not None else None)
        writer = MlflowRunWriter(self, plan, eid)
        if self.bulk is not None:
            writer.bulk = self.bulk.run(origin.project_id, origin.run_id)
        writer.start(run_id)
        return writer

    def as_source(self):
        from .source import MlflowSource

        return MlflowSource(self.tracking, self.uri, self.options)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, dest.locator or dest.id)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        """Predict, from the scan alone, what writing this run would transform (nothing is written)."""
        scan, report = plan.scan, plan.report
        if is_registry_project(plan.origin.project_id):
            return self.registry.describe_plan(plan)
        if is_models_project(plan.origin.project_id):
            return self.models.describe_plan(plan)
        try:
            keys, layout = _layout(scan)
        except ValueError as exc:
            raise RunError(str(exc), project_id=plan.origin.project_id, run_id=plan.origin.run_id) from None
        for path, info in keys.items():
            if info.sanitized:
                report.transformed("key_sanitized", 1, f"{path} -> {info.key}")
            if info.renamed:
                report.transformed("key_collision_renamed", 1, f"{path} -> {info.key}")
        for path, root in sorted(layout.renamed.items()):
            report.transformed("file_path_collision_renamed", 1, f"{path} -> {root}")
        if scan.value("sys/name") == "":
            report.transformed("run_name_from_id", 1, "sys/name")
        for path, (attribute_type, value) in scan.values.items():
            if is_run_attribute(path, attribute_type):
                continue
            if value is not None and len(param_text(attribute_type, value)) > MAX_PARAM_LENGTH:
                report.transformed("param_to_artifact", 1, path)
        for path, stats in scan.series.items():
            if stats.attribute_type in ("string_series", "histogram_series"):
                report.transformed("series_to_artifact", 1, path)
        lines = [f"MLflow experiment {self.experiment_name(plan.origin.project_id)!r}"]
        if scan.rows_by_type.get("float_series"):
            lines.append("+-inf metric values, if any, are stored as +-float max (read back as inf)")
        return lines

    # -- fork parents ----------------------------------------------------------

    def parent_run(self, experiment_id: str, parent: Origin) -> str | None:
        """The MLflow run id of a fork parent, when it is loaded already."""
        eid, known = self._lookup(parent, create_experiment=False)
        return known.run_id if known is not None else None

    def wait_for_parent(self, child_run_id: str, experiment_id: str, parent: Origin) -> None:
        """Link `child_run_id` to `parent` when the parent is committed, or at close."""
        with self._lock:
            self._pending_parents[child_run_id] = (experiment_id, parent)

    def committed(self, experiment_id: str, origin: Origin, run_id: str) -> None:
        """A run became complete: link the children that were waiting for it."""
        self.registry.settled(origin)
        with self._lock:
            waiting = [child for child, (_, parent) in self._pending_parents.items() if parent == origin]
        for child in waiting:
            try:
                with errors():
                    self.tracking.set_tag(child, TAG_PARENT, run_id)
            except (RunError, TransientError) as exc:
                log.warning("could not link MLflow run %s to its parent %s: %s", child, run_id, exc)
                continue
            with self._lock:
                self._pending_parents.pop(child, None)

    def request_pool(self) -> tuple[ThreadPoolExecutor, int]:
        """The one pool every run's requests share: `--workers` requests in flight to the
        store, however many runs are open (runs and requests spread over the same workers)."""
        with self._lock:
            if self._pool is None:
                size = self.options.get("workers") or 4
                self._pool_size = max(1, int(size))
                self._pool = ThreadPoolExecutor(self._pool_size, thread_name_prefix="trackport-mlflow")
            return self._pool, self._pool_size

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if self.bulk is not None:
            self.bulk.close()
        if not self.tracking.exists():
            return
        with self._lock:
            pending = dict(self._pending_parents)
            # Parents may have been loaded by another process: search again.
            self._index.clear()
        for child, (eid, parent) in pending.items():
            try:
                parent_id = self.parent_run(eid, parent)
                if parent_id is not None:
                    with errors():
                        self.tracking.set_tag(child, TAG_PARENT, parent_id)
                    with self._lock:
                        self._pending_parents.pop(child, None)
            except (RunError, TransientError) as exc:
                log.warning("could not link MLflow run %s to its parent: %s", child, exc)


class MlflowRunWriter(RunScoped, RunWriter):
    # --mlflow-bulk: a bulk.BulkRun taking the run's row, params, tags, prepared metric points,
    # end and completion mark instead of the SDK (see _start_bulk, _hold, _write_metrics, _commit_bulk)
    bulk = None

    def __init__(self, sink: MlflowSink, plan: RunPlan, experiment_id: str):
        self.sink = sink
        self.tracking = sink.tracking
        self.plan = plan
        self.origin = plan.origin
        self.report = plan.report
        self.experiment_id = experiment_id
        self.project_id = plan.origin.project_id
        self.source_run = plan.origin.run_id
        self.err_run = plan.origin
        scan = plan.scan
        self.multiplier = plan.steps.multiplier if plan.steps is not None else 1
        self._converter = plan.steps or StepConverter(1)
        try:
            self.keys, self.layout = _layout(scan)
        except ValueError as exc:
            raise self._err(str(exc)) from None
        self.manifest = Manifest(self.origin.uri, self.project_id, self.source_run, self.multiplier)
        self.tags, self._tag_hits = tag_plan(scan.values)
        self._pool, self._workers = sink.request_pool()
        self._futures: set[Future] = set()
        self._tmp = Path(tempfile.mkdtemp(prefix="trackport-mlflow-"))
        self._spools: dict[str, Path] = {}
        # Params and points wait in one held batch until the next would not fit (or the
        # completion mark takes them along): small runs need one log_batch in all.
        self._held = HeldBatch()
        self._sent_params: dict[str, str] = {}
        self._existing_params: dict[str, str] = {}
        self._uploaded: dict[str, str | None] = {}   # artifact -> the source file it holds
        self._counted: set[tuple[str, str]] = set()
        self._point_index: dict[str, PointIndex] = {}
        self._fixes: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._resumed = False
        self._manifest_tag = False   # a resumed run holds its manifest in TAG_MANIFEST
        self._resumed_metrics: set[str] = set()
        self._rename = False
        self._n_local = 0
        self._seen: dict[str, Any] = {}
        self._last_ms: int | None = None
        self.run_id = ""
        self.run_name = ""
        self._closed = False
        self._bulk_tags: list[tuple[str, str]] = []    # --mlflow-bulk: tags for the last transaction
        self._bulk_params: list[tuple[str, str]] = []
        self._parent_waiting: Origin | None = None     # --mlflow-bulk: a fork parent not loaded yet

    # -- helpers ----------------------------------------------------------------

    def _guard(self, fn: Callable, *args) -> Callable[[], None]:
        def call():
            with errors(self.project_id, self.source_run):
                fn(*args)
        return call


    def _submit(self, fn: Callable, *args) -> None:
        self._futures.add(self._pool.submit(self._guard(fn, *args)))
        if len(self._futures) >= 2 * self._workers:
            done, self._futures = wait(self._futures, return_when=FIRST_COMPLETED)
            for fut in done:
                fut.result()

    def _drain(self) -> None:
        futures, self._futures = self._futures, set()
        for fut in wait(futures).done:
            fut.result()

    def _count(self, kind: str, n: int, example: str | None, entry: AttributeEntry | None = None) -> None:
        if n <= 0:
            return
        self.report.transformed(kind, n, example)
        if entry is not None:
            entry.count(kind, n)

    def _next(self) -> int:
        self._n_local += 1
        return self._n_local

    def _entry(self, path: str, attribute_type: str, kind: str) -> AttributeEntry:
        entry = self.manifest.attributes.get(path)
        if entry is not None:
            return entry
        info = self.keys.info(path, param=kind == "param", metric=kind == "metric")
        entry = self.manifest.entry(path, attribute_type, kind, info.key)
        if info.sanitized:
            self._count("key_sanitized", 1, path, entry)
        if info.renamed:
            self._count("key_collision_renamed", 1, path, entry)
        return entry

    # -- start -------------------------------------------------------------------

    def start(self, run_id: str | None) -> None:
        scan = self.plan.scan
        self.run_name = self._run_name(scan.value("sys/name"))
        base_tags = {
            TAG_ORIGIN_URI: self.origin.uri,
            TAG_ORIGIN_PROJECT: self.project_id,
            TAG_ORIGIN_RUN: self.source_run,
            TAG_MULTIPLIER: str(self.multiplier),
            origin_key_tag(self.origin.uri, self.project_id, self.source_run): ORIGIN_KEY_VALUE,
        }
        for kind, examples in sorted(self._tag_hits.items()):
            for example in examples:
                self._count(kind, 1, example)
        own = [RunTag(k, v) for k, v in self.tags.items()]
        parent = scan.value("sys/forking/parent")
        parent_origin = parent_id = None
        try:
            if parent not in (None, ""):
                parent_origin = Origin(self.origin.uri, self.project_id, str(parent))
                parent_id = self.sink.parent_run(self.experiment_id, parent_origin)
                if parent_id is not None:
                    own.append(RunTag(TAG_PARENT, parent_id))
            if run_id is not None:
                self._resume(run_id)
                later = own + [RunTag(k, v) for k, v in base_tags.items()]
                if self.bulk is not None:   # in the run's last transaction
                    self.bulk.existing(run_id)
                    self._bulk_tags.extend((t.key, t.value) for t in later)
                    later = []
            elif self.bulk is not None:
                self._start_bulk(scan, base_tags, own)
                if parent_origin is not None and parent_id is None and not self.bulk.created:
                    self._parent_waiting, parent_origin = parent_origin, None   # linked at commit
                later = []
            else:
                start = _ms(scan.value("sys/creation_time"))
                if start is None:
                    start = _ms(scan.first_timestamp)
                # A new run gets its tags with the create (one request fewer per run) when they
                # fit in one batch; MLflow checks them as it checks log_batch's.
                with_create = len(own) + len(base_tags) <= MAX_PARAMS_TAGS_PER_BATCH
                create_tags = {**base_tags, **{t.key: t.value for t in own}} if with_create else base_tags
                if TAG_USER in self.tags:   # MLflow's create_run takes the run's user_id from it
                    create_tags[TAG_USER] = self.tags[TAG_USER]
                run = self.tracking.create_run(self.experiment_id, start, self.run_name, create_tags,
                                               self.project_id, self.source_run,
                                               existing=self._created_meanwhile)
                self.run_id = run.info.run_id
                self.sink.remember(self.experiment_id, self.origin,
                                    _Known(self.run_id, False, run.info.start_time or 0))
                later = [] if with_create else own
            if parent_origin is not None and parent_id is None:
                self.sink.wait_for_parent(self.run_id, self.experiment_id, parent_origin)
            sizes = [entry_size(t.key, t.value) for t in later]
            for batch in batches(later, sizes, MAX_PARAMS_TAGS_PER_BATCH):
                with errors(self.project_id, self.source_run):
                    self.tracking.log_batch(self.run_id, tags=batch)
        except BaseException:
            self._cleanup()
            raise

    def _start_bulk(self, scan, base_tags: dict[str, str], own: list) -> None:
        """--mlflow-bulk: a new run's row and tags, as MLflow's create_run makes them
        (mlflow/tracking/_tracking_service/client.py TrackingServiceClient.create_run: user_id
        from the mlflow.user tag, start time now when none; SqlAlchemyStore.create_run: the rest,
        see bulk.py).  They go with the run's first transaction; against a server database
        (other machines may write it) that is now, so that `_settle` and other writers' searches
        see the run while it is written, as on the SDK path."""
        start = _ms(scan.value("sys/creation_time"))
        if start is None:
            start = _ms(scan.first_timestamp)
        tags = {**base_tags, **{t.key: t.value for t in own}}
        if TAG_USER in self.tags:
            tags[TAG_USER] = self.tags[TAG_USER]
        tags["mlflow.runName"] = self.run_name
        _, checked = validated([], list(tags.items()), self.project_id, self.source_run)
        run_uuid = new_run_uuid()
        with errors(self.project_id, self.source_run):
            artifact_uri = self.tracking.new_run_artifact_uri(self.experiment_id, run_uuid)
        row = RunRow(run_uuid, self.run_name, self.experiment_id, self.tags.get(TAG_USER, "unknown"),
                     start or now_ms(), artifact_uri)
        self.bulk.create(row, checked)
        self.run_id = run_uuid
        self.tracking.remember_artifact_location(run_uuid, artifact_uri)
        if self.tracking.local_store is None:
            self.bulk.ensure_created()
            self.sink.remember(self.experiment_id, self.origin, _Known(run_uuid, False, row.start_time))

    def _created_meanwhile(self) -> Any | None:
        """This origin's MLflow run, should an earlier create_run attempt whose answer was lost
        have made it (asked before every retry of the create)."""
        known = self.sink.search(self.experiment_id, self.origin.uri, self.source_run).get(
            (self.project_id, self.source_run))
        if known is None:
            return None
        return self.tracking.get_run(known.run_id, self.project_id, self.source_run)

    def _resume(self, run_id: str) -> None:
        try:
            with errors(self.project_id, self.source_run):
                run = self.tracking.client.get_run(run_id)
            self.tracking.remember_artifact_uri(run)
        except RunError as exc:
            raise self._err(f"MLflow run {run_id} to resume cannot be read: {exc.reason}") from None
        tags = run.data.tags
        if run.info.lifecycle_stage != "active":
            # A search never offers a deleted run: this one was deleted since it was found, by a
            # concurrent writer of the same origin that gave way (_settle). Look again.
            self.sink.forget(self.origin)
            deleted = TransientError(f"run {self.project_id}/{self.source_run}: MLflow run {run_id} was "
                                     f"deleted by a concurrent writer after it was found; looking again")
            deleted.run_level = True
            raise deleted
        if tags.get(TAG_ORIGIN_RUN, self.source_run) != self.source_run:
            raise self._err(f"MLflow run {run_id} was loaded from another run "
                            f"({tags.get(TAG_ORIGIN_RUN)!r}); refusing to mix them")
        old = tags.get(TAG_MULTIPLIER)
        if old is not None and old != str(self.multiplier):
            raise self._err(
                f"MLflow run {run_id} was partly written with step multiplier {old}, this load "
                f"uses {self.multiplier}: finishing it would duplicate points; set the multiplier "
                f"back to {old} or delete the MLflow run"
            )
        self.run_id = run_id
        self._resumed = True
        self._existing_params = dict(run.data.params)
        self._manifest_tag = TAG_MANIFEST in tags
        if tags.get(TAG_COMPLETE) is not None:
            # Rewriting a complete run: it is not complete again until this commit.
            with errors(self.project_id, self.source_run):
                self.tracking.delete_tag(run_id, TAG_COMPLETE)
        self._rename = run.info.run_name != self.run_name
        self._resumed_metrics = set(run.data.metrics)

    def _existing_points(self, key: str) -> PointIndex:
        index = self._point_index.get(key)
        if index is None:
            parts = []
            if key in self._resumed_metrics:
                with errors(self.project_id, self.source_run):
                    for page in self.tracking.metric_history(self.run_id, key):
                        parts.append(point_identity(
                            np.fromiter((m.step for m in page), np.int64, len(page)),
                            np.fromiter((m.timestamp for m in page), np.int64, len(page)),
                            np.fromiter((m.value for m in page), np.float64, len(page)),
                        ))
            ids = np.concatenate(parts) if parts else point_identity(
                np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
            index = self._point_index[key] = PointIndex(ids)
        return index

    # -- write -------------------------------------------------------------------

    def write(self, batch: pa.Table) -> None:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if table.num_rows == 0:
            return
        types = table.column("attribute_type")
        metric_mask = pc.fill_null(pc.equal(types, "float_series"), False)
        param_mask = pc.fill_null(pc.is_in(types, value_set=_PARAM_TYPES), False)
        series_mask = pc.fill_null(pc.is_in(types, value_set=_SERIES_TYPES), False)
        file_mask = pc.fill_null(pc.is_in(types, value_set=_FILE_TYPES), False)
        try:
            if pc.any(param_mask).as_py():
                self._write_params(table.filter(param_mask))
            if pc.any(metric_mask).as_py():
                self._write_metrics(table.filter(metric_mask))
            if pc.any(series_mask).as_py():
                self._write_series(table.filter(series_mask))
            if pc.any(file_mask).as_py():
                self._write_files(table.filter(file_mask))
        except (RunError, TransientError):
            raise
        except OSError as exc:
            raise self._err(f"local I/O failed while writing: {exc}") from exc

    def _dest_steps(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(int64 MLflow steps, validity) for series rows."""
        if DEST_STEP in table.column_names:
            col = table.column(DEST_STEP)
        else:
            col, floored = self._converter.convert(table.column("step"))
            if floored:
                self._count("step_floored", floored, None)
        valid = np.asarray(pc.is_valid(col))
        return np.array(pc.fill_null(col, 0).to_numpy(zero_copy_only=False), dtype=np.int64), valid

    def _write_params(self, table: pa.Table) -> None:
        paths = table.column("attribute_path").to_pylist()
        types = table.column("attribute_type").to_pylist()
        columns = {name: table.column(name) for name in
                   ("int_value", "float_value", "string_value", "bool_value", "datetime_value",
                    "string_set_value")}
        cache: dict[str, list] = {}

        def values(name: str) -> list:
            got = cache.get(name)
            if got is None:
                got = cache[name] = columns[name].to_pylist()
            return got

        for i, (path, attribute_type) in enumerate(zip(paths, types)):
            value = values(VALUE_COLUMN[attribute_type])[i]
            if is_run_attribute(path, attribute_type):
                self._run_value(path, attribute_type, value)
                continue
            entry = self._entry(path, attribute_type, "param")
            if value is None:
                entry.null = True
                text = ""
            else:
                text = param_text(attribute_type, value)
            key = entry.key
            if len(text) > MAX_PARAM_LENGTH:
                self._param_artifact(path, key, entry, text, "param_to_artifact")
                text = long_param_pointer(entry.artifact)
            sent = self._sent_params.get(key)
            if sent is not None:
                if sent != text:
                    raise self._err(f"attribute {path!r} has two different values in one run")
                continue
            self._sent_params[key] = text
            existing = self._existing_params.get(key)
            if existing is not None:
                if existing != text and not entry.artifact:
                    # a grown source run's new value: the param keeps the old text (MLflow
                    # params are write-once) and trackport reads the new one from the artifact
                    self._param_artifact(path, key, entry, text, "param_changed_to_artifact")
                continue
            self._hold(params=[Param(key, text)], size=entry_size(key, text))

    def _param_artifact(self, path: str, key: str, entry: AttributeEntry, text: str, kind: str) -> None:
        """Store a param's whole text as artifact trackport/params/<key>.txt (read back from there)."""
        entry.artifact = long_param_artifact(key)
        if (path, kind) not in self._counted:
            self._counted.add((path, kind))
            self._count(kind, 1, path, entry)
        local = self._tmp / "params" / f"{self._next()}.txt"
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text, encoding="utf-8")
        self._upload(local, entry.artifact, is_dir=False, count=False)

    def _run_value(self, path: str, attribute_type: str, value: Any) -> None:
        """A run-level value: MLflow's own fields and tags hold it (set from the scan at the
        start and the end of the run), and the manifest keeps it exactly, never a param."""
        self._seen[path] = value
        text = None if value is None else param_text(attribute_type, value)
        entry = self.manifest.attributes.get(path)
        if entry is None:
            entry = self.manifest.entry(path, attribute_type, "run", "")
        elif (entry.type, entry.value, entry.null) != (attribute_type, text, value is None):
            raise self._err(f"attribute {path!r} has two different values in one run")
        entry.value = text
        entry.null = value is None
        # A run an older trackport began wrote this value as a param, which MLflow cannot
        # delete: the manifest accounts for it, so it does not read back as an extra.
        legacy = sanitize_key(path)
        if self._existing_params.get(legacy) == ("" if text is None else text):
            entry.key = legacy

    def _hold(self, metrics: list = (), params: list = (), size: int = 0) -> None:
        if self.bulk is not None:   # params only (metric points go to bulk.add): the last transaction
            self._bulk_params.extend((p.key, p.value) for p in params)
            return
        if not self._held.fits(len(metrics), len(params), 0, size):
            self._send_held()
        self._held.add(metrics, params, size)

    def _send_held(self) -> None:
        if self._held:
            self._submit(self.tracking.log_batch, self.run_id, *self._held.take(), ())

    def _write_metrics(self, table: pa.Table) -> None:
        n = table.num_rows
        values_col = table.column("float_value")
        if values_col.null_count:
            keep = pc.is_valid(values_col)
            dropped = table.filter(pc.invert(keep))
            for path in sorted(set(dropped.column("attribute_path").to_pylist())):
                cnt = pc.sum(pc.equal(dropped.column("attribute_path"), path)).as_py()
                self.report.dropped("metric_null_value", cnt, path)
            table = table.filter(keep)
            n = table.num_rows
            if n == 0:
                return
        encoded = pc.dictionary_encode(table.column("attribute_path")).combine_chunks()
        codes = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        paths = encoded.dictionary.to_pylist()
        entries = [self._entry(p, "float_series", "metric") for p in paths]
        values = np.array(table.column("float_value").to_numpy(zero_copy_only=False), dtype=np.float64)
        steps, step_valid = self._dest_steps(table)
        ts_col = pc.cast(table.column("timestamp"), pa.int64())
        ts_valid = np.asarray(pc.is_valid(ts_col))
        ts = np.array(pc.fill_null(ts_col, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        bad_ts = ~ts_valid | (ts < 0)
        ts[bad_ts] = 0
        infs = np.isinf(values)
        npaths = len(paths)
        for kind, mask, flag in (("timestamp_filled", bad_ts, "null_timestamps"),
                                 ("step_filled", ~step_valid, "null_steps"),
                                 ("inf_to_float_max", infs, "inf"),
                                 (None, np.abs(values) == FLOAT_MAX, "float_max")):
            if mask.any():
                counts = np.bincount(codes[mask], minlength=npaths)
                for j in np.nonzero(counts)[0]:
                    setattr(entries[j], flag, True)
                    if kind:
                        self._count(kind, int(counts[j]), paths[j], entries[j])
        # Values the store cannot give back as sent: where they are, for the manifest.
        odd = infs | ((values == 0) & np.signbit(values))
        if odd.any():
            for j in np.unique(codes[odd]).tolist():
                rows = odd & (codes == j)
                self._fixes.setdefault(paths[j], []).append((steps[rows], ts[rows], values[rows]))
        valid_ts = ts[~bad_ts]
        if valid_ts.size:
            last = int(valid_ts.max())
            self._last_ms = last if self._last_ms is None else max(self._last_ms, last)
        send = np.ones(n, dtype=bool)
        ident = point_identity(steps, ts, values)
        repeated = repeated_points(codes, ident)
        if repeated.any():
            for j in np.unique(codes[repeated]).tolist():
                rows = repeated & (codes == j)
                entries[j].repeats.extend(list(r) for r in ident[rows].tolist())
                self._count("duplicate_point_in_manifest", int(rows.sum()), paths[j], entries[j])
            send &= ~repeated
        if self._resumed:
            for j, entry in enumerate(entries):
                rows = codes == j
                index = self._existing_points(entry.key)
                if len(index):
                    send[rows] = ~index.contains(ident[rows])
        keys = [e.key for e in entries]
        if self.bulk is not None:  # --mlflow-bulk: the same prepared points, straight into the tables
            self.bulk.add(keys, codes[send], values[send], ts[send], steps[send])
            return
        key_array = np.array(keys, dtype=object)[codes[send]]
        values, ts, steps = values[send], ts[send], steps[send]
        per = max(json_size(k) for k in keys) + 90
        chunk = max(1, min(MAX_METRICS_PER_BATCH, MAX_BATCH_BYTES // per))
        for i in range(0, len(key_array), chunk):   # Metric objects one request at a time: bounded memory
            end = i + chunk
            metrics = [Metric(k, v, t, s) for k, v, t, s in zip(
                key_array[i:end].tolist(), values[i:end].tolist(), ts[i:end].tolist(), steps[i:end].tolist())]
            self._hold(metrics=metrics, size=len(metrics) * per)

    def _write_series(self, table: pa.Table) -> None:
        paths = table.column("attribute_path").to_pylist()
        types = table.column("attribute_type").to_pylist()
        step_text = step_texts(table.column("step"))
        ts_col = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        strings = table.column("string_value").to_pylist() if "string_series" in types else None
        hists = table.column("histogram_value").to_pylist() if "histogram_series" in types else None
        lines: dict[str, list[str]] = {}
        for i, (path, attribute_type) in enumerate(zip(paths, types)):
            value = strings[i] if attribute_type == "string_series" else hists[i]
            if value is not None and attribute_type == "histogram_series":
                value = {"type": value.get("type"), "edges": value.get("edges"), "values": value.get("values")}
            step = step_text[i]
            ts = ts_col[i]
            lines.setdefault(path, []).append(
                '{"step": %s, "timestamp": %s, "value": %s}\n' % (
                    "null" if step is None else f'"{step}"',
                    "null" if ts is None else str(ts),
                    json.dumps(value, ensure_ascii=False),
                )
            )
            if ts is not None and ts >= 0:
                self._last_ms = ts if self._last_ms is None else max(self._last_ms, ts)
        types_by_path = dict(zip(paths, types))
        for path, chunk in lines.items():
            entry = self._entry(path, types_by_path[path], "series")
            spool = self._spools.get(path)
            if spool is None:
                entry.artifact = series_artifact(entry.key)
                self._count("series_to_artifact", 1, path, entry)
                spool = self._spools[path] = self._tmp / "series" / f"{len(self._spools)}.jsonl"
                spool.parent.mkdir(parents=True, exist_ok=True)
            with open(spool, "a", encoding="utf-8") as fh:
                fh.writelines(chunk)

    def _write_files(self, table: pa.Table) -> None:
        paths = table.column("attribute_path").to_pylist()
        types = table.column("attribute_type").to_pylist()
        files = table.column("file_value").to_pylist()
        steps = step_texts(table.column("step"))
        ts_col = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        for path, attribute_type, cell, step, ts in zip(paths, types, files, steps, ts_col):
            source = cell.get("path") if cell else None
            if not source:
                self.report.dropped("file_missing_path", 1, path)
                continue
            entry = self._entry(path, attribute_type, "file")
            local = self._local_file(source)
            if attribute_type == "file_set" and not local.is_dir():
                raise self._err(f"file_set {path!r} does not point at a directory", file=source)
            if attribute_type != "file_set" and local.is_dir():
                raise self._err(f"{attribute_type} {path!r} points at a directory", file=source)
            try:
                root = self.layout.place(path, attribute_type, entry.key, [(step, source)])
                artifact = file_artifacts(attribute_type, root, [(step, source)])[0]
                self.layout.check(path, artifact)
            except ValueError as exc:
                raise self._err(str(exc), file=source) from None
            entry.key = root
            if path in self.layout.renamed and (path, "renamed") not in self._counted:
                self._counted.add((path, "renamed"))
                self._count("file_path_collision_renamed", 1, f"{path} -> {root}", entry)
            if attribute_type == "file" and file_artifact(root, source)[1] \
                    and (path, "ext") not in self._counted:
                self._counted.add((path, "ext"))
                self._count("file_extension_added", 1, path, entry)
            entry.files.append([step, ts, source, artifact])
            self._upload(local, artifact, is_dir=attribute_type == "file_set", source=source)

    def _local_file(self, source: str) -> Path:
        return materialise(self.plan.files, source, self._tmp / "files", self._err)

    def _upload(self, local: Path, artifact: str, is_dir: bool, count: bool = True,
                source: str | None = None) -> None:
        """Upload in the pool; `count` the source's files (not trackport's own artifacts)."""
        if artifact in self._uploaded:
            sent = self._uploaded[artifact]
            if sent != source:   # never a silent skip: the layout keeps attributes apart
                raise self._err(f"files {sent!r} and {source!r} both map to artifact {artifact!r}",
                                file=source)
            return
        self._uploaded[artifact] = source
        if not count:
            self._submit(self.tracking.upload_file, self.run_id, local, artifact)
        elif is_dir:
            count, size = 0, 0
            for root, _, names in os.walk(local):
                for name in names:
                    count += 1
                    size += os.path.getsize(os.path.join(root, name))
            self.report.files += count
            self.report.bytes += size
            self._submit(self.tracking.upload_dir, self.run_id, local, artifact)
        else:
            self.report.files += 1
            self.report.bytes += local.stat().st_size
            self._submit(self.tracking.upload_file, self.run_id, local, artifact)

    # -- commit -----------------------------------------------------------------

    def commit(self) -> DestRun:
        try:
            if self.bulk is not None:
                self._commit_bulk()
                return self._committed()
            marks = [RunTag(TAG_COMPLETE, "true")]
            if self.plan.source_version is not None:
                marks.insert(0, RunTag(TAG_SOURCE_VERSION, self.plan.source_version))
            manifest_tag = self._write_manifest()
            if manifest_tag is not None:
                marks.insert(0, manifest_tag)
            self._log_dataset_inputs()
            # The run's end also goes out with the last data; only the mark waits for every answer.
            self._submit(self.tracking.terminate, self.run_id, self._status(), self._end_time(),
                         self._new_name())
            if not self._held.fits(tags=len(marks), size=sum(entry_size(t.key, t.value) for t in marks)):
                self._send_held()
            self._drain()
            with errors(self.project_id, self.source_run):
                # The last held data, the source version and the completion mark go in one
                # request once every other answer is in.  That is safe because MLflow's
                # log_batch writes params, then metrics, then tags, and fails before the tags
                # if the data fails: the mark never lands without its data. See
                # https://github.com/mlflow/mlflow/blob/master/mlflow/store/tracking/sqlalchemy_store.py
                # (SqlAlchemyStore.log_batch); a retried batch is idempotent (_log_metrics skips
                # points already stored, an equal param is accepted).
                self.tracking.log_batch(self.run_id, *self._held.take(), marks)
            self._settle()
        except BaseException:
            self.abort()
            raise
        return self._committed()

    def _committed(self) -> DestRun:
        self._cleanup()
        self.sink.remember(self.experiment_id, self.origin,
                            _Known(self.run_id, True, version=self.plan.source_version))
        self.sink.committed(self.experiment_id, self.origin, self.run_id)
        return DestRun(self.run_id, True, self.tracking.run_url(self.experiment_id, self.run_id), self.run_id)

    def _write_manifest(self) -> RunTag | None:
        """The series spools to the run's artifacts (in the request pool), then the manifest: a
        manifest that fits one tag value is returned as the tag TAG_MANIFEST, to go with the
        completion mark (one request fewer per run); a bigger one is the artifact
        MANIFEST_PATH, which goes out with the last data requests (nothing reads it before the
        mark), and a resumed run's older tag is deleted."""
        for path, spool in self._spools.items():
            entry = self.manifest.attributes[path]
            self._upload_internal(spool, entry.artifact)
        self.manifest.tags = sorted(self.tags)
        for path, chunks in self._fixes.items():
            entry = self.manifest.attributes[path]
            # +-inf alone maps back by value; with genuine +-float max values, and for
            # -0.0, the manifest says where.
            fix_steps = np.concatenate([c[0] for c in chunks])
            fix_ts = np.concatenate([c[1] for c in chunks])
            fix_values = np.concatenate([c[2] for c in chunks])
            keep = (fix_values == 0) | entry.float_max
            entry.fixes = [list(f) for f in zip(fix_steps[keep].tolist(), fix_ts[keep].tolist(),
                                                fix_texts(fix_values[keep]))]
        text = self.manifest.dumps()
        if len(text) <= MAX_TAG_LENGTH:
            return RunTag(TAG_MANIFEST, text)
        manifest = self._tmp / "attributes.json"
        manifest.write_text(text, encoding="utf-8")
        self._upload_internal(manifest, MANIFEST_PATH)
        if self._manifest_tag:
            self._submit(self.tracking.delete_tag, self.run_id, TAG_MANIFEST)
        return None

    def _commit_bulk(self) -> None:
        """--mlflow-bulk: files and the manifest to the artifact store, then the run's last
        transaction (the points not written yet, params, tags, end, completion mark), then the
        look for other writers' runs as on the SDK path.  `commit` aborts the run on failure."""
        manifest_tag = self._write_manifest()
        self._log_dataset_inputs()
        tags = list(self._bulk_tags)
        if manifest_tag is not None:
            tags.append((manifest_tag.key, manifest_tag.value))
        if self._parent_waiting is not None:
            parent_id = self.sink.parent_run(self.experiment_id, self._parent_waiting)
            if parent_id is not None:
                tags.append((TAG_PARENT, parent_id))
                self._parent_waiting = None
        if self.plan.source_version is not None:
            tags.append((TAG_SOURCE_VERSION, self.plan.source_version))
        tags.append((TAG_COMPLETE, "true"))
        params, tags = validated(self._bulk_params, tags, self.project_id, self.source_run)
        self._drain()
        self.bulk.commit(params, tags, self._status(), self._end_time(), self._new_name())
        self._settle()
        if self._parent_waiting is not None:
            self.sink.wait_for_parent(self.run_id, self.experiment_id, self._parent_waiting)

    def _log_dataset_inputs(self) -> None:
        """String `mlflow/inputs/datasets` (what the MLflow source reads from `run.inputs`) as
        the run's MLflow dataset inputs; its exact text stays in the manifest."""
        text = self._seen.get(DATASETS_PATH, self.plan.scan.value(DATASETS_PATH))
        if text is None:
            return
        inputs = dataset_inputs_from_json(text)
        if inputs is None:
            self._count("dataset_inputs_not_logged", 1, DATASETS_PATH)
            return
        if inputs:
            if self.bulk is not None:   # MLflow's log_inputs needs the run in the store
                self.bulk.ensure_created()
            self._submit(self.tracking.log_dataset_inputs, self.run_id, inputs)

    def _settle(self) -> None:
        """Right after the completion mark, against a server or a database other machines may
        write too (a local store is claimed by a lock, core/claims.py): is ours the one run of
        this origin?  Another writer's run wins when it is complete, or partial with a lower run
        id; then ours is deleted and the run is retried, skipping (or resuming) the winner.  Of
        two complete runs, the writer that looks later sees the other complete (it was marked
        before the earlier look), so two never both stay; at worst both give way and the run is
        written again (docs/reliability.md, "MLflow across machines")."""
        if self.tracking.local_store is not None:
            return
        runs = self._origin_runs()
        winner = next((k for k in sorted(runs, key=lambda k: (not k.complete, k.run_id))
                       if k.run_id != self.run_id and (k.complete or k.run_id < self.run_id)), None)
        if winner is not None:
            self._give_way(winner)

    def _origin_runs(self) -> list[_Known]:
        """Every active MLflow run of this origin, asked of the store now."""
        return self.sink.search_all(self.experiment_id, self.origin.uri, self.source_run,
                                    self.project_id).get((self.project_id, self.source_run), [])

    def _give_way(self, winner: _Known) -> None:
        """Delete our run of this origin and retry the run, which skips or resumes `winner`."""
        log.warning("run %s/%s: another process wrote MLflow run %s for it at the same time; deleting "
                    "ours (%s) and going on with that one", self.project_id, self.source_run,
                    winner.run_id, self.run_id)
        with errors(self.project_id, self.source_run):
            self.tracking.delete_run(self.run_id)
        self.sink.remember(self.experiment_id, self.origin, winner)
        raise TransientError(f"run {self.project_id}/{self.source_run}: another process wrote MLflow run "
                             f"{winner.run_id} for it at the same time; ours ({self.run_id}) was deleted, "
                             f"going on with {winner.run_id}")

    def _upload_internal(self, local: Path, artifact: str) -> None:
        self._submit(self.tracking.upload_file, self.run_id, local, artifact)

    def _status(self) -> str:
        status = self._seen.get(STATUS_PATH, self.plan.scan.value(STATUS_PATH))
        if status in STATUSES:   # a foreign MLflow run's KILLED, RUNNING...
            return status
        failed = self._seen.get("sys/failed", self.plan.scan.value("sys/failed"))
        return "FAILED" if failed is True else "FINISHED"

    def _end_time(self) -> int | None:
        end = _ms(self._seen.get("sys/modification_time", self.plan.scan.value("sys/modification_time")))
        if end is None and self._status() in ("RUNNING", "SCHEDULED"):
            return None   # an MLflow run that has not ended has no end time
        if end is None:
            end = _ms(self.plan.scan.last_timestamp)
            if self._last_ms is not None:
                end = self._last_ms if end is None else max(end, self._last_ms)
        return end

    def _run_name(self, name: Any, count: bool = True) -> str:
        if name == "" and count:
            self._count("run_name_from_id", 1, "sys/name")
        text = str(name) if name not in (None, "") else self.source_run
        if len(text) > MAX_RUN_NAME_LENGTH:
            if count:
                self._count("run_name_truncated", 1, "sys/name")
            text = text[: MAX_RUN_NAME_LENGTH]
        return text

    def _new_name(self) -> str | None:
        if "sys/name" in self._seen:
            name = self._run_name(self._seen["sys/name"], count=False)
            if name != self.run_name:
                return name
        return self.run_name if self._rename else None

    def abort(self) -> None:
        self.sink.registry.settled(self.origin)
        if self.bulk is not None:
            self.bulk.cancel()   # its queued transactions are dropped, the one under way ends
        if self._closed:
            return
        for fut in self._futures:
            fut.cancel()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        wait(self._futures)   # the shared pool lives on; this run's own requests end before its files go
        self._futures = set()
        shutil.rmtree(self._tmp, ignore_errors=True)


def _rank(known: _Known) -> tuple:
    return (not known.complete, known.start_time, known.run_id)


def _add_known(every: dict[tuple[str, str], list[_Known]], run_id: str, start_time: int,
               tags: dict[str, str]) -> None:
    """Add the run `run_id` with trackport's `tags` to `every`, under its origin (project, run id)."""
    key = (tags.get(TAG_ORIGIN_PROJECT, ""), tags.get(TAG_ORIGIN_RUN, ""))
    every.setdefault(key, []).append(
        _Known(run_id, tags.get(TAG_COMPLETE) == "true", start_time, tags.get(TAG_SOURCE_VERSION)))


def _ranked(every: dict[tuple[str, str], list[_Known]]) -> dict[tuple[str, str], _Known]:
    """The run kept for each origin among `every`'s."""
    found: dict[tuple[str, str], _Known] = {}
    for key, runs in every.items():
        # Should there ever be two (a deleted run restored, writers racing on other machines),
        # the complete one, then the oldest, then the lowest id is used, and the others are
        # named so that copy and verify report them (never a silent pick).
        runs.sort(key=_rank)
        keep = runs[0]
        keep.others = tuple(k.run_id for k in runs[1:])
        if keep.others:
            log.warning("MLflow runs %s were all loaded from run %s/%s",
                        ", ".join(k.run_id for k in runs), key[0], key[1])
        found[key] = keep
    return found




def _ms(value: Any) -> int | None:
    try:
        return ms_from_datetime(value)
    except TypeError:
        return None
