"""Reads canonical exports: trackport's own and neptune-exporter's."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...core import layout
from ...core.capabilities import Capabilities
from ...core.connector import FileAccess, Source
from ...core.errors import RunError, UsageError
from ...core.model import Origin, RunRef, Selection
from ...core.schema import SchemaError, check_types, conform

BATCH_ROWS = 65_536
# Read pages through a small buffer instead of loading whole column chunks of a row
# group up front (pre_buffer): a writer's row groups can hold millions of rows, and
# this keeps Arrow's allocations near one batch (measured: 67 -> 33 MB at 65,536 rows).
STREAMING_READ = {"buffer_size": 1 << 20, "pre_buffer": False}
_FIX_DAMAGED = "Fix: export the run again (or restore the part from a backup); the other runs are not affected"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _check_rows_belong(table: pa.Table, project_id: str, run_id: str) -> None:
    """Every row names this run and has an attribute path and type: a part holding rows of
    another run (or rows naming nothing) would put them under the wrong run in the destination."""
    for name in ("project_id", "run_id", "attribute_path", "attribute_type"):
        nulls = table.column(name).null_count
        if nulls:
            raise SchemaError(f"{nulls} row(s) with a null {name}")
    for name, expected in (("project_id", project_id), ("run_id", run_id)):
        column = table.column(name)
        if not pc.all(pc.equal(column, pa.scalar(expected, pa.string()))).as_py():
            other = pc.filter(column, pc.not_equal(column, pa.scalar(expected, pa.string())))[0].as_py()
            raise SchemaError(f"rows of another run: {name} {other!r} where the part's run has {expected!r}")


@dataclass
class RunFiles:
    """Where one run lives on disk."""

    data_dir: Path
    stem: str
    parts: list[Path]
    manifest: dict | None
    complete: bool
    problem: str | None = None   # why the run cannot be read, found while listing


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
        self.manifest: dict | None = None
        if manifest_path.exists():
            try:
                self.manifest = layout.read_json(manifest_path)
            except (OSError, ValueError) as exc:
                raise UsageError(f"export manifest {manifest_path} is damaged ({_one_line(exc)}). Fix: restore "
                                 f"it, or delete it to read the folder as a neptune-exporter export") from None

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
        if found.is_dir():
            self._check_tree(found, path)
        return found

    def _check_tree(self, folder: Path, path: str) -> None:
        """A directory (file_set, artifact) whose entries all stay inside the files root:
        a symlink inside it must not carry a file from elsewhere into the destination."""
        real_root = self.root.resolve()
        for entry in sorted(folder.rglob("*")):
            if not entry.is_symlink():
                continue
            real = entry.resolve()
            if real != real_root and real_root not in real.parents:
                rel = entry.relative_to(folder).as_posix()
                raise RunError(f"file path {path!r} holds {rel!r}, a symlink that leads outside the files root",
                               project_id=self.run.project_id, run_id=self.run.run_id, file=path)

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
                manifest, problem = None, None
                if stem in manifests:
                    try:
                        manifest = layout.read_json(manifests[stem])
                        manifest["project_id"], manifest["run_id"]
                    except (OSError, ValueError, TypeError, KeyError) as exc:
                        # the run is still listed (named by its part), and fails naming the manifest
                        manifest, problem = None, (f"run manifest {manifests[stem]} is damaged ({_one_line(exc)}). "
                                                   f"Fix: export the run again")
                complete = (manifest is not None or problem is not None) if ours else \
                    bool(parts) and parts[0].name.endswith("_part_0.parquet")
                yield RunFiles(project_dir, stem, parts, manifest, complete, problem)

    def _identity(self, run: RunFiles) -> tuple[str, str] | str:
        """(project_id, run_id) as the run records them, or why they cannot be read."""
        if run.manifest:
            return run.manifest["project_id"], run.manifest["run_id"]
        if not run.parts:
            return run.problem or "no part files"
        part = run.parts[0]
        try:
            meta = pq.ParquetFile(part)
            if meta.metadata.num_rows == 0:
                return (f"{part.name} holds no rows, so nothing in it names its run. "
                        f"Fix: delete it if the run is really empty, or export the run again")
            # The first row only: reading whole columns of a row group costs tens of MB on long runs.
            first = next(meta.iter_batches(batch_size=1, columns=["project_id", "run_id"]))
            project_id, run_id = first.column("project_id")[0].as_py(), first.column("run_id")[0].as_py()
            if not isinstance(project_id, str) or not isinstance(run_id, str):
                return f"{part.name}: project_id or run_id is null or not text. Fix: export the run again"
            return project_id, run_id
        except Exception as exc:  # a damaged part: still list the run so the report names it
            return f"cannot read {part.name} ({_one_line(exc)}): the file is damaged. {_FIX_DAMAGED}"

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        for project_runs in self._runs_by_project():
            identities = [self._identity(run) for run in project_runs]
            # A run whose part cannot say who it is goes by its file stem, in the project its
            # readable neighbours name ("?<stem>"), so the report can still point at it.
            known = sorted({i[0] for i in identities if isinstance(i, tuple)})
            for run, identity in zip(project_runs, identities):
                if isinstance(identity, str):
                    run.problem = run.problem or identity
                    identity = (known[0] if len(known) == 1 else f"?{run.data_dir.name}", f"?{run.stem}")
                project_id, run_id = identity
                if not select.wants_run(project_id, run_id):
                    continue
                if not run.complete:
                    self.skipped_incomplete.append(f"{project_id}/{run_id}")
                yield RunRef(project_id, run_id, run)

    def _runs_by_project(self) -> Iterator[list[RunFiles]]:
        current: list[RunFiles] = []
        for run in self._runs_on_disk():
            if not run.parts and not run.manifest and not run.problem:
                continue
            if current and current[0].data_dir != run.data_dir:
                yield current
                current = []
            current.append(run)
        if current:
            yield current

    # -- reading -------------------------------------------------------------
    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        files: RunFiles = run.locator
        if not files.complete:
            raise RunError(
                "incomplete in the export (no run manifest / part_0): export it again",
                project_id=run.project_id, run_id=run.run_id,
            )
        if files.problem:
            raise RunError(files.problem, project_id=run.project_id, run_id=run.run_id,
                           file=str(files.parts[0]) if files.parts else None)
        for part in files.parts:
            try:
                # Parts trackport writes carry page checksums (CRC32): a flipped bit fails here
                # instead of moving a wrong number.  neptune-exporter's parts have none.
                reader = pq.ParquetFile(part, page_checksum_verification=True, **STREAMING_READ)
                for batch in reader.iter_batches(batch_size=self.batch_rows):
                    table = conform(batch)
                    _check_rows_belong(table, run.project_id, run.run_id)
                    check_types(table)
                    table = select.filter(table)
                    if table.num_rows:
                        yield table
            except SchemaError as exc:
                raise RunError(f"{exc}. Fix: export the run again, or rewrite the part as docs/format.md "
                               f"describes (canonical column and attribute types, one run per part)",
                               project_id=run.project_id,
                               run_id=run.run_id, file=str(part)) from None
            except (OSError, pa.ArrowException) as exc:
                raise RunError(f"cannot read the part ({_one_line(exc)}): the file is damaged. {_FIX_DAMAGED}",
                               project_id=run.project_id, run_id=run.run_id, file=str(part)) from None

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
