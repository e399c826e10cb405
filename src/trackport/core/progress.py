"""Progress bars (rich) on stderr, only when stderr is a terminal."""

from __future__ import annotations

import sys
import threading

from .pipeline import Progress


class RichProgress(Progress):
    def __init__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        self.bar = Bar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[points]:,} rows"), TimeElapsedColumn(), TextColumn("eta"),
                       TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.task = None
        self._points = 0
        self._lock = threading.Lock()

    def start(self, total_runs: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("runs", total=total_runs, points=0)

    def points(self, n: int) -> None:
        with self._lock:
            self._points += n
            self.bar.update(self.task, points=self._points)

    def run_started(self, name: str) -> None:
        self.bar.update(self.task, description=f"runs ({name[-40:]})")

    def run_done(self, name: str, status: str) -> None:
        self.bar.advance(self.task)

    def finish(self) -> None:
        if self.task is not None:
            self.bar.update(self.task, description="runs")
        self.bar.stop()


def make_progress(enabled: bool) -> Progress:
    if enabled and sys.stderr.isatty():
        return RichProgress()
    return Progress()
