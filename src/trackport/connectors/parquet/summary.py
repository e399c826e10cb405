"""`trackport inspect` of a parquet export: projects, runs, attribute types, steps, rows,
bytes on disk (the connector's `inspect`, found through its spec: core names no scheme).

Streams, so time and memory stay flat in the size of the export: it reads the
parquet footers, takes whatever the row-group statistics state exactly (row
counts; min/max step; a row group whose attribute type or path has min == max
holds that one value only), and reads the few columns it needs, row group by
row group in bounded batches, only where the statistics do not settle it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...core.connector import Inspection
from ...core.model import Selection
from . import layout
from .source import STREAMING_READ, ParquetSource, manifest_mismatch, open_parquet

BATCH_ROWS = 65_536
_COLUMNS = ("attribute_path", "attribute_type", "step")


@dataclass
class PartSummary:
    """What one part file contributes; merged into its project only if the whole part was readable."""

    rows: int = 0
    types: Counter = field(default_factory=Counter)
    attributes: set = field(default_factory=set)
    min_step: Any = None
    max_step: Any = None

    def steps(self, lo: Any, hi: Any) -> None:
        self.min_step = lo if self.min_step is None else min(lo, self.min_step)
        self.max_step = hi if self.max_step is None else max(hi, self.max_step)


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
    attributes: set = field(default_factory=set)
    min_step: Decimal | None = None
    max_step: Decimal | None = None
    unreadable: list[str] = field(default_factory=list)
    damaged_runs: list[str] = field(default_factory=list)   # parts that are not what the run recorded

    def add(self, part: PartSummary) -> None:
        if part.min_step is not None:  # first, so a part whose steps do not compare changes nothing
            low = part.min_step if self.min_step is None else min(part.min_step, self.min_step)
            high = part.max_step if self.max_step is None else max(part.max_step, self.max_step)
            self.min_step, self.max_step = low, high
        self.rows += part.rows
        self.types.update(part.types)
        self.attributes |= part.attributes

    def to_json(self) -> dict:
        return {
            "project_id": self.project_id, "runs": self.runs, "incomplete_runs": self.incomplete_runs,
            "rows": self.rows, "part_files": self.part_files, "data_bytes": self.data_bytes,
            "files": self.files, "file_bytes": self.file_bytes, "attribute_types": dict(self.types),
            "attributes": len(self.attributes),
            "min_step": None if self.min_step is None else str(self.min_step),
            "max_step": None if self.max_step is None else str(self.max_step),
            "unreadable": self.unreadable,
            "damaged_runs": self.damaged_runs,
        }


def _single_value(stats, rows: int) -> tuple[bool, Any]:
    """(True, v) when a column chunk's statistics prove all its `rows` values equal v (no nulls).

    Statistics are exact here: a reader of parquet-cpp drops those of writers
    known to have written wrong ones (`ApplicationVersion::HasCorrectStatistics`,
    behind `is_stats_set`), and a truncated byte-array min/max can never be equal.
    """
    if stats is None or not stats.has_min_max or stats.null_count != 0 or stats.num_values != rows:
        return False, None
    low, high = stats.min, stats.max
    return (True, low) if isinstance(low, str) and low == high else (False, None)


def summarize_part(path: Path, fs: Any = None) -> PartSummary:
    """Rows, attribute types and paths, and step range of one part file (on an object store
    when `fs` is given), streamed."""
    parquet = open_parquet(path, fs, read_dictionary=["attribute_path", "attribute_type"], **STREAMING_READ)
    meta = parquet.metadata
    leaves = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    missing = [c for c in _COLUMNS if c not in leaves]
    if missing:
        raise ValueError(f"no column(s) {', '.join(missing)}: not a canonical export part")
    step_type = parquet.schema_arrow.field("step").type
    if not (pa.types.is_decimal(step_type) or pa.types.is_integer(step_type) or pa.types.is_floating(step_type)):
        raise ValueError(f"column step is {step_type}, not a number: not a canonical export part")
    out = PartSummary()
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        n = group.num_rows
        out.rows += n
        if n == 0:
            continue
        stats = {c: group.column(leaves[c]).statistics if group.column(leaves[c]).is_stats_set else None
                 for c in _COLUMNS}
        need = []
        one_type, type_value = _single_value(stats["attribute_type"], n)
        if one_type:
            out.types[type_value] += n
        else:
            need.append("attribute_type")
        one_path, path_value = _single_value(stats["attribute_path"], n)
        if one_path:
            out.attributes.add(path_value)
        else:
            need.append("attribute_path")
        step = stats["step"]
        if step is not None and step.null_count == n:
            pass                                    # no stepped row in this group
        elif step is not None and step.has_min_max:
            out.steps(step.min, step.max)
        else:
            need.append("step")
        if need:
            _read_group(parquet, g, need, out)
    return out


def _read_group(parquet: pq.ParquetFile, group: int, columns: list[str], out: PartSummary) -> None:
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns):
        if "attribute_type" in columns:
            out.types.update(_value_counts(batch.column("attribute_type")))
        if "attribute_path" in columns:
            out.attributes.update(v for v in _distinct(batch.column("attribute_path")) if v is not None)
        if "step" in columns:
            steps = batch.column("step")
            if steps.null_count < len(steps):
                lo, hi = (s.as_py() for s in pc.min_max(steps).values())
                out.steps(lo, hi)


# Both columns are read dictionary-encoded: counting works on the small integer
# indices, and only the values a batch uses are decoded (a dictionary may hold more).
def _value_counts(column: pa.Array) -> dict:
    if not pa.types.is_dictionary(column.type):
        counts = pc.value_counts(column)
        return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    counts = pc.value_counts(column.indices)
    values = column.dictionary.take(counts.field("values")).to_pylist()
    return dict(zip(values, counts.field("counts").to_pylist()))


def _distinct(column: pa.Array) -> list:
    if not pa.types.is_dictionary(column.type):
        return pc.unique(column).to_pylist()
    return column.dictionary.take(pc.unique(column.indices)).to_pylist()


def inspect_export(source: ParquetSource, select: Selection) -> dict:
    projects: dict[str, ProjectSummary] = {}
    for ref in source.list_runs(select):
        p = projects.setdefault(ref.project_id, ProjectSummary(ref.project_id))
        p.runs += 1
        files = ref.locator
        if not files.complete:
            p.incomplete_runs += 1
        name = f"{ref.project_id}/{ref.run_id}"
        if files.problem:
            p.damaged_runs.append(f"{name}: {files.problem}")
        elif files.complete:
            mismatch = manifest_mismatch(files, source.check)
            if mismatch is not None:
                p.damaged_runs.append(f"{name}: {mismatch[0]}")
        if not files.readable:
            continue
        for part in files.parts:
            p.part_files += 1
            p.data_bytes += part.stat().st_size if files.fs is None else files.sizes[str(part)]
            try:
                p.add(summarize_part(part, files.fs))
            except Exception as exc:  # noqa: BLE001 - a corrupt part is reported, the others summed
                p.unreadable.append(f"{part}: {exc}")
        if files.manifest:
            p.files += files.manifest.get("files", 0)
            p.file_bytes += files.manifest.get("file_bytes", 0)
        elif files.fs is not None:
            if p.files == 0:
                count, size = source.export.project_files(ref.project_id)
                p.files, p.file_bytes = p.files + count, p.file_bytes + size
        else:
            root = source.export.project_files_dir(ref.project_id)
            if root.is_dir() and p.files == 0 and layout.escape_below(source.export.root, root) is None:
                for found in root.rglob("*"):
                    if found.is_file():
                        p.files += 1
                        p.file_bytes += found.stat().st_size
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


def inspection(root: Path | None, options: dict[str, Any], select: Selection,
               source: ParquetSource | None = None) -> Inspection:
    """What the parquet connector's `inspect` returns (ConnectorSpec.inspect): `options["check"]`
    also compares each run's parts with its manifest's checksum.  `source`: the reader of an
    export that is not a local folder (objects.ObjectParquetSource), opened with those options."""
    summary = inspect_export(source or ParquetSource(root, {"check": bool(options.get("check"))}), select)
    damaged = any(p["unreadable"] or p["damaged_runs"] for p in summary["projects"])
    return Inspection(summary, damaged, render_inspect)


def render_inspect(summary: dict) -> None:
    from rich.table import Table

    from ...core.render import make_console, plain

    console = make_console()
    t = summary["totals"]
    console.print(f"[bold]{plain(summary['root'])}[/bold] ({plain(summary['format'])})")
    console.print(f"projects {t['projects']}, runs {t['runs']}, rows {t['rows']:,}, "
                  f"parquet {t['data_bytes']:,} bytes, files {t['file_bytes']:,} bytes")
    table = Table()
    for col in ("project", "runs", "rows", "attributes", "types", "steps", "parquet bytes", "files"):
        table.add_column(col, overflow="fold")
    for p in summary["projects"]:
        # a hostile part may hold a null or odd type name: sorted as text, shown as data
        counts = sorted(p["attribute_types"].items(), key=lambda kv: str(kv[0]))
        types = ", ".join(f"{plain(k)} {v:,}" for k, v in counts)
        steps = "-" if p["min_step"] is None else f"{p['min_step']} .. {p['max_step']}"
        runs = f"{p['runs']}" + (f" ({p['incomplete_runs']} incomplete)" if p["incomplete_runs"] else "")
        table.add_row(plain(p["project_id"]), runs, f"{p['rows']:,}", f"{p.get('attributes', 0):,}", types, steps,
                      f"{p['data_bytes']:,}", f"{p['files']:,} ({p['file_bytes']:,} B)")
    console.print(table)
    for p in summary["projects"]:
        for line in p["unreadable"]:
            console.print(f"[red]unreadable[/red]: {plain(line)}")
        for line in p.get("damaged_runs", []):
            console.print(f"[red]damaged run[/red]: {plain(line)}")
