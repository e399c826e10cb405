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
