"""The contracts every connector implements (docs/connectors.md walks through them).

A connector is a module (a built-in: the package `trackport/connectors/<name>/`; a
third party: any module named by a `trackport.connectors` entry point) that declares
`SPEC = ConnectorSpec(...)` (core/registry.py) and defines

    open_source(parsed: ParsedUri, options: dict) -> Source            (if SPEC.source)
    open_sink(parsed: ParsedUri, options: dict, read_only: bool) -> Sink  (if SPEC.destination)

importing its tracker SDK only inside those calls, so `trackport --help` stays SDK-free.
`options` holds every connector's command-line options by name (None when not given),
`workers` and `allow_drops`.  `read_only` (plan, verify) is a parameter, not an option:
the sink then creates nothing, writes nothing, keeps `Sink.read_only = True` and refuses
`begin_run`; it may still look (`find_run`, `as_source`, `capabilities`).

The rules, each kept by every built-in and checked by trackport.testing.conformance:

- Selection: `Source.list_runs(select)` honours `select.wants_run` (--project, --run);
  `read_run(run, select)` returns `select.filter(table)` (--classes, --attribute).
- Origin: the destination records `plan.origin` with each run and finds it again by it
  (`Sink.find_run`).  A source that reads back what trackport wrote (an export, a
  destination read back) returns the recorded origin from `Source.origin`, so
  export -> load finds the runs a direct copy made.
- Locator: `RunRef.locator` and `DestRun.locator` are private to their connector.
  `Sink.dest_ref(dest, origin)` turns what `find_run` returned into the RunRef that
  `as_source().read_run` takes (verify reads exactly that run).
- Resume and repair: `find_run` returns None (new), `DestRun(complete=False)` (partial:
  `begin_run(plan, resume)` repairs it in place or starts it again) or
  `DestRun(complete=True, version=...)`: skipped while `version` equals the source's
  `run_version`, else resumed so only what is new is added.  `commit()` sets the
  completion mark last; a crash before it leaves the run partial.
- run_version: a source whose runs may grow returns a token that changes when they do;
  the sink stores `plan.source_version` with its mark and returns it in `DestRun.version`.
- Files and bytes: the writer adds each file it stored to `plan.report.files` and its size
  to `plan.report.bytes` (a folder counts its files).
- Transformations: every change a connector makes is counted with
  `report.transformed(kind)` under a kind declared in its `capabilities.transformations`;
  what it cannot hold is `report.dropped(kind)`.  Nothing is changed or left out silently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import pyarrow as pa

from .capabilities import Capabilities
from .model import DestRun, Origin, RunRef, Selection
from .report import RunReport
from .steps import StepConverter


def probe_write(folder: Path) -> None:
    """Create and remove a file in `folder`: OSError when it takes none (tried for real:
    permission bits say nothing when running as root)."""
    import os
    import tempfile

    fd, name = tempfile.mkstemp(prefix=".trackport-probe-", dir=folder)
    os.close(fd)
    os.unlink(name)


def check_output_folder(folder: Path, shown: str, read_only: bool = False, example: str = "") -> None:
    """A destination folder: not a file, and (unless `read_only`) made if missing and taking
    files (probe_write).  UsageError otherwise."""
    from .errors import UsageError

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{shown}: {folder} is a file, not a folder; fix: point at a folder"
                         f"{' (' + example + ')' if example else ''}")
    if read_only:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe_write(folder)
    except OSError as exc:
        raise UsageError(f"{shown}: cannot write in {folder} ({exc.strerror or type(exc).__name__}); "
                         f"fix: choose a folder you can write to") from None


class FileAccess(ABC):
    """Opens the files a run's `file_value.path` cells point at."""

    @abstractmethod
    def open(self, path: str) -> BinaryIO: ...

    def local_path(self, path: str) -> Path | None:
        """A local path to the file when one exists (lets sinks upload without copying)."""
        return None

    def size(self, path: str) -> int | None:
        local = self.local_path(path)
        return local.stat().st_size if local is not None else None

    def measure(self, path: str) -> tuple[int, int]:
        """(files, bytes) a destination receives for `path`: a directory (a file_set) counts
        its files.  The one count plan, copy and verify share (docs/reports.md)."""
        local = self.local_path(path)
        if local is not None and local.is_dir():
            members = [p for p in local.rglob("*") if p.is_file()]
            return len(members), sum(p.stat().st_size for p in members)
        try:
            size = self.size(path)
        except OSError:
            size = None
        return 1, size or 0


