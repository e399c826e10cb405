"""Read back what trackport wrote to LitLogger (for `verify`, `export litlogger://...` and the tests).

Only complete experiments trackport created are read: their trackport/manifest.json artifact
says which attribute each tag, metric, series file and file came from.  Metric points come
from the read endpoint the Lightning SDK offers (`lit_logger_service_get_logger_metrics`),
asking for as many samples as points were sent; tags from the stream itself; everything else
from the experiment's artifacts in the teamspace drive.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from trackport.core.connector import FileAccess, Source
from trackport.core.files import DownloadedFiles, ScratchFolder
from trackport.core.errors import RunError
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.schema import VALUE_COLUMN, rows_to_table

from . import mapping as mp
from .client import LitLoggerClient

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SERIES_TYPES = ("float_series", "string_series", "histogram_series")


class LitLoggerSource(Source):
    capabilities = mp.CAPABILITIES

    def __init__(self, client: LitLoggerClient, uri: str):
        self.client = client
        self.uri = uri
        self._scratch = ScratchFolder("trackport-litlogger-src-")
        self._streams: dict[str, Any] = {}
        self._manifests: dict[str, mp.Manifest] = {}
        self._lock = threading.Lock()

    @property
    def tmp_root(self) -> Path:
        return self._scratch.path

    def close(self) -> None:
        self._scratch.remove()

    # -- runs ----------------------------------------------------------------------
    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        refs = []
        for stream in self.client.list_streams():
            tags = {t.name: t.value for t in (stream.tags or [])}
            if mp.TAG_COMPLETE not in tags or mp.TAG_ORIGIN not in tags:
                continue
            self._streams[str(stream.id)] = stream
            manifest = self._manifest((str(stream.id), stream.name))
            if select.wants_run(manifest.project_id, manifest.run_id):
                refs.append(RunRef(manifest.project_id, manifest.run_id, (str(stream.id), stream.name)))
        refs.sort(key=lambda r: (r.project_id, r.run_id))
        yield from refs

    def _stream(self, locator: tuple[str, str]):
        stream_id, name = locator
        got = self._streams.get(stream_id)
        if got is None:
            got = self.client.get_stream(name)
            if got is None or str(got.id) != stream_id:
                raise RunError(f"LitLogger experiment {name!r} ({stream_id}) is gone")
            self._streams[stream_id] = got
        return got

    def _manifest(self, locator: tuple[str, str]) -> mp.Manifest:
        with self._lock:
            got = self._manifests.get(locator[0])
            if got is not None:
                return got
            stream = self._stream(locator)
            if mp.MANIFEST_PATH not in self.client.artifact_paths(locator[0]):
                raise RunError(f"LitLogger experiment {locator[1]!r} has no trackport manifest (not loaded by trackport)")
            target = self.client.download(stream, locator[1], mp.MANIFEST_PATH,
                                          self.tmp_root / "manifests" / f"{locator[0]}.json")
            manifest = mp.Manifest.loads(target.read_bytes())
            self._manifests[locator[0]] = manifest
            return manifest

    def files(self, run: RunRef) -> FileAccess:
        return DownloadedFiles(lambda folder: self._download_files(run, folder), self._scratch,
                               "trackport-litlogger-read-")

    def origin(self, run: RunRef) -> Origin:
        """The recorded origin: an export of this read-back then loaded again finds the same runs."""
        manifest = self._manifest(run.locator)
        return Origin(manifest.origin_uri, manifest.project_id, manifest.run_id)

    # -- rows ----------------------------------------------------------------------
    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        manifest = self._manifest(run.locator)
        stream = self._stream(run.locator)
        ident = {"project_id": run.project_id, "run_id": run.run_id}
        tags = {t.name: t.value for t in (stream.tags or [])}
        rows = []
        for path, typ in sorted(manifest.types.items()):
            if typ in _SERIES_TYPES or VALUE_COLUMN.get(typ) == "file_value":
                continue
            if path in manifest.params:
                text = manifest.params[path]
            elif path in tags:
                text = tags[path]
            else:
                raise RunError(f"tag {path!r} missing in LitLogger experiment {run.locator[1]!r}",
                               project_id=run.project_id, run_id=run.run_id)
            rows.append({**ident, "attribute_path": path, "attribute_type": typ,
                         VALUE_COLUMN[typ]: None if text is None else mp.param_value(typ, text)})
        if rows:
            yield select.filter(_table(rows))
        if manifest.metrics:
            samples = max(manifest.metrics.values())
            stored = self.client.read_points(run.locator[0], samples) if samples else {}
            for name in sorted(manifest.metrics):
                points = [(step, ms, value) for step, value, ms in stored.get(name, [])]
                points += [(step, ms, mp.special_value(text)) for step, ms, text in manifest.special.get(name, [])]
                points.sort(key=lambda p: (p[0] is not None, p[0] or 0, p[1] is not None, p[1] or 0))
                yield select.filter(_table([
                    {**ident, "attribute_path": name, "attribute_type": "float_series",
                     "step": None if step is None else mp.source_step(step, manifest.multiplier),
                     "timestamp": ms, "float_value": value} for step, ms, value in points]))
        for path, remote in sorted(manifest.series_files.items()):
            yield select.filter(self._series_table(run, stream, manifest, path, remote))
        file_rows, seen = [], set()
        for attr, typ, step, source, _remote, _member, ts in manifest.files:
            if (attr, step, source) in seen:
                continue
            seen.add((attr, step, source))
            file_rows.append({**ident, "attribute_path": attr, "attribute_type": typ,
                              "step": None if step is None else mp.decimal_step(step), "timestamp": ts,
                              "file_value": {"path": source}})
        if file_rows:
            yield select.filter(_table(file_rows))

    def _series_table(self, run: RunRef, stream, manifest: mp.Manifest, path: str, remote: str) -> pa.Table:
        target = self.client.download(stream, run.locator[1], remote,
                                      self.tmp_root / "series" / run.locator[0] / remote.rsplit("/", 1)[-1])
        typ = manifest.types.get(path, "string_series")
        rows = []
        with open(target, encoding="utf-8") as fh:
            for line in fh:
                point = json.loads(line)
                rows.append({"project_id": run.project_id, "run_id": run.run_id, "attribute_path": path,
                             "attribute_type": typ,
                             "step": None if point["step"] is None else mp.decimal_step(point["step"]),
                             "timestamp": point["timestamp"], VALUE_COLUMN[typ]: point["value"]})
        target.unlink(missing_ok=True)
        return _table(rows)

    def _download_files(self, run: RunRef, into: Path) -> None:
        stream = self._stream(run.locator)
        manifest = self._manifest(run.locator)
        for _attr, _typ, _step, source, remote, member, _ts in manifest.files:
            target = into / source / member if member else into / source
            self.client.download(stream, run.locator[1], remote, target)


def _table(rows: list[dict]) -> pa.Table:
    for row in rows:
        ts = row.get("timestamp")
        if isinstance(ts, int):
            row["timestamp"] = _EPOCH + timedelta(milliseconds=ts)
    return rows_to_table(rows)
