"""trackport's Python API: every command as a function (docs/python-api.md).

Each function takes the URIs and options the CLI takes (a connector's own options as keyword
arguments, named as in `trackport connectors`, e.g. ``mlflow_experiment="x"``), honours the
same environment variables, prints nothing, and returns the report object the CLI's ``--json``
serialises (`CommandReport.to_json()`).  The CLI is a thin layer over these functions.

Errors: `UsageError` (bad URI, option or destination; nothing was attempted) is distinct from
`RunsFailedError` (the command ran; its `.report` says which runs failed and what moved).
`Cancelled` is raised when the caller sets `cancel` (a `threading.Event`) from another thread.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:   # the heavy modules load when a command runs, not on `import trackport`
    from .core.progress import Progress, ProgressEvent
    from .core.report import CommandReport

DEFAULT_CLASSES = ("params", "metrics", "series", "files", "artifacts")
ProgressArg = "Callable[[ProgressEvent], None] | Progress | None"


def default_destination() -> str:
    """Where copy and load write when no destination is given: a local MLflow store."""
    return f"mlflow:sqlite:///{Path.cwd() / 'mlflow.db'}"


@dataclass
class _Command:
    """What every command checks before any work, from the arguments the API and CLI share."""

    name: str
    projects: Iterable[str] = ()
    run: str | None = None
    attribute: str | None = None
    classes: Iterable[str] | str = DEFAULT_CLASSES
    workers: int = 4
    step_multiplier: int | None = None
    allow_drops: bool = False
    retry_max_attempts: int = 8
    retry_max_seconds: float = 600.0
    request_timeout: float | None = None
    progress: Any = None
    cancel: threading.Event | None = None
    connector_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .core import retry
        from .core.errors import UsageError
        from .core.model import Selection
        from .core.options import Options
        from .core.schema import CLASSES

        classes = self.classes.split(",") if isinstance(self.classes, str) else list(self.classes)
        chosen = frozenset(c.strip() for c in classes if c.strip())
        unknown = chosen - set(CLASSES)
        if unknown or not chosen:
            raise UsageError(f"unknown classes (--classes) {', '.join(sorted(unknown)) or '(empty)'}; "
                             f"choose from {', '.join(CLASSES)}")
        try:
            run_re = re.compile(self.run) if self.run else None
            attr_re = re.compile(self.attribute) if self.attribute else None
        except re.error as exc:
            raise UsageError(f"bad regex: {exc}") from None
        if isinstance(self.projects, str):
            self.projects = (self.projects,)
        self.select = Selection(tuple(self.projects or ()), run_re, attr_re, chosen)
        if self.step_multiplier is not None and (isinstance(self.step_multiplier, bool)
                                                 or not isinstance(self.step_multiplier, int)
                                                 or self.step_multiplier < 1):
            raise UsageError(f"step_multiplier must be a whole number of at least 1, not {self.step_multiplier!r}")
        if self.retry_max_attempts < 1 or self.retry_max_seconds < 0:
            raise UsageError("retry_max_attempts must be at least 1 and retry_max_seconds at least 0")
        if self.request_timeout is not None and self.request_timeout < 0.1:
            raise UsageError("request_timeout must be at least 0.1 seconds")
        self.options = Options.build(self.connector_options, workers=self.workers, allow_drops=self.allow_drops)
        # connectors' request retries and timeouts (process-wide: the last command's settings)
        retry.configure(self.retry_max_attempts, self.retry_max_seconds, self.request_timeout)

    def progress_sink(self):
        from .core.progress import CallbackProgress, Progress

        if self.progress is None:
            return Progress()
        if isinstance(self.progress, Progress):
            return self.progress
        if callable(self.progress):
            return CallbackProgress(self.progress)
        from .core.errors import UsageError

        raise UsageError("progress takes a callable receiving ProgressEvent objects (or a Progress)")

    def pipeline_options(self):
        from .core.pipeline import PipelineOptions

        return PipelineOptions(select=self.select, workers=self.workers, step_multiplier=self.step_multiplier,
                               allow_drops=self.allow_drops, max_attempts=self.retry_max_attempts,
                               retry_budget_s=self.retry_max_seconds, connector_options=self.options,
                               cancel=self.cancel)

    def report(self, source, sink) -> "CommandReport":
        from .core.registry import redact
        from .core.report import CommandReport

        return CommandReport(self.name, redact(source.uri), redact(sink.uri), allow_drops=self.allow_drops)


def _source_notes(source, report) -> None:
    """What a source says about itself as a whole (runs it left out, how it read the store)."""
    report.notes.extend(n for n in source.source_notes() if n not in report.notes)


def _finish(report, raise_on_failure: bool):
    from .core.errors import RunsFailedError

    if raise_on_failure and report.exit_code != 0:
        raise RunsFailedError(report)
    return report


def _cancellable(run: Callable[[], Any], report) -> Any:
    from .core.errors import Cancelled

    try:
        return run()
    except Cancelled as exc:
        exc.report = report
        raise


EXECUTORS = ("local", "ray")


def _move(command: _Command, source_uri: str, destination_uri: str, state_dir: Path | str | None,
          raise_on_failure: bool, executor: str = "local", ray_address: str | None = None) -> "CommandReport":
    from .core.connector import check_output_folder
    from .core.ledger import Ledger
    from .core.pipeline import Pipeline
    from .core.registry import open_sink, open_source
    from .core.retry import forget_failures

    forget_failures()
    if executor not in EXECUTORS:
        from .core.errors import UsageError

        raise UsageError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    ledger = None
    if state_dir is not None:
        state_dir = Path(state_dir).expanduser()
        check_output_folder(state_dir, "state_dir (--state-dir)", example=".trackport")
    source = open_source(source_uri, command.options)
    try:
        sink = open_sink(destination_uri, command.options)
        report = command.report(source, sink)
        if state_dir is not None:
            ledger = Ledger(state_dir / "ledger.sqlite")
        options = command.pipeline_options()
        options.executor, options.ray_address = executor, ray_address
        options.uris = (source_uri, destination_uri)
        pipeline = Pipeline(source, sink, options, report, command.progress_sink(), ledger)
        _cancellable(pipeline.run, report)
        _source_notes(source, report)
    finally:
        if ledger is not None:
            ledger.close()
        source.close()
    return _finish(report, raise_on_failure)


def copy(source: str, destination: str | None = None, *, projects: Iterable[str] = (), run: str | None = None,
         attribute: str | None = None, classes: Iterable[str] | str = DEFAULT_CLASSES, workers: int = 4,
         step_multiplier: int | None = None, allow_drops: bool = False,
         state_dir: Path | str | None = ".trackport", retry_max_attempts: int = 8,
         retry_max_seconds: float = 600.0, request_timeout: float | None = None,
         progress: ProgressArg = None, cancel: threading.Event | None = None,
         raise_on_failure: bool = True, executor: str = "local", ray_address: str | None = None,
         **options: Any) -> "CommandReport":
    """Stream runs from `source` to `destination` (default: a local MLflow store in the cwd).

    `projects`, `run` (regex on run ids), `attribute` (regex on attribute paths), `classes`:
    what to move, as --project, --run, --attribute, --classes.  `state_dir`: where the local
    ledger lives (None: keep none).  `progress`: a callable receiving `ProgressEvent`s.
    `cancel`: a threading.Event; once set, the command stops and raises `Cancelled` (rerun to
    resume).  `executor="ray"`: runs moved by Ray tasks on the cluster at `ray_address` (or
    RAY_ADDRESS; none: a local Ray instance), docs/scale-out.md.  `**options`: connectors' own
    options by name.  Returns the report; raises `RunsFailedError` (with `.report`) when its
    exit code is 1, unless `raise_on_failure=False`.
    """
    command = _Command("copy", projects, run, attribute, classes, workers, step_multiplier, allow_drops,
                       retry_max_attempts, retry_max_seconds, request_timeout, progress, cancel, options)
    return _move(command, source, destination or default_destination(), state_dir, raise_on_failure,
                 executor, ray_address)


def export(source: str, directory: str | Path, **kwargs: Any) -> "CommandReport":
    """Export runs from `source` into a parquet export at `directory`; arguments as `copy`."""
    directory = str(directory)
    destination = directory if directory.startswith("parquet:") else f"parquet:{directory}"
    command, rest = _split("export", kwargs)
    return _move(command, source, destination, rest.get("state_dir", ".trackport"),
                 rest.get("raise_on_failure", True), rest.get("executor", "local"), rest.get("ray_address"))


def load(directory: str | Path, destination: str | None = None, **kwargs: Any) -> "CommandReport":
    """Load a parquet export at `directory` into `destination` (default: local MLflow store);
    arguments as `copy`."""
    directory = str(directory)
    source = directory if directory.startswith("parquet:") else f"parquet:{directory}"
    command, rest = _split("load", kwargs)
    return _move(command, source, destination or default_destination(), rest.get("state_dir", ".trackport"),
                 rest.get("raise_on_failure", True), rest.get("executor", "local"), rest.get("ray_address"))


@dataclass
class SyncReport:
    """What `sync` did: how many rounds ran, the runs each status took summed over them, the
    points moved, the rounds that failed (with their one-line reasons, the last 20), and the
    last round's full report.  Fixed in size however many rounds ran."""

    rounds: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    points: int = 0
    failed_rounds: int = 0
    round_errors: list[str] = field(default_factory=list)
    last: "CommandReport | None" = None
    last_error: str | None = None     # the last round's, when it could not run

    @property
    def exit_code(self) -> int:
        """The last round's: 1 when it could not run or a run of it failed, else 0."""
        if self.last_error is not None:
            return 1
        return self.last.exit_code if self.last is not None else 0

    def add(self, report: "CommandReport") -> None:
        self.rounds += 1
        for status, n in report.totals.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.points += report.totals.points
        self.last = report
        self.last_error = None

    def failed(self, message: str) -> None:
        self.rounds += 1
        self.failed_rounds += 1
        self.round_errors = [*self.round_errors[-19:], message]
        self.last_error = message

    def to_json(self) -> dict:
        return {"command": "sync", "rounds": self.rounds, "statuses": dict(sorted(self.statuses.items())),
                "points": self.points, "failed_rounds": self.failed_rounds, "round_errors": self.round_errors,
                "exit_code": self.exit_code, "last_round": self.last.to_json() if self.last is not None else None}


