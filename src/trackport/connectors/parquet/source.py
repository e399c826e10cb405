"""Reads canonical exports: trackport's own and neptune-exporter's."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...core.capabilities import Capabilities
from ...core.connector import FileAccess, Source
from ...core.errors import RunError, UsageError
from ...core.files import DirectoryFiles
from ...core.model import Origin, RunRef, Selection
from ...core.schema import SchemaError, check_types, conform, rows_to_table
from . import layout

BATCH_ROWS = 65_536
# Read pages through a small buffer instead of loading whole column chunks of a row
# group up front (pre_buffer): a writer's row groups can hold millions of rows, and
# this keeps Arrow's allocations near one batch (measured: 67 -> 33 MB at 65,536 rows).
STREAMING_READ = {"buffer_size": 1 << 20, "pre_buffer": False}
# The origin of runs read from an export that records none (neptune-exporter's): its rows'
# project and run ids are the Neptune run's own, wherever the folder lies.
EXPORTER_ORIGIN = "parquet:neptune-exporter"
_FIX_DAMAGED = "Fix: export the run again (or restore the part from a backup); the other runs are not affected"


# Reads of a part on an object store go through a buffer of this size (ranged GETs), not the
# file system's default block (s3fs: 50 MB per open file).
OBJECT_READ_BLOCK = 4 << 20


def open_parquet(part: Path, fs: Any = None, **kwargs: Any) -> pq.ParquetFile:
    """A part, on disk (`fs` None) or in an object store (`fs`, an fsspec file system)."""
    if fs is None:
        return pq.ParquetFile(part, **kwargs)
    return pq.ParquetFile(fs.open(str(part), "rb", block_size=OBJECT_READ_BLOCK), **kwargs)


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


def _parts_problem(folder: Path, numbers: list[int], parts: list[Path], manifest: dict | None) -> str | None:
    """Why a run's parts on disk are not the whole run: a gap in the part numbers (both
    writers number parts 0, 1, 2 ...), or parts that differ from those its manifest lists."""
    if numbers != list(range(len(numbers))):
        have = set(numbers)
        missing = [f"_part_{n}" for n in range(max(numbers) + 1) if n not in have]
        twice = sorted({n for n in numbers if numbers.count(n) > 1})
        what = (f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} missing" if missing
                else f"part number(s) {', '.join(map(str, twice))} written twice")
        return (f"the run's parts have a gap ({what} between {parts[0].name} and {parts[-1].name}): "
                f"the run is damaged. {_FIX_DAMAGED}")
    if manifest is not None:
        listed = manifest.get("parts")
        if not isinstance(listed, list):
            return f"run manifest in {folder} lists no parts: the run is damaged. {_FIX_DAMAGED}"
        on_disk = [p.name for p in parts]
        gone = [name for name in listed if name not in on_disk]
        extra = [name for name in on_disk if name not in listed]
        if gone:
            return (f"{gone[0]}, listed in the run manifest, is missing{f' (and {len(gone) - 1} more)' if len(gone) > 1 else ''}: "
                    f"the run is damaged. {_FIX_DAMAGED}")
        if extra:
            return (f"{extra[0]} is not listed in the run manifest (written by another process, or left from "
                    f"an older export): the run is damaged. {_FIX_DAMAGED}")
    return None


def manifest_mismatch(files: RunFiles, checksum: bool) -> tuple[str, Path | None] | None:
    """(why, part) when the run's parts do not hold what its manifest recorded: the row count
    (read from the footers, always) and, when `checksum`, the checksum of the parts' bytes
    (a second read of every part).  None when they agree, or the run has no manifest."""
    manifest = files.manifest
    if manifest is None or not files.parts:
        return None
    rows = 0
    for part in files.parts:
        try:
            rows += open_parquet(part, files.fs).metadata.num_rows
        except Exception as exc:  # noqa: BLE001 - a damaged part names itself
            return f"cannot read the part ({_one_line(exc)}): the file is damaged. {_FIX_DAMAGED}", part
    want = manifest.get("rows")
    if isinstance(want, int) and rows != want:
        return (f"the parts hold {rows:,} rows where the run manifest recorded {want:,}: the run is "
                f"damaged (a part was cut or replaced). {_FIX_DAMAGED}"), None
    recorded = manifest.get("checksum")
    if checksum and isinstance(recorded, str) and recorded.startswith("blake2b-128:"):
        got = "blake2b-128:" + parts_checksum(files.parts, files.fs)
        if got != recorded:
            return (f"the parts' checksum {got} differs from the run manifest's {recorded}: the run is "
                    f"damaged. {_FIX_DAMAGED}"), None
    return None


def parts_checksum(parts: list[Path], fs: Any = None) -> str:
    """blake2b-128 of the parts' bytes, part_0 first: what the run manifest's `checksum` records."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        with (open(part, "rb") if fs is None else fs.open(str(part), "rb", block_size=OBJECT_READ_BLOCK)) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class RunFiles:
    """Where one run lives on disk."""

    data_dir: Path
    stem: str
    parts: list[Path]
    manifest: dict | None
    complete: bool
    problem: str | None = None   # why the run cannot be read, found while listing
    # False when its folder or parts lead outside the export root: nothing of it is read,
    # not even the footer that would name the run
    readable: bool = True
    # a Neptune model or model version of neptune-exporter's `export-models` (layout.ENTITY_SCOPES)
    container: str | None = None
    # the fsspec file system holding the parts (an export on object storage), None on disk;
    # `parts` are then its paths (PurePosixPath) and `sizes` their sizes from the listing
    fs: Any = None
    sizes: dict[str, int] | None = None


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


