"""`--executor ray`: the runs of one command moved by Ray tasks across a cluster.

The driver (this process) lists and plans runs as the local executor does, then hands them
to Ray tasks, a run or a batch of small runs each, balanced by weight (Source.run_weight:
points or bytes where a source knows them) so that one huge run does not leave the cluster
idle.  Each task opens the source and the destination again from the command's URIs and
moves its runs through the same Pipeline.move_run as local workers, behind the same
per-origin claims; a task Ray retries after its node died resumes or skips what the dead
attempt wrote, so every run ends exactly once.

One actor on the driver's node (`_Coordinator`) is shared by every task: it collects each
run's report as the run ends (so progress, the ledger and the report live on the driver, and
a retried task's "skipped" does not hide the dead attempt's "moved"), and it holds the
throttling pauses of every endpoint (core/retry.py `share_pauses`), so that 50 workers back
off together from a tracker that answered 429.  docs/scale-out.md is the user's guide.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import time
from typing import Any

from .errors import UsageError
from .model import RunRef
from .report import FAILED, MOVED, REPAIRED, SKIPPED, RunReport

log = logging.getLogger("trackport")

# Tasks per CPU of the cluster: enough that a slow task does not leave CPUs idle at the end.
TASKS_PER_CPU = 4
# A task Ray retries after its node or worker died (not after an error of ours: a run's own
# errors are in its report).
TASK_RETRIES = 5
POLL_S = 0.5
PAUSE_CACHE_S = 0.25


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'trackport[ray]'") from None
    return ray


def move_on_ray(pipeline, runs: list[RunRef]) -> None:
    """Move `runs` with Ray tasks; their reports go into `pipeline.report` as they end."""
    ray = import_ray()
    opts = pipeline.opts
    if opts.uris is None:
        raise UsageError("--executor ray moves runs of copy, export and load only")
    address = opts.ray_address or os.environ.get("RAY_ADDRESS") or None
    # Ray prints the cluster's events ("(raylet) Raylet is terminated...") on stdout, which holds
    # the JSON report alone with --json: they go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        started_here = not ray.is_initialized()
        if started_here:
            # Workers' own log lines stay in Ray's session logs: what a run says is in its report.
            own = {} if address else {"include_dashboard": False}   # a new local instance only
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                     configure_logging=False, **own)
        try:
            _move(ray, pipeline, runs)
        finally:
            if started_here:
                ray.shutdown()


def _move(ray, pipeline, runs: list[RunRef]) -> None:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    # On the driver's node: it lives as long as the command, whichever worker node goes.
    coordinator = ray.remote(num_cpus=0)(_Coordinator).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote()
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    batches = plan_batches(runs, [_weight(pipeline.source, ref) for ref in runs], cpus * TASKS_PER_CPU)
    spec = _TaskSpec.of(pipeline)
    task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(_move_batch)
    pending = {task.remote(spec, batch, coordinator): batch for batch in batches}
    seen: set[tuple[str, str]] = set()
    failures: dict[Any, str] = {}
    try:
        while pending:
            pipeline._check_cancel()
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            for ref in ready:
                batch = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:   # the task gave up (its retries spent): name it
                    failures.update({(r.project_id, r.run_id): f"{type(exc).__name__}: {exc}" for r in batch})
            _collect(ray, pipeline, coordinator, seen)
        _collect(ray, pipeline, coordinator, seen)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    for ref in runs:    # a run no task reported (its task died for good) failed, and says why
        if (ref.project_id, ref.run_id) not in seen:
            report = pipeline.report.add(RunReport(ref.project_id, ref.run_id, status=FAILED))
            why = failures.get((ref.project_id, ref.run_id), "its Ray task ended without a report")
            report.error = (f"run {pipeline.source.describe_run(ref)}: the Ray task moving it failed ({why}); "
                            f"rerun the same command, which resumes it")
            log.error("%s", report.error)
            pipeline.progress.run_done(pipeline.source.describe_run(ref), FAILED)


def _collect(ray, pipeline, coordinator, seen: set[tuple[str, str]]) -> None:
    for packed, attempts, name in ray.get(coordinator.take.remote()):
        report = unpack_report(packed)
        key = (report.project_id, report.run_id)
        if key in seen:   # a retried task changed what this run's report says: the newer one
            pipeline.report.runs[:] = [r for r in pipeline.report.runs
                                       if (r.project_id, r.run_id) != key]
        else:
            pipeline.progress.run_done(name, report.status)
        seen.add(key)
        pipeline.report.add(report)
        if report.status == FAILED and report.error:
            log.error("%s", report.error)
        if pipeline.ledger is not None:
            pipeline.ledger.record(pipeline.source.uri, pipeline.sink.uri, report, attempts)
        pipeline.progress.points(report.rows)


def _weight(source, ref: RunRef) -> int:
    weight = source.run_weight(ref)
    return max(1, int(weight)) if weight is not None else 1


def plan_batches(runs: list[RunRef], weights: list[int], tasks: int) -> list[list[RunRef]]:
    """Runs into batches of about equal weight, about `tasks` of them: a run heavier than a
    batch's share is a task of its own; the heaviest go first, so that the longest work
    starts first and the small batches fill in around it."""
    if not runs:
        return []
    share = max(1, sum(weights) // max(1, tasks))
    order = sorted(range(len(runs)), key=lambda i: -weights[i])
    batches: list[list[RunRef]] = []
    current: list[RunRef] = []
    current_weight = 0
    for i in order:
        if weights[i] >= share:
            batches.append([runs[i]])
            continue
        if current and current_weight + weights[i] > share:
            batches.append(current)
            current, current_weight = [], 0
        current.append(runs[i])
        current_weight += weights[i]
    if current:
        batches.append(current)
    return batches


# -- a task -------------------------------------------------------------------------
@dataclasses.dataclass
class _TaskSpec:
    """What a task needs to open the command again (no lock, no open handle)."""

    source_uri: str
    destination_uri: str
    options: Any             # PipelineOptions, without the driver's cancel event
    retry: tuple[int, float, float | None]
    cwd: str                 # the driver's: a relative path of the command means the same there

    @classmethod
    def of(cls, pipeline) -> "_TaskSpec":
        from . import retry

        settings = retry.settings()
        opts = dataclasses.replace(pipeline.opts, cancel=None, work_dir=None, executor="local")
        return cls(opts.uris[0], opts.uris[1], opts,
                   (settings.max_attempts, settings.budget_s, settings.request_timeout_s), os.getcwd())


def _move_batch(spec: _TaskSpec, batch: list[RunRef], coordinator) -> int:
    """In a Ray worker: move `batch` as local workers would, each run's report to the coordinator."""
    import ray

    from . import retry
    from .pipeline import Pipeline, in_parallel
    from .progress import Progress
    from .registry import open_sink, open_source
    from .report import CommandReport

    retry.configure(*spec.retry)
    if os.path.isdir(spec.cwd):   # the same machine, or a shared file system
        os.chdir(spec.cwd)
    retry.share_pauses(_ClusterPauses(coordinator))
    source = open_source(spec.source_uri, spec.options.connector_options)
    try:
        sink = open_sink(spec.destination_uri, spec.options.connector_options)
        report = CommandReport("copy", source.uri, sink.uri, allow_drops=spec.options.allow_drops)
        pipeline = Pipeline(source, sink, spec.options, report, Progress(), ledger=None)
        try:
            def move(ref: RunRef) -> None:
                run_report = pipeline.move_run(ref)
                # Waited for: the driver takes reports once the task has ended, and calls from
                # two callers to one actor keep no order between them.
                ray.get(coordinator.finished.remote(pack_report(run_report), 1, source.describe_run(ref)))

            in_parallel(move, batch, spec.options.workers)
            sink.close()
        finally:
            shutil.rmtree(pipeline.work_dir, ignore_errors=True)
    finally:
        source.close()
        retry.share_pauses(None)
    return len(batch)


