"""Reads canonical exports: trackport's own and neptune-exporter's."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ...core import layout
from ...core.capabilities import Capabilities
from ...core.connector import FileAccess, Source
from ...core.errors import RunError, UsageError
from ...core.model import Origin, RunRef, Selection
from ...core.schema import SchemaError, check_types, conform

BATCH_ROWS = 65_536


@dataclass
class RunFiles:
    """Where one run lives on disk."""

    data_dir: Path
    stem: str
    parts: list[Path]
    manifest: dict | None
    complete: bool


class ExportRoot:
    """Finds the data and files folders of an export, whichever folder the user named."""

    def __init__(self, root: Path):
        if not root.exists():
            raise UsageError(f"export folder {root} does not exist")
        if (root / "data").is_dir() or (root / layout.EXPORT_MANIFEST).exists():
            self.root = root
        elif root.name == "data" and any(root.glob("*/*_part_*.parquet")):
            self.root = root.parent
        elif any(root.glob("*/*_part_*.parquet")):
            raise UsageError(
                f"{root} holds project folders directly; name the export root whose data/ "
                f"folder holds them (for neptune-exporter: the parent of --data-path)"
            )
        else:
            raise UsageError(f"{root} is not an export: no data/ folder and no *_part_*.parquet files")
        self.data = layout.data_dir(self.root)
        self.files = layout.files_dir(self.root)
        manifest_path = self.root / layout.EXPORT_MANIFEST
        self.manifest: dict | None = layout.read_json(manifest_path) if manifest_path.exists() else None

    def project_files_dir(self, project_id: str) -> Path:
        for name in layout.safe_variants(project_id):
            candidate = self.files / name
            if candidate.exists():
                return candidate
        return self.files / layout.safe(project_id)


class ExportFiles(FileAccess):
    def __init__(self, root: Path, run: RunRef):
        self.root = root
        self.run = run

    def local_path(self, path: str) -> Path:
        try:
            found = layout.resolve_inside(self.root, path)
        except ValueError as exc:
            raise RunError(str(exc), project_id=self.run.project_id, run_id=self.run.run_id, file=path) from None
        if not found.exists():
            raise RunError(
                f"file missing from the export (looked for {found})",
                project_id=self.run.project_id, run_id=self.run.run_id, file=path,
            )
        return found

    def open(self, path: str) -> BinaryIO:
        return open(self.local_path(path), "rb")


class ParquetSource(Source):
    capabilities = Capabilities(replayable=True)

    def __init__(self, root: Path, options: dict[str, Any]):
        self.export = ExportRoot(root)
        self.batch_rows = int(options.get("batch_rows") or BATCH_ROWS)
        sources = (self.export.manifest or {}).get("sources") or []
        # Runs keep the identity of where they were first read from, so export+load
        # and a direct copy find the same destination runs.
        self.uri = sources[0] if len(sources) == 1 else f"parquet:{self.export.root}"
        self.skipped_incomplete: list[str] = []

    # -- listing -------------------------------------------------------------
    def _runs_on_disk(self) -> Iterator[RunFiles]:
        if not self.export.data.is_dir():
            return
        ours = self.export.manifest is not None
        for project_dir in sorted(p for p in self.export.data.iterdir() if p.is_dir()):
            stems: dict[str, list[tuple[int, Path]]] = defaultdict(list)
            for part in project_dir.glob("*_part_*.parquet"):
                match = layout.PART_RE.match(part.name)
                if match:
                    stems[match["stem"]].append((int(match["n"]), part))
            manifests = {
                p.name[: -len(layout.RUN_MANIFEST_SUFFIX)]: p
                for p in project_dir.glob("*" + layout.RUN_MANIFEST_SUFFIX)
            }
            for stem in sorted(set(stems) | set(manifests)):
                parts = [p for _, p in sorted(stems.get(stem, []))]
                manifest = layout.read_json(manifests[stem]) if stem in manifests else None
                complete = manifest is not None if ours else bool(parts) and parts[0].name.endswith("_part_0.parquet")
                yield RunFiles(project_dir, stem, parts, manifest, complete)

    def _identity(self, run: RunFiles) -> tuple[str, str]:
        if run.manifest:
            return run.manifest["project_id"], run.manifest["run_id"]
        part = run.parts[0]
        try:
            meta = pq.ParquetFile(part)
            if meta.metadata.num_rows == 0:
                raise ValueError("no rows")
            first = meta.read_row_group(0, columns=["project_id", "run_id"]).slice(0, 1)
            return first.column("project_id")[0].as_py(), first.column("run_id")[0].as_py()
        except Exception as exc:  # corrupt part: still list the run so the report names it
            return f"?{run.data_dir.name}", f"?{run.stem} (unreadable {part.name}: {exc})"

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        for run in self._runs_on_disk():
            if not run.parts and not run.manifest:
                continue
            project_id, run_id = self._identity(run)
            if not select.wants_run(project_id, run_id):
                continue
            if not run.complete:
                self.skipped_incomplete.append(f"{project_id}/{run_id}")
            yield RunRef(project_id, run_id, run)

    # -- reading -------------------------------------------------------------
    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        files: RunFiles = run.locator
        if not files.complete:
            raise RunError(
                "incomplete in the export (no run manifest / part_0): export it again",
                project_id=run.project_id, run_id=run.run_id,
            )
        if run.run_id.startswith("?"):
            raise RunError(f"cannot read {run.run_id[1:]}", project_id=run.project_id, run_id=run.run_id,
                           file=str(files.parts[0]) if files.parts else None)
        for part in files.parts:
            try:
                reader = pq.ParquetFile(part)
                for batch in reader.iter_batches(batch_size=self.batch_rows):
                    table = conform(batch, where=str(part))
                    check_types(table, where=str(part))
                    table = select.filter(table)
                    if table.num_rows:
                        yield table
            except (SchemaError, OSError, pa.ArrowException) as exc:
                raise RunError(f"cannot read part: {exc}", project_id=run.project_id,
                               run_id=run.run_id, file=str(part)) from None

    def files(self, run: RunRef) -> FileAccess:
        return ExportFiles(self.export.project_files_dir(run.project_id), run)

    def origin(self, run: RunRef) -> Origin:
        files: RunFiles = run.locator
        recorded = (files.manifest or {}).get("origin")
        if recorded:
            return Origin(recorded["uri"], recorded["project_id"], recorded["run_id"])
        return Origin(self.uri, run.project_id, run.run_id)

    def part_bytes(self, run: RunRef) -> int:
        return sum(p.stat().st_size for p in run.locator.parts)
