"""Source -> canonical batches per run -> Sink, for copy, export and load.

Per run: ask the destination whether the run is already there (complete:
skip; partial: repair), scan the run once (metadata, step precision, files)
so every check that can fail does so before anything is written, then stream
the batches to the sink and commit.  Runs go in parallel (`workers`); a
failing run is reported and never stops the others.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from itertools import islice
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import layout
from . import steps as stepmath
from .claims import OriginClaims
from .connector import RunPlan, RunScan, SeriesStats, Sink, Source, find_loaded
from .errors import Cancelled, RunError, TransientError, UsageError
from .options import Options
from .progress import Progress
from .ledger import Ledger
from .retry import Backoff
from .model import DestRun, RunRef, Selection
from .report import CANCELLED, FAILED, MOVED, PLANNED, REPAIRED, SKIPPED, CommandReport, RunReport
from .schema import DEST_STEP, FILE_TYPES, SCHEMA, STEPPED_TYPES, series_rows

log = logging.getLogger("trackport")


@dataclass
class PipelineOptions:
    select: Selection = field(default_factory=Selection)
    workers: int = 4
    step_multiplier: int | None = None
    allow_drops: bool = False
    max_attempts: int = 5
    retry_budget_s: float = 600.0
    work_dir: Path | None = None
    connector_options: Options = field(default_factory=Options)
    # Set from another thread to stop: no new run starts, runs being written stop at their
    # next batch (left incomplete, resumable) and `run` raises Cancelled.
    cancel: threading.Event | None = None
    # --executor ray (core/ray_executor.py): runs moved by Ray tasks, which open the source and
    # the destination again from `uris` (the command's own, as the user gave them).
    executor: str = "local"
    ray_address: str | None = None
    uris: tuple[str, str] | None = None


# -- reading a run, once or twice ---------------------------------------------
# A run whose batches take no more than this is read from a replayable source once and kept
# in memory for the second pass (scan, then write): many small runs cost half the reads.
KEEP_RUN_BYTES = 4 * 1024 * 1024


class RunData:
    """A run's batches that can be read more than once (scan, then write)."""

    def __init__(self, source: Source, ref: RunRef, select: Selection, work_dir: Path):
        self.source = source
        self.ref = ref
        self.select = select
        self.spool: Path | None = None
        self._kept: list[pa.Table] | None = None
        if not source.capabilities.replayable:
            self.spool = Path(tempfile.mkstemp(prefix="run-", suffix=".parquet", dir=work_dir)[1])
            self._fill_spool()

    def _fill_spool(self) -> None:
        writer = None
        try:
            for table in self.source.read_run(self.ref, self.select):
                table = _as_table(table)
                if writer is None:
                    writer = pq.ParquetWriter(self.spool, table.schema, compression="lz4")
                writer.write_table(table.cast(writer.schema) if not table.schema.equals(writer.schema) else table)
        finally:
            if writer is not None:
                writer.close()
            else:
                pq.write_table(SCHEMA.empty_table(), self.spool)

    def tables(self) -> Iterator[pa.Table]:
        if self._kept is not None:
            yield from self._kept
        elif self.spool is None:
            kept: list[pa.Table] | None = []
            size = 0
            for table in self.source.read_run(self.ref, self.select):
                table = _as_table(table)
                if kept is not None:
                    size += table.nbytes
                    if size <= KEEP_RUN_BYTES:
                        kept.append(table)
                    else:
                        kept = None
                yield table
            self._kept = kept     # read to the end: a small run is not read again
        else:
            for batch in pq.ParquetFile(self.spool).iter_batches(batch_size=65_536):
                yield pa.Table.from_batches([batch])

    def close(self) -> None:
        self._kept = None
        if self.spool is not None:
            self.spool.unlink(missing_ok=True)


