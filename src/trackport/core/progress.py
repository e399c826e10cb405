"""What a command reports while it works: the Progress interface the pipeline calls, rich bars
on stderr for the CLI (only when stderr is a terminal), and ProgressEvents for API callers."""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass
from typing import Callable


class Progress:
    """What the pipeline tells the outside world (this base class: nothing).  Called from the threads moving runs, so an implementation must be thread-safe."""

    def start(self, total_runs: int) -> None: ...
    def run_started(self, name: str) -> None: ...
    def points(self, n: int) -> None: ...
    def run_done(self, name: str, status: str) -> None: ...
    def finish(self) -> None: ...


class RichProgress(Progress):
    """Two bars on stderr: runs (done of total, elapsed, ETA) and rows (values and points moved
    so far, and the rate over the last 10 seconds)."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        class PointRate(TransferSpeedColumn):   # rich's speed column, in rows instead of bytes
            def render(self, task):
                from rich.text import Text

                speed = task.finished_speed or task.speed
                shown = task.fields.get("rate") and speed is not None
                return Text(f"{speed:,.0f} rows/s" if shown else "", style="progress.data.speed")

        self.bar = Bar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), TimeRemainingColumn(),
                       PointRate(), console=Console(stderr=True), transient=False, speed_estimate_period=10)
        self.task = None
        self.points_task = None
        self._lock = threading.Lock()

    def start(self, total_runs: int) -> None:
        for task in (self.task, self.points_task):   # a new round of `sync`: fresh bars
            if task is not None:
                self.bar.remove_task(task)
        self.bar.start()
        self.task = self.bar.add_task("runs", total=total_runs, eta="eta", rate=False)
        self.points_task = self.bar.add_task("rows", total=None, eta="", rate=True)

    def points(self, n: int) -> None:
        with self._lock:
            self.bar.advance(self.points_task, n)

    def run_started(self, name: str) -> None:
        self.bar.update(self.task, description=f"runs ({name[-40:]})")

    def run_done(self, name: str, status: str) -> None:
        self.bar.advance(self.task)

    def finish(self) -> None:
        if self.task is not None:
            self.bar.update(self.task, description="runs")
        self.bar.stop()


class PeriodicProgress(Progress):
    """Where no bar can be drawn (stderr is a file or a CI log; `--json`): a progress record
    every `every` seconds and one at the end, through `write` (a line of text, or a JSON object
    with --json), and to the `trackport.progress` logger (the --log-file)."""

    def __init__(self, write: Callable[[str], None], as_json: bool, every: float = 10.0):
        import time

        self._clock = time.monotonic
        self.write = write
        self.as_json = as_json
        self.every = every
        self._lock = threading.Lock()
        self.total_runs = 0
        self.runs_done = 0
        self.rows_done = 0
        self.started = self.last = self._clock()

    def start(self, total_runs: int) -> None:
        with self._lock:            # (again in each round of `sync`)
            self.total_runs = total_runs
            self.runs_done = self.rows_done = 0
            self.started = self.last = self._clock()

    def points(self, n: int) -> None:
        with self._lock:
            self.rows_done += n
        self._maybe()

    def run_done(self, name: str, status: str) -> None:
        with self._lock:
            self.runs_done += 1
        self._maybe()

    def finish(self) -> None:
        self._emit(final=True)

    def _maybe(self) -> None:
        if self._clock() - self.last >= self.every:
            self._emit(final=False)

    def _emit(self, final: bool) -> None:
        import json

        with self._lock:
            now = self._clock()
            if not final and now - self.last < self.every:
                return
            self.last = now
            elapsed = max(now - self.started, 1e-9)
            rate = self.rows_done / elapsed
            left = self.total_runs - self.runs_done
            eta = round(elapsed / self.runs_done * left, 1) if self.runs_done and left > 0 else (0.0 if not left else None)
            record = {"progress": "finished" if final else "running", "runs_done": self.runs_done,
                      "runs_total": self.total_runs, "rows": self.rows_done,
                      "rows_per_s": round(rate, 1), "elapsed_s": round(elapsed, 1), "eta_s": eta}
        text = (f"progress: {record['runs_done']}/{record['runs_total']} runs, {record['rows']:,} rows "
                f"({record['rows_per_s']:,.0f}/s), {record['elapsed_s']:.0f} s"
                + (f", eta {eta:.0f} s" if eta is not None and not final else ""))
        logging.getLogger("trackport.progress").info(text)
        try:
            self.write(json.dumps(record) if self.as_json else text)
        except Exception:
            pass


def make_progress(enabled: bool, as_json: bool = False) -> Progress:
    """Bars on a terminal; periodic records where stderr is not one, or with --json."""
    if not enabled:
        return Progress()
    if sys.stderr.isatty() and not as_json:
        return RichProgress()

    def write(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    return PeriodicProgress(write, as_json)


@dataclass(frozen=True)
class ProgressEvent:
    """What a command reports while it works, for a caller drawing or logging its own progress.

    `kind`: "started" (`total_runs` known), "run_started" (`run`), "points" (`points` rows
    just written or read), "run_finished" (`run`, `status`) or "finished"."""

    kind: str
    run: str | None = None
    status: str | None = None
    points: int = 0
    total_runs: int | None = None


class CallbackProgress(Progress):
    """Progress as ProgressEvents handed to `callback`, one call at a time (the threads moving
    runs take turns; a slow callback slows them).  An exception in the callback is logged, never
    let into the run."""

    def __init__(self, callback: Callable[[ProgressEvent], None]):
        self.callback = callback
        self._lock = threading.Lock()

    def _emit(self, event: ProgressEvent) -> None:
        with self._lock:
            try:
                self.callback(event)
            except Exception:
                logging.getLogger("trackport").warning("the progress callback failed", exc_info=True)

    def start(self, total_runs: int) -> None:
        self._emit(ProgressEvent("started", total_runs=total_runs))

    def run_started(self, name: str) -> None:
        self._emit(ProgressEvent("run_started", run=name))

    def points(self, n: int) -> None:
        self._emit(ProgressEvent("points", points=n))

    def run_done(self, name: str, status: str) -> None:
        self._emit(ProgressEvent("run_finished", run=name, status=status))

    def finish(self) -> None:
        self._emit(ProgressEvent("finished"))