class _ClusterPauses:
    """core/retry.py's shared pauses, held by the coordinator actor (asked at most every
    PAUSE_CACHE_S per endpoint)."""

    def __init__(self, coordinator):
        self.coordinator = coordinator
        self._cache: dict[str, tuple[float, float]] = {}

    def pause(self, endpoint: str, seconds: float) -> None:
        self.coordinator.pause.remote(endpoint, seconds)
        self._cache[endpoint] = (time.monotonic(), seconds)

    def remaining(self, endpoint: str) -> float:
        import ray

        now = time.monotonic()
        asked, left = self._cache.get(endpoint, (-PAUSE_CACHE_S, 0.0))
        if now - asked >= PAUSE_CACHE_S:
            left = ray.get(self.coordinator.remaining.remote(endpoint))
            self._cache[endpoint] = (now, left)
            return left
        return max(0.0, left - (now - asked))


class _Coordinator:
    """The actor: runs' reports as they end, and the endpoints' pauses."""

    def __init__(self) -> None:
        self.reports: dict[tuple[str, str], tuple[dict, int, str]] = {}
        self.fresh: list[tuple[str, str]] = []
        self.pauses: dict[str, float] = {}

    def finished(self, packed: dict, attempts: int, name: str) -> None:
        key = (packed["project_id"], packed["run_id"])
        old = self.reports.get(key)
        if old is not None:
            # The same run again: a task retried after its node died.  Its first attempt's
            # moved/repaired stands over the retry's skipped (the retry found that work done).
            if packed["status"] == SKIPPED and old[0]["status"] in (MOVED, REPAIRED):
                return
            attempts += old[1]
        self.reports[key] = (packed, attempts, name)
        if key not in self.fresh:
            self.fresh.append(key)

    def take(self) -> list[tuple[dict, int, str]]:
        """Reports new since the last take (a run's again when a retried task changed it)."""
        out = [self.reports[key] for key in self.fresh]
        self.fresh = []
        return out

    def pause(self, endpoint: str, seconds: float) -> None:
        self.pauses[endpoint] = max(self.pauses.get(endpoint, 0.0), time.monotonic() + seconds)

    def remaining(self, endpoint: str) -> float:
        return max(0.0, self.pauses.get(endpoint, 0.0) - time.monotonic())


def pack_report(report: RunReport) -> dict:
    """A RunReport as plain data (its lock stays behind)."""
    return {f.name: getattr(report, f.name) for f in dataclasses.fields(report) if not f.name.startswith("_")}


def unpack_report(packed: dict) -> RunReport:
    return RunReport(**packed)
