"""The contracts every connector implements.

A connector lives in `trackport/connectors/<scheme>/` and exposes
`open_source(uri, options)` and/or `open_sink(uri, options)` from its package
`__init__`, importing its tracker SDK only inside those calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa

from .capabilities import Capabilities
from .model import DestRun, Origin, RunRef, Selection
from .report import RunReport
from .steps import StepConverter


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
        """Runs in a deterministic order."""

    @abstractmethod
    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.RecordBatch | pa.Table]:
        """The run's canonical rows, in bounded batches."""

    def files(self, run: RunRef) -> FileAccess:
        return NoFiles()

    def origin(self, run: RunRef) -> Origin:
        return Origin(self.uri, run.project_id, run.run_id)

    def describe_run(self, run: RunRef) -> str:
        return f"{run.project_id}/{run.run_id}"

    def run_version(self, run: RunRef) -> str | None:
        """A short token that changes when the run's data grows (a training still
        writing).  A destination holding the run under another token gets it
        again, resumed, so only what is new is added.  None: runs never change."""
        return None

    def account(self, run: RunRef, report: RunReport) -> None:
        """Add to the run's report what the last `read_run` of `run` transformed,
        left out or could not read (`transformed`, `dropped`, `warn`).  Called once
        per move, after the run was read in full."""

    def close(self) -> None:
        pass


class RunWriter(ABC):
    @abstractmethod
    def write(self, batch: pa.Table) -> None:
        """Canonical rows (plus `dest_step` when the sink takes integer steps)."""

    @abstractmethod
    def commit(self) -> DestRun:
        """Flush, then mark the run complete in the destination."""

    def abort(self) -> None:
        pass


class Sink(ABC):
    uri: str
    capabilities: Capabilities = Capabilities()

    @abstractmethod
    def find_run(self, origin: Origin) -> DestRun | None:
        """The destination run loaded from `origin`, asked of the destination itself."""

    @abstractmethod
    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter: ...

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
