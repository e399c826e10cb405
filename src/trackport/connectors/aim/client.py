"""The only module importing the `aim` package (aim 3.29; docs/aim.md).

Reading never changes a byte of the repository: Aim's own read path is not used, because
`RocksContainer(read_only=True)` first "optimizes for read" -- reopens a database with a
non-empty write-ahead log in write mode, flushes it and takes a lock file
(aim/storage/rockscontainer.pyx `optimize_db_for_read`) -- and `Repo()` may upgrade an older
repository in place and creates its `locks/` folder.  The reader opens each run's RocksDB
read-only with `skip_read_optimization=True` (RocksDB replays the log in memory) and Aim's
SQLite props database with SQLite's `mode=ro`.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from trackport.core.errors import UsageError


def _check_sdk() -> None:
    from aim.sdk.tracker import RunTracker

    # The per-point wall time goes through the tracker's internal _track(value, track_time, ...):
    # Run.track stamps the current time (aim/sdk/tracker.py RunTracker.__call__).
    import inspect

    params = list(inspect.signature(RunTracker._track).parameters)
    if params[:4] != ["self", "value", "track_time", "name"]:
        raise UsageError("this aim release changed RunTracker._track, which trackport uses to keep each "
                         "point's time; fix: pip install 'trackport[aim]' (aim>=3.29,<3.30)")


class AimReader:
    """Read-only access to one repository's runs (no Repo object, nothing written)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.aim = self.root / ".aim"
        self._open: list[Any] = []

    def hashes(self) -> list[str]:
        chunks = self.aim / "meta" / "chunks"
        return sorted(p.name for p in chunks.iterdir() if p.is_dir()) if chunks.is_dir() else []

    def exists(self, run_hash: str) -> bool:
        return (self.aim / "meta" / "chunks" / run_hash).is_dir()

    def _container(self, kind: str, run_hash: str):
        from aim.storage.rockscontainer import RocksContainer

        path = self.aim / kind / "chunks" / run_hash
        if not path.is_dir():
            return None
        container = RocksContainer(str(path), read_only=True, skip_read_optimization=True)
        self._open.append(container)
        return container

    def meta(self, run_hash: str):
        container = self._container("meta", run_hash)
        return None if container is None else container.tree().subtree(("meta", "chunks", run_hash))

    def seqs(self, run_hash: str):
        container = self._container("seqs", run_hash)
        return None if container is None else container.tree().subtree("seqs")

    def close(self) -> None:
        for container in self._open:
            try:
                container.close()
            except Exception:   # a container already gone with its run
                pass
        self._open = []

    # -- props (Aim's SQLite database) ---------------------------------------------------

    def props(self, run_hash: str) -> dict:
        db = self.aim / "run_metadata.sqlite"
        if not db.is_file():
            return {}
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT r.id, r.name, r.description, r.is_archived, r.created_at, r.finalized_at, e.name "
                "FROM run r LEFT JOIN experiment e ON e.id = r.experiment_id WHERE r.hash = ?",
                (run_hash,)).fetchone()
            if row is None:
                return {}
            tags = [t for (t,) in conn.execute(
                "SELECT t.name FROM run_tag rt JOIN tag t ON t.id = rt.tag_id WHERE rt.run_id = ? "
                "ORDER BY t.name", (row[0],))]
        finally:
            conn.close()
        return {"name": row[1], "description": row[2], "archived": bool(row[3]),
                "created_at": _utc(row[4]), "finalized_at": _utc(row[5]), "experiment": row[6], "tags": tags}

    # -- one run's content ----------------------------------------------------------------

    def attrs(self, meta) -> dict:
        try:
            got = meta.collect("attrs")
        except KeyError:
            return {}
        return got if isinstance(got, dict) else {}

    def sequences(self, meta) -> list[tuple[int, dict, str, dict]]:
        """[(context id, context, name, trace info)] of a run, in a stable order."""
        try:
            traces = meta.collect("traces")
        except KeyError:
            return []
        try:
            contexts = meta.collect("contexts")
        except KeyError:
            contexts = {}
        out = []
        for ctx_id, names in traces.items():
            for name, info in names.items():
                out.append((ctx_id, dict(contexts.get(ctx_id) or {}), str(name), dict(info)))
        return sorted(out, key=lambda s: (s[2], repr(sorted(s[1].items()))))

    def points(self, seqs, run_hash: str, ctx_id: int, name: str, version: int) -> list[tuple]:
        """[(step, value, epoch, time seconds)] sorted by step."""
        if seqs is None:
            return []
        if version == 2:
            tree = seqs.subtree(("v2", "chunks", run_hash, ctx_id, name))
            steps = dict(tree.subtree("step").items())
        else:
            tree = seqs.subtree(("chunks", run_hash, ctx_id, name))
            steps = None
        vals = dict(tree.subtree("val").items())
        epochs = dict(tree.subtree("epoch").items())
        times = dict(tree.subtree("time").items())
        out = []
        for key, val in vals.items():
            step = steps.get(key) if steps is not None else key
            out.append((int(step), val, epochs.get(key), times.get(key)))
        out.sort(key=lambda p: p[0])
        return out


