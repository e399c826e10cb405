"""Writes canonical exports in neptune-exporter's layout, plus manifests.

Parts are written as `.parquet.tmp` and renamed on commit with part_0 last (so
a neptune-exporter reader never sees half a run); the run manifest is written
after that, and only it marks the run complete for trackport.
"""

from __future__ import annotations

import filecmp
import glob
import hashlib
import os
import shutil
import tempfile
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..._version import __version__
from ...core.capabilities import Capabilities
from ...core.claims import LOCK_DIR_NAME, file_lock
from ...core.connector import RunPlan, RunWriter, Sink
from ...core.errors import RunError
from ...core.model import DestRun, Origin, RunRef
from ...core.schema import COLUMNS, SCHEMA
from . import layout
from .source import ParquetSource, RunFiles, manifest_mismatch

DEFAULT_PART_BYTES = 50 * 1024 * 1024


class ParquetSink(Sink):
    capabilities = Capabilities(integer_steps=False, replayable=True)

    def __init__(self, root: Path, options: dict[str, Any], read_only: bool = False):
        self.root = root
        self.read_only = read_only
        self.uri = f"parquet:{root}"
        self.part_bytes = int(options.get("part_size") or DEFAULT_PART_BYTES)
        self._lock = threading.Lock()
        self._manifest_ready = False
        self.options = options
        # (project_id, file path) -> the run that wrote it in this export session: two runs of
        # a project sharing a file path would overwrite each other's file (issue 25 item 6).
        self._file_owners: dict[tuple[str, str], tuple[str, Path]] = {}

    def claim_file(self, project_id: str, run_id: str, path: str, source: Path) -> bool:
        """May this run write `path`?  True: it is the path's writer in this session.  False:
        another run of the project writes the same bytes there (an MLflow experiment holding a
        run and trackport's copy of it names both files alike), so there is nothing to write.
        A RunError when the other run's file differs: one path never holds two runs' bytes."""
        with self._lock:
            owner, owner_source = self._file_owners.setdefault((project_id, path), (run_id, source))
        if owner == run_id:
            return True
        if _same_content(owner_source, source):
            return False
        raise RunError(f"file path {path!r} is also the file of run {owner!r} of this project, with "
                       f"other bytes; refusing to overwrite it. Fix: export these runs into separate "
                       f"folders; a source giving two runs one file path is a trackport bug, please report it",
                       project_id=project_id, run_id=run_id, file=path)

    def claim_dir(self) -> Path:
        """Inside the export: every process writing this folder takes turns per run (core/claims.py)."""
        return self.root / LOCK_DIR_NAME

    def preflight(self, read_only: bool = False) -> None:
        from ...core.connector import check_output_folder

        check_output_folder(self.root, self.uri, read_only or self.read_only,
                            "parquet:./export")

    def _ensure_export_manifest(self, origin_uri: str) -> None:
        # The export manifest is read, changed and written again: one process at a time.
        with self._lock, file_lock(self.claim_dir() / "export-manifest.lock",
                                   f"the export manifest of {self.root}"):
            path = self.root / layout.EXPORT_MANIFEST
            try:
                existing = layout.read_json(path) if path.exists() else None
            except (OSError, ValueError) as exc:
                raise RunError(f"the export manifest is damaged ({' '.join(str(exc).split())}); nothing was "
                               f"written. Fix: restore it, or export into a new folder", file=str(path)) from None
            manifest = existing if existing is not None else {
                "format_version": layout.FORMAT_VERSION,
                "id": uuid.uuid4().hex,     # the export's identity, wherever it is moved or copied
                "producer": f"trackport {__version__}",
                "created": datetime.now(timezone.utc).isoformat(),
                "sources": [],
            }
            if not self._manifest_ready:
                # A process killed inside write_json_atomic leaves its temporary file behind.
                for old in self.root.glob(f".{layout.EXPORT_MANIFEST}.*.tmp"):
                    old.unlink(missing_ok=True)
                self._manifest_ready = True
            if origin_uri not in manifest["sources"]:
                manifest["sources"].append(origin_uri)
                layout.write_json_atomic(path, manifest)
            elif not path.exists():
                layout.write_json_atomic(path, manifest)

    def find_run(self, origin: Origin) -> DestRun | None:
        manifest_path = layout.run_manifest_path(self.root, origin.project_id, origin.run_id)
        if manifest_path.exists():
            try:
                manifest = layout.read_json(manifest_path)
                version = manifest.get("source_version")
                parts = [manifest_path.parent / name for name in manifest["parts"]]
            except (OSError, ValueError, AttributeError, KeyError, TypeError):
                # a damaged completion mark: the run is partial, and writing it again repairs it
                return DestRun(f"{origin.project_id}/{origin.run_id}", False)
            stem = manifest_path.name[: -len(layout.RUN_MANIFEST_SUFFIX)]
            on_disk = sorted(p.name for p in manifest_path.parent.glob(f"{stem}_part_*.parquet"))
            unlisted = [name for name in on_disk if name not in manifest["parts"]]
            damage = (f"{unlisted[0]} is not listed in the run manifest: the run is damaged" if unlisted else
                      (manifest_mismatch(RunFiles(manifest_path.parent, stem, parts, manifest, True), False)
                       or (None,))[0])
            if damage:
                # parts that no longer hold what the mark recorded: checked, not trusted; rewritten
                return DestRun(f"{origin.project_id}/{origin.run_id}", False, damage=damage)
            return DestRun(f"{origin.project_id}/{origin.run_id}", True, locator=manifest_path, version=version)
        project_dir = layout.project_data_dir(self.root, origin.project_id)
        stem = layout.safe(origin.run_id)
        if project_dir.is_dir() and any(project_dir.glob(f"{stem}_part_*")):
            return DestRun(f"{origin.project_id}/{origin.run_id}", False)
        return None

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this parquet sink was opened read-only", project_id=plan.origin.project_id,
                           run_id=plan.origin.run_id)
        self._ensure_export_manifest(plan.origin.uri)
        return ParquetRunWriter(self, plan)

    def as_source(self) -> ParquetSource:
        return ParquetSource(self.root, self.options)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        manifest_path = layout.run_manifest_path(self.root, origin.project_id, origin.run_id)
        if not manifest_path.exists():
            raise RunError("not found in the export", project_id=origin.project_id, run_id=origin.run_id)
        manifest = layout.read_json(manifest_path)
        parts = [manifest_path.parent / name for name in manifest["parts"]]
        stem = manifest_path.name[: -len(layout.RUN_MANIFEST_SUFFIX)]
        return RunRef(origin.project_id, origin.run_id, RunFiles(manifest_path.parent, stem, parts, manifest, True))


