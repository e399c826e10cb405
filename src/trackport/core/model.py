"""Plain data passed between sources, the pipeline and sinks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .schema import ALL_TYPES, ARTIFACTS_CLASS, CLASSES


@dataclass(frozen=True)
class RunRef:
    """One run of a source; `locator` is private to the connector that made it."""

    project_id: str
    run_id: str
    locator: Any = field(default=None, compare=False, hash=False)


@dataclass(frozen=True)
class Origin:
    """Where a destination run came from: what makes a rerun find it again."""

    uri: str
    project_id: str
    run_id: str


@dataclass
class DestRun:
    """A run as found in (or written to) a destination."""

    id: str
    complete: bool
    url: str | None = None
    locator: Any = None
    version: str | None = None   # the source's `run_version` recorded with the completion mark
    duplicates: tuple[str, ...] = ()   # other destination runs loaded from the same origin
    damage: str | None = None    # why a run marked complete is not (its parts differ from its mark)


@dataclass
class Selection:
    """What to move: filters shared by every command."""

    projects: tuple[str, ...] = ()
    run_pattern: re.Pattern | None = None
    attribute_pattern: re.Pattern | None = None
    classes: frozenset[str] = frozenset(CLASSES)

    def wants_project(self, project_id: str) -> bool:
        if self.projects and project_id not in self.projects:
            return False
        from .registry import is_extension_project

        if is_extension_project(project_id):
            return ARTIFACTS_CLASS in self.classes
        return bool(self.types)

    def of_project(self, project_id: str) -> Selection:
        """The selection a run of `project_id` is read with: an entry of a format extension
        (an artifact or model version) is moved whole, whatever --classes and --attribute say."""
        from .registry import is_extension_project

        if not is_extension_project(project_id) or not self.filters_rows:
            return self
        return Selection(self.projects, self.run_pattern, None, frozenset(CLASSES))

    def wants_run(self, project_id: str, run_id: str) -> bool:
        if not self.wants_project(project_id):
            return False
        return self.run_pattern is None or self.run_pattern.search(run_id) is not None

    @property
    def types(self) -> frozenset[str]:
        return frozenset(t for c in self.classes for t in CLASSES[c])

    @property
    def filters_rows(self) -> bool:
        return self.attribute_pattern is not None or self.types != ALL_TYPES

    def filter(self, table: pa.Table) -> pa.Table:
        """Keep the rows of the selected classes and attributes (Arrow, no row loop)."""
        if not self.filters_rows or table.num_rows == 0:
            return table
        mask = pc.is_in(table.column("attribute_type"), value_set=pa.array(sorted(self.types)))
        if self.attribute_pattern is not None:
            # Run-level metadata (sys/*) is kept so a filtered copy still names its runs.
            paths = table.column("attribute_path")
            hit = pc.match_substring_regex(paths, self.attribute_pattern.pattern)
            mask = pc.and_(mask, pc.or_(hit, pc.starts_with(paths, "sys/")))
        return table.filter(pc.fill_null(mask, False))
