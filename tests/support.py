"""Shared test helpers: run the real CLI, compare canonical tables."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from trackport.cli import cli
from trackport.core.schema import COLUMNS
from trackport.testing.corpus import CorpusRun


def run_cli(*args: str) -> tuple[int, dict, str]:
    """Run `trackport ARGS --json --no-progress` in-process; (exit code, report, output)."""
    result = CliRunner().invoke(cli, [*args, "--json", "--no-progress"], catch_exceptions=False)
    report = {}
    out = result.stdout
    if out.strip().startswith("{"):
        report = json.loads(out)
    return result.exit_code, report, result.output


def runs_by_id(report: dict) -> dict[str, dict]:
    return {r["run_id"]: r for r in report.get("runs", [])}


def _norm(value):
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return tuple(sorted((k, _norm(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_norm(v) for v in value)
    return value


def canonical_rows(table: pa.Table) -> list[tuple]:
    """Rows of the canonical columns, order-free and NaN-safe, for equality checks."""
    table = table.select(list(COLUMNS))
    rows = [tuple(_norm(row[c]) for c in COLUMNS) for row in table.to_pylist()]
    return sorted(rows, key=repr)


def read_plain_export(root: Path) -> dict[tuple[str, str], pa.Table]:
    """Read an export knowing only neptune-exporter's schema and layout (no trackport code)."""
    runs: dict[str, list[Path]] = {}
    for part in sorted((root / "data").glob("*/*_part_*.parquet")):
        stem = part.name.rsplit("_part_", 1)[0]
        runs.setdefault(f"{part.parent.name}/{stem}", []).append(part)
    out = {}
    for key, parts in runs.items():
        parts.sort(key=lambda p: int(p.name.rsplit("_part_", 1)[1].split(".")[0]))
        table = pa.concat_tables([pq.read_table(p) for p in parts])
        if table.num_rows:
            ident = (table.column("project_id")[0].as_py(), table.column("run_id")[0].as_py())
            out[ident] = table
    return out


@dataclass
class Target:
    """How one destination takes part in the suite."""

    dest: str                                   # the destination URI
    args: list[str] = field(default_factory=list)  # extra CLI options for every command
    back: str | None = None                     # source URI that reads the destination back (default: dest)
    # The input after the destination's declared transformations (default: unchanged).
    expect: Callable[[CorpusRun], pa.Table] | None = None
    verify_exit: int = 0                        # a lossy destination may make verify report declared differences
