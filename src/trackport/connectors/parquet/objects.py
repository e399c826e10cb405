"""Parquet exports on object storage: `parquet:s3://BUCKET/PREFIX`, `gs://`, `az://`, any
fsspec URL whose file system package is installed (docs/object-storage.md).

The layout is the local one (layout.py) but for the parts.  An object store renames nothing,
so a writer cannot write `<run>_part_0.parquet.tmp` and rename it.  Each writer puts its
parts under names of its own, `<safe(run)>.parts/<token>_part_<n>.parquet` (the token names
the host, the process and the attempt), and the run manifest, written last as one object
(a PUT is all or nothing), lists the parts that make the run.  Readers trust only listed
parts: a killed writer's parts, or those of a writer that lost a race for the manifest, are
never read; they are deleted by the next writer of the run once their writer is gone.

No lock folder lies in a bucket: the per-origin claims are the per-user local ones
(`Sink.claim_dir`), and writers on other machines end correct through the manifest rule:
whichever manifest is written last stands, and names a complete set of parts.  The export
manifest (`trackport.json`) is created once (a conditional PUT where the store has one), and
each source written into the export adds a marker object of its own under
`.trackport/sources/`; readers take the union, so no writer ever rewrites another's entry.

fsspec and the store's package (s3fs, gcsfs, adlfs) are imported here only, and this module
only when a URL is opened, so `trackport --help` imports neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..._version import __version__
from ...core.connector import FileAccess, RunPlan, Sink
from ...core.errors import MissingExtraError, RunError, UsageError
from ...core.files import ScratchFolder
from ...core.model import DestRun, Origin, RunRef
from ...core.schema import SCHEMA
from . import layout
from .sink import ParquetRunWriter, ParquetSink, _text
from .source import ParquetSource, RunFiles, _one_line, _parts_problem, manifest_mismatch

log = logging.getLogger("trackport")

# The trackport extra that installs the fsspec package of a protocol.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure",
          "abfss": "azure", "adl": "azure"}
# A part is uploaded in blocks of this size (S3's multipart minimum is 5 MB): the memory a
# part being written holds, instead of the store's default block (s3fs: 50 MB).
WRITE_BLOCK = 8 << 20
# Unlisted parts of a writer on another host (whose process cannot be asked) are deleted once
# none of them changed for this long; a writer that slow fails its run before its manifest
# (its parts are checked first) and the run is written again.
LEFTOVER_GRACE_SECONDS = 3600
_HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def new_token() -> str:
    """A writer's part-name token: <host>-<pid>-<random>."""
    return f"{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class ObjectStore:
    """An fsspec file system and the export's root in it (a path without the protocol)."""

    def __init__(self, fs: Any, root: str, url: str):
        self.fs = fs
        self.root = PurePosixPath(root.rstrip("/") or root)
        self.url = url            # as the user wrote it; holds no secret (refused in the URI)

    def show(self, path: PurePosixPath | str) -> str:
        return self.fs.unstrip_protocol(str(path))

    def listing(self, prefix: PurePosixPath) -> dict[str, dict]:
        """Every object below `prefix`: path -> its info (size, modification time)."""
        try:
            found = self.fs.find(str(prefix), detail=True)
        except FileNotFoundError:
            return {}
        return {name: info for name, info in found.items() if info.get("type", "file") != "directory"}

    def read_json(self, path: PurePosixPath) -> Any:
        """The JSON object at `path`, None when there is none; ValueError when it is damaged."""
        try:
            data = self.fs.cat_file(str(path))
        except FileNotFoundError:
            return None
        return json.loads(data)

    def read_json_quiet(self, path: PurePosixPath) -> Any:
        try:
            return self.read_json(path)
        except (ValueError, UnicodeDecodeError):
            return None

    def write_json(self, path: PurePosixPath, payload: Any, create: bool = False) -> bool:
        """One PUT: readers see the old object or the new one.  `create`: only if there is none
        (False when another writer's stands), where the store can say so atomically."""
        data = json.dumps(payload, indent=1, sort_keys=True, default=str).encode()
        if create:
            try:
                self.fs.pipe_file(str(path), data, mode="create")
                return True
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError):   # a store without conditional writes
                if self.fs.exists(str(path)):
                    return False
        self.fs.pipe_file(str(path), data)
        return True

    def delete(self, paths: list[PurePosixPath | str]) -> None:
        if paths:
            try:
                self.fs.rm([str(p) for p in paths])
            except FileNotFoundError:
                pass


