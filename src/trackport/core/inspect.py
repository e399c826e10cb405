"""Summary of an export: projects, runs, attribute types, steps, rows, bytes on disk.

Reads only the parquet footers and the two columns it needs, so it stays fast
on exports of many millions of rows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..connectors.parquet.source import ParquetSource
from .model import Selection


@dataclass
class ProjectSummary:
    project_id: str
    runs: int = 0
    incomplete_runs: int = 0
    rows: int = 0
    part_files: int = 0
    data_bytes: int = 0
    file_bytes: int = 0
    files: int = 0
    types: Counter = field(default_factory=Counter)
    series: int = 0
    min_step: Decimal | None = None
    max_step: Decimal | None = None
    unreadable: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "project_id": self.project_id, "runs": self.runs, "incomplete_runs": self.incomplete_runs,
            "rows": self.rows, "part_files": self.part_files, "data_bytes": self.data_bytes,
            "files": self.files, "file_bytes": self.file_bytes, "attribute_types": dict(self.types),
            "min_step": None if self.min_step is None else str(self.min_step),
            "max_step": None if self.max_step is None else str(self.max_step),
            "unreadable": self.unreadable,
        }


def inspect_export(source: ParquetSource, select: Selection) -> dict:
    projects: dict[str, ProjectSummary] = {}
    for ref in source.list_runs(select):
        p = projects.setdefault(ref.project_id, ProjectSummary(ref.project_id))
        p.runs += 1
        files = ref.locator
        if not files.complete:
            p.incomplete_runs += 1
        for part in files.parts:
            p.part_files += 1
            p.data_bytes += part.stat().st_size
            try:
                table = pq.read_table(part, columns=["attribute_type", "step"])
            except Exception as exc:
                p.unreadable.append(f"{part}: {exc}")
                continue
            p.rows += table.num_rows
            for item in pc.value_counts(table.column("attribute_type")).to_pylist():
                p.types[item["values"]] += item["counts"]
            steps = table.column("step")
            if steps.null_count < len(steps):
                lo, hi = (s.as_py() for s in pc.min_max(steps).values())
                p.min_step = lo if p.min_step is None else min(lo, p.min_step)
                p.max_step = hi if p.max_step is None else max(hi, p.max_step)
        if files.manifest:
            p.files += files.manifest.get("files", 0)
            p.file_bytes += files.manifest.get("file_bytes", 0)
        else:
            root = source.export.project_files_dir(ref.project_id)
            if root.is_dir() and p.files == 0:
                found = [f for f in root.rglob("*") if f.is_file()]
                p.files = len(found)
                p.file_bytes = sum(f.stat().st_size for f in found)
    totals = {
        "projects": len(projects),
        "runs": sum(p.runs for p in projects.values()),
        "rows": sum(p.rows for p in projects.values()),
        "data_bytes": sum(p.data_bytes for p in projects.values()),
        "file_bytes": sum(p.file_bytes for p in projects.values()),
    }
    return {
        "root": str(source.export.root),
        "format": "trackport" if source.export.manifest else "neptune-exporter (no manifests)",
        "manifest": source.export.manifest,
        "totals": totals,
        "projects": [projects[k].to_json() for k in sorted(projects)],
    }
