"""On-disk layout of an export (neptune-exporter's, kept for interoperability).

    <root>/data/<safe(project)>/<safe(run)>_part_<n>.parquet
    <root>/files/<safe(project)>/<file_value.path>
    <root>/trackport.json                              export manifest
    <root>/data/<safe(project)>/<safe(run)>.run.json   run manifest, written LAST

A reader of the old layout ignores the json files.  A run is complete when its
manifest exists; in an export without an export manifest (neptune-exporter's),
when its part_0 exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
EXPORT_MANIFEST = "trackport.json"
RUN_MANIFEST_SUFFIX = ".run.json"
PART_RE = re.compile(r"^(?P<stem>.+)_part_(?P<n>\d+)\.parquet$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def safe(text: str) -> str:
    """Every character outside [A-Za-z0-9_-] becomes `_`, then `-<blake2b-8 hex>`."""
    return _UNSAFE.sub("_", text) + "-" + _digest(text)


def safe_variants(text: str) -> list[str]:
    """`safe(text)` plus the form older neptune-exporter releases wrote
    (they kept every Unicode letter and digit, via str.isalnum)."""
    ours = safe(text)
    theirs = "".join(c if c.isalnum() or c in "_-" else "_" for c in text) + "-" + _digest(text)
    return [ours] if theirs == ours else [ours, theirs]


def data_dir(root: Path) -> Path:
    return root / "data"


def files_dir(root: Path) -> Path:
    return root / "files"


def project_data_dir(root: Path, project_id: str) -> Path:
    return data_dir(root) / safe(project_id)


def project_files_dir(root: Path, project_id: str) -> Path:
    return files_dir(root) / safe(project_id)


def part_path(root: Path, project_id: str, run_id: str, n: int) -> Path:
    return project_data_dir(root, project_id) / f"{safe(run_id)}_part_{n}.parquet"


def run_manifest_path(root: Path, project_id: str, run_id: str) -> Path:
    return project_data_dir(root, project_id) / f"{safe(run_id)}{RUN_MANIFEST_SUFFIX}"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def resolve_inside(root: Path, relative: str) -> Path:
    """`root/relative`, refusing anything that leaves `root` (`..`, absolute paths, symlinks out)."""
    if not relative or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise ValueError(f"file path {relative!r} is absolute or empty")
    parts = Path(relative).parts
    if ".." in parts:
        raise ValueError(f"file path {relative!r} escapes the files root")
    candidate = root / relative
    real_root = root.resolve()
    real = candidate.resolve()
    if real != real_root and real_root not in real.parents:
        raise ValueError(f"file path {relative!r} leads outside the files root (through a symlink)")
    return candidate