class ParquetSource(Source):
    capabilities = Capabilities(replayable=True, transformations={
        "container_as_run": "a Neptune model or model version of neptune-exporter's export-models "
        "(data/<project>/models|model_versions/) moved as a run, its type in sys/container_type"})

    def __init__(self, root: Path, options: dict[str, Any], export: Any = None):
        # `export`: where the export lies when it is not a local folder (objects.ObjectExport)
        self.export = export if export is not None else ExportRoot(root)
        self.batch_rows = BATCH_ROWS
        sources = (self.export.manifest or {}).get("sources") or []
        # Runs keep the identity of where they were first read from, so export+load
        # and a direct copy find the same destination runs.
        self.uri = sources[0] if len(sources) == 1 else f"parquet:{self.export.root}"
        # The origin of a run whose manifest records none: the export's own identity, wherever it
        # lies -- its single source, else its manifest's id, else (neptune-exporter's exports have
        # no manifest) the project and run ids its rows hold, which are the Neptune run's own.
        export_id = (self.export.manifest or {}).get("id")
        self._fallback_uri = (sources[0] if len(sources) == 1 else
                              f"parquet:export/{export_id}" if export_id else
                              EXPORTER_ORIGIN if self.export.manifest is None else
                              f"parquet:{self.export.root}")   # an export older than ids: its path
        # What earlier releases used instead: the export's absolute path (a moved export then
        # looked new).  Still looked up, so destinations loaded back then are found, not duplicated.
        self.legacy_uri = self.uri
        # Also compare each run's parts with its manifest's checksum (`--check`; verify always does).
        self.check = bool(options.get("check"))
        self._checked: set[tuple[str, str]] = set()
        self.skipped_incomplete: list[str] = []

    def source_notes(self) -> list[str]:
        skipped = self.skipped_incomplete
        if not skipped:
            return []
        return [f"{len(skipped)} run(s) incomplete in the source export were not moved: " + ", ".join(skipped[:5])]

    # -- listing -------------------------------------------------------------
    def _runs_on_disk(self) -> Iterator[RunFiles]:
        if not self.export.data.is_dir():
            return
        ours = self.export.manifest is not None
        root = self.export.root
        for project_dir in sorted(p for p in self.export.data.iterdir() if p.is_dir()):
            yield from self._runs_in(project_dir, ours, root, None)
            if (project_dir / layout.EXTENSIONS).is_dir():
                yield from self._runs_in(project_dir / layout.EXTENSIONS, ours, root, None)
            for folder, container in sorted(layout.ENTITY_SCOPES.items()):
                if (project_dir / folder).is_dir():
                    yield from self._runs_in(project_dir / folder, ours, root, container)

    def _runs_in(self, project_dir: Path, ours: bool, root: Path, container: str | None) -> Iterator[RunFiles]:
        """The runs of one folder of `data/` (a project's, or its models / model versions)."""
        stems: dict[str, list[tuple[int, Path]]] = defaultdict(list)
        for part in project_dir.glob("*_part_*.parquet"):
            match = layout.PART_RE.match(part.name)
            if match:
                stems[match["stem"]].append((int(match["n"]), part))
        manifests = {
            p.name[: -len(layout.RUN_MANIFEST_SUFFIX)]: p
            for p in project_dir.glob("*" + layout.RUN_MANIFEST_SUFFIX)
        }
        folder_outside = layout.escape_below(root, project_dir)
        for stem in sorted(set(stems) | set(manifests)):
            numbered = sorted(stems.get(stem, []))
            parts = [p for _, p in numbered]
            mine = parts + ([manifests[stem]] if stem in manifests else [])
            outside = folder_outside or next(filter(None, (layout.escape_below(root, p) for p in mine)), None)
            if outside is not None:
                # Nothing of it is read, not even the footer that names it.
                problem = (f"{outside} leads outside the export root {root} (a symlink to "
                           f"{(root / outside).resolve()}); nothing is read through it. Fix: copy the "
                           f"data into the export instead of linking it")
                yield RunFiles(project_dir, stem, parts, None, True, problem, readable=False, container=container)
                continue
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
            if problem is None and complete:
                problem = _parts_problem(project_dir, [n for n, _ in numbered], parts, manifest)
            yield RunFiles(project_dir, stem, parts, manifest, complete, problem, container=container)

    def _identity(self, run: RunFiles) -> tuple[str, str] | str:
        """(project_id, run_id) as the run records them, or why they cannot be read."""
        if run.manifest:
            return run.manifest["project_id"], run.manifest["run_id"]
        if not run.readable:
            return run.problem or "unreadable"
        if not run.parts:
            return run.problem or "no part files"
        part = run.parts[0]
        try:
            meta = open_parquet(part, run.fs)
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
        key = (str(files.data_dir), files.stem)
        if key not in self._checked:   # once per run: the pipeline reads a run twice (scan, write)
            mismatch = manifest_mismatch(files, self.check)
            if mismatch is not None:
                why, part = mismatch
                raise RunError(why, project_id=run.project_id, run_id=run.run_id,
                               file=str(part or files.data_dir / f"{files.stem}{layout.RUN_MANIFEST_SUFFIX}"))
            self._checked.add(key)
        typed = False    # a model's rows that already say its container type
        for part in files.parts:
            try:
                # Parts trackport writes carry page checksums (CRC32): a flipped bit fails here
                # instead of moving a wrong number.  neptune-exporter's parts have none.
                reader = open_parquet(part, files.fs, page_checksum_verification=True, **STREAMING_READ)
                for batch in reader.iter_batches(batch_size=self.batch_rows):
                    table = conform(batch)
                    _check_rows_belong(table, run.project_id, run.run_id)
                    check_types(table)
                    table = select.filter(table)
                    if files.container and not typed:
                        typed = pc.any(pc.equal(table.column("attribute_path"), layout.CONTAINER_TYPE)).as_py()
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
        if files.container and not typed:
            table = select.filter(rows_to_table([{"attribute_path": layout.CONTAINER_TYPE, "attribute_type": "string",
                                                  "string_value": files.container}],
                                                {"project_id": run.project_id, "run_id": run.run_id}))
            if table.num_rows:
                yield table

    def account(self, run: RunRef, report) -> None:
        """A Neptune model or model version moves as a run, its type in sys/container_type."""
        files = run.locator
        if isinstance(files, RunFiles) and files.container:
            report.transformed("container_as_run", 1, f"{files.container} {run.run_id}")

    def files(self, run: RunRef) -> FileAccess:
        # The files of one project of the export; no component of a path may leave the export root.
        return DirectoryFiles(self.export.project_files_dir(run.project_id), run, self.export.root, "the export")

    def origin(self, run: RunRef) -> Origin:
        """Where the run came from, independent of where the export lies: the origin its run
        manifest records, else the export's identity (docs/format.md, "Origin")."""
        recorded = self._recorded_origin(run)
        if recorded is not None:
            return recorded
        return Origin(self._fallback_uri, run.project_id, run.run_id)

    def legacy_origins(self, run: RunRef) -> list[Origin]:
        if self._recorded_origin(run) is not None or self._fallback_uri == self.legacy_uri:
            return []
        return [Origin(self.legacy_uri, run.project_id, run.run_id)]

    def _recorded_origin(self, run: RunRef) -> Origin | None:
        files: RunFiles = run.locator
        recorded = (files.manifest or {}).get("origin")
        if recorded:
            return Origin(recorded["uri"], recorded["project_id"], recorded["run_id"])
        return None

    def run_version(self, run: RunRef) -> str | None:
        """Changes when the run's data changes.  A run trackport exported: the version its source
        had then, as its manifest records it (so export + load and a direct copy agree, and a
        run exported again after it grew is new).  A neptune-exporter run: its part names and
        sizes (a new part, a part rewritten).  Never paths or modification times: a moved or
        copied export is the same version."""
        files: RunFiles = run.locator
        if files.manifest is not None:
            recorded = files.manifest.get("source_version")
            return recorded if isinstance(recorded, str) else None
        if not files.readable or not files.parts:
            return None
        try:
            parts = [(p.name, p.stat().st_size) for p in files.parts]
        except OSError:
            return None
        return hashlib.blake2b(json.dumps(parts).encode(), digest_size=12).hexdigest()

    def part_bytes(self, run: RunRef) -> int:
        return sum(p.stat().st_size for p in run.locator.parts)

    def run_weight(self, run: RunRef) -> int | None:
        """The bytes of the run's parts, where they can be measured without reading them."""
        try:
            return self.part_bytes(run)
        except (OSError, AttributeError, TypeError):
            return None
