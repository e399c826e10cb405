"""A complete connector in one file, the example of docs/connectors.md: `arrowdir:DIR`.

Each run becomes `DIR/<safe(project)>/<safe(run)>/`: `rows.arrow` (the canonical rows, Arrow IPC),
`files/` (the run's files) and `mark.json`, written last: the completion mark, holding the origin
and the source's run_version.  It is both a source and a destination, keeps everything (no
declared transformation), and follows every rule of the contract (core/connector.py).  A real
connector splits this into `__init__.py` (SPEC, open_source, open_sink; no SDK import),
`mapping.py`, `source.py` / `sink.py` and `client.py`; its tests call trackport.testing.conformance.
tests/test_connectors.py installs it as a third-party package through an entry point.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

from trackport.core.capabilities import Capabilities
from trackport.core.connector import FileAccess, RunPlan, RunWriter, Sink, Source
from trackport.core.errors import RunError, UsageError
from trackport.core.files import DirectoryFiles
from trackport.core.model import DestRun, Origin, RunRef, Selection
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("arrowdir",),
    summary="arrowdir:DIR (example connector: one Arrow file per run)",
    options=(ConnectorOption("--arrowdir-batch-rows", "arrowdir: rows per record batch (default 65536).",
                             "int", envvar=("ARROWDIR_BATCH_ROWS",)),),
)


def _root(parsed: ParsedUri) -> Path:
    return parsed.directory("arrowdir:./runs").resolve()     # empty: a UsageError (exit 2)


def open_source(parsed: ParsedUri, options: dict[str, Any]) -> "ArrowDirSource":
    root = _root(parsed)
    if not root.is_dir():
        raise UsageError(f"no arrowdir folder at {root}")
    return ArrowDirSource(root, options)


def open_sink(parsed: ParsedUri, options: dict[str, Any], read_only: bool = False) -> "ArrowDirSink":
    return ArrowDirSink(_root(parsed), options, read_only)     # read_only: create nothing


class ArrowDirSource(Source):
    capabilities = Capabilities(replayable=True)     # read_run is cheap to repeat: no spool needed

    def __init__(self, root: Path, options: dict[str, Any]):
        self.root, self.uri, self.options = root, f"arrowdir:{root}", options

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        for mark in sorted(self.root.glob("*/*/mark.json")):         # deterministic order
            meta = json.loads(mark.read_text())
            if select.wants_run(meta["project_id"], meta["run_id"]):     # --project, --run
                yield RunRef(meta["project_id"], meta["run_id"], locator=mark.parent)

    def read_run(self, run: RunRef, select: Selection):
        import pyarrow as pa

        with pa.memory_map(str(run.locator / "rows.arrow")) as stream:
            reader = pa.ipc.open_file(stream)
            for i in range(reader.num_record_batches):                # bounded batches
                yield select.filter(pa.Table.from_batches([reader.get_batch(i)]))   # --classes, --attribute

    def files(self, run: RunRef) -> FileAccess:
        return DirectoryFiles(run.locator / "files", run)    # a path escaping the run's folder is refused

    def origin(self, run: RunRef) -> Origin:
        # The origin recorded when the run was written: export -> load finds the same runs.
        recorded = json.loads((run.locator / "mark.json").read_text())["origin"]
        return Origin(recorded["uri"], recorded["project_id"], recorded["run_id"])


class ArrowDirSink(Sink):
    capabilities = Capabilities(integer_steps=False)   # decimal steps kept; no transformation declared

    def __init__(self, root: Path, options: dict[str, Any], read_only: bool):
        self.root, self.uri, self.options, self.read_only = root, f"arrowdir:{root}", options, read_only

    def run_dir(self, origin: Origin) -> Path:
        from trackport.core.layout import safe

        return self.root / safe(origin.project_id) / safe(origin.run_id)

    def find_run(self, origin: Origin) -> DestRun | None:
        folder = self.run_dir(origin)
        if not folder.is_dir():
            return None                                           # new
        mark = folder / "mark.json"
        if not mark.exists():
            return DestRun(str(folder), complete=False, locator=folder)   # partial: repaired
        meta = json.loads(mark.read_text())
        return DestRun(str(folder), complete=True, locator=folder, version=meta.get("version"))

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this arrowdir sink was opened read-only",
                           project_id=plan.origin.project_id, run_id=plan.origin.run_id)
        folder = self.run_dir(plan.origin)
        if resume is not None:        # partial, or complete but the source run grew: start again
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return ArrowDirWriter(self, plan, folder)

    def as_source(self) -> Source:
        return ArrowDirSource(self.root, self.options)

    # dest_ref (inherited) hands DestRun.locator, the run folder, to as_source(): the locator
    # round trip that lets verify read exactly the run it found.


class ArrowDirWriter(RunWriter):
    def __init__(self, sink: ArrowDirSink, plan: RunPlan, folder: Path):
        self.sink, self.plan, self.folder, self.writer = sink, plan, folder, None

    def write(self, batch) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        from trackport.core.schema import COLUMNS, SCHEMA

        batch = batch.select(list(COLUMNS)).cast(SCHEMA)     # drops dest_step, keeps the canonical types
        if self.writer is None:
            self.writer = pa.ipc.new_file(str(self.folder / "rows.arrow"), SCHEMA)
        self.writer.write_table(batch, max_chunksize=self.sink.options.get("arrowdir_batch_rows") or 65_536)
        paths = pc.struct_field(batch.column("file_value"), "path").drop_null()
        for path in paths.to_pylist():
            self._copy_file(path)

    def _copy_file(self, path: str) -> None:
        from trackport.core.layout import resolve_inside

        target = resolve_inside(self.folder / "files", path)
        target.parent.mkdir(parents=True, exist_ok=True)
        local = self.plan.files.local_path(path)
        if local is not None and local.is_dir():        # file_set / artifact: a folder
            shutil.copytree(local, target, dirs_exist_ok=True)
            copied = [p for p in target.rglob("*") if p.is_file()]
        else:
            with self.plan.files.open(path) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            copied = [target]
        self.plan.report.files += len(copied)                     # file and byte accounting
        self.plan.report.bytes += sum(p.stat().st_size for p in copied)

    def commit(self) -> DestRun:
        if self.writer is None:                  # a run without rows still gets its (empty) file
            import pyarrow as pa

            from trackport.core.schema import SCHEMA

            self.writer = pa.ipc.new_file(str(self.folder / "rows.arrow"), SCHEMA)
        self.writer.close()
        origin = self.plan.origin
        mark = {"origin": {"uri": origin.uri, "project_id": origin.project_id, "run_id": origin.run_id},
                "project_id": origin.project_id, "run_id": origin.run_id,
                "version": self.plan.source_version}
        tmp = self.folder / "mark.json.tmp"
        tmp.write_text(json.dumps(mark))
        tmp.replace(self.folder / "mark.json")           # the completion mark, last and atomic
        return DestRun(str(self.folder), complete=True, locator=self.folder, version=self.plan.source_version)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()           # no mark: the next command finds the run partial and redoes it
