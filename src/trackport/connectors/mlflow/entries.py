"""What the MLflow readers and writers of extension entries share (registered model versions,
registry_source.py / registry_sink.py; logged models, models_source.py / models_sink.py): an
entry is single values plus `file` attributes under `files/`; its files live under an artifact
location; written, it is collected while the pipeline writes, made into the MLflow object at
commit, and linked to the destination's copy of its source run."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa

from trackport.core.connector import FileAccess, RunPlan, RunWriter
from trackport.core.errors import RunError, RunScoped
from trackport.core.files import materialise
from trackport.core.model import DestRun, Origin
from trackport.core.schema import FILE_TYPES, VALUE_COLUMN, rows_to_table

from .client import ArtifactsUnreachable, errors


class EntryWriter(RunScoped, RunWriter):
    FILES = "files/"      # the prefix of the entry's file attributes
    WHAT = "an entry"     # for messages: "a model version", "a logged model"
    HOLDS = "single values and files only"   # what it holds instead of series, for messages

    def __init__(self, sink, plan: RunPlan, resume: DestRun | None):
        self.sink = sink
        self.moving = sink.registry    # what is moving in this command (registry_sink.Versions)
        self.tracking = sink.tracking
        self.plan = plan
        self.origin = plan.origin
        self.report = plan.report
        self.err_run = plan.origin
        self.values: dict[str, Any] = {}
        self.files: list[tuple[str, str]] = []   # (attribute path, file_value.path)
        self.resume = resume
        self._tmp = Path(tempfile.mkdtemp(prefix="trackport-mlflow-entry-"))

    def write(self, batch: pa.Table) -> None:
        paths = batch.column("attribute_path").to_pylist()
        types = batch.column("attribute_type").to_pylist()
        columns: dict[str, list] = {}
        for i, (path, attribute_type) in enumerate(zip(paths, types)):
            if attribute_type in FILE_TYPES:
                cell = batch.column("file_value")[i].as_py()
                if attribute_type != "file" or not path.startswith(self.FILES) or not cell:
                    raise self._err(f"{attribute_type} {path!r}: {self.WHAT}'s files are "
                                    f"`file` attributes under {self.FILES}")
                self.files.append((path, cell["path"]))
                continue
            column = VALUE_COLUMN.get(attribute_type)
            if column is None or batch.column("step")[i].is_valid:
                raise self._err(f"{attribute_type} {path!r}: {self.WHAT} holds {self.HOLDS}")
            if column not in columns:
                columns[column] = batch.column(column).to_pylist()
            self.values[path] = columns[column][i]

    def _text(self, path: str) -> str | None:
        value = self.values.get(path)
        return None if value is None else str(value)

    def _dest_run(self, project: str | None, run_id: str, what: str, fix: str):
        """The destination's complete copy of a source run (waiting while it moves in this
        command), or a RunError naming `what` (the run), why and `fix`."""
        run_origin = Origin(self.origin.uri, project or "", run_id)
        self.moving.wait_while(lambda moving: run_origin in moving)
        self.sink.forget(run_origin)
        found = self.sink.find_loaded_run(run_origin)
        if found is None or not found.complete:
            state = "not in" if found is None else "incomplete in"
            raise self._err(f"{what} {project}/{run_id} is {state} the destination, so {self.WHAT} "
                            f"cannot link to its copy. Fix: {fix}")
        with errors(self.origin.project_id, self.origin.run_id):
            return self.tracking.get_run(found.id, self.origin.project_id, self.origin.run_id)

    def _stage(self, link: bool) -> Path | None:
        """The entry's files under one folder, by relative path: links to the source's files
        where `link` (copies where a link cannot be made), else copies."""
        if not self.files:
            return None
        staged = self._tmp / "files"
        for path, source in self.files:
            rel = path[len(self.FILES):]
            if not rel or rel.startswith("/") or ".." in rel.split("/"):
                raise self._err(f"file {path!r} is not inside {self.WHAT}'s files", file=source)
            local = materialise(self.plan.files, source, self._tmp / "scratch", self._err)
            target = staged / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                if not link:
                    raise OSError
                os.symlink(local.resolve(), target)
            except OSError:
                shutil.copyfile(local, target)
            self.report.files += 1
            self.report.bytes += local.stat().st_size
        return staged

    def commit(self) -> DestRun:
        try:
            return self._commit()
        finally:
            self._cleanup()

    def _commit(self) -> DestRun:
        raise NotImplementedError

    def abort(self) -> None:
        self.moving.settled(self.origin)
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def ms_or_none(value: Any) -> int | None:
    """Milliseconds of a time value, None when there is none or it is not a time."""
    from .values import ms_from_datetime

    if value is None:
        return None
    try:
        return ms_from_datetime(value)
    except TypeError:
        return None


class EntryFiles(FileAccess):
    """The files of one entry under its artifact location: read in place when the location is
    local, else downloaded one by one into the source's scratch folder (never held in memory)."""

    WHAT = "the entry's files"

    def __init__(self, source, ref):
        self.source = source       # the MlflowSource
        self.ref = ref

    def _rel(self, path: str) -> str:
        """`path` (a file_value.path) relative to the entry's artifact location."""
        raise NotImplementedError

    def _location(self) -> str:
        raise NotImplementedError

    def _scratch(self) -> Path:
        """Where this entry's downloads go (below the source's scratch folder)."""
        raise NotImplementedError

    def local_path(self, path: str) -> Path | None:
        rel = self._rel(path)
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"file path {path!r} is not inside {self.WHAT}")
        location = self._location()
        try:
            base = self.source.tracking.local_artifact_dir(location)
        except ArtifactsUnreachable as exc:
            from .source import unreachable_message

            raise RunError(unreachable_message(exc.artifact_uri), project_id=self.ref.project_id,
                           run_id=self.ref.run_id, file=rel) from None
        if base is not None:
            local = base / rel
            if not local.exists():
                raise FileNotFoundError(rel)
            return local
        dst = self._scratch()
        target = dst / rel
        if target.exists():
            return target
        with errors(self.ref.project_id, self.ref.run_id, file=rel):
            return self.source.tracking.download_run_artifact(location, rel, dst)

    def open(self, path: str) -> BinaryIO:
        return open(self.local_path(path), "rb")


