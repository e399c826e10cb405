"""Machine-readable reports: what each command did, run by run.

The exit code is computed from the report and nothing else:
0 everything requested moved; 1 a run failed or data was dropped without the
user allowing it; 2 usage errors (raised before any report exists).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .logs import scrub

# Run outcomes
MOVED = "moved"            # written now, complete
REPAIRED = "repaired"      # found partial in the destination, finished now
SKIPPED = "skipped"        # already complete in the destination
FAILED = "failed"
PLANNED = "planned"        # plan only
VERIFIED = "verified"      # verify: equal after declared transformations
DIFFERENT = "different"    # verify: undeclared difference
MISSING = "missing"        # verify: not in the destination (or not complete)
CANCELLED = "cancelled"    # the caller cancelled the command while this run was being moved

_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Difference:
    """One undeclared difference `verify` found between a source run and its copy.

    `kind`: "value", "series", "file" or "run"; `path`: the attribute path (a file's path
    `@step` when stepped; the run for "run"); `aspect`: what differs ("missing in destination",
    "not in source", "value", "count", "fingerprint", "point timestamps", "size/digest",
    "unreadable in source", "duplicates", ...); `source` / `destination`: the two sides where
    they have a value."""

    kind: str
    path: str
    aspect: str
    source: Any = None
    destination: Any = None
    text: str | None = None

    @property
    def message(self) -> str:
        if self.text:
            return self.text
        where = f"{self.kind} {self.path}"
        if self.aspect in ("missing in destination", "not in source"):
            return f"{where}: {self.aspect}"
        if self.aspect.startswith("unreadable"):
            return f"{where}: {self.aspect} ({self.source if self.source is not None else self.destination})"
        if self.aspect == "point timestamps":
            return f"{where}: point timestamps differ"
        if self.aspect == "value":
            return f"{where}: source {self.source} != destination {self.destination}"
        return f"{where}: {self.aspect} {self.source} != {self.destination}"

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path, "aspect": self.aspect, "source": self.source,
                "destination": self.destination, "message": self.message}


@dataclass(frozen=True)
class Totals:
    """A command's totals, as `--json` prints them under "totals".  Points, params, files and
    bytes count what moved (or was planned, verified): a failed run's own record keeps what it
    holds, but none of it reached the destination."""

    runs: int
    statuses: dict[str, int]
    points: int
    params: int
    files: int
    bytes: int
    transformations: dict[str, int]
    drops: dict[str, int]
    warnings: int

    def to_json(self) -> dict:
        return {"runs": self.runs, **{k: self.statuses[k] for k in sorted(self.statuses)},
                "points": self.points, "params": self.params, "files": self.files, "bytes": self.bytes,
                "transformations": self.transformations, "drops": self.drops, "warnings": self.warnings}


@dataclass
class RunReport:
    project_id: str
    run_id: str
    status: str = ""
    dest_id: str | None = None
    rows: int = 0
    points: int = 0
    params: int = 0
    files: int = 0
    bytes: int = 0
    transformations: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)   # read-side problems that lost nothing movable
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        # An error text may quote an SDK's exception, which may quote a credential.
        if name == "error" and value:
            value = scrub(str(value))
        super().__setattr__(name, value)

    def transformed(self, kind: str, count: int = 1, example: str | None = None) -> None:
        with self._lock:
            self.transformations[kind] += count
            self._example(kind, example)

    def dropped(self, kind: str, count: int = 1, example: str | None = None) -> None:
        with self._lock:
            self.drops[kind] += count
            self._example(kind, example)

    def restart(self) -> None:
        """Forget the counts of an attempt that a transient error cut short: the retry counts again."""
        with self._lock:
            self.rows = self.points = self.params = self.files = self.bytes = 0
            self.transformations.clear()
            self.drops.clear()
            self.examples.clear()
            self.warnings.clear()
            self.details.clear()

    def warn(self, message: str) -> None:
        """Something the user must see that lost no movable data (a torn file read up to the tear)."""
        message = scrub(message)
        with self._lock:
            if message not in self.warnings:
                self.warnings.append(message)

    def _example(self, kind: str, example: str | None) -> None:
        if example is None:
            return
        seen = self.examples.setdefault(kind, [])
        if len(seen) < _MAX_EXAMPLES and example not in seen:
            seen.append(example)

    @property
    def differences(self) -> list[Difference]:
        """verify: the undeclared differences found (the first 20 of them)."""
        return list(self.details.get("differences") or [])

    def to_json(self) -> dict:
        out = {
            "project_id": self.project_id,
            "run_id": self.run_id,
            "status": self.status,
            "dest_id": self.dest_id,
            "rows": self.rows,
            "points": self.points,
            "params": self.params,
            "files": self.files,
            "bytes": self.bytes,
            "transformations": dict(self.transformations),
            "drops": dict(self.drops),
            "examples": self.examples,
            "warnings": self.warnings,
            "error": self.error,
        }
        if self.details:
            out["details"] = {k: ([d.to_json() if isinstance(d, Difference) else d for d in v]
                                  if k == "differences" else v) for k, v in self.details.items()}
        return out


@dataclass
class CommandReport:
    command: str
    source: str | None = None
    destination: str | None = None
    allow_drops: bool = False
    runs: list[RunReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    # A filter the user gave that selected nothing (--project nope): a note each, and exit 1.
    unmatched: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, run: RunReport) -> RunReport:
        with self._lock:
            self.runs.append(run)
        return run

    def count(self, status: str) -> int:
        return sum(1 for r in self.runs if r.status == status)

    @property
    def drops(self) -> Counter:
        total: Counter = Counter()
        for r in self.runs:
            total.update(r.drops)
        return total

    @property
    def transformations(self) -> Counter:
        total: Counter = Counter()
        for r in self.runs:
            total.update(r.transformations)
        return total

    @property
    def exit_code(self) -> int:
        if any(r.status in (FAILED, DIFFERENT, MISSING, CANCELLED) for r in self.runs):
            return 1
        if not self.allow_drops and any(r.drops for r in self.runs):
            return 1
        if self.unmatched:
            return 1
        return 0

    def selected_nothing(self, message: str) -> None:
        with self._lock:
            if message not in self.unmatched:
                self.unmatched.append(message)

    @property
    def totals(self) -> Totals:
        done = [r for r in self.runs if r.status not in (FAILED, MISSING, CANCELLED)]
        return Totals(
            runs=len(self.runs),
            statuses=dict(Counter(r.status for r in self.runs)),
            points=sum(r.points for r in done),
            params=sum(r.params for r in done),
            files=sum(r.files for r in done),
            bytes=sum(r.bytes for r in done),
            transformations=dict(self.transformations),
            drops=dict(self.drops),
            warnings=sum(len(r.warnings) for r in self.runs),
        )

    @property
    def all_notes(self) -> list[str]:
        """The filters that selected nothing, then the command's other notes."""
        return [scrub(n) for n in (*self.unmatched, *self.notes)]

    def to_json(self) -> dict:
        return {
            "command": self.command,
            "source": self.source,
            "destination": self.destination,
            "exit_code": self.exit_code,
            "totals": self.totals.to_json(),
            "notes": self.all_notes,
            **self.extra,
            "runs": [r.to_json() for r in sorted(self.runs, key=lambda r: (r.project_id, r.run_id))],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=str)
