"""Aim source: every run of a repository, read without changing it (client.AimReader).

A run trackport wrote (it holds the `__trackport` param) comes back exactly as it went in,
through its record: param types, params that could not nest, the step multiplier, the
files and their original paths, exact histograms.  Any other run is read as Aim shows it
(docs/aim.md, "Aim as a source").
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow as pa

from trackport.core.capabilities import Capabilities
from trackport.core.connector import FileAccess, Source
from trackport.core.errors import RunError
from trackport.core.model import Origin, RunRef, Selection
from trackport.core.schema import STEP_TYPE, SeriesColumns, rows_to_table

from . import mapping as mp

BATCH_POINTS = 50_000
NATIVE_ORIGIN = "aim"      # Aim run hashes are unique ids: stable wherever the repository lies


def _meta_value(meta, key: str) -> Any:
    try:
        return meta.collect(key)
    except KeyError:
        return None


def _dt(seconds: Any) -> datetime | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(round(float(seconds) * 1000) / 1000, tz=timezone.utc)


class RunFiles(FileAccess):
    def __init__(self, source: "AimSource", ref: RunRef, where: dict[str, tuple]):
        self.source, self.ref, self.where = source, ref, where

    def local_path(self, path: str) -> Path | None:
        got = self.where.get(path)
        if got is None:
            raise RunError("no such file in the Aim run", project_id=self.ref.project_id,
                           run_id=self.ref.run_id, file=path)
        kind = got[0]
        if kind == "local":
            return got[1]
        return self.source._materialize(self.ref, path, got)

    def open(self, path: str) -> BinaryIO:
        return open(self.local_path(path), "rb")


class AimSource(Source):
    capabilities = Capabilities(replayable=True)

    def __init__(self, root: Path):
        from .client import AimReader

        self.root = Path(root)
        self.uri = f"aim:{self.root}"
        self.reader = AimReader(self.root)
        self._info: dict[str, dict] = {}
        self._accounts: dict[str, Counter] = {}
        self._tmp: Path | None = None

    # -- runs ----------------------------------------------------------------------------

    def _run_info(self, run_hash: str) -> dict:
        info = self._info.get(run_hash)
        if info is None:
            meta = self.reader.meta(run_hash)
            attrs = self.reader.attrs(meta) if meta is not None else {}
            rec = attrs.get(mp.MARK_KEY)
            props = self.reader.props(run_hash)
            if isinstance(rec, dict) and rec.get("format") == mp.FORMAT and rec.get("origin"):
                o = rec["origin"]
                info = {"hash": run_hash, "ours": True, "rec": rec, "project_id": o["project_id"],
                        "run_id": o["run_id"], "origin": Origin(o["uri"], o["project_id"], o["run_id"])}
            else:
                project = props.get("experiment") or "default"
                info = {"hash": run_hash, "ours": False, "rec": None, "project_id": project, "run_id": run_hash,
                        "origin": Origin(NATIVE_ORIGIN, project, run_hash)}
            info["props"] = props
            self._info[run_hash] = info
        return info

    def list_runs(self, select: Selection) -> Iterator[RunRef]:
        for run_hash in self.reader.hashes():
            info = self._run_info(run_hash)
            if select.wants_run(info["project_id"], info["run_id"]):
                yield RunRef(info["project_id"], info["run_id"], locator=run_hash)

    def origin(self, run: RunRef) -> Origin:
        return self._run_info(run.locator)["origin"]

    def describe_run(self, run: RunRef) -> str:
        return f"{run.project_id}/{run.run_id} (Aim run {run.locator})"

    def run_version(self, run: RunRef) -> str | None:
        info = self._run_info(run.locator)
        if info["ours"]:
            return info["rec"].get("version")
        meta = self.reader.meta(run.locator)
        if meta is None:
            return None
        try:
            traces = meta.collect("traces")
        except KeyError:
            traces = {}
        state = sorted((str(c), str(n), t.get("last_step"), repr(t.get("last")))
                       for c, names in traces.items() for n, t in names.items())
        end = _meta_value(meta, "end_time")
        return hashlib.blake2b(json.dumps([state, end], default=str).encode(), digest_size=8).hexdigest()

    def account(self, run: RunRef, report) -> None:
        for key, count in sorted(self._accounts.pop(run.locator, Counter()).items()):
            what, kind, example = key
            if what == "t":
                report.transformed(kind, count, example)
            elif what == "d":
                report.dropped(kind, count, example)

    def _count(self, run_hash: str, what: str, kind: str, example: str, n: int = 1) -> None:
        acc = self._accounts.setdefault(run_hash, Counter())
        for key in list(acc):
            if key[0] == what and key[1] == kind:
                acc[key] += n
                return
        acc[(what, kind, example)] += n

    # -- rows ------------------------------------------------------------------------------

    def read_run(self, run: RunRef, select: Selection) -> Iterator[pa.Table]:
        h = run.locator
        info = self._run_info(h)
        self._accounts.pop(h, None)
        meta = self.reader.meta(h)
        if meta is None:
            raise RunError("the Aim run's folder is gone", project_id=run.project_id, run_id=run.run_id)
        seqs = self.reader.seqs(h)
        extra = {"project_id": run.project_id, "run_id": run.run_id}
        params = self._params(info, meta)
        yield select.filter(rows_to_table(params, extra))
        yield from self._series(run, info, meta, seqs, select)
        files = [r for r, _ in self._file_rows(info, meta, seqs)]
        if files:
            yield select.filter(rows_to_table(files, extra))

    def _params(self, info: dict, meta) -> list[dict]:
        from trackport.core.schema import VALUE_COLUMN

        attrs = self.reader.attrs(meta)
        rows: list[dict] = []

        def add(path: str, typ: str, value: Any) -> None:
            rows.append({"attribute_path": path, "attribute_type": typ, VALUE_COLUMN[typ]: value})

        if info["ours"]:
            rec = json.loads(info["rec"].get("record") or "{}")
            types = rec.get("types", {})
            leaves = mp.unfold({k: v for k, v in attrs.items() if k != mp.MARK_KEY})
            leaves += sorted((rec.get("flat") or {}).items())
            for path, value in leaves:
                typ = types.get(path)
                if typ is None:
                    typ, value, kind = mp.native_param(value)
                    if kind:
                        self._count(info["hash"], "t", kind, path)
                else:
                    value = mp.canonical_param(typ, value)
                add(path, typ, value)
            return rows
        props = info["props"]
        add("sys/name", "string", props.get("name") or info["hash"])
        add("sys/custom_run_id", "string", info["hash"])
        if props.get("description"):
            add("sys/description", "string", props["description"])
        if props.get("tags"):
            add("sys/tags", "string_set", list(props["tags"]))
        if props.get("created_at") is not None:
            add("sys/creation_time", "datetime", props["created_at"])
        end = _meta_value(meta, "end_time")
        if end is not None:
            add("sys/modification_time", "datetime", _dt(end))
        if props.get("archived"):
            add("aim/archived", "bool", True)
        for path, value in mp.unfold(attrs):
            typ, value, kind = mp.native_param(value)
            if kind:
                self._count(info["hash"], "t", kind, path)
            add(path, typ, value)
        return rows

    def _series(self, run: RunRef, info: dict, meta, seqs, select: Selection) -> Iterator[pa.Table]:
        from .client import dtype_kind, object_field

        h = info["hash"]
        ours = info["ours"]
        mult = int(info["rec"].get("multiplier") or 1) if ours else 1
        cols = SeriesColumns()
        steps: list = []

        def flush():
            table = cols.table(run.project_id, run.run_id, pa.array(steps, STEP_TYPE))
            cols.clear()
            steps.clear()
            return select.filter(table)

        def add(path, kind, step, ms, value):
            cols.add(path, kind, step, ms, value)
            steps.append(step)

        for ctx_id, ctx, name, trace in self.reader.sequences(meta):
            kind = dtype_kind(str(trace.get("dtype", "float")))
            path = mp.context_path(name, ctx)
            if ctx:
                self._count(h, "t", "context_in_path", path)
            if not ours:
                sys_path = mp.system_path(name)
                if sys_path and kind == "metric":
                    path = mp.context_path(sys_path, ctx)
                    self._count(h, "t", "system_metric", path)
                if kind == "log" and name == "logs":
                    path = mp.context_path("monitoring/stdout", ctx)
                    self._count(h, "t", "terminal_logs", path)
            if kind in ("image", "images", "audio", "audios"):
                continue                                          # files: _file_rows
            if kind == "other":
                n = len(self.reader.points(seqs, h, ctx_id, name, int(trace.get("version", 1))))
                self._count(h, "d", "unsupported_sequence", f"{path} ({trace.get('dtype')})", n)
                continue
            points = self.reader.points(seqs, h, ctx_id, name, int(trace.get("version", 1)))
            epochs = []
            for step, val, epoch, t in points:
                dstep = mp.source_step(step, mult)
                ms = mp.millis(t)
                if kind == "metric":
                    add(path, "float_series", dstep, ms, float(val))
                    if epoch is not None:
                        epochs.append((dstep, ms, float(epoch)))
                elif kind in ("text", "log"):
                    add(path, "string_series", dstep, ms, str(val.data))
                else:   # distribution
                    exact = object_field(val, "trackport")
                    if exact is not None:
                        hist = {"type": exact.get("type"), "edges": [float(e) for e in exact.get("edges") or []],
                                "values": [float(v) for v in exact.get("values") or []]}
                    else:
                        lo, hi = val.range
                        hist = {"type": "COUNTING", "edges": mp.linspace(lo, hi, int(val.bin_count)),
                                "values": [float(v) for v in val.weights.tolist()]}
                    add(path, "histogram_series", dstep, ms, hist)
                if len(cols) >= BATCH_POINTS:
                    yield flush()
            if epochs:
                epoch_path = mp.EPOCH_PREFIX + path
                self._count(h, "t", "epoch_series", epoch_path, len(epochs))
                for dstep, ms, epoch in epochs:
                    add(epoch_path, "float_series", dstep, ms, epoch)
            if len(cols) >= BATCH_POINTS:
                yield flush()
        if len(cols):
            yield flush()

    # -- files -----------------------------------------------------------------------------

    def _artifact_dir(self, meta, run_hash: str) -> Path | None:
        from urllib.parse import unquote, urlparse

        base = _meta_value(meta, "artifacts_uri")
        if not base:
            return None
        parsed = urlparse(str(base))
        if parsed.scheme != "file":
            return None
        return Path(unquote(parsed.path)) / run_hash

    def _file_rows(self, info: dict, meta, seqs) -> list[tuple[dict, tuple]]:
        """[(canonical row, where the file is)]: ("local", path) or ("image", name, ctx id, step, index)."""
        from .client import dtype_kind

        h = info["hash"]
        out: list[tuple[dict, tuple]] = []
        art_dir = self._artifact_dir(meta, h)
        if info["ours"]:
            rec = json.loads(info["rec"].get("record") or "{}")
            ctx_ids = {name: c for c, ctx, name, _ in self.reader.sequences(meta) if not ctx}
            for attr, typ, step, source, kind, loc, ms in rec.get("files", []):
                if kind == "image":
                    where = ("image", attr, ctx_ids.get(attr), int(loc), None)
                else:
                    where = ("local", (art_dir / loc) if art_dir else Path(loc))
                row = {"attribute_path": attr, "attribute_type": typ, "file_value": {"path": source},
                       "step": None if step is None else Decimal(step),
                       "timestamp": None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)}
                out.append((row, where))
            return out
        mult = 1
        for ctx_id, ctx, name, trace in self.reader.sequences(meta):
            kind = dtype_kind(str(trace.get("dtype", "float")))
            if kind not in ("image", "images", "audio", "audios"):
                continue
            path = mp.context_path(name, ctx)
            for step, val, _, t in self.reader.points(seqs, h, ctx_id, name, int(trace.get("version", 1))):
                items = list(val) if isinstance(val, (list, tuple)) else [val]
                for i, obj in enumerate(items):
                    from .client import object_field

                    fmt = str(object_field(obj, "format", "bin") or "bin").lower()
                    attr = path if i == 0 else f"{path}#{i}"
                    source = f"{h}/{mp.artifact_name(attr)}/{step}.{'jpg' if fmt == 'jpeg' else fmt}"
                    ms = mp.millis(t)
                    row = {"attribute_path": attr, "attribute_type": "file_series", "file_value": {"path": source},
                           "step": mp.source_step(step, mult),
                           "timestamp": None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)}
                    out.append((row, ("image", name, ctx_id, step, i)))
        try:
            artifacts = meta.collect("artifacts")
        except KeyError:
            artifacts = {}
        for name in sorted(artifacts):
            local = (art_dir / name) if art_dir else None
            if local is None or not local.is_file():
                self._count(h, "d", "remote_artifact", str(name))
                continue
            row = {"attribute_path": mp.ARTIFACT_PREFIX + str(name), "attribute_type": "file",
                   "file_value": {"path": f"{h}/artifacts/{name}"}}
            out.append((row, ("local", local)))
        return out

    def files(self, run: RunRef) -> FileAccess:
        info = self._run_info(run.locator)
        meta = self.reader.meta(run.locator)
        seqs = self.reader.seqs(run.locator)
        where = {row["file_value"]["path"]: w for row, w in self._file_rows(info, meta, seqs)}
        return RunFiles(self, run, where)

    def _materialize(self, ref: RunRef, path: str, where: tuple) -> Path:
        from .client import object_bytes

        _, name, ctx_id, step, index = where
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="trackport-aim-src-"))
        folder = self._tmp / hashlib.blake2b(f"{ref.locator}\n{name}\n{ctx_id}".encode(), digest_size=10).hexdigest()
        target = folder / f"{step}_{index or 0}"
        if not folder.is_dir():          # the whole sequence at once: one pass over its points
            tmp = folder.with_suffix(".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            seqs = self.reader.seqs(ref.locator)
            for s, val, _, _ in self.reader.points(seqs, ref.locator, ctx_id, name, 1):
                items = list(val) if isinstance(val, (list, tuple)) else [val]
                for i, obj in enumerate(items):
                    (tmp / f"{s}_{i}").write_bytes(object_bytes(obj))
            tmp.replace(folder)
        if not target.is_file():
            raise RunError(f"no point at step {step} in Aim sequence {name!r}", project_id=ref.project_id,
                           run_id=ref.run_id, file=path)
        return target

    def close(self) -> None:
        self.reader.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