def _as_table(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


# -- the scan -------------------------------------------------------------------
def scan_run(tables: Iterator[pa.Table]) -> RunScan:
    scan = RunScan()
    for table in tables:
        if table.num_rows == 0:
            continue
        scan.rows += table.num_rows
        types = table.column("attribute_type")
        counts = pc.value_counts(types)
        for item in counts.to_pylist():
            scan.rows_by_type[item["values"]] += item["counts"]
        points = series_rows(table)
        single = table.filter(pc.invert(points))
        if single.num_rows:
            _scan_single_values(scan, single)
        stepped = table.filter(points)
        if stepped.num_rows:
            _scan_series(scan, stepped)
        ts = table.column("timestamp")
        if ts.null_count < len(ts):
            lo, hi = pc.min_max(ts).values()
            lo, hi = lo.as_py(), hi.as_py()
            scan.first_timestamp = lo if scan.first_timestamp is None else min(lo, scan.first_timestamp)
            scan.last_timestamp = hi if scan.last_timestamp is None else max(hi, scan.last_timestamp)
    return scan


def _scan_single_values(scan: RunScan, single: pa.Table) -> None:
    from .schema import VALUE_COLUMN

    paths = single.column("attribute_path").to_pylist()
    types = single.column("attribute_type").to_pylist()
    columns = {name: single.column(name) for name in set(VALUE_COLUMN.values())}
    for i, (path, typ) in enumerate(zip(paths, types)):
        value = columns[VALUE_COLUMN[typ]][i].as_py()
        if typ in FILE_TYPES:
            scan.files.append((path, typ, None, value["path"] if value else None))
        else:
            scan.values[path] = (typ, value)


_VALUE_OF_SERIES = (("float_series", "float_value"), ("string_series", "string_value"),
                    ("histogram_series", "histogram_value"))


def _scan_series(scan: RunScan, stepped: pa.Table) -> None:
    stats = stepped.group_by(["attribute_path", "attribute_type"]).aggregate(
        [("step", "count", pc.CountOptions(mode="all")), ("step", "min"), ("step", "max")]
    )
    for path, typ, n, lo, hi in zip(*(stats.column(i).to_pylist() for i in range(5))):
        entry = scan.series.get(path)
        if entry is None:
            scan.series[path] = SeriesStats(typ, n, lo, hi)
        else:
            entry.count += n
            entry.min_step = lo if entry.min_step is None else entry.min_step if lo is None else min(entry.min_step, lo)
            entry.max_step = hi if entry.max_step is None else entry.max_step if hi is None else max(entry.max_step, hi)
    types = stepped.column("attribute_type")
    for typ, column in _VALUE_OF_SERIES:
        missing = pc.fill_null(pc.and_(pc.equal(types, typ), pc.is_null(stepped.column(column))), False)
        if pc.any(missing).as_py():
            for item in pc.value_counts(stepped.filter(missing).column("attribute_path")).to_pylist():
                scan.null_points[(item["values"], typ)] += item["counts"]
    places = stepmath.decimal_places(stepmath.unscaled(stepped.column("step")))
    scan.step_places = max(scan.step_places, places)
    file_rows = stepped.filter(pc.is_valid(stepped.column("file_value")))
    if file_rows.num_rows:
        paths = pc.struct_field(file_rows.column("file_value"), "path").to_pylist()
        for attr, typ, step, path in zip(
            file_rows.column("attribute_path").to_pylist(),
            file_rows.column("attribute_type").to_pylist(),
            file_rows.column("step").to_pylist(),
            paths,
        ):
            scan.files.append((attr, typ, step, path))


def check_step_collisions(data: RunData, converter: stepmath.StepConverter, ref: RunRef) -> int:
    """Count floored steps; raise RunError if distinct steps of a series collide."""
    floored_total = 0
    suspects: list[pa.Table] = []
    for table in data.tables():
        stepped = table.filter(pc.is_valid(table.column("step")))
        if not stepped.num_rows:
            continue
        try:
            dest, floored = converter.convert(stepped.column("step"))
        except OverflowError as exc:
            raise RunError(f"{exc}; nothing was written. Fix: lower --step-multiplier",
                           project_id=ref.project_id, run_id=ref.run_id) from None
        if floored:
            floored_total += floored
            suspects.append(pa.table({
                "a": stepped.column("attribute_path"),
                "s": stepmath.unscaled(stepped.column("step")),
                "d": dest,
            }))
    if not suspects:
        return 0
    merged = pa.concat_tables(suspects)
    hits = stepmath.find_collisions(merged.column("a"), merged.column("s").to_numpy(), merged.column("d").to_numpy())
    if hits:
        raise RunError(
            f"step multiplier {converter.multiplier} maps distinct steps onto one destination step "
            f"({'; '.join(_collision_examples(merged, hits[:3]))}{' ...' if len(hits) > 3 else ''}); "
            f"nothing was written. Fix: raise --step-multiplier or leave it to auto",
            project_id=ref.project_id, run_id=ref.run_id,
        )
    return floored_total


def _collision_examples(merged: pa.Table, hits: list[str]) -> list[str]:
    """'<series> at destination step <d>' plus the source steps that meet there."""
    from decimal import Decimal

    from .schema import STEP_SCALE

    out = []
    for hit in hits:
        attr, _, dest = hit.rpartition(" at destination step ")
        rows = merged.filter(pc.and_(pc.equal(merged.column("a"), attr), pc.equal(merged.column("d"), int(dest))))
        steps = sorted(set(rows.column("s").to_pylist()))[:4]
        shown = ", ".join(str(Decimal(s).scaleb(-STEP_SCALE).normalize()) for s in steps)
        out.append(f"{hit} from source steps {shown}")
    return out


# -- the pipeline ---------------------------------------------------------------------
class Pipeline:
    def __init__(self, source: Source, sink: Sink | None, options: PipelineOptions,
                 report: CommandReport, progress: Progress | None = None, ledger: Ledger | None = None):
        self.source = source
        self.sink = sink
        self.opts = options
        self.report = report
        self.progress = progress or Progress()
        self.ledger = ledger
        self.backoff = Backoff(options.retry_budget_s, options.max_attempts)
        self._attributes = AttributeMatches()
        self._own_work_dir = options.work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="trackport-")) if options.work_dir is None else options.work_dir
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # Two processes moving one run into one destination take turns (core/claims.py).
        self.claims = OriginClaims(sink.claim_dir() if sink is not None else None)
        self.started = time.time()

    def list_runs(self) -> list[RunRef]:
        """The source's runs; a second run claiming an identity already listed is reported, not raced."""
        runs, seen = [], {}
        for ref in self.source.list_runs(self.opts.select):
            key = (ref.project_id, ref.run_id)
            if key in seen:
                dup = self.report.add(RunReport(ref.project_id, ref.run_id, status=FAILED))
                dup.error = (f"run {self.source.describe_run(ref)}: another source run "
                             f"({self.source.describe_run(seen[key])}) has the same project and run id; "
                             f"only that one is moved")
                log.error("%s", dup.error)
                continue
            seen[key] = ref
            runs.append(ref)
        return runs

    def run(self, plan_only: bool = False) -> CommandReport:
        try:
            if self.sink is not None:
                self.sink.preflight(read_only=plan_only)   # once, before any run: UsageError, exit 2
            runs = self.list_runs()
            check_selection(self.opts.select, runs, self.report, self.source)
            self.progress.start(len(runs))
            if not plan_only and self.opts.executor == "ray":
                from .ray_executor import move_on_ray

                move_on_ray(self, runs)
            else:
                in_parallel(self.plan_run if plan_only else self.move_run, runs, self.opts.workers)
            if self.sink is not None and not plan_only:
                self.sink.close()
            self._attributes.check(self.opts.select, self.report)
        finally:
            self.progress.finish()
            if self._own_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
        return self.report

    def _check_cancel(self) -> None:
        if self.opts.cancel is not None and self.opts.cancel.is_set():
            raise Cancelled(self.report)

    # A run, planned --------------------------------------------------------------
    def plan_run(self, ref: RunRef) -> RunReport:
        self._check_cancel()
        run_report = self.report.add(RunReport(ref.project_id, ref.run_id, status=PLANNED))
        name = self.source.describe_run(ref)
        self.progress.run_started(name)
        data = None
        try:
            origin = self.source.origin(ref)
            version = self.source.run_version(ref)
            existing = self.backoff.call(f"{name}: find", lambda: find_loaded(self.sink, self.source, ref, origin)) \
                if self.sink else None
            if _up_to_date(existing, version, run_report):
                run_report.status = SKIPPED
                run_report.dest_id = existing.id
                return run_report
            data = RunData(self.source, ref, self.opts.select.of_project(ref.project_id), self.work_dir)
            scan = scan_run(data.tables())
            self._count(run_report, scan, data)
            self._attributes.saw(scan)
            self.source.account(ref, run_report)
            plan = RunPlan(ref, origin, scan, self.source.files(ref), run_report,
                           options=self.opts.connector_options, source_version=version)
            if self.sink is None or self.sink.capabilities.files:
                run_report.files, run_report.bytes = count_files(plan.files, scan.files)
            if self.sink is not None:
                plan.steps = self._steps(scan, data, ref, run_report)
                run_report.details["action"] = "repair" if existing else "create"
                if plan.steps is not None:
                    run_report.details["step_multiplier"] = plan.steps.multiplier
                implied = self.sink.describe_plan(plan)
                if implied:
                    run_report.details["destination"] = implied
                self._declared_drops(plan)
            bad = self._check_files(plan, dry=True)
            if bad:   # --allow-drops: those files will not be sent
                run_report.files, run_report.bytes = count_files(
                    plan.files, [f for f in scan.files if f[3] not in bad])
        except RunError as exc:
            run_report.status = FAILED
            run_report.error = str(exc)
        finally:
            if data is not None:
                data.close()
            self.progress.run_done(name, run_report.status)
        return run_report

    # A run, moved -------------------------------------------------------------------
    def move_run(self, ref: RunRef) -> RunReport:
        self._check_cancel()
        run_report = self.report.add(RunReport(ref.project_id, ref.run_id))
        name = self.source.describe_run(ref)
        self.progress.run_started(name)
        attempts = 0
        committing: dict[str, bool] = {}   # set when an attempt reaches its commit

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1:   # what the sink cached of this origin may be what failed: ask again
                self.sink.forget(origin)
            self._move_once(ref, origin, run_report, name, committing)

        try:
            origin = self.source.origin(ref)
            with self.claims.hold(origin, f"run {name}", self.started) as written_meanwhile:
                if written_meanwhile:   # by another process: what the sink cached may be stale
                    self.backoff.call(f"{name}: find", lambda: self.sink.forget(origin), ref)
                self.backoff.call("moving it", attempt, ref)  # a transient error retries the whole run, resumed
        except Cancelled:
            run_report.status = CANCELLED
            run_report.error = f"run {name}: cancelled; left incomplete in the destination, the same command resumes it"
            raise
        except RunError as exc:
            run_report.status = FAILED
            run_report.error = str(exc) if exc.run_id else f"run {name}: {exc}"
            log.error("%s", run_report.error)
        except UsageError as exc:   # found only once the run started (refused credentials): no traceback
            run_report.status = FAILED
            run_report.error = f"run {name}: {exc}"
            log.error("%s", run_report.error)
        except Exception as exc:  # a bug or an SDK surprise: name the run, keep going
            run_report.status = FAILED
            run_report.error = f"run {name}: unexpected {type(exc).__name__}: {exc}"
            log.exception("run %s failed", name)
        finally:
            if self.ledger is not None:
                self.ledger.record(self.source.uri, self.sink.uri, run_report, attempts)
            self.progress.run_done(name, run_report.status)
        return run_report

    def _move_once(self, ref: RunRef, origin, run_report: RunReport, name: str,
                   committing: dict[str, bool]) -> None:
        sink = self.sink
        version = self.source.run_version(ref)
        def find() -> DestRun | None:
            return self.backoff.call(f"{name}: find", lambda: find_loaded(sink, self.source, ref, origin))

        existing = find()
        for pause in SETTLE_PAUSES_S:
            if existing is None or not existing.duplicates or not existing.complete:
                break
            # A complete duplicate may be a run whose writer is deleting it right now: it marked
            # it complete, then saw another writer's run win (docs/reliability.md, "MLflow across
            # machines").  Look again a few times before calling it a duplicate.
            time.sleep(pause)
            self._check_cancel()
            self.backoff.call(f"{name}: find", lambda: sink.forget(origin), ref)
            existing = find()
        if existing is not None and existing.duplicates:
            if not existing.complete:
                # None complete: other processes may still be settling who writes this run (the
                # loser deletes its own within moments, docs/reliability.md): ask again (bounded
                # by --retry-max-attempts / --retry-max-seconds) before calling it a duplicate.
                settling = TransientError(duplicates_message(existing))
                settling.run_level = True
                raise settling
            raise RunError(duplicates_message(existing), project_id=ref.project_id, run_id=ref.run_id)
        if existing is not None and existing.complete and committing:
            # The previous attempt's commit landed and only its answer was lost: that attempt
            # moved the run, and its counts stand.
            run_report.status = REPAIRED if committing["resumed"] else MOVED
            run_report.dest_id = existing.id
            return
        run_report.restart()
        if _up_to_date(existing, version, run_report):
            run_report.status = SKIPPED
            run_report.dest_id = existing.id
            return
        data = RunData(self.source, ref, self.opts.select.of_project(ref.project_id), self.work_dir)
        writer = None
        try:
            scan = scan_run(data.tables())
            self._count(run_report, scan, data)
            self._attributes.saw(scan)
            self.source.account(ref, run_report)
            plan = RunPlan(ref, origin, scan, self.source.files(ref), run_report,
                           options=self.opts.connector_options, source_version=version)
            plan.steps = self._steps(scan, data, ref, run_report)
            counted_by_sink = self._declared_drops(plan)
            bad_files = self._check_files(plan, dry=False)
            self._refuse_drops(plan, "nothing of this run was written")
            for kind in counted_by_sink:   # allowed: the sink counts them as it meets them
                del run_report.drops[kind]
                run_report.examples.pop(kind, None)
            writer = sink.begin_run(plan, existing)
            for table in data.tables():
                self._check_cancel()
                table = self._prepare(table, plan, bad_files)
                if table.num_rows:
                    writer.write(table)
                    self.progress.points(table.num_rows)
            self._check_cancel()   # written but not committed: the same command repairs it
            # A drop the sink met only while writing: the run stays incomplete (not committed),
            # so a rerun fails again until --allow-drops.
            self._refuse_drops(plan, "the run was left incomplete in the destination")
            committing["resumed"] = existing is not None
            dest = writer.commit()
            writer = None
            run_report.dest_id = dest.id
            run_report.status = REPAIRED if existing is not None else MOVED
        except BaseException:
            if writer is not None:
                try:
                    writer.abort()
                except Exception:  # the original error matters more
                    log.debug("abort failed", exc_info=True)
            raise
        finally:
            data.close()

    # helpers ----------------------------------------------------------------------
    def _count(self, run_report: RunReport, scan: RunScan, data: RunData) -> None:
        run_report.rows = scan.rows
        run_report.points = scan.points
        run_report.params = len(scan.values)
        run_report.details["files_referenced"] = len(scan.files)

    def _steps(self, scan: RunScan, data: RunData, ref: RunRef, run_report: RunReport):
        if self.sink is None or not self.sink.capabilities.integer_steps:
            return None
        if self.opts.step_multiplier:
            converter = stepmath.StepConverter(self.opts.step_multiplier, "user")
            floored = check_step_collisions(data, converter, ref)
            if floored:
                run_report.transformed("step_floored", floored,
                                       f"multiplier {converter.multiplier} leaves fractions; floored")
        else:
            converter = stepmath.StepConverter(stepmath.multiplier_for(scan.step_places), "auto")
        if converter.multiplier != 1:
            run_report.transformed("step_scaled", scan.points, f"steps x{converter.multiplier}")
        return converter

    def _refuse_drops(self, plan: RunPlan, what: str) -> None:
        report = plan.report
        if self.opts.allow_drops or not report.drops:
            return
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.drops.items()))
        examples = [e for k in sorted(report.drops) for e in report.examples.get(k, [])][:3]
        raise RunError(
            f"some of this run's data cannot be moved ({kinds}"
            f"{'; e.g. ' + ', '.join(examples) if examples else ''}); {what}. "
            f"Fix: pass --allow-drops to move the run without it (`plan` lists what is dropped)",
            project_id=plan.ref.project_id, run_id=plan.ref.run_id)

    def _declared_drops(self, plan: RunPlan) -> set[str]:
        """Count the drops the destination's capabilities predict; returns the kinds its
        writer counts again when it meets them."""
        caps = self.sink.capabilities
        counts = plan.scan.rows_by_type
        counted_by_sink: set[str] = set()
        for (path, typ), n in sorted(plan.scan.null_points.items()):
            kind = caps.null_point_drops.get(typ)
            if kind:
                plan.report.dropped(kind, n, path)
                counted_by_sink.add(kind)
        if not caps.histograms and counts.get("histogram_series"):
            plan.report.dropped("histogram_unsupported", counts["histogram_series"])
        if not caps.files:
            n = sum(counts.get(t, 0) for t in FILE_TYPES)
            if n:
                plan.report.dropped("files_unsupported", n)
        if not caps.keeps_timestamps:
            n = sum(counts.get(t, 0) for t in STEPPED_TYPES)
            if n:
                plan.report.dropped("timestamps_not_kept", n)
        return counted_by_sink

    def _check_files(self, plan: RunPlan, dry: bool) -> set[str]:
        """Every referenced file must exist inside the files root, before anything is written."""
        bad: set[str] = set()
        for attr, typ, step, path in plan.scan.files:
            if path is None:
                continue
            try:
                local = plan.files.local_path(path)
                if local is not None and not local.exists():
                    raise RunError("file missing", project_id=plan.ref.project_id,
                                   run_id=plan.ref.run_id, file=path)
                special = layout.special_file(local) if local is not None else None
                if special:   # a named pipe would hang the sink reading it
                    raise RunError(f"file path {path!r} {special}; nothing is read from it",
                                   project_id=plan.ref.project_id, run_id=plan.ref.run_id, file=path)
            except RunError as exc:
                if not self.opts.allow_drops:
                    fix = ("restore the file" if "missing" in exc.reason else
                           "put the regular file in its place" if "not a regular file" in exc.reason else
                           "copy the files into the export instead of linking to them"
                           if "outside the export root" in exc.reason else
                           "make the path relative and inside the export's files folder")
                    raise RunError(
                        f"{exc.reason} (attribute {attr}); nothing of this run was written. "
                        f"Fix: {fix}, or pass --allow-drops to move the run without it",
                        project_id=plan.ref.project_id, run_id=plan.ref.run_id, file=path,
                    ) from None
                bad.add(path)
                plan.report.dropped("missing_file", 1, f"{attr}: {path}: {exc.reason}")
        return bad

    def _prepare(self, table: pa.Table, plan: RunPlan, bad_files: set[str]) -> pa.Table:
        if bad_files:
            paths = pc.struct_field(table.column("file_value"), "path")
            keep = pc.invert(pc.fill_null(pc.is_in(paths, value_set=pa.array(sorted(bad_files))), False))
            table = table.filter(keep)
        if plan.steps is not None:
            dest, _ = plan.steps.convert(table.column("step"))
            table = table.append_column(pa.field(DEST_STEP, pa.int64()), dest)
        return table