class ParquetRunWriter(RunWriter):
    def __init__(self, sink: ParquetSink, plan: RunPlan):
        self.sink = sink
        self.plan = plan
        self.project_id = plan.ref.project_id
        self.run_id = plan.ref.run_id
        self.data_dir = layout.project_data_dir(sink.root, self.project_id)
        self.files_dir = layout.project_files_dir(sink.root, self.project_id)
        self.stem = layout.safe(self.run_id)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._clear_leftovers()
        self.part = -1
        self.parts: list[Path] = []
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.attributes: dict[str, dict] = {}
        self.copied: set[str] = set()
        self.file_bytes = 0

    def _clear_leftovers(self) -> None:
        """A rerun rewrites a partial run from scratch: no stale part may survive."""
        for old in self.data_dir.glob(f"{self.stem}_part_*"):
            old.unlink()
        manifest = layout.run_manifest_path(self.sink.root, self.project_id, self.run_id)
        manifest.unlink(missing_ok=True)
        # A process killed inside write_json_atomic leaves its temporary file behind.
        for old in self.data_dir.glob(f".{manifest.name}.*.tmp"):
            old.unlink(missing_ok=True)

    def _tmp(self, n: int) -> Path:
        return self.data_dir / f"{self.stem}_part_{n}.parquet.tmp"

    def _open_part(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.part += 1
        path = self._tmp(self.part)
        self.parts.append(path)
        # Page checksums let our reader refuse a part with a flipped bit (readers that do not
        # check them, neptune-exporter's included, ignore them).
        self.writer = pq.ParquetWriter(path, SCHEMA, compression="snappy", write_page_checksum=True)

    def write(self, batch: pa.Table) -> None:
        table = batch.select(list(COLUMNS)) if batch.column_names != list(COLUMNS) else batch
        if table.num_rows == 0:
            return
        if self.writer is None or self._part_size() > self.sink.part_bytes:
            self._open_part()
        self.writer.write_table(table.cast(SCHEMA))
        self.rows += table.num_rows
        self._account(table)
        self._copy_files(table)

    def _part_size(self) -> int:
        """Bytes written into the current part so far."""
        return self.parts[-1].stat().st_size

    def _account(self, table: pa.Table) -> None:
        stats = table.group_by(["attribute_path", "attribute_type"]).aggregate(
            [("step", "min"), ("step", "max"), ("attribute_path", "count")]
        )
        for path, typ, lo, hi, n in zip(*(stats.column(i).to_pylist() for i in range(5))):
            entry = self.attributes.setdefault(path, {"type": typ, "rows": 0, "min_step": None, "max_step": None})
            entry["rows"] += n
            if lo is not None:
                entry["min_step"] = lo if entry["min_step"] is None else min(lo, entry["min_step"])
                entry["max_step"] = hi if entry["max_step"] is None else max(hi, entry["max_step"])

    def _copy_files(self, table: pa.Table) -> None:
        mask = pc.is_valid(table.column("file_value"))
        if not pc.any(mask).as_py():
            return
        rows = table.filter(mask)
        paths = pc.struct_field(rows.column("file_value"), "path").to_pylist()
        for path in paths:
            if path in self.copied or path is None:
                continue
            source = self.plan.files.local_path(path)
            if source is None:
                raise RunError("source cannot give a local file", project_id=self.project_id, run_id=self.run_id, file=path)
            target = layout.resolve_inside(self.files_dir, path)
            write = self.sink.claim_file(self.project_id, self.run_id, path, source)
            target.parent.mkdir(parents=True, exist_ok=True)
            copy = _copy_atomic if write else _copy_same_bytes
            if source.is_dir():
                members = [f for f in source.rglob("*") if f.is_file()]   # a file_set: count its files
                for member in members:
                    copy(member, target / member.relative_to(source))
                size, count = sum(f.stat().st_size for f in members), len(members)
            else:
                copy(source, target)
                size, count = source.stat().st_size, 1
            self.copied.add(path)
            self.file_bytes += size
            self.plan.report.files += count
            self.plan.report.bytes += size

    def commit(self) -> DestRun:
        if self.writer is None:  # an empty run still gets part_0, for readers of the old layout
            self._open_part()
        self.writer.close()
        self.writer = None
        digest = hashlib.blake2b(digest_size=16)
        finals = []
        for tmp in reversed(self.parts):  # part_0 last: old readers take it as "complete"
            final = tmp.with_suffix("")
            tmp.replace(final)
            finals.append(final)
        for final in reversed(finals):
            with open(final, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        scan = self.plan.scan
        manifest = {
            "format_version": layout.FORMAT_VERSION,
            "project_id": self.project_id,
            "run_id": self.run_id,
            "origin": {"uri": self.plan.origin.uri, "project_id": self.plan.origin.project_id,
                       "run_id": self.plan.origin.run_id},
            "parts": [p.name for p in reversed(finals)],
            "rows": self.rows,
            "attributes": {k: {**v, "min_step": _text(v["min_step"]), "max_step": _text(v["max_step"])}
                           for k, v in sorted(self.attributes.items())},
            "files": len(self.copied),
            "file_bytes": self.file_bytes,
            "checksum": "blake2b-128:" + digest.hexdigest(),
            "source_modification_time": _text(scan.value("sys/modification_time")),
            "source_version": self.plan.source_version,
            "written_at": datetime.now(timezone.utc).isoformat(),
        }
        path = layout.run_manifest_path(self.sink.root, self.project_id, self.run_id)
        layout.write_json_atomic(path, manifest)
        return DestRun(f"{self.project_id}/{self.run_id}", True, locator=path)

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
            self.writer = None
        for tmp in self.parts:
            tmp.unlink(missing_ok=True)


def _same_content(a: Path, b: Path) -> bool:
    """Two files, or two folders of files (a file_set), hold the same bytes."""
    if a.is_dir() and b.is_dir():
        names_a = sorted(f.relative_to(a) for f in a.rglob("*") if f.is_file())
        names_b = sorted(f.relative_to(b) for f in b.rglob("*") if f.is_file())
        return names_a == names_b and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names_a)
    return a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)


def _copy_same_bytes(source: Path, target: Path) -> None:
    """The file of a run that shares its path with another run's file of the same bytes (whose
    writer may be copying it right now): write it too unless it is there, never sweeping the
    other writer's temporary file; both renames put the same bytes in place."""
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return
    try:
        _copy_atomic(source, target, sweep=False)
    except FileNotFoundError:
        if not (target.is_file() and filecmp.cmp(source, target, shallow=False)):
            raise


def _copy_atomic(source: Path, target: Path, sweep: bool = True) -> None:
    """Copy through a temporary file in the target's folder, then rename: a reader (or a
    concurrent writer) sees the old file or the whole new one, never a mix of two."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # A copy killed half-way left its temporary file; the run's claim makes this writer the
    # only one of the target, so whatever temporary file it has is stale.
    for stale in target.parent.glob(f".{glob.escape(target.name)}.*.tmp") if sweep else ():
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _text(value: Any) -> str | None:
    return None if value is None else str(value)