def object_bytes(obj: Any) -> bytes:
    """The stored bytes of an Aim Image / Audio (a BLOB in its storage)."""
    data = obj.storage["data"]
    return bytes(data.load() if hasattr(data, "load") else data)


def object_field(obj: Any, key: str, default: Any = None) -> Any:
    try:
        return obj.storage[key]
    except (KeyError, TypeError):
        return default


def dtype_kind(dtype: str) -> str:
    """Aim's trace dtype -> what trackport reads it as."""
    if dtype in ("float", "int", "float64"):
        return "metric"
    return {"aim.text": "text", "aim.log_line": "log", "aim.distribution": "distribution",
            "aim.image": "image", "list(aim.image)": "images", "aim.audio": "audio",
            "list(aim.audio)": "audios"}.get(dtype, "other")


def _utc(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        dt = datetime.fromisoformat(str(value))
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


class AimWriter:
    """Writes runs into one repository through Aim's SDK."""

    def __init__(self, root: Path):
        from aim.sdk.repo import Repo

        _check_sdk()
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.repo = Repo(str(self.root), init=not (self.root / ".aim").is_dir())
        self.artifacts_uri = (self.root / "aim-artifacts").as_uri()

    def delete_run(self, run_hash: str) -> None:
        from trackport.core.errors import RunError

        if not self.repo.delete_run(run_hash):
            raise RunError(f"cannot delete the partial Aim run {run_hash} to write it again "
                           "(is `aim up` or another writer holding the repository?); fix: stop it and rerun")

    def create_run(self, run_hash: str, created_at: datetime | None, experiment: str | None) -> "WriterRun":
        from aim.sdk.run import Run

        # Run(run_hash=...) opens only an existing run: create its props (with the source's
        # creation time) and its meta container first, as Run() does for a new hash.
        self.repo.request_props(run_hash, False, created_at=_naive_utc(created_at))
        self.repo.request_tree("meta", run_hash, read_only=False)
        clear = getattr(self.repo._all_run_hashes, "cache_clear", None)   # a 0.5 s ttl_cache of the listing
        if clear is not None:
            clear()
        run = Run(run_hash, repo=self.repo, experiment=experiment or None, system_tracking_interval=None,
                  log_system_params=False, capture_terminal_logs=False)
        run.set_artifacts_uri(self.artifacts_uri)
        return WriterRun(run)

    def close(self) -> None:
        pass


def _naive_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


class WriterRun:
    def __init__(self, run):
        self.run = run
        self.hash = run.hash

    def set_param(self, key: str, value: Any) -> None:
        self.run[key] = value

    def set_props(self, name: str | None, description: str | None, tags: list[str]) -> None:
        if name:
            self.run.name = name
        if description is not None:
            self.run.description = description
        have = set(self.run.tags or [])
        for tag in tags:
            if tag not in have:
                self.run.add_tag(tag)

    def track(self, value: Any, time_s: float | None, name: str, step: int) -> None:
        self.run._tracker._track(value, time_s, name, step, None, context={})

    def track_metric(self, name: str, steps: list[int], values: list[float], times: list) -> None:
        """Many points of one metric.  The first point of a metric goes through Aim's tracker
        (it initializes the sequence's metadata); the others are written as the tracker writes
        them -- step, val, epoch, time under hash(step) in the run's v2 sequence tree
        (aim/sdk/tracker.py `_add_value`) -- in one RocksDB write batch instead of one write
        per value (100,000 points: ~110 s through track(), ~3 s batched), and the metadata
        `_update_sequence_info` keeps (last, last_step, min, max) is set once per batch."""
        from aim.storage import encoding as E
        from aim.storage.context import Context
        from aim.storage.hashing import hash_auto

        if not steps:
            return
        tracker = self.run._tracker
        ctx = Context({})
        info = tracker.sequence_infos[ctx.idx, name]
        start = 0
        if not info.initialized:
            self.track(values[0], times[0], name, steps[0])
            info = tracker.sequence_infos[ctx.idx, name]
            start = 1
        if start >= len(steps):
            return
        if info.version != 2 or info.dtype not in ("float", "int"):
            for s, v, t in zip(steps[start:], values[start:], times[start:]):
                self.track(v, t, name, s)
            return
        # down the prefix views to the run's RocksDB: one aimrocks WriteBatch of plain puts
        container = self.run.series_run_trees[2].subtree((ctx.idx, name)).container
        prefix = b""
        while hasattr(container, "prefix") and hasattr(container, "parent"):
            prefix = container.prefix + prefix
            container = container.parent
        batch = container.batch()
        enc = {col: prefix + E.encode_path((col,)) for col in ("step", "val", "epoch", "time")}
        none = E.encode(None)
        put = batch.put
        for s, v, t in zip(steps[start:], values[start:], times[start:]):
            key = E.encode_path((hash_auto(s),))
            put(enc["step"] + key, E.encode(s))
            put(enc["val"] + key, E.encode(v))
            put(enc["time"] + key, E.encode(t))
            put(enc["epoch"] + key, none)
        container.commit(batch)
        meta = self.run.meta_run_tree
        best = max(range(start, len(steps)), key=lambda i: steps[i])
        if steps[best] >= info.count:
            meta["traces", ctx.idx, name, "last"] = values[best]
            meta["traces", ctx.idx, name, "last_step"] = steps[best]
            info.count = steps[best] + 1
        finite = [v for v in values[start:] if v == v]          # Aim's `val > max` skips NaN
        if finite:
            hi, lo = max(finite), min(finite)
            if hi > info.max:
                meta["traces", ctx.idx, name, "max"] = info.max = hi
            if lo < info.min:
                meta["traces", ctx.idx, name, "min"] = info.min = lo

    @staticmethod
    def text(value: str):
        from aim import Text

        return Text(value)

    @staticmethod
    def distribution(counts: list[float], lo: float, hi: float, exact: dict | None):
        import numpy as np
        from aim import Distribution

        dist = Distribution(hist=np.asarray(counts, dtype=np.float64), bin_range=(lo, hi))
        if exact is not None:
            # Aim keeps the storage's extra fields; trackport reads its exact histogram back from it
            dist.storage["trackport"] = exact
        return dist

    @staticmethod
    def image(local: Path, data: bytes):
        from aim import Image
        from aim.storage.types import BLOB

        img = Image(str(local))
        # Image re-encodes through PIL; keep the file's own bytes (same format, same size)
        img.storage["data"] = BLOB(data=data)
        return img

    def artifact(self, local: Path, name: str) -> None:
        self.run.log_artifact(str(local), name=name, block=True)

    def close(self) -> None:
        self.run.close()


@contextmanager
def quiet() -> Iterator[None]:
    """Aim logs warnings (a tag already there, ...) to the root logger: keep them out of ours."""
    import logging

    log = logging.getLogger("aim")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)