# Pauses before a complete duplicate is reported as one (a losing writer deletes its own run
# within a request or two of marking it; 7.5 s in all is ample on a loaded machine).
SETTLE_PAUSES_S = (0.5, 1.0, 2.0, 4.0)


def in_parallel(work, items: list, workers: int) -> None:
    """`work(item)` for each item, `workers` at a time.  Ctrl-C (KeyboardInterrupt): start no
    queued item and do not wait for the open ones (the CLI exits within seconds).  Cancelled:
    start no queued item and wait for the open ones, which stop at their next check."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            work(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="run")
    try:
        list(pool.map(work, items))
    except Cancelled:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def duplicates_message(existing: DestRun) -> str:
    """What `copy` and `verify` say about an origin loaded into more than one destination run."""
    ids = ", ".join([existing.id, *existing.duplicates])
    return (f"the destination holds {1 + len(existing.duplicates)} runs loaded from this run ({ids}); "
            f"trackport does not pick one silently. Fix: delete all but one of them in the destination "
            f"(trackport would keep {existing.id}, {'complete' if existing.complete else 'partial'}), "
            f"then rerun")


def count_files(files, scanned: list[tuple[str, str, Any, str]]) -> tuple[int, int]:
    """(files, bytes) a destination receives for a run's referenced files: each path once, a
    directory counting its files (FileAccess.measure; the count sinks and verify use)."""
    n = size = 0
    for path in sorted({f[3] for f in scanned if f[3] is not None}):
        try:
            got = files.measure(path)
        except (OSError, ValueError, RunError):
            continue   # missing or outside the root: _check_files reports it
        n += got[0]
        size += got[1]
    return n, size


def check_selection(select: Selection, runs: list[RunRef], report: CommandReport, source: Source) -> None:
    """A --project or --run the user gave that selects no run: a note, and exit 1."""
    projects = {ref.project_id for ref in runs}
    for project in select.projects:
        # A source may match --project on another name than the runs' project ids (MLflow: the
        # experiment holding runs trackport wrote, whose project id is their origin's): ask it.
        if project not in projects and not any(True for _ in islice(
                source.list_runs(replace(select, projects=(project,))), 1)):
            report.selected_nothing(f"--project {project} selects no run of the source; "
                                    f"check the name (exact project id)")
    if not runs and select.run_pattern is not None:
        report.selected_nothing(f"--run {select.run_pattern.pattern} selects no run"
                                f"{' of the selected projects' if select.projects else ''}")
    for message in report.unmatched:
        log.warning("%s", message)


class AttributeMatches:
    """Whether --attribute kept anything but sys/* in any run that was read."""

    def __init__(self) -> None:
        self.read = 0
        self.matched = 0
        self._lock = threading.Lock()

    def saw(self, scan: RunScan) -> None:
        self.saw_paths([*scan.values, *scan.series, *(f[0] for f in scan.files)])

    def saw_paths(self, paths) -> None:
        hit = any(not p.startswith("sys/") for p in paths)
        with self._lock:
            self.read += 1
            self.matched += hit

    def check(self, select: Selection, report: CommandReport) -> None:
        if select.attribute_pattern is not None and self.read and not self.matched:
            message = (f"--attribute {select.attribute_pattern.pattern} matches no attribute of the "
                       f"{self.read} run(s) read (only sys/* was kept)")
            report.selected_nothing(message)
            log.warning("%s", message)


def _up_to_date(existing: DestRun | None, version: str | None, run_report: RunReport) -> bool:
    """The destination holds the run complete, and (when both sides know versions) as the source has it now."""
    if existing is None or not existing.complete:
        return False
    if version is not None and existing.version is not None and existing.version != version:
        run_report.details["source_changed"] = True   # a growing run: resume it, add what is new
        return False
    return True
