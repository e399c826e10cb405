"""The artifacts offline runs logged: found in their `.wandb` logs, read as canonical runs
(artifacts.py names the shapes; docs/wandb.md, "Artifacts").

The SDK stages an artifact's files outside the run folder (`$WANDB_DATA_DIR/artifacts/staging`,
or the original file for `policy="immutable"`) and records each file's staged path in the
`artifact` record's manifest; a manifest of more than 100,000 entries is written to a gzipped
JSON-lines file instead (wandb/sdk/interface/interface.py, `_make_artifact_manifest`).  The
SDK deletes staged files once `wandb sync` uploaded them: such a file is missing here, which
the pipeline refuses like any missing file unless --allow-drops.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from trackport.core.connector import FileAccess
from trackport.core.errors import RunError
from trackport.core.model import RunRef

from . import artifacts as art_map
from .datastore import DatastoreError, LogReader

log = logging.getLogger(__name__)

# Every artifact record's manifest names its storage policy ("wandb-storage-policy-v1"): a
# payload without these bytes is not parsed while looking for artifacts.
_MARK = b"wandb-storage-policy"


@dataclass(frozen=True)
class ArtifactLocator:
    artifact: art_map.Artifact
    manifest_file: str | None = None     # a big manifest the SDK wrote to a file


def scan(pb, log_file: Path, producer_project: str, producer_run: str) -> list[ArtifactLocator]:
    """The artifact records of one `.wandb` log, in log order (what a torn log holds
    before its tear; an unreadable log has none here and fails when its run is read)."""
    found = []
    try:
        for payload in LogReader(log_file):
            if _MARK not in payload:
                continue
            record = pb.Record()
            record.ParseFromString(payload)
            if record.WhichOneof("record_type") == "artifact":
                found.append(_locator(record.artifact, producer_project, producer_run))
    except (DatastoreError, OSError) as exc:
        log.warning("%s: %s (artifacts after this point are not listed)", log_file, exc)
    except Exception as exc:   # protobuf DecodeError
        log.warning("%s: record is not a W&B Record (%s)", log_file, exc)
    return found


def _locator(record, producer_project: str, producer_run: str) -> ArtifactLocator:
    manifest = record.manifest
    entries = tuple(
        art_map.Entry(path=c.path, digest=c.digest, size=c.size if (c.size or not c.ref) else None,
                      ref=c.ref or None, local_path=c.local_path or None,
                      extra={e.key: json.loads(e.value_json) for e in c.extra})
        for c in manifest.contents)
    artifact = art_map.Artifact(
        entity=record.entity, project=record.project, name=record.name, type=record.type,
        digest=record.digest, producer_project=producer_project, producer_run=producer_run,
        description=record.description, metadata=art_map.metadata_text(record.metadata),
        aliases=tuple(record.aliases), tags=tuple(record.tags), ttl_seconds=record.ttl_duration_seconds,
        digest_algorithm=record.digest_algorithm, storage_policy=manifest.storage_policy, entries=entries)
    return ArtifactLocator(artifact, manifest.manifest_file_path or None)


@lru_cache(maxsize=4)   # run_version, files and read of one version ask in turn
def _manifest_file_entries(path: str, mtime_ns: int, size: int) -> tuple[art_map.Entry, ...]:
    """The entries of a manifest file, as it is now (`mtime_ns` and `size` key the cache)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return tuple(art_map.entry_from_json(json.loads(line)) for line in fh if line.strip())


def load(loc: ArtifactLocator, ref: RunRef) -> art_map.Artifact:
    """The artifact with every manifest entry (read from the manifest file when there is one)."""
    if not loc.manifest_file:
        return loc.artifact
    try:
        stat = os.stat(loc.manifest_file)
        entries = _manifest_file_entries(loc.manifest_file, stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise RunError(f"the artifact's manifest file cannot be read ({exc}); the SDK writes the manifest "
                       f"of an artifact with over 100,000 files there and deletes it after `wandb sync`",
                       project_id=ref.project_id, run_id=ref.run_id, file=loc.manifest_file) from None
    return replace(loc.artifact, entries=entries)


def read(loc: ArtifactLocator, ref: RunRef, notes: dict) -> list[art_map.Row]:
    """The artifact version's rows; staged files that are gone are named in the run's
    warnings (the pipeline refuses or drops them as missing files)."""
    artifact = load(loc, ref)
    rows = art_map.single_rows(artifact) + art_map.file_rows(artifact)
    for e in artifact.entries:
        if not e.ref and not (e.local_path and Path(e.local_path).exists()):
            notes["warnings"].append(
                f"artifact {artifact.name}:{artifact.digest[:8]} file {e.path}: its staged copy "
                f"{e.local_path or '(none recorded)'} is gone (the SDK deletes staged files once `wandb sync` "
                f"uploaded them: the bytes are in W&B then, not here)")
    return rows


def version(loc: ArtifactLocator, ref: RunRef) -> str:
    """The digest and the size of every staged file (nothing is read)."""
    artifact = load(loc, ref)
    sizes = []
    for e in artifact.entries:
        try:
            sizes.append((e.path, Path(e.local_path).stat().st_size if e.local_path else None))
        except OSError:
            sizes.append((e.path, None))
    return hashlib.blake2b(json.dumps([artifact.digest, sizes]).encode(), digest_size=12).hexdigest()


class ArtifactFiles(FileAccess):
    """`file_value.path` = `<digest>/<path in the artifact>` -> the file the SDK staged."""

    def __init__(self, artifact: art_map.Artifact, ref: RunRef):
        self.ref = ref
        self.staged = {art_map.file_name(artifact.digest, e.path): e.local_path
                       for e in artifact.entries if not e.ref}

    def local_path(self, path: str) -> Path | None:
        if path not in self.staged:
            raise RunError("not a file of this artifact", project_id=self.ref.project_id,
                           run_id=self.ref.run_id, file=path)
        staged = self.staged[path]
        if not staged:
            raise RunError("file missing: the artifact record names no staged copy of it",
                           project_id=self.ref.project_id, run_id=self.ref.run_id, file=path)
        return Path(staged)

    def open(self, path: str) -> BinaryIO:
        return open(self.local_path(path), "rb")
