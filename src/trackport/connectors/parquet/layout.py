"""On-disk layout of an export (neptune-exporter's, kept for interoperability).

    <root>/data/<safe(project)>/<safe(run)>_part_<n>.parquet
    <root>/files/<safe(project)>/<file_value.path>
    <root>/trackport.json                              export manifest
    <root>/data/<safe(project)>/<safe(run)>.run.json   run manifest, written LAST

A reader of the old layout ignores the json files.  A run is complete when its
manifest exists; in an export without an export manifest (neptune-exporter's),
when its part_0 exists.  `safe` and the file helpers are core's (core/layout.py),
re-exported here for the modules that lay out an export.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ...core.layout import (  # noqa: F401  (re-exported: the export's modules use them through here)
    escape_below,
    is_inside,
    read_json,
    resolve_inside,
    safe,
    special_file,
    write_json_atomic,
)
from ...core.registry import is_extension_project

FORMAT_VERSION = 1
EXPORT_MANIFEST = "trackport.json"
RUN_MANIFEST_SUFFIX = ".run.json"
# neptune-exporter's `export-models` writes a project's Neptune models and model versions into
# these folders of `data/<project>/` (and their files into `files/<project>/<folder>/`); the
# folder is the entity's type, kept in the string attribute CONTAINER_TYPE when read
# (neptune-exporter storage/parquet_writer.py, `entity_scope`).
ENTITY_SCOPES = {"models": "model", "model_versions": "model_version"}
CONTAINER_TYPE = "sys/container_type"
PART_RE = re.compile(r"^(?P<stem>.+)_part_(?P<n>\d+)\.parquet$")


def safe_variants(text: str) -> list[str]:
    """`safe(text)` plus the form older neptune-exporter releases wrote
    (they kept every Unicode letter and digit, via str.isalnum)."""
    ours = safe(text)
    digest = ours.rsplit("-", 1)[1]
    theirs = "".join(c if c.isalnum() or c in "_-" else "_" for c in text) + "-" + digest
    return [ours] if theirs == ours else [ours, theirs]


def data_dir(root: Path) -> Path:
    return root / "data"


def files_dir(root: Path) -> Path:
    return root / "files"


# The parts of a format extension's entries (registry entries, artifact versions:
# registry.is_extension_project) go one folder down, where neptune-exporter's readers, which
# read `data/<project>/*_part_*.parquet`, do not look (docs/format.md, "Layout").
EXTENSIONS = "extensions"


def project_data_dir(root: Path, project_id: str) -> Path:
    folder = data_dir(root) / safe(project_id)
    return folder / EXTENSIONS if is_extension_project(project_id) else folder


def project_files_dir(root: Path, project_id: str) -> Path:
    return files_dir(root) / safe(project_id)


def part_path(root: Path, project_id: str, run_id: str, n: int) -> Path:
    return project_data_dir(root, project_id) / f"{safe(run_id)}_part_{n}.parquet"


def run_manifest_path(root: Path, project_id: str, run_id: str) -> Path:
    return project_data_dir(root, project_id) / f"{safe(run_id)}{RUN_MANIFEST_SUFFIX}"


# -- exports on object storage (docs/object-storage.md) ---------------------------------------
# An object store has no rename: a writer puts each part under a name of its own, in a folder
# beside the run manifest, and only the run manifest, written last as one object, lists the
# parts that make the run.  Parts it does not list (a killed or losing writer's) are never read.
PARTS_SUFFIX = ".parts"
# <writer token>_part_<n>.parquet; the token is <8 hex of the host>-<pid>-<8 random hex>
WRITER_PART_RE = re.compile(r"^(?P<token>(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8})_part_(?P<n>\d+)\.parquet$")
# One small object per source written into the export, beside trackport.json (whose `sources`
# list two writers could not both extend without a lock): readers take the union.
SOURCE_MARKERS = ".trackport/sources"


def writer_part_name(stem: str, token: str, n: int) -> str:
    """A part's name relative to its run's data folder, as the run manifest lists it."""
    return f"{stem}{PARTS_SUFFIX}/{token}_part_{n}.parquet"


def source_marker_name(uri: str) -> str:
    return hashlib.blake2b(uri.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest() + ".json"


def relative_problem(relative: str) -> str | None:
    """Why `relative` (a file path or a listed part) cannot name something below a folder of
    an object store, where there are no symlinks to follow: absolute, empty, or `..`."""
    if not isinstance(relative, str) or not relative or relative.startswith(("/", "\\")) \
            or re.match(r"^[A-Za-z]:", relative):
        return f"path {relative!r} is absolute or empty"
    if ".." in relative.replace("\\", "/").split("/"):
        return f"path {relative!r} escapes its folder"
    return None
