"""Write runs the way neptune-exporter lays out an export, and nothing more.

    <root>/data/<safe(project_id)>/<safe(run_id)>_part_<n>.parquet   snappy, canonical SCHEMA
    <root>/files/<safe(project_id)>/<file_value.path>
    <root>/data/<safe(project_id)>/models|model_versions/...            `export-models`

No `trackport.json`, no run manifests: this is the layout a team that used
neptune-exporter already has on disk, so readers can be tested against it.

What neptune-exporter does and this writer copies:

- one run per part file, part numbers from 0; a new part when the current one
  is "full" (neptune-exporter: past 50 MB compressed; here: `part_rows` rows);
- parts are written as `.parquet.tmp` and renamed when the run is finished,
  highest part first and `_part_0` last, so `_part_0` marks a finished run;
- leftover parts of the same run are deleted before writing it again;
- a run without rows gets no part file at all (its writer is opened lazily on
  the first batch), so it is not in the export;
- `file_value.path` is relative to `files/<safe(project_id)>/` and reads
  `<project_id>/<run_id>/<attribute_path>`: a file for `file`, `<step>.<ext>`
  files in a directory for `file_series`, a directory for `file_set`, and a
  `files_list.json` inside a directory for `artifact`.

What differs: neptune-exporter builds its batches with pandas, so its parquet
schema metadata carries a `pandas` key; ours carries none.  Readers ignore it.
"""

from __future__ import annotations

from pathlib import Path
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trackport.core.layout import safe
from trackport.core.schema import SCHEMA

from .corpus import CorpusRun


def write_exporter_export(root: Path, runs: list[CorpusRun], part_rows: int | None = None,
                          entity_scope: str | None = None) -> None:
    """Write `runs` under `root` in neptune-exporter's layout.

    `part_rows` splits each run into parts of at most that many rows (so a run
    can be multi-part); None writes one part per run.  Other runs already under
    `root` are left alone; a run written again replaces its earlier parts.
    `entity_scope` ("models", "model_versions"): write them as `export-models` writes
    Neptune models and model versions, in that folder of `data/<safe(project_id)>/`.
    """
    if part_rows is not None and part_rows < 1:
        raise ValueError("part_rows must be at least 1")
    root = Path(root)
    for run in runs:
        _check_run(run)
        if run.table.num_rows == 0:
            continue
        project_files = root / "files" / safe(run.project_id)
        for rel, data in sorted(run.files.items()):
            target = project_files / _checked_relative(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        _write_parts(root, run, part_rows, entity_scope)


def _write_parts(root: Path, run: CorpusRun, part_rows: int | None, entity_scope: str | None = None) -> None:
    project_dir = root / "data" / safe(run.project_id)
    if entity_scope is not None:
        project_dir = project_dir / entity_scope
    project_dir.mkdir(parents=True, exist_ok=True)
    stem = safe(run.run_id)
    for leftover in sorted(project_dir.glob(f"{stem}_part_*.parquet*")):
        leftover.unlink()
    table = run.table.replace_schema_metadata(None)
    size = part_rows or table.num_rows
    temps: list[Path] = []
    for n, start in enumerate(range(0, table.num_rows, size)):
        tmp = project_dir / f"{stem}_part_{n}.parquet.tmp"
        with pq.ParquetWriter(tmp, SCHEMA, compression="snappy") as writer:
            writer.write_table(table.slice(start, size))
        temps.append(tmp)
    for tmp in reversed(temps):
        tmp.rename(tmp.with_suffix(""))


def _check_run(run: CorpusRun) -> None:
    where = f"run {run.project_id}/{run.run_id}"
    if not run.table.schema.equals(SCHEMA, check_metadata=False):
        raise ValueError(f"{where}: table is not in the canonical SCHEMA:\n{run.table.schema}")
    for column, expected in (("project_id", run.project_id), ("run_id", run.run_id)):
        values = run.table.column(column)
        if values.null_count or not pc.all(pc.equal(values, pa.scalar(expected)), min_count=0).as_py():
            raise ValueError(f"{where}: column {column} holds values other than {expected!r}")
    _check_file_rows(run, where)


def _check_file_rows(run: CorpusRun, where: str) -> None:
    """Every file row's path is written (a file, a files_list.json, or a directory with files)."""
    paths = [p for p in run.table.column("file_value").combine_chunks().field("path").to_pylist() if p]
    for rel in paths:
        _checked_relative(rel)
        if rel in run.files:
            continue
        if not any(key.startswith(rel.rstrip("/") + "/") for key in run.files):
            raise ValueError(f"{where}: file_value.path {rel!r} has no bytes in run.files")


def _checked_relative(rel: str) -> str:
    parts = rel.replace("\\", "/").split("/")
    if not rel or rel.startswith("/") or ".." in parts or "" in parts or ":" in parts[0]:
        raise ValueError(f"file path {rel!r} must be relative, without '..' or empty segments")
    return rel