def sync(source: str, destination: str | None = None, *, every: float = 60.0, rounds: int | None = None,
         on_round: Callable[[int, "CommandReport | None", str | None], None] | None = None,
         **kwargs: Any) -> SyncReport:
    """Keep `destination` up to date with `source`: a `copy` every `every` seconds (from the
    start of one round to the start of the next), `rounds` times (None: until `cancel` is set).

    Each round copies what is new: runs the destination lacks, and runs whose source
    `run_version` changed since the destination recorded it (refreshed in place, nothing
    duplicated).  A round that cannot reach the destination is recorded and the next round
    tries again; a usage error in the first round (bad URI or option) is raised at once.
    `on_round(number, report, error)` is called after every round.  Arguments as `copy`
    (`raise_on_failure` does not apply: a failed run is retried by the next round)."""
    import logging
    import time

    from .core.errors import Cancelled, UsageError

    if every < 0 or (rounds is not None and rounds < 1):
        raise UsageError("sync: every must be at least 0 seconds and rounds at least 1")
    command, own = _split("sync", kwargs)
    state_dir = own.get("state_dir", ".trackport")
    destination = destination or default_destination()
    cancel = command.cancel or threading.Event()
    command.cancel = cancel
    log = logging.getLogger("trackport.sync")
    done = SyncReport()
    number = 0
    while rounds is None or number < rounds:
        number += 1
        started = time.monotonic()
        error = report = None
        try:
            report = _move(command, source, destination, state_dir, raise_on_failure=False)
            done.add(report)
        except Cancelled:
            raise
        except UsageError as exc:
            if done.rounds == 0:
                raise                    # nothing ever worked: a bad URI or option, not an outage
            error = f"round {number}: {exc}"
        except Exception as exc:         # the destination went away mid-round: the next round resumes
            error = f"round {number}: {type(exc).__name__}: {exc}"
        if error is not None:
            from .core.logs import scrub

            error = scrub(error)
            done.failed(error)
            log.warning("%s; trying again in %.0f s", error, every)
        if on_round is not None:
            on_round(number, report, error)
        if rounds is not None and number >= rounds:
            break
        if cancel.wait(max(0.0, every - (time.monotonic() - started))):
            break                        # stopped between rounds: nothing is half done
    return done