class EntryRows:
    """The rows of one entry as a reader makes them: `add` keeps a value the selection wants,
    `add_files` lists the files under the entry's artifact location, `tables` yields them."""

    def __init__(self, source, ref, select):
        self.source = source       # the MlflowSource
        self.ref = ref
        self.select = select
        self.types = select.types
        self.rows: list[dict] = []

    def add(self, path: str, attribute_type: str, column: str, value: Any) -> None:
        pattern = self.select.attribute_pattern
        if value is None or attribute_type not in self.types:
            return
        if pattern is not None and not path.startswith("sys/") and pattern.search(path) is None:
            return
        self.rows.append({"attribute_path": path, "attribute_type": attribute_type, column: value})

    def add_files(self, location, prefix: str, file_name, unreachable: str) -> None:
        """A `file` row per file under `location()` (asked only when files are wanted): attribute `prefix`<path>, its file_value
        `file_name(run id, path)`; an unreachable location is the drop `unreachable`."""
        if "file" not in self.types:
            return
        try:
            infos = list(self.source.tracking.walk_run_artifacts(location()))
        except ArtifactsUnreachable as exc:
            from .source import unreachable_message

            self.source._note(self.ref.project_id, self.ref.run_id,
                              drop=(unreachable, 1, unreachable_message(exc.artifact_uri)))
            infos = []
        for info in infos:
            self.add(prefix + info.path, "file", "file_value", {"path": file_name(self.ref.run_id, info.path)})

    def tables(self) -> Iterator[pa.Table]:
        for i in range(0, len(self.rows), 50_000):
            table = rows_to_table(self.rows[i:i + 50_000], {"project_id": self.ref.project_id,
                                                             "run_id": self.ref.run_id})
            if table.num_rows:
                yield self.select.filter(table)
