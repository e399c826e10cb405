"""Read back what trackport wrote to Pluto (for `verify`, `export pluto://...` and the tests).

Only runs trackport created can be read: their trackport/manifest file says
which attribute each config key, metric, file and series file came from.
Metrics come from the metric API in step windows small enough that the server
never samples them; string/histogram series from their exact series files.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa

from trackport.core.connector import FileAccess, Source
from trackport.core.files import DownloadedFiles, ScratchFolder
from trackport.core.errors import RunError
from trackport.core.model import RunRef, Selection
from trackport.core.schema import SCHEMA, VALUE_COLUMN

from . import mapping as mp
from .client import PlutoClient

_WINDOW_LIMIT = 10_000


def _ms_of(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    return mp.ms(datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(timezone.utc))


class PlutoSource(Source):
    capabilities = mp.CAPABILITIES

    def __init__(self, client: PlutoClient, project: str | None, uri: str):
        self.client = client
        self.project = project
        self.uri = uri
        self._scratch = ScratchFolder("trackport-pluto-src-")
        self._manifests: dict[tuple[str, int], mp.Manifest] = {}

    @property
    def tmp_root(self) -> Path:
        return self._scratch.path

    def close(self) -> None:
        self._scratch.remove()

    # -- runs ----------------------------------------------------------------------

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        if not self.project:
            raise RunError("reading Pluto needs a project: pluto://PROJECT")
        refs = []
        for item in self.client.list_runs(self.project, tags=[mp.TAG_COMPLETE]):
            locator = (self.project, int(item["id"]))
            try:
                manifest = self._manifest(locator)
            except RunError:
                continue
            if select.wants_run(manifest.project_id, manifest.run_id):
                refs.append(RunRef(manifest.project_id, manifest.run_id, locator))
        refs.sort(key=lambda r: (r.project_id, r.run_id))
        yield from refs

    def _manifest(self, locator: tuple[str, int]) -> mp.Manifest:
        got = self._manifests.get(locator)
        if got is not None:
            return got
        project, run_id = locator
        latest = mp.latest_manifest(self.client.files(project, run_id, mp.MANIFEST_LOG))
        if latest is None:
            raise RunError(f"Pluto run {run_id} has no trackport manifest (not loaded by trackport)")
        target = self.tmp_root / "manifests" / f"{run_id}.json"
        self.client.download(latest[1]["downloadUrl"], target)   # a grown run's newest refresh
        manifest = mp.Manifest.loads(target.read_bytes())
        self._manifests[locator] = manifest
        return manifest

    def files(self, run: RunRef) -> FileAccess:
        return DownloadedFiles(lambda folder: self._download_files(run, folder), self._scratch,
                               "trackport-pluto-read-")

    def origin(self, run: RunRef):
        from trackport.core.model import Origin

        return Origin(self.uri, run.project_id, run.run_id)

    # -- rows ----------------------------------------------------------------------

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        locator = run.locator
        manifest = self._manifest(locator)
        project, run_id = locator
        details = self.client.run_details(project, run_id)
        ident = {"project_id": run.project_id, "run_id": run.run_id}
        config = details.get("config") or {}
        if isinstance(config, str):
            config = json.loads(config)
        rows = []
        for path, typ in manifest.types.items():
            if typ in VALUE_COLUMN and VALUE_COLUMN[typ] not in ("file_value",) and typ not in (
                    "float_series", "string_series", "histogram_series") and path in config:
                rows.append({**ident, "attribute_path": path, "attribute_type": typ,
                             VALUE_COLUMN[typ]: mp.config_value(typ, config[path])})
        if rows:
            yield select.filter(_table(rows))
        for path, stats in sorted(manifest.series.items()):
            yield select.filter(self._metric_table(run, manifest, path, stats))
        for path, name in sorted(manifest.series_files.items()):
            yield select.filter(self._series_table(run, manifest, path, name))
        file_rows = []
        seen = set()
        for attr, typ, step, source, _log, _name, _dest, member, ts in manifest.files:
            key = (attr, step, source)
            if key in seen:
                continue
            seen.add(key)
            file_rows.append({**ident, "attribute_path": attr, "attribute_type": typ,
                              "step": mp.decimal_step(step), "timestamp": ts,
                              "file_value": {"path": source}})
        if file_rows:
            yield select.filter(_table(file_rows))

    def _metric_table(self, run: RunRef, manifest: mp.Manifest, path: str, stats: dict) -> pa.Table:
        project, run_id = run.locator
        points: dict[tuple[int, int], float] = {}
        if stats.get("count"):
            lo, hi = int(stats["min"]), int(stats["max"])
            # windows expected to hold about half the server's limit each, halved again when full
            parts = max(1, min(hi - lo + 1, -(-2 * int(stats["count"]) // _WINDOW_LIMIT)))
            width = -(-(hi - lo + 1) // parts)
            windows = [(a, min(hi, a + width - 1)) for a in range(lo, hi + 1, width)]
            while windows:
                lo, hi = windows.pop()
                got = self.client.metrics(project, run_id, path, lo, hi, _WINDOW_LIMIT)
                if len(got) >= _WINDOW_LIMIT and hi > lo:
                    mid = lo + (hi - lo) // 2
                    windows += [(lo, mid), (mid + 1, hi)]
                    continue
                for point in got:
                    points[(int(point["step"]), _ms_of(point.get("time")))] = float(point["value"])
        for step, ts, text in manifest.nonfinite.get(path, []):
            if step is None:
                continue
            points[(int(step), int(ts))] = {"NaN": float("nan"), "inf": float("inf"), "-inf": float("-inf")}[text]
        keys = sorted(points)
        n = len(keys)
        return _conform(pa.table({
            "project_id": pa.array([run.project_id] * n, pa.string()),
            "run_id": pa.array([run.run_id] * n, pa.string()),
            "attribute_path": pa.array([path] * n, pa.string()),
            "attribute_type": pa.array(["float_series"] * n, pa.string()),
            "step": pa.array([mp.source_step(k[0], manifest.multiplier) for k in keys], SCHEMA.field("step").type),
            "timestamp": pa.array([k[1] for k in keys], pa.int64()).cast(SCHEMA.field("timestamp").type),
            "float_value": pa.array([points[k] for k in keys], pa.float64()),
        }))

    def _series_table(self, run: RunRef, manifest: mp.Manifest, path: str, name: str) -> pa.Table:
        project, run_id = run.locator
        files = [f for f in self.client.files(project, run_id, mp.series_log(path)) if f.get("fileName") == name]
        if not files:
            raise RunError(f"series file of {path!r} missing in Pluto run {run_id}",
                           project_id=run.project_id, run_id=run.run_id)
        target = self.tmp_root / "series" / str(run_id) / name
        self.client.download(files[0]["downloadUrl"], target)
        typ = manifest.types.get(path, "string_series")
        rows = []
        with open(target, encoding="utf-8") as fh:
            for line in fh:
                point = json.loads(line)
                rows.append({"project_id": run.project_id, "run_id": run.run_id, "attribute_path": path,
                             "attribute_type": typ, "step": mp.decimal_step(point["step"]),
                             "timestamp": point["timestamp"], VALUE_COLUMN[typ]: point["value"]})
        target.unlink(missing_ok=True)
        return _table(rows)

    def _download_files(self, run: RunRef, into: Path) -> None:
        project, run_id = run.locator
        manifest = self._manifest(run.locator)
        listing: dict[tuple[str, str, Any], str] = {}
        for log_name in sorted({f[4] for f in manifest.files}):
            for item in self.client.files(project, run_id, log_name):
                listing[(item.get("logName", log_name), item["fileName"], item.get("step"))] = item["downloadUrl"]
        for attr, typ, step, source, log_name, name, dest, member, _ts in manifest.files:
            url = listing.get((log_name, name, dest))
            if url is None:
                continue
            target = into / source / member if member else into / source
            self.client.download(url, target)


def _conform(table: pa.Table) -> pa.Table:
    from trackport.core.schema import conform

    return conform(table)


def _table(rows: list[dict]) -> pa.Table:
    from trackport.core.schema import rows_to_table

    for row in rows:
        ts = row.get("timestamp")
        if isinstance(ts, int):
            row["timestamp"] = _EPOCH + timedelta(milliseconds=ts)
    return rows_to_table(rows)