def plan(source: str, destination: str | None = None, **kwargs: Any) -> "CommandReport":
    """What `copy` would do: runs, points, files, bytes, and every transformation or drop.
    Writes nothing.  Returns the report whatever it found (its `exit_code` is what `copy`
    would end with); arguments as `copy` (`state_dir` is not used)."""
    from .core.pipeline import Pipeline

    command, _ = _split("plan", kwargs)
    src, sink, report = _open_read_only(command, source, destination)
    report.extra["destination_capabilities"] = sink.capabilities.describe()
    try:
        pipeline = Pipeline(src, sink, command.pipeline_options(), report, command.progress_sink())
        _cancellable(lambda: pipeline.run(plan_only=True), report)
        _source_notes(src, report)
    finally:
        src.close()
        sink.close()
    return report


def verify(source: str, destination: str | None = None, *, html: str | Path | None = None,
           copy_report: str | Path | dict | None = None, **kwargs: Any) -> "CommandReport":
    """Compare every run of `source` with its copy in `destination`.  Returns the report
    whatever it found: each run's status (verified, different, missing, failed) and its
    `differences` (`Difference` objects); `exit_code` 1 when any run is not verified.
    Parquet exports on either side are checked against their manifests' checksums.
    `html`: also write the visual report there (see `report`)."""
    from .core.verify import verify as run_verify

    kwargs.setdefault("check", True)
    command, _ = _split("verify", kwargs)
    html_path = _html_target(html)
    copied = _copy_report(copy_report)
    drawings = None
    if html_path is not None:
        from .core.fidelity import Drawings

        drawings = Drawings()
    src, sink, report = _open_read_only(command, source, destination)
    try:
        _cancellable(lambda: run_verify(src, sink, command.select, report, workers=command.workers,
                                        progress=command.progress_sink(), cancel=command.cancel,
                                        drawings=drawings), report)
        _source_notes(src, report)
        if html_path is not None:
            from .core.html_report import write_html

            write_html(html_path, report, drawings, dict(sink.capabilities.transformations), copied)
    finally:
        src.close()
        sink.close()
    return report