class NoFiles(FileAccess):
    def open(self, path: str) -> BinaryIO:
        raise FileNotFoundError(path)


@dataclass
class SeriesStats:
    attribute_type: str
    count: int
    min_step: Any = None
    max_step: Any = None


@dataclass
class RunScan:
    """What the pipeline learnt about a run before writing any of it."""

    rows: int = 0
    rows_by_type: Counter = field(default_factory=Counter)
    # Single values (step is null) of run-level metadata and params: path -> (type, python value)
    values: dict[str, tuple[str, Any]] = field(default_factory=dict)
    series: dict[str, SeriesStats] = field(default_factory=dict)
    files: list[tuple[str, str, Any, str]] = field(default_factory=list)  # (attr, type, step, path)
    step_places: int = 0
    # Series points without a value: (path, type) -> count (a sink may not hold them)
    null_points: Counter = field(default_factory=Counter)
    first_timestamp: Any = None
    last_timestamp: Any = None

    def value(self, path: str, default: Any = None) -> Any:
        got = self.values.get(path)
        return default if got is None else got[1]

    @property
    def points(self) -> int:
        return sum(s.count for s in self.series.values())


@dataclass
class RunPlan:
    """Everything a sink needs to write one run."""

    ref: RunRef
    origin: Origin
    scan: RunScan
    files: FileAccess
    report: RunReport
    steps: StepConverter | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # The source's `run_version`: a sink that records it with its completion mark
    # (and returns it in `DestRun.version`) gets the run again when it changes.
    source_version: str | None = None


class Source(ABC):
    uri: str                     # canonical and free of secrets
    capabilities: Capabilities = Capabilities()

    @abstractmethod
    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        """Runs in a deterministic order, only those `select.wants_run` accepts."""

    @abstractmethod
    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.RecordBatch | pa.Table]:
        """The run's canonical rows, in bounded batches, filtered by `select.filter`.  Never
        changes a byte of the source."""

    def files(self, run: RunRef) -> FileAccess:
        return NoFiles()

    def origin(self, run: RunRef) -> Origin:
        """The run's identity for idempotency, stable across machines and paths; a source of
        runs trackport wrote returns the origin recorded with them."""
        return Origin(self.uri, run.project_id, run.run_id)

    def legacy_origins(self, run: RunRef) -> list[Origin]:
        """Origins earlier releases gave `run` (when the rule changed): a destination loaded
        then is still found by them, so a rerun neither duplicates nor reloads it."""
        return []

    def describe_run(self, run: RunRef) -> str:
        return f"{run.project_id}/{run.run_id}"

    def run_version(self, run: RunRef) -> str | None:
        """A short token that changes when the run's data grows (a training still
        writing).  A destination holding the run under another token gets it
        again, resumed, so only what is new is added.  None: runs never change."""
        return None

    def run_weight(self, run: RunRef) -> int | None:
        """How much work moving `run` is, in any unit proportional to its rows and bytes, as
        far as listing already knows it (no read): the Ray executor balances its tasks by it.
        None: unknown, every run weighs the same."""
        return None

    def account(self, run: RunRef, report: RunReport) -> None:
        """Add to the run's report what the last `read_run` of `run` transformed,
        left out or could not read (`transformed`, `dropped`, `warn`).  Called once
        per move, after the run was read in full."""

    def source_notes(self) -> list[str]:
        """What the source says about itself as a whole once the command has read it (runs it
        left out and why, how it read the store): notes of the command's report."""
        return []

    def close(self) -> None:
        pass