def open_store(url: str, shown: str) -> ObjectStore:
    """The store a `parquet:URL` names.  UsageError when fsspec does not know the protocol;
    MissingExtraError naming the extra when its package is not installed."""
    protocol = url.split("://", 1)[0].lower()
    extra = EXTRAS.get(protocol)
    fix = f"pip install 'trackport[{extra}]'" if extra else "install the fsspec package for it"
    try:
        import fsspec
    except ImportError:
        raise MissingExtraError(f"{shown!r}: exports on object storage need fsspec, which is not installed; "
                                f"fix: {fix}") from None
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise UsageError(f"{shown!r}: {protocol}:// is neither a local folder nor a storage protocol fsspec "
                         f"knows. Fix: name a local directory (parquet:./export) or an object store "
                         f"(parquet:s3://BUCKET/PREFIX, gs://, az://)") from None
    except ImportError as exc:
        raise MissingExtraError(f"{shown!r}: {protocol}:// needs a package that is not installed "
                                f"({_one_line(exc)}); fix: {fix}") from None
    try:
        # Listings are never cached: another writer may add a run between two looks.  Nor is
        # the file system: fsspec keeps one per set of arguments, which would keep the endpoint
        # and credentials of an earlier command of this process (the environment is read now).
        fs, path = fsspec.core.url_to_fs(url, use_listings_cache=False, skip_instance_cache=True)
    except TypeError:
        fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    except (ValueError, OSError) as exc:
        raise UsageError(f"{shown!r}: cannot open it ({_one_line(exc)})") from None
    if not str(path).strip("/"):
        raise UsageError(f"{shown!r}: name a bucket (and a prefix): parquet:{protocol}://BUCKET/PREFIX")
    return ObjectStore(fs, str(path), url)


