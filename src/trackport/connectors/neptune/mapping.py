"""Canonical <-> Neptune mapping: pure functions and constants, no SDK, no I/O.

Neptune facts encoded here (checked on this machine, see docs/neptune.md):
- 2.x client (`neptune` 1.14): `custom_run_id` over 36 characters is ignored
  with a warning (neptune/internal/utils/... `validate_custom_run_id`);
  in offline mode `custom_run_id` is not written to the queue at all;
  string attributes are cut at 16,384 characters and string-series values at
  1,000 (neptune/attributes/atoms/string.py, series/string_series.py);
  ints outside int32 and NaN/inf floats are skipped with a warning
  (neptune/internal/types/utils.py); file series take images only
  (neptune/attributes/series/file_series.py); there are no histograms;
  `sys/*` other than name, description, tags, group_tags and failed are
  owned by the server.
- 3.x client (`neptune-scale` 0.30): int64, NaN/inf, histograms and any file
  kind are kept; steps are fixed point with 6 decimals; `sys/*` other than
  name, description, tags and group_tags are owned by the server.

What a destination cannot hold natively is written in the closest native form
AND recorded whole in the run's *restore table* (a parquet file of canonical
rows uploaded as the file attribute `trackport/restore`), so the `neptune:`
source gives back exactly the rows that went in.  Every such case is a
declared transformation counted in the run's report.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from trackport.core.capabilities import Capabilities

# -- identity -----------------------------------------------------------------
ORIGIN_NS = "trackport/origin"
ORIGIN_URI = "trackport/origin/uri"
ORIGIN_PROJECT = "trackport/origin/project_id"
ORIGIN_RUN = "trackport/origin/run_id"
COMPLETE = "trackport/complete"
SOURCE_VERSION = "trackport/source_version"   # the source's run_version, set just before COMPLETE
RESTORE = "trackport/restore"
TRACKPORT_NS = "trackport/"
# extra column of the restore table: "row" (a canonical row) or "suppress"
# (a path the SDK wrote by itself that the source run did not have)
RESTORE_ACTION = "restore_action"

MAX_CUSTOM_RUN_ID = 36          # 2.x client: longer ids are ignored (a new run is created)
MAX_STRING_2 = 16_384           # 2.x client: string attributes cut
MAX_STRING_SERIES_2 = 1_000     # 2.x client: string series values cut
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

# sys/* attributes a client may write; every other sys/* goes to the restore table.
WRITABLE_SYS_2 = frozenset({"sys/name", "sys/description", "sys/tags", "sys/group_tags", "sys/failed"})
WRITABLE_SYS_3 = frozenset({"sys/name", "sys/description", "sys/tags", "sys/group_tags"})
# what init_run writes by itself (suppressed on read when the source run lacked it)
INIT_WRITES_2 = ("sys/name", "sys/description", "sys/failed", "source_code/entrypoint", "source_code/files")

IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "gif", "bmp", "tiff", "webp"})

TRANSFORMATIONS_2: dict[str, str] = {
    "sys_attribute_in_restore": "sys/* attribute Neptune owns (creation time, id, owner, custom run id "
    "lost offline, forking...) kept in the trackport/restore table, given back by the neptune: source",
    "nonfinite_param_as_string": "NaN/inf float param stored as its text (the 2.x client skips it); "
    "exact value in trackport/restore",
    "int64_param_as_string": "int outside int32 stored as its text (the 2.x client skips it); "
    "exact value in trackport/restore",
    "string_truncated": "string param over 16,384 characters cut by the 2.x client; whole text in trackport/restore",
    "nonfinite_points_in_restore": "NaN/inf series points skipped by the 2.x client; the whole series "
    "is kept in trackport/restore",
    "string_series_value_truncated": "string-series value over 1,000 characters cut by the 2.x client; "
    "the whole series is kept in trackport/restore",
    "histogram_in_restore": "histogram series (no 2.x type) kept only in trackport/restore",
    "file_series_not_image_as_files": "file series of non-images (2.x file series take images only) "
    "uploaded as file attributes <path>/<step>; the series rows are kept in trackport/restore",
    "artifact_as_file": "artifact (file listing) uploaded as a file attribute; type kept in trackport/restore",
    "series_timestamp_filled": "series point without a timestamp gets the client's write time; the "
    "series rows are kept in trackport/restore",
    "file_path_in_restore": "file row's source path kept in trackport/restore (Neptune keeps the content only)",
    "custom_run_id_hashed": "sys/custom_run_id over 36 characters replaced by a deterministic hash "
    "(the 2.x client ignores longer ids)",
    "excluded_by_wandb_mapping": "W&B data the original W&B -> Neptune script leaves out (keys starting "
    "with '_', files under artifact/ or media/, config.yaml, wandb-*); keep it with --neptune-keep-all",
    "project_name_dashes": "'_' in a project name replaced by '-' (W&B -> Neptune script)",
}
TRANSFORMATIONS_2["string_set_sorted"] = ("string set (tags, group tags, list params) read back in sorted "
                                          "order: Neptune string sets are unordered")
TRANSFORMATIONS_3: dict[str, str] = {
    "string_set_sorted": TRANSFORMATIONS_2["string_set_sorted"],
    "sys_attribute_in_restore": TRANSFORMATIONS_2["sys_attribute_in_restore"],
    "histogram_densities": "histogram with non-integral counts logged as densities; exact rows in trackport/restore",
    "file_set_as_files": "file set (no 3.x type) uploaded as one file attribute per file under its path; "
    "the file_set row is kept in trackport/restore",
    "artifact_as_file": TRANSFORMATIONS_2["artifact_as_file"],
    "file_path_in_restore": TRANSFORMATIONS_2["file_path_in_restore"],
    "series_timestamp_filled": TRANSFORMATIONS_2["series_timestamp_filled"],
    "excluded_by_wandb_mapping": TRANSFORMATIONS_2["excluded_by_wandb_mapping"],
    "project_name_dashes": TRANSFORMATIONS_2["project_name_dashes"],
    "custom_run_id_hashed": "run id over 128 characters replaced by a deterministic hash",
}

CAPABILITIES_2 = Capabilities(
    integer_steps=False, keeps_timestamps=True, files=True, histograms=True, forks=True,
    resumable=True, transformations=dict(TRANSFORMATIONS_2),
)
CAPABILITIES_3 = Capabilities(
    integer_steps=False, keeps_timestamps=True, files=True, histograms=True, forks=True,
    resumable=True, transformations=dict(TRANSFORMATIONS_3),
)
# -- what the neptune: source (and the API sources) may report ------------------
STEP_LESS = "step_less_points_numbered"
CONTAINER_TYPE = "sys/container_type"
UPLOAD_ALREADY_SENT = "upload_already_sent"
UPLOAD_MISSING = "upload_file_missing"
SOURCE_TRANSFORMATIONS: dict[str, str] = {
    STEP_LESS: "series point logged without a step (the 2.x client queues `\"step\": null` for "
    "append()/log() without step=) numbered as Neptune numbers it: per series, the last step + 1, "
    "0 for the series' first point",
    "container_as_run": "model, model version or project container moved as a run; its type kept "
    "in the string attribute sys/container_type",
}
SOURCE_DROPS: dict[str, str] = {
    UPLOAD_ALREADY_SENT: "upload the server acknowledged (version <= last_ack_version): the client "
    "deleted its temporary file, so the bytes are no longer on disk (read them with neptune2://)",
    UPLOAD_MISSING: "pending upload whose file is missing on this machine: that attribute is not "
    "moved, the rest of the run is (restore the file and run again)",
}
SOURCE_CAPABILITIES = Capabilities(replayable=False, transformations=dict(SOURCE_TRANSFORMATIONS))


def short_hash(text: str, size: int = 16) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=size).hexdigest()


def custom_run_id(wanted: str, max_length: int = MAX_CUSTOM_RUN_ID) -> tuple[str, bool]:
    """The destination custom run id: `wanted` when it fits, else `tp-` + a deterministic hash."""
    if len(wanted) <= max_length and wanted:
        return wanted, False
    return "tp-" + short_hash(wanted, 16)[: max_length - 3], True


def project_name(name: str) -> str:
    """Neptune project name (W&B -> Neptune script: `_` becomes `-`)."""
    return name.replace("_", "-")


def is_origin_path(path: str) -> bool:
    return path.startswith(TRACKPORT_NS)


# -- W&B -> Neptune default exclusions (docs/neptune.md, W&B -> Neptune) -------------------
_WANDB_FILE_ATTRS = ("files/", "wandb/files/")


def wandb_excluded(path: str, attribute_type: str, file_path: str | None) -> str | None:
    """Why the original W&B -> Neptune script leaves this row out, or None.

    Keys starting with `_` (any path part after the first namespace), files
    under `artifact/` or `media/`, `config.yaml` and `wandb-*` files.
    """
    parts = path.split("/")
    if any(p.startswith("_") for p in parts[1:] if p) or parts[0].startswith("_"):
        return "key starts with '_'"
    names = [path]
    if file_path:
        names.append(file_path)
    for name in names:
        rel = name
        for prefix in _WANDB_FILE_ATTRS:
            if rel.startswith(prefix):
                rel = rel[len(prefix):]
        base = rel.rsplit("/", 1)[-1]
        if attribute_type in ("file", "file_series", "file_set", "artifact"):
            if rel.startswith(("artifact/", "media/")) or "/artifact/" in name or "/media/" in name:
                return "file under artifact/ or media/"
            if base == "config.yaml":
                return "config.yaml"
            if base.startswith("wandb-"):
                return "wandb-* file"
    return None


# -- values -------------------------------------------------------------------
def native_param_2(attribute_type: str, value: Any) -> tuple[str, Any, str | None]:
    """(2.x op kind, native value, transformation or None) of a single value."""
    if value is None:
        return "skip", None, None
    if attribute_type == "float":
        if not math.isfinite(value):
            return "string", repr(float(value)), "nonfinite_param_as_string"
        return "float", float(value), None
    if attribute_type == "int":
        if not INT32_MIN <= value <= INT32_MAX:
            return "string", str(int(value)), "int64_param_as_string"
        return "int", int(value), None
    if attribute_type == "string":
        if len(value) > MAX_STRING_2:
            return "string", value[:MAX_STRING_2], "string_truncated"
        return "string", value, None
    if attribute_type in ("bool", "datetime", "string_set"):
        return attribute_type, value, None
    raise ValueError(attribute_type)


def is_image(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS if "." in path else False


def step_token(step_text: str | None) -> str:
    """A path part for a step: '7.5' -> '7.5', None -> 'none'."""
    return "none" if step_text is None else step_text