class RunWriter(ABC):
    @abstractmethod
    def write(self, batch: pa.Table) -> None:
        """Canonical rows (plus `dest_step` when the sink takes integer steps)."""

    @abstractmethod
    def commit(self) -> DestRun:
        """Flush, then mark the run complete in the destination (the mark last, recording the
        origin and `plan.source_version`).  Count files and bytes in `plan.report` as they go."""

    def abort(self) -> None:
        """The run failed: release what is open; the run stays partial (no mark) for the repair."""


class Sink(ABC):
    uri: str                     # canonical and free of secrets
    capabilities: Capabilities = Capabilities()
    read_only: bool = False      # opened by plan / verify: create nothing, write nothing

    @abstractmethod
    def find_run(self, origin: Origin) -> DestRun | None:
        """The destination run loaded from `origin`, asked of the destination itself.  Should
        the destination hold more than one (writers racing, a deleted run restored), the one
        to use, with the others' ids in `DestRun.duplicates`."""

    @abstractmethod
    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        """A writer for one run.  `resume` is what `find_run` returned when the run is partial
        or its version is older: repair it in place (keeping what is there) or start it again;
        never create a second run for the origin.  Raise RunError when `read_only`."""

    def claim_dir(self) -> Path | None:
        """Where the per-origin claims of this destination live (core/claims.py): a folder
        beside a local destination, for every process on the machine; by default one keyed by
        the destination URI and server in the user's temporary directory.  None: take no claims."""
        from .claims import host_lock_dir

        server = self.server()
        return host_lock_dir(f"{self.uri}@{server}" if server else self.uri)

    def server(self) -> str:
        """The server this sink writes to when the URI does not name it (set by the
        environment, e.g. WANDB_BASE_URL), "" when the URI says it all: two destinations with
        one URI on different servers are different destinations."""
        return ""

    def forget(self, origin: Origin) -> None:
        """Another process wrote this origin's run since this sink last looked: drop what is
        cached about it, so the next `find_run` asks the destination."""

    def preflight(self, read_only: bool = False) -> None:
        """Check once, before any run moves, that the destination is there, is the right kind
        and (unless `read_only`: plan, verify) takes writes; raise UsageError naming the fix.
        Cheap: at most one request.  A transient failure (timeout, 5xx) is not a verdict:
        log it and return, the runs' bounded retries decide."""

    def expected_view(self, table: pa.Table) -> pa.Table:
        """A source table as this sink gives it back, after the transformations it declares
        that cannot be undone on reading (verify compares the source through this)."""
        return table

    def as_source(self) -> Source:
        """Read back what this sink wrote (for verify)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be read back")

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        """The reference `as_source()` reads a destination run by."""
        return RunRef(origin.project_id, origin.run_id, dest.locator)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        """Lines for `plan` about this run; count predicted transformations in plan.report."""
        return []

    def close(self) -> None:
        pass


@dataclass
class Inspection:
    """What `trackport inspect LOCATION` shows.  A connector whose spec says `inspect=True`
    defines `inspect(parsed, options, select) -> Inspection` beside `open_source`:
    `summary` is the `--json` output, `render(summary)` draws it on the terminal, and
    `damaged` (something unreadable or not what was recorded) makes the command exit 1."""

    summary: dict[str, Any]
    damaged: bool
    render: Callable[[dict[str, Any]], None]


def find_loaded(sink: Sink, source: Source, ref: RunRef, origin: Origin) -> DestRun | None:
    """The destination run loaded from `ref`: by its origin, else by an origin an earlier
    release gave it (`Source.legacy_origins`)."""
    found = sink.find_run(origin)
    if found is None:
        for legacy in source.legacy_origins(ref):
            found = sink.find_run(legacy)
            if found is not None:
                break
    return found