def _modified(info: dict) -> float | None:
    """An object's modification time (epoch seconds) from a listing, when the store gives one."""
    for key in ("LastModified", "last_modified", "updated", "mtime", "modified"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _writer_gone(host: str, pid: int, newest: float | None) -> bool:
    """Is the writer of leftover parts gone?  On this host: its process is.  Elsewhere: its
    parts have not changed for LEFTOVER_GRACE_SECONDS."""
    if host == _HOST:
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    return newest is not None and time.time() - newest > LEFTOVER_GRACE_SECONDS


def listed_parts(store: ObjectStore, folder: PurePosixPath, stem: str, manifest: dict,
                 present: dict[str, Any], plain: list[tuple[int, PurePosixPath]]) -> tuple[list, str | None]:
    """The parts a run manifest lists, as paths, and why they are not the whole run (None when
    they are).  `present`: the objects known to exist (path -> info); `plain`: the run's
    `<stem>_part_<n>.parquet` objects (an export written on disk and uploaded)."""
    listed = manifest.get("parts")
    if not isinstance(listed, list) or not listed:
        return [], f"run manifest in {store.show(folder)} lists no parts: the run is damaged. Fix: export the run again"
    for name in listed:
        problem = layout.relative_problem(name)
        if problem:
            return [], (f"run manifest lists a part outside its folder ({problem}): the run is damaged. "
                        f"Fix: export the run again")
    if all("/" not in name for name in listed):
        # the on-disk layout, uploaded: the same checks as on disk (numbering, none unlisted)
        return [p for _, p in plain], _parts_problem(folder, [n for n, _ in plain], [p for _, p in plain], manifest)
    parts = [folder / name for name in listed]
    gone = [name for name, part in zip(listed, parts) if str(part) not in present]
    if gone:
        return parts, (f"{gone[0]}, listed in the run manifest, is missing: the run is damaged. Fix: export the run "
                       f"again; the other runs are not affected")
    numbers = []
    for name in listed:
        match = layout.WRITER_PART_RE.match(name.rsplit("/", 1)[-1])
        if not name.startswith(stem + layout.PARTS_SUFFIX + "/") or not match:
            return parts, (f"run manifest lists {name!r}, not a part of this run: the run is damaged. "
                           f"Fix: export the run again")
        numbers.append(int(match["n"]))
    if numbers != list(range(len(numbers))):
        return parts, (f"the parts the run manifest lists are not numbered 0..{len(numbers) - 1}: the run is "
                       f"damaged. Fix: export the run again")
    return parts, None


class ObjectExport:
    """An export in an object store, as ExportRoot is one on disk: its data listing (one
    listing per command), its manifest (the union of trackport.json's sources and the source
    markers), its files."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self.root = store.url
        top = store.root
        self.data = top / "data"
        self.files = top / "files"
        manifest_path = top / layout.EXPORT_MANIFEST
        try:
            self.manifest: dict | None = store.read_json(manifest_path)
            self.objects = store.listing(self.data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"export manifest {store.show(manifest_path)} is damaged ({_one_line(exc)}). Fix: restore "
                             f"it, or delete it to read the prefix as a neptune-exporter export") from None
        except PermissionError as exc:
            raise UsageError(f"{store.url}: cannot read it ({_one_line(exc)}); fix: check the credentials and "
                             f"endpoint the store's own settings give (docs/object-storage.md)") from None
        if self.manifest is None and not self.objects:
            raise UsageError(f"{store.url} is not an export: no {layout.EXPORT_MANIFEST} and nothing under data/")
        if self.manifest is not None:
            sources = list(self.manifest.get("sources") or [])
            for marker in sorted(store.listing(top / layout.SOURCE_MARKERS)):
                uri = (store.read_json_quiet(PurePosixPath(marker)) or {}).get("uri")
                if isinstance(uri, str) and uri not in sources:
                    sources.append(uri)
            self.manifest = {**self.manifest, "sources": sources}

    def project_files_dir(self, project_id: str) -> PurePosixPath:
        for name in layout.safe_variants(project_id):
            candidate = self.files / name
            if self.store.fs.exists(str(candidate)):
                return candidate
        return self.files / layout.safe(project_id)

    def project_files(self, project_id: str) -> tuple[int, int]:
        """(files, bytes) under a project's files folder."""
        found = self.store.listing(self.project_files_dir(project_id))
        return len(found), sum(int(info.get("size") or 0) for info in found.values())


class ObjectParquetSource(ParquetSource):
    """An export on object storage as a source: the same checks as on disk, parts read
    through the store in ranged reads, files fetched into a local scratch folder when a
    destination asks for them."""

    def __init__(self, store: ObjectStore, options: dict[str, Any]):
        super().__init__(None, options, ObjectExport(store))
        self.store = store
        self._scratch = ScratchFolder("trackport-objects-")

    def _runs_on_disk(self) -> Iterator[RunFiles]:
        export: ObjectExport = self.export
        fs = self.store.fs
        sizes = {name: int(info.get("size") or 0) for name, info in export.objects.items()}
        prefix = str(export.data) + "/"
        # folder -> stem -> what lies there
        manifests: dict[str, dict[str, PurePosixPath]] = defaultdict(dict)
        plain: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        written: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for name in export.objects:
            if not name.startswith(prefix):
                continue
            below = name[len(prefix):].split("/")
            path = PurePosixPath(name)
            if len(below) >= 3 and below[-2].endswith(layout.PARTS_SUFFIX):
                match = layout.WRITER_PART_RE.match(below[-1])
                if match:
                    folder = "/".join(below[:-2])
                    stem = below[-2][: -len(layout.PARTS_SUFFIX)]
                    written[folder][stem].append((match["token"], int(match["n"]), path))
                continue
            folder = "/".join(below[:-1])
            if below[-1].endswith(layout.RUN_MANIFEST_SUFFIX):
                manifests[folder][below[-1][: -len(layout.RUN_MANIFEST_SUFFIX)]] = path
            else:
                match = layout.PART_RE.match(below[-1])
                if match:
                    plain[folder][match["stem"]].append((int(match["n"]), path))
        folders = set(manifests) | set(plain) | set(written)
        projects = sorted({f.split("/")[0] for f in folders if f})
        ours = export.manifest is not None
        for project in projects:
            order = [(project, None), (f"{project}/{layout.EXTENSIONS}", None)] + \
                    [(f"{project}/{sub}", container) for sub, container in sorted(layout.ENTITY_SCOPES.items())]
            for folder, container in order:
                if folder not in folders:
                    continue
                directory = export.data / folder
                for stem in sorted(set(manifests[folder]) | set(plain[folder]) | set(written[folder])):
                    numbered = sorted(plain[folder].get(stem, []))
                    parts = [p for _, p in numbered]
                    manifest, problem = None, None
                    if stem in manifests[folder]:
                        where = manifests[folder][stem]
                        try:
                            manifest = self.store.read_json(where)
                            manifest["project_id"], manifest["run_id"]
                        except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
                            manifest, problem = None, (f"run manifest {self.store.show(where)} is damaged "
                                                       f"({_one_line(exc)}). Fix: export the run again")
                    if manifest is not None:
                        parts, problem = listed_parts(self.store, directory, stem, manifest, sizes, numbered)
                        complete = True
                    elif problem is not None:
                        complete = True
                    elif ours:
                        complete = False
                        if not parts:
                            # only parts no manifest lists (a killed writer's, or one still
                            # writing): nothing of them is read, not even the run's name
                            self.skipped_incomplete.append(f"{folder}/{stem} (no run manifest)")
                            continue
                    else:
                        complete = bool(parts) and parts[0].name.endswith("_part_0.parquet")
                        if complete:
                            problem = _parts_problem(directory, [n for n, _ in numbered], parts, None)
                    yield RunFiles(directory, stem, parts, manifest, complete, problem, container=container,
                                   fs=fs, sizes=sizes)

    def files(self, run: RunRef) -> FileAccess:
        return ObjectFiles(self.store, self.export.project_files_dir(run.project_id), run, self._scratch)

    def run_version(self, run: RunRef) -> str | None:
        files: RunFiles = run.locator
        if files.manifest is not None:
            recorded = files.manifest.get("source_version")
            return recorded if isinstance(recorded, str) else None
        if not files.parts:
            return None
        parts = [(p.name, (files.sizes or {}).get(str(p), 0)) for p in files.parts]
        return hashlib.blake2b(json.dumps(parts).encode(), digest_size=12).hexdigest()

    def part_bytes(self, run: RunRef) -> int:
        files: RunFiles = run.locator
        return sum((files.sizes or {}).get(str(p), 0) for p in files.parts)

    def close(self) -> None:
        self._scratch.remove()


class ObjectFiles(FileAccess):
    """A run's files in an export on object storage.  A destination that takes a local file
    gets one fetched into the source's scratch folder (a file_set: its folder), once per path."""

    def __init__(self, store: ObjectStore, root: PurePosixPath, run: RunRef, scratch: ScratchFolder):
        self.store = store
        self.root = root
        self.run = run
        self.scratch = scratch
        self._fetched: dict[str, Path] = {}
        self._lock = threading.Lock()

    def _fail(self, reason: str, path: str) -> RunError:
        return RunError(reason, project_id=self.run.project_id, run_id=self.run.run_id, file=path)

    def _key(self, path: str) -> str:
        problem = layout.relative_problem(path)
        if problem:
            raise self._fail(f"file {problem}", path)
        return str(self.root / path)

    def local_path(self, path: str) -> Path:
        key = self._key(path)
        fs = self.store.fs
        with self._lock:
            if path in self._fetched:
                return self._fetched[path]
            import tempfile

            target = Path(tempfile.mkdtemp(dir=self.scratch.path)) / (PurePosixPath(path).name or "file")
            if fs.isfile(key):
                fs.get_file(key, str(target))
            elif fs.isdir(key):
                for member in sorted(self.store.listing(PurePosixPath(key))):
                    rel = member[len(key) + 1:]
                    if layout.relative_problem(rel):
                        raise self._fail(f"file set {path!r} holds {rel!r}, which leaves its folder", path)
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(member, str(target / rel))
            else:
                raise self._fail(f"file missing from the export (looked for {self.store.show(key)})", path)
            self._fetched[path] = target
            return target

    def open(self, path: str) -> BinaryIO:
        return self.store.fs.open(self._key(path), "rb")

    def size(self, path: str) -> int | None:
        try:
            return int(self.store.fs.size(self._key(path)))
        except (FileNotFoundError, IsADirectoryError):
            return None

    def measure(self, path: str) -> tuple[int, int]:
        key = self._key(path)
        fs = self.store.fs
        if fs.isfile(key):
            return 1, int(fs.size(key))
        found = self.store.listing(PurePosixPath(key))
        return (len(found), sum(int(i.get("size") or 0) for i in found.values())) if found else (1, 0)


class ObjectParquetSink(ParquetSink):
    """Writes an export on object storage (see the module docstring for the rules)."""

    def __init__(self, store: ObjectStore, options: dict[str, Any], read_only: bool = False):
        super().__init__(store.root, options, read_only=read_only)   # type: ignore[arg-type]
        self.store = store
        self.uri = f"parquet:{store.url}"
        self._sources_marked: set[str] = set()

    def claim_dir(self) -> Path | None:
        """No lock folder in a bucket: the user's own, on this machine (Sink's default)."""
        return Sink.claim_dir(self)

    def preflight(self, read_only: bool = False) -> None:
        fs = self.store.fs
        bucket = self.store.root.parts[0]
        fix = "check the credentials and endpoint the store's own settings give (docs/object-storage.md)"
        try:
            if not fs.exists(bucket):
                raise UsageError(f"{self.uri}: bucket {bucket!r} does not exist (or these credentials cannot see "
                                 f"it); fix: create it, or {fix}")
            if read_only or self.read_only:
                return
            probe = self.store.root / f".trackport-probe-{new_token()}"
            fs.pipe_file(str(probe), b"")
            fs.rm(str(probe))
        except PermissionError as exc:
            raise UsageError(f"{self.uri}: access denied ({_one_line(exc)}); fix: {fix}") from None
        except UsageError:
            raise
        except OSError as exc:   # not a verdict: the runs' own retries decide
            log.warning("%s: could not check the destination (%s); going on", self.uri, _one_line(exc))

    def _ensure_export_manifest(self, origin_uri: str) -> None:
        """trackport.json is created once (by whichever writer is first); each source adds a
        marker object of its own, so two writers never rewrite each other's entry."""
        with self._lock:
            if origin_uri in self._sources_marked:
                return
            path = self.store.root / layout.EXPORT_MANIFEST
            try:
                existing = self.store.read_json(path)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RunError(f"the export manifest is damaged ({_one_line(exc)}); nothing was written. Fix: "
                               f"restore it, or export into a new prefix", file=self.store.show(path)) from None
            if existing is None:
                self.store.write_json(path, {
                    "format_version": layout.FORMAT_VERSION,
                    "id": uuid.uuid4().hex,
                    "producer": f"trackport {__version__}",
                    "created": datetime.now(timezone.utc).isoformat(),
                    "sources": [origin_uri],
                }, create=True)
            marker = self.store.root / layout.SOURCE_MARKERS / layout.source_marker_name(origin_uri)
            self.store.write_json(marker, {"uri": origin_uri})
            self._sources_marked.add(origin_uri)

    def _run_files(self, project_id: str, run_id: str) -> tuple[RunFiles | None, str | None, bool]:
        """(the run's files by its manifest, why they are not the whole run, whether any part
        of the run lies there at all)."""
        folder = layout.project_data_dir(self.root, project_id)
        stem = layout.safe(run_id)
        present = self.store.listing(folder / f"{stem}{layout.PARTS_SUFFIX}")
        manifest_path = layout.run_manifest_path(self.root, project_id, run_id)
        try:
            manifest = self.store.read_json(manifest_path)
            if manifest is not None and not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            return None, f"run manifest damaged ({_one_line(exc)})", True
        if manifest is None:
            return None, None, bool(present)
        plain = []
        if all("/" not in str(n) for n in manifest.get("parts") or [""]):
            for n, name in enumerate(manifest.get("parts") or []):
                path = folder / str(name)
                if self.store.fs.exists(str(path)):
                    present[str(path)] = self.store.fs.info(str(path))
                    match = layout.PART_RE.match(path.name)
                    plain.append((int(match["n"]) if match else n, path))
        parts, problem = listed_parts(self.store, folder, stem, manifest, present, sorted(plain))
        sizes = {name: int(info.get("size") or 0) for name, info in present.items()}
        files = RunFiles(folder, stem, parts, manifest, True, fs=self.store.fs, sizes=sizes)
        if problem is None:
            problem = (manifest_mismatch(files, False) or (None,))[0]
        return files, problem, True

    def find_run(self, origin: Origin) -> DestRun | None:
        name = f"{origin.project_id}/{origin.run_id}"
        files, damage, anything = self._run_files(origin.project_id, origin.run_id)
        if files is None:
            return DestRun(name, False, damage=damage) if damage else (DestRun(name, False) if anything else None)
        if damage:
            return DestRun(name, False, damage=damage)
        return DestRun(name, True, locator=layout.run_manifest_path(self.root, origin.project_id, origin.run_id),
                       version=files.manifest.get("source_version"))

    def begin_run(self, plan: RunPlan, resume: DestRun | None) -> ObjectRunWriter:
        if self.read_only:
            raise RunError("this parquet sink was opened read-only", project_id=plan.origin.project_id,
                           run_id=plan.origin.run_id)
        self._ensure_export_manifest(plan.origin.uri)
        return ObjectRunWriter(self, plan)

    def as_source(self) -> ObjectParquetSource:
        return ObjectParquetSource(self.store, self.options)

    def dest_ref(self, dest: DestRun, origin: Origin) -> RunRef:
        files, damage, _ = self._run_files(origin.project_id, origin.run_id)
        if files is None:
            raise RunError("not found in the export", project_id=origin.project_id, run_id=origin.run_id)
        files.problem = damage
        return RunRef(origin.project_id, origin.run_id, files)


class _HashingFile:
    """A write-only file of the store that also digests what goes through it (the run
    manifest's checksum, without reading the parts back)."""

    def __init__(self, raw: Any, digest: Any):
        self.raw = raw
        self.digest = digest

    def write(self, data: Any) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()

    def discard(self) -> None:
        """Drop the upload: the object never appears."""
        try:
            if hasattr(self.raw, "discard"):
                self.raw.discard()
        finally:
            self.raw.closed = True

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class ObjectRunWriter(ParquetRunWriter):
    """One run into an export on object storage: its parts under this writer's own names,
    streamed through the store's uploads; the run manifest last."""

    def __init__(self, sink: ObjectParquetSink, plan: RunPlan):
        self.sink = sink
        self.plan = plan
        self.store = sink.store
        self.project_id = plan.ref.project_id
        self.run_id = plan.ref.run_id
        self.data_dir = layout.project_data_dir(sink.root, self.project_id)
        self.files_dir = layout.project_files_dir(sink.root, self.project_id)
        self.stem = layout.safe(self.run_id)
        self.token = new_token()
        self.manifest_path = layout.run_manifest_path(sink.root, self.project_id, self.run_id)
        self.before = self.store.read_json_quiet(self.manifest_path)
        self._clear_leftovers()
        self.part = -1
        self.parts: list[PurePosixPath] = []
        self.names: list[str] = []
        self.writer: pq.ParquetWriter | None = None
        self.handle: _HashingFile | None = None
        self.digest = hashlib.blake2b(digest_size=16)
        self.rows = 0
        self.attributes: dict[str, dict] = {}
        self.copied: set[str] = set()
        self.file_bytes = 0

    def _parts_folder(self) -> PurePosixPath:
        return self.data_dir / f"{self.stem}{layout.PARTS_SUFFIX}"

    def _clear_leftovers(self) -> None:
        """Delete the parts no manifest lists whose writer is gone (killed, or lost a race long
        ago); a live writer's parts stay, whoever it is."""
        listed = set((self.before or {}).get("parts") or []) if isinstance(self.before, dict) else set()
        by_token: dict[str, list[tuple[str, dict]]] = defaultdict(list)
        for name, info in self.store.listing(self._parts_folder()).items():
            match = layout.WRITER_PART_RE.match(name.rsplit("/", 1)[-1])
            if match and f"{self.stem}{layout.PARTS_SUFFIX}/{name.rsplit('/', 1)[-1]}" not in listed:
                by_token[match["token"]].append((name, info))
        stale = []
        for token, objects in by_token.items():
            host, pid = token.split("-")[:2]
            newest = max((_modified(info) or 0.0 for _, info in objects), default=None) or None
            if _writer_gone(host, int(pid), newest):
                stale.extend(name for name, _ in objects)
        if stale:
            log.info("run %s/%s: deleting %d part(s) a killed writer left", self.project_id, self.run_id, len(stale))
            self.store.delete(stale)

    def _open_part(self) -> None:
        self._close_part()
        self.part += 1
        name = layout.writer_part_name(self.stem, self.token, self.part)
        path = self.data_dir / name
        self.parts.append(path)
        self.names.append(name)
        self.handle = _HashingFile(self.store.fs.open(str(path), "wb", block_size=WRITE_BLOCK), self.digest)
        # Page checksums, as on disk (sink.py).
        self.writer = pq.ParquetWriter(self.handle, SCHEMA, compression="snappy", write_page_checksum=True)

    def _close_part(self) -> None:
        """Finish the current part: its footer, then the upload (the object appears whole)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def _part_size(self) -> int:
        return self.handle.tell() if self.handle is not None else 0

    def _copy_files(self, table: pa.Table) -> None:
        import pyarrow.compute as pc

        mask = pc.is_valid(table.column("file_value"))
        if not pc.any(mask).as_py():
            return
        paths = pc.struct_field(table.filter(mask).column("file_value"), "path").to_pylist()
        for path in paths:
            if path in self.copied or path is None:
                continue
            source = self.plan.files.local_path(path)
            if source is None:
                raise RunError("source cannot give a local file", project_id=self.project_id, run_id=self.run_id,
                               file=path)
            problem = layout.relative_problem(path)
            if problem:
                raise RunError(f"file {problem}", project_id=self.project_id, run_id=self.run_id, file=path)
            target = self.files_dir / path
            # Another run of the project with the same path and bytes: uploading them again is
            # harmless (a PUT replaces the object whole); other bytes: a RunError.
            self.sink.claim_file(self.project_id, self.run_id, path, source)
            if source.is_dir():
                members = sorted(f for f in source.rglob("*") if f.is_file())
                for member in members:
                    self.store.fs.put_file(str(member), str(target / member.relative_to(source).as_posix()))
                size, count = sum(f.stat().st_size for f in members), len(members)
            else:
                self.store.fs.put_file(str(source), str(target))
                size, count = source.stat().st_size, 1
            self.copied.add(path)
            self.file_bytes += size
            self.plan.report.files += count
            self.plan.report.bytes += size

    def commit(self) -> DestRun:
        if self.writer is None:   # an empty run still gets part_0
            self._open_part()
        self._close_part()
        name = f"{self.project_id}/{self.run_id}"
        present = self.store.listing(self._parts_folder())
        gone = [p for p in self.parts if str(p) not in present]
        if gone:
            raise RunError(f"part {gone[0].name} of this run vanished before its run manifest was written (taken "
                           f"for a killed writer's leftover by another process); the run stays incomplete. Fix: "
                           f"rerun the command", project_id=self.project_id, run_id=self.run_id,
                           file=self.store.show(gone[0]))
        current = self.store.read_json_quiet(self.manifest_path)
        if (isinstance(current, dict) and current != self.before
                and current.get("source_version") == self.plan.source_version
                and current.get("origin") == self._origin()):
            # Another writer completed this run meanwhile (a writer on another machine): its
            # manifest stands, our parts go.
            log.info("run %s: another process wrote it meanwhile; keeping its copy", name)
            self.store.delete(self.parts)
            return DestRun(name, True, locator=self.manifest_path)
        scan = self.plan.scan
        manifest = {
            "format_version": layout.FORMAT_VERSION,
            "project_id": self.project_id,
            "run_id": self.run_id,
            "origin": self._origin(),
            "parts": list(self.names),
            "rows": self.rows,
            "attributes": {k: {**v, "min_step": _text(v["min_step"]), "max_step": _text(v["max_step"])}
                           for k, v in sorted(self.attributes.items())},
            "files": len(self.copied),
            "file_bytes": self.file_bytes,
            "checksum": "blake2b-128:" + self.digest.hexdigest(),
            "source_modification_time": _text(scan.value("sys/modification_time")),
            "source_version": self.plan.source_version,
            "written_at": datetime.now(timezone.utc).isoformat(),
        }
        self.store.write_json(self.manifest_path, manifest)
        after = self.store.read_json_quiet(self.manifest_path)
        if not isinstance(after, dict) or after.get("parts") != self.names:
            # Another writer's manifest replaced ours at the same moment: the last one stands.
            log.info("run %s: another process wrote its manifest after ours; keeping its copy", name)
            self.store.delete(self.parts)
        elif isinstance(self.before, dict):
            # Ours stands: the parts of the manifest it replaced are nobody's now.
            old = [self.data_dir / n for n in self.before.get("parts") or []
                   if isinstance(n, str) and n not in self.names and not layout.relative_problem(n)
                   and n.startswith(f"{self.stem}{layout.PARTS_SUFFIX}/")]
            self.store.delete(old)
        return DestRun(name, True, locator=self.manifest_path)

    def _origin(self) -> dict:
        return {"uri": self.plan.origin.uri, "project_id": self.plan.origin.project_id,
                "run_id": self.plan.origin.run_id}

    def abort(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
            self.writer = None
        if self.handle is not None:
            try:
                self.handle.discard()
            except Exception:
                pass
            self.handle = None
        try:
            self.store.delete([p for p in self.parts if self.store.fs.exists(str(p))])
        except OSError:
            pass   # unlisted: never read, and deleted by the next writer of the run
