"""DVCLive sink: canonical runs -> one DVCLive folder per run.

Layout: `DIR/<safe(project_id)>/<safe(run_id)>/` (deterministic from the origin), a folder as
`dvclive.Live(dir=...)` writes it (params.yaml, metrics.json, plots/metrics/*.tsv,
plots/images, artifacts, dvc.yaml), plus
- `trackport-origin.json`: written first; whose run this folder is;
- `trackport-data/histograms/*.jsonl`: what DVCLive has no file for;
- `trackport-run.json`: the completion mark, written LAST (atomic rename), with the exact
  single values, series, files and the source's run_version the source reads back.
A folder without the mark is partial: the next copy empties it (keeping the origin file) and
writes the run again, so a repair never leaves a TSV row twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.claims import LOCK_DIR_NAME
from trackport.core.connector import RunPlan, RunWriter, Sink
from trackport.core.errors import RunError, RunScoped
from trackport.core.files import copy_into
from trackport.core.layout import safe, write_json_atomic
from trackport.core.model import DestRun, Origin, RunRef
from trackport.core.schema import PARAM_TYPES, VALUE_COLUMN
from trackport.core.steps import unscaled_list

from . import client
from . import mapping as mp
from .source import DvcLiveSource, read_json

log = logging.getLogger(__name__)

_SINGLE_FILE_TYPES = ("file", "file_set", "artifact")


def origin_dict(origin: Origin) -> dict:
    return {"uri": origin.uri, "project_id": origin.project_id, "run_id": origin.run_id}


class DvcLiveSink(Sink):
    capabilities = mp.CAPABILITIES

    def __init__(self, root: Path, uri: str, options, read_only: bool = False):
        self.root, self.uri, self.options, self.read_only = root, uri, options, read_only

    def run_dir(self, origin: Origin) -> Path:
        return self.root / safe(origin.project_id) / safe(origin.run_id)

    def claim_dir(self) -> Path:
        return self.root / LOCK_DIR_NAME          # hidden: the source never takes it for a run

    def find_run(self, origin: Origin) -> DestRun | None:
        """Read-only: the mark says complete (with the version), the origin file says partial."""
        folder = self.run_dir(origin)
        wanted = origin_dict(origin)
        rel = folder.relative_to(self.root).as_posix()
        mark = read_json(folder / mp.MARKER)
        if mark is not None and mark.get("origin") == wanted and mark.get("complete"):
            return DestRun(rel, True, folder.as_uri(), folder, version=mark.get("version"))
        started = read_json(folder / mp.ORIGIN_FILE)
        if started is not None and started.get("origin") == wanted:
            return DestRun(rel, False, folder.as_uri(), folder)
        return None

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> RunWriter:
        if self.read_only:
            raise RunError("this DVCLive sink was opened read-only",
                           project_id=plan.origin.project_id, run_id=plan.origin.run_id)
        return DvcLiveRunWriter(self, plan, self.run_dir(plan.origin))

    def as_source(self) -> DvcLiveSource:
        return DvcLiveSource(self.root, self.uri, {})

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        return RunRef(origin.project_id, origin.run_id, dest.locator)

    def describe_plan(self, plan: RunPlan) -> list[str]:
        scan, report = plan.scan, plan.report
        system = sorted(p for p in scan.values if p.startswith("sys/"))
        if system:
            report.transformed("sys_in_mark", len(system), system[0])
        texts = sorted(p for p, (t, _) in scan.values.items()
                       if t in ("datetime", "string_set") and not p.startswith("sys/"))
        if texts:
            report.transformed("params_as_yaml_text", len(texts), texts[0])
        hists = sorted(p for p, s in scan.series.items() if s.attribute_type == "histogram_series")
        if hists:
            report.transformed("histogram_beside", sum(scan.series[p].count for p in hists), hists[0])
        rel = self.run_dir(plan.origin).relative_to(self.root).as_posix()
        return [f"DVCLive folder {rel}: params.yaml, metrics.json, plots/metrics/*.tsv"]


class DvcLiveRunWriter(RunScoped, RunWriter):
    def __init__(self, sink: DvcLiveSink, plan: RunPlan, folder: Path):
        self.sink, self.plan, self.report, self.folder = sink, plan, plan.report, folder
        self.err_run = plan.origin
        self.origin = origin_dict(plan.origin)
        self.params: dict[str, tuple[str, Any]] = {}
        self.series: dict[str, dict] = {}        # path -> {type, file, points, last: (step, order, value)}
        self.hists: dict[str, dict] = {}         # path -> {file, points}
        self.files: list[dict] = []
        self.images: list[str] = []              # names below plots/images, for dvc.yaml
        self.used: set[str] = set()
        self.sanitized: set[str] = set()
        self.order = 0
        self._prepare()
        self.live = client.open_live(folder)

    def _prepare(self) -> None:
        """Claim the folder (origin file first), then empty what an earlier, partial copy left."""
        d = self.folder
        for name in (mp.MARKER, mp.ORIGIN_FILE):
            info = read_json(d / name)
            if info is not None and info.get("origin") != self.origin:
                raise self._err(f"{d} holds the run copied from {info.get('origin')}; refusing to mix "
                                f"runs. Fix: use another DIR or remove that folder", file=str(d))
        if d.is_dir() and any(d.iterdir()) and read_json(d / mp.ORIGIN_FILE) is None \
                and read_json(d / mp.MARKER) is None:
            raise self._err(f"{d} is not empty and was not written by trackport; refusing to overwrite it. "
                            f"Fix: use another DIR or move that folder", file=str(d))
        d.mkdir(parents=True, exist_ok=True)
        write_json_atomic(d / mp.ORIGIN_FILE, {"trackport": mp.MARKER_VERSION, "origin": self.origin})
        (d / mp.MARKER).unlink(missing_ok=True)
        for entry in d.iterdir():
            if entry.name == mp.ORIGIN_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    # -- writing ----------------------------------------------------------------

    def write(self, batch: pa.Table) -> None:
        types = batch.column("attribute_type")
        for typ in pc.unique(types).to_pylist():
            part = batch.filter(pc.equal(types, typ))
            if typ in PARAM_TYPES:
                self._params(part, typ)
            elif typ in ("float_series", "string_series"):
                self._metrics(part, typ)
            elif typ == "histogram_series":
                self._histograms(part)
            elif typ == "file_series":
                self._file_series(part)
            elif typ in _SINGLE_FILE_TYPES:
                self._single_files(part, typ)
            else:
                self.report.dropped("unknown_type", part.num_rows, typ)

    def _params(self, table: pa.Table, typ: str) -> None:
        paths = table.column("attribute_path").to_pylist()
        values = table.column(VALUE_COLUMN[typ]).to_pylist()
        for path, value in zip(paths, values):
            if path in self.params and self.params[path] != (typ, value):
                raise self._err(f"attribute {path!r} has two different values in one run")
            self.params[path] = (typ, value)

    @staticmethod
    def _steps(table: pa.Table) -> tuple[list, list]:
        steps = unscaled_list(table.column("step"))
        ts = pc.cast(table.column("timestamp"), pa.int64()).to_pylist()
        return steps, ts

    def _name(self, path: str) -> str:
        name, changed = mp.file_name(path)
        if changed and path not in self.sanitized:
            self.sanitized.add(path)
            self.report.transformed("key_sanitized", 1, path)
        return name

    def _metrics(self, table: pa.Table, typ: str) -> None:
        paths = table.column("attribute_path").to_pylist()
        values = table.column(VALUE_COLUMN[typ]).to_pylist()
        steps, ts = self._steps(table)
        grouped: dict[str, list[tuple]] = {}
        for path, step, ms, value in zip(paths, steps, ts, values):
            if value is None and typ == "string_series":
                self.report.dropped("null_value", 1, path)
                continue
            cell = mp.float_text(value) if typ == "float_series" else value
            grouped.setdefault(path, []).append((step, ms, cell, value))
        for path, rows in grouped.items():
            info = self.series.get(path)
            if info is None:
                name = self._name(path)
                info = self.series[path] = {"type": typ, "file": f"{mp.METRICS_DIR}/{name}.tsv",
                                            "points": 0, "last": None}
            elif info["type"] != typ:
                raise self._err(f"attribute {path!r} is both a {info['type']} and a {typ}")
            writer = client.TsvWriter(self.folder / info["file"], os.path.basename(path) or path)
            info["points"] += writer.append(
                ["" if ms is None else str(ms), mp.step_text(step), cell] for step, ms, cell, _ in rows)
            for step, _, _, value in rows:
                self.order += 1
                key = (step is not None, step if step is not None else 0, self.order)
                if info["last"] is None or key >= info["last"][0]:
                    info["last"] = (key, value)

    def _histograms(self, table: pa.Table) -> None:
        paths = table.column("attribute_path").to_pylist()
        values = table.column("histogram_value").to_pylist()
        steps, ts = self._steps(table)
        grouped: dict[str, list[str]] = {}
        for path, step, ms, h in zip(paths, steps, ts, values):
            if h is None:
                self.report.dropped("null_value", 1, path)
                continue
            grouped.setdefault(path, []).append(json.dumps(
                {"step": None if step is None else mp.step_text(step), "timestamp": ms, "type": h.get("type"),
                 "edges": h.get("edges"), "values": h.get("values")}, ensure_ascii=False))
        for path, lines in grouped.items():
            info = self.hists.get(path)
            if info is None:
                info = self.hists[path] = {"file": f"{mp.DATA_DIR}/histograms/{self._name(path)}.jsonl",
                                           "points": 0}
            target = self.folder / info["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
            info["points"] += len(lines)
            self.report.transformed("histogram_beside", len(lines), path)

    def _unique(self, rel: str) -> str:
        stem, ext = os.path.splitext(rel)
        n = 0
        while rel in self.used:
            n += 1
            rel = f"{stem}_{n}{ext}"
        self.used.add(rel)
        return rel

    def _file_series(self, table: pa.Table) -> None:
        paths = table.column("attribute_path").to_pylist()
        cells = table.column("file_value").to_pylist()
        steps, ts = self._steps(table)
        for path, cell, step, ms in zip(paths, cells, steps, ts):
            source = (cell or {}).get("path")
            if not source:
                self.report.dropped("file_missing_path", 1, path)
                continue
            name = self._name(path)
            point = mp.step_text(step) or "none"
            suffix = mp.image_suffix(self._read(source, 16))
            if suffix is not None:
                # DVC's image slider: plots/images/<name>/<step>.png (https://dvc.org/doc/dvclive/live/log_image)
                rel = self._unique(f"{mp.IMAGES_DIR}/{name}/{point}{suffix}")
                self.images.append(rel[len(mp.IMAGES_DIR) + 1:])
            else:
                ext = os.path.splitext(source.rstrip("/"))[1]
                rel = self._unique(f"{mp.ARTIFACTS_DIR}/{name}/{point}{ext}")
                self.report.transformed("file_as_artifact", 1, path)
            self._store(source, rel)
            self.files.append({"path": path, "type": "file_series", "step": None if step is None else point,
                               "timestamp": ms, "file": source, "stored": rel})

    def _single_files(self, table: pa.Table, typ: str) -> None:
        paths = table.column("attribute_path").to_pylist()
        cells = table.column("file_value").to_pylist()
        steps, ts = self._steps(table)
        for path, cell, step, ms in zip(paths, cells, steps, ts):
            source = (cell or {}).get("path")
            if not source:
                self.report.dropped("file_missing_path", 1, path)
                continue
            base = os.path.basename(source.rstrip("/")) or "file"
            rel = self._unique(f"{mp.ARTIFACTS_DIR}/{self._name(path)}/{base}")
            self._store(source, rel)
            self.report.transformed("file_as_artifact", 1, path)
            self.files.append({"path": path, "type": typ, "step": None if step is None else mp.step_text(step),
                               "timestamp": ms, "file": source, "stored": rel})

    def _read(self, source: str, size: int = -1) -> bytes:
        try:
            with self.plan.files.open(source) as fh:
                return fh.read(size)
        except IsADirectoryError:
            return b""
        except (OSError, ValueError) as exc:
            raise self._err(f"cannot read file: {exc}", file=source) from None

    def _store(self, source: str, rel: str) -> None:
        """Copy a file (or a file set's folder) to `rel` in the run folder, streaming; count it."""
        target = self.folder / rel
        n, size = copy_into(self.plan.files, source, target, self._err)
        self.report.files += n
        self.report.bytes += size

    # -- commit -----------------------------------------------------------------

    def _params_yaml(self) -> dict:
        items, texts, system = [], [], []
        for path, (typ, value) in sorted(self.params.items()):
            if path.startswith("sys/"):
                system.append(path)
                continue
            shown, changed = mp.yaml_param(typ, value)
            if changed:
                texts.append(path)
            items.append((path, shown))
        if system:
            self.report.transformed("sys_in_mark", len(system), system[0])
        if texts:
            self.report.transformed("params_as_yaml_text", len(texts), texts[0])
        nested, flat = mp.nest(items)
        if flat:
            self.report.transformed("key_flattened", len(flat), flat[0])
        return nested

    def _summary(self) -> tuple[dict, Any]:
        items, last_step = [], None
        for path, info in self.series.items():
            if info["last"] is None:
                continue
            (has_step, step, _), value = info["last"]
            if isinstance(value, float) and not np.isfinite(value):
                value = str(value)                 # as Live.log_metric stores nan / inf
            items.append((path, value))
            if has_step and (last_step is None or step > last_step):
                last_step = step
        nested, flat = mp.nest(items)
        if flat:
            self.report.transformed("key_flattened", len(flat), flat[0])
        if last_step is not None:
            last_step = last_step // 10**6 if last_step % 10**6 == 0 else last_step / 10**6
        return nested, last_step

    def commit(self) -> DestRun:
        try:
            params = self._params_yaml()
            summary, step = self._summary()
            try:
                client.finish_live(self.live, params, summary, self.images, step)
            except Exception as exc:       # noqa: BLE001  (dvclive raises its own types)
                raise self._err(f"DVCLive could not write params.yaml / metrics.json: {exc}",
                                file=str(self.folder)) from None
            mark = {
                "trackport": mp.MARKER_VERSION,
                "complete": True,
                "origin": self.origin,
                "version": self.plan.source_version,
                "dvclive": client.dvclive_version(),
                "params": [{"path": p, "type": t, "value": mp.mark_value(t, v)}
                           for p, (t, v) in sorted(self.params.items())],
                "series": {p: {"type": i["type"], "file": i["file"], "points": i["points"]}
                           for p, i in sorted(self.series.items())},
                "histograms": dict(sorted(self.hists.items())),
                "files": self.files,
            }
            write_json_atomic(self.folder / mp.MARKER, mark)
        except BaseException:
            self.abort()
            raise
        rel = self.folder.relative_to(self.sink.root).as_posix()
        return DestRun(rel, True, self.folder.as_uri(), self.folder, version=self.plan.source_version)

    def abort(self) -> None:
        """Nothing is held open between batches: the folder stays partial (no mark)."""
