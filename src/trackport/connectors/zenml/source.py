"""ZenML source: the model versions trackport wrote, read back exactly from their artifacts.

Lists the model versions of MODEL (or of every model with `zenml:`) whose run metadata holds a
complete trackport mark, and reads each run from the artifact version the mark names
(rows.arrow, files/).  Model versions trackport did not write are left out and counted in
the report's notes: ZenML keeps no per-point metric history of its own to read (docs/zenml.md).
Reading changes nothing in the store: ZenML extracts the artifact into a temporary folder
outside it, removed when the source closes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from trackport.core.capabilities import Capabilities
from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError
from trackport.core.model import Origin, RunRef, Selection

from . import client
from . import mapping as mp


class ArtifactFiles(FileAccess):
    def __init__(self, root: Path, run: RunRef):
        self.root, self.run = root, run

    def local_path(self, path: str) -> Path:
        from trackport.core.layout import resolve_inside

        try:
            return resolve_inside(self.root, path)
        except ValueError as exc:
            raise RunError(str(exc), project_id=self.run.project_id, run_id=self.run.run_id, file=path) from None

    def open(self, path: str) -> BinaryIO:
        return self.local_path(path).open("rb")


class ZenmlSource(Source):
    capabilities = Capabilities(replayable=True)

    def __init__(self, config_dir: Path | None, model: str | None, uri: str):
        self.config_dir, self.model, self.uri = config_dir, model, uri
        self._client = None
        self._extracted: dict[str, Path] = {}
        self._foreign = 0

    @property
    def client(self):
        if self._client is None:
            self._client = client.connect(self.config_dir)
        return self._client

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        c = self.client
        if self.model is not None:
            models = [self.model] if client.get_model(c, self.model) is not None else []
        else:
            models = client.list_models(c)
        found = []
        self._foreign = 0
        for model in models:
            for version in client.list_versions(c, model):
                mark = (version.run_metadata or {}).get(mp.MARK_KEY) or {}
                origin = mark.get("origin")
                if not mark.get("complete") or not origin or not mark.get("artifact"):
                    self._foreign += 1
                    continue
                if select.wants_run(origin["project_id"], origin["run_id"]):
                    found.append((model, version.name, RunRef(origin["project_id"], origin["run_id"], {
                        "model": model, "version": version.name, "artifact": mark["artifact"],
                        "origin": origin, "source_version": mark.get("version")})))
        for _, _, ref in sorted(found, key=lambda f: (f[0], f[1])):
            yield ref

    def _folder(self, run: RunRef) -> Path:
        artifact = run.locator["artifact"]
        if artifact not in self._extracted:
            try:
                self._extracted[artifact] = client.load_run_artifact(self.client, artifact)
            except Exception as exc:
                raise RunError(f"cannot load ZenML artifact version {artifact} of model version "
                               f"{run.locator['model']}/{run.locator['version']} ({type(exc).__name__}: "
                               f"{exc}); fix: copy the run again (it is then rewritten)",
                               project_id=run.project_id, run_id=run.run_id) from None
        return self._extracted[artifact]

    def read_run(self, run: RunRef, select: Selection):
        import pyarrow as pa

        rows = self._folder(run) / mp.ROWS_FILE
        if not rows.is_file():
            raise RunError(f"the ZenML artifact {run.locator['artifact']} holds no {mp.ROWS_FILE}; "
                           f"fix: copy the run again", project_id=run.project_id, run_id=run.run_id)
        with pa.memory_map(str(rows)) as stream:
            reader = pa.ipc.open_file(stream)
            for i in range(reader.num_record_batches):
                yield select.filter(pa.Table.from_batches([reader.get_batch(i)]))

    def files(self, run: RunRef) -> FileAccess:
        return ArtifactFiles(self._folder(run) / mp.FILES_DIR, run)

    def origin(self, run: RunRef) -> Origin:
        recorded = run.locator["origin"]
        return Origin(recorded["uri"], recorded["project_id"], recorded["run_id"])

    def run_version(self, run: RunRef) -> str | None:
        return run.locator["artifact"]          # a new artifact version whenever the run is rewritten

    def describe_run(self, run: RunRef) -> str:
        return f"{run.locator['model']}/{run.locator['version']} ({run.project_id}/{run.run_id})"

    def source_notes(self) -> list[str]:
        if self._foreign:
            return [f"{self._foreign} ZenML model version(s) without a complete trackport mark were left "
                    f"out (not written by trackport, or still partial); docs/zenml.md"]
        return []

    def close(self) -> None:
        for folder in self._extracted.values():
            shutil.rmtree(folder, ignore_errors=True)
        self._extracted.clear()