def report(source: str, destination: str | None = None, *, html: str | Path,
           copy_report: str | Path | dict | None = None, **kwargs: Any) -> "CommandReport":
    """`verify`, and one self-contained HTML file at `html` showing it: the summary (with the
    counts of a `copy --report` JSON given as `copy_report`), and per run each float series
    drawn source over destination, values side by side and files by digest.  Returns the
    verify report."""
    return verify(source, destination, html=html, copy_report=copy_report, **kwargs)


def _html_target(html: str | Path | None) -> Path | None:
    """The --html file, checked before any work (its folder exists and can be written)."""
    from .core.connector import probe_write
    from .core.errors import UsageError

    if html is None:
        return None
    path = Path(html).expanduser()
    if path.is_dir() or not path.parent.is_dir():
        raise UsageError(f"--html {path}: give a file in an existing folder, e.g. --html report.html")
    try:
        probe_write(path.parent)
    except OSError as exc:
        raise UsageError(f"--html {path} cannot be written ({exc.strerror or type(exc).__name__}); "
                         f"fix: give a path you can write to") from None
    return path


def _copy_report(given: str | Path | dict | None) -> dict | None:
    from .core.errors import UsageError

    if given is None or isinstance(given, dict):
        return given
    try:
        return json.loads(Path(given).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--copy-report {given}: not a report `copy --report` wrote ({exc}); "
                         f"fix: give the JSON file of `trackport copy ... --report FILE`") from None


@dataclass
class InspectReport:
    """What `inspect` found at a location (a parquet export): per project, its runs, attribute
    types, steps, rows and bytes on disk, and what it could not read.  `to_json()` is what
    `trackport inspect --json` prints; `damaged`: something unreadable or not as recorded."""

    summary: dict
    damaged: bool
    renderer: Callable[[dict], None] | None = None

    @property
    def projects(self) -> list[dict]:
        return self.summary.get("projects", [])

    @property
    def exit_code(self) -> int:
        return 1 if self.damaged else 0

    def to_json(self) -> dict:
        return self.summary

    def render(self) -> None:
        """Draw it on the terminal as `trackport inspect` does."""
        if self.renderer is not None:
            self.renderer(self.summary)


def inspect(location: str | Path, *, projects: Iterable[str] = (), run: str | None = None,
            check: bool = False) -> InspectReport:
    """Summarise a location whose connector offers a summary (a parquet export: `DIR` or
    `parquet:DIR`).  `check`: also compare each run's parts with the checksum in its run
    manifest (row counts, part lists and part numbers are always checked)."""
    from .core.errors import UsageError
    from .core.model import Selection
    from .core.registry import inspect_location

    if isinstance(projects, str):
        projects = (projects,)
    try:
        run_re = re.compile(run) if run else None
    except re.error as exc:
        raise UsageError(f"bad regex: {exc}") from None
    found = inspect_location(str(location), {"check": check}, Selection(tuple(projects), run_re))
    return InspectReport(found.summary, found.damaged, found.render)


_SHARED = ("projects", "run", "attribute", "classes", "workers", "step_multiplier", "allow_drops",
           "retry_max_attempts", "retry_max_seconds", "request_timeout", "progress", "cancel")
_OWN = ("state_dir", "raise_on_failure", "executor", "ray_address")


def _split(name: str, kwargs: dict) -> tuple[_Command, dict]:
    """The shared arguments of a command, its own ones, and the rest as connector options."""
    shared = {k: kwargs.pop(k) for k in _SHARED if k in kwargs}
    own = {k: kwargs.pop(k) for k in _OWN if k in kwargs}
    return _Command(name, connector_options=kwargs, **shared), own


def _open_read_only(command: _Command, source_uri: str, destination_uri: str | None):
    from .core.registry import open_sink, open_source

    source = open_source(source_uri, command.options)
    try:
        sink = open_sink(destination_uri or default_destination(), command.options, read_only=True)
    except BaseException:
        source.close()
        raise
    return source, sink, command.report(source, sink)
