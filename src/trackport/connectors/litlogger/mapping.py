"""Canonical rows <-> LitLogger (Lightning AI experiments): pure functions, no SDK, no I/O.

Deterministic throughout, so a resumed load computes the same experiment name, tags,
artifact paths and manifest as the attempt it repairs.

LitLogger facts this module encodes (litlogger 2026.8.28, lightning_sdk 2026.10.13; docs/litlogger.md):
- an experiment is a metrics stream named uniquely in its teamspace, found by name
  (litlogger/api/metrics_api.py `get_experiment_metrics_by_name`);
- a metric point is {value: float, step: int64, created_at} (litlogger/types.py `MetricValue`,
  lightning_sdk/lightning_cloud/openapi/models/v1_metric_value.py: step travels as a string);
  `created_at` is sent to the millisecond (metrics_api.py `_to_v1_metric_value`);
- metadata are tags {name, value: str} (metrics_api.py `_metadata_to_tags`): text only;
- files are artifacts: bytes in the teamspace drive under experiments/<name>/<path>, plus a
  record on the stream (litlogger/api/artifacts_api.py `upload_experiment_file_artifact`);
- there are no string series, histograms or file series (litlogger/types.py `MediaType`:
  images, text, files, models, videos only).
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from trackport.core.capabilities import Capabilities
from trackport.core.schema import STEP_SCALE

TAG_ORIGIN = "trackport:origin"        # value: the external id (how find_run checks the name it found)
TAG_COMPLETE = "trackport:complete"    # value: the source's run version; the completion mark, set last
RESERVED_TAG = "trackport:"            # no user param becomes a tag with this prefix
MANIFEST_PATH = "trackport/manifest.json"
SERIES_PREFIX = "trackport/series/"
FILES_PREFIX = "files/"
MANIFEST_FORMAT = "trackport.litlogger.manifest"
MANIFEST_VERSION = 1
NAME_MAX = 100

TRANSFORMATIONS: dict[str, str] = {
    "param_as_text": "int/float/bool/datetime/string_set param stored as LitLogger tag text "
    "(metadata are strings); its type is in trackport/manifest.json and it reads back exactly",
    "param_in_manifest": "param whose path starts with 'trackport:' (trackport's own tag names) "
    "or that is null, kept only in trackport/manifest.json",
    "special_point_in_manifest": "metric point that JSON cannot carry (NaN, +-inf) or without a value, "
    "kept in trackport/manifest.json instead of the metric stream",
    "series_file": "string/histogram series (LitLogger has neither) stored whole as a JSON-lines "
    "artifact trackport/series/<hash>.jsonl, read back exactly",
    "file_path_renamed": "file attribute whose path has an empty, '.' or '..' segment stored under "
    "files/_/<8 hex of its path>/...; the manifest keeps the original path",
    "step_scaled": "decimal step multiplied by the run's step multiplier to an integer LitLogger step "
    "(divided back exactly when read; multiplier in the manifest)",
    "step_floored": "step left with a fraction by a user-set multiplier, floored",
}

CAPABILITIES = Capabilities(
    integer_steps=True,
    keeps_timestamps=True,
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    replayable=False,
    transformations=dict(TRANSFORMATIONS),
)


def external_id(uri: str, project_id: str, run_id: str) -> str:
    """Deterministic id of a source run (same origin -> same id)."""
    digest = hashlib.blake2b(f"{uri}\n{project_id}\n{run_id}".encode(), digest_size=12).hexdigest()
    return f"trackport-{digest}"


def experiment_name(ext_id: str, run_id: str) -> str:
    """The experiment (metrics stream) name: the source run id, readable, plus 10 hex of its origin."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-.") or "run"
    suffix = ext_id.rsplit("-", 1)[-1][:10]
    return f"{slug[:NAME_MAX - 11]}-{suffix}"


# -- params --------------------------------------------------------------------------

def param_text(typ: str, value: Any) -> str:
    """A param as tag text, read back exactly by `param_value`."""
    if typ == "float":
        return repr(float(value))
    if typ == "int":
        return str(int(value))
    if typ == "bool":
        return "true" if value else "false"
    if typ == "datetime":
        return iso(value)
    if typ == "string_set":
        return json.dumps([str(v) for v in value], ensure_ascii=False)
    return str(value)


def param_value(typ: str, text: str) -> Any:
    if typ == "float":
        return float(text)
    if typ == "int":
        return int(text)
    if typ == "bool":
        return text == "true"
    if typ == "datetime":
        return from_iso(text)
    if typ == "string_set":
        return list(json.loads(text))
    return text


def iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


@dataclass
class TagPlan:
    tags: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    in_manifest: dict[str, Any] = field(default_factory=dict)   # path -> JSON-able value (None for null)
    counts: dict[str, list[str]] = field(default_factory=dict)

    def hit(self, kind: str, path: str) -> None:
        self.counts.setdefault(kind, []).append(path)


def tag_plan(values: dict[str, tuple[str, Any]]) -> TagPlan:
    """Single values -> tags {attribute path: text}; null ones and trackport-named ones -> manifest."""
    plan = TagPlan()
    for path in sorted(values):
        typ, value = values[path]
        plan.types[path] = typ
        if value is None or path.startswith(RESERVED_TAG):
            plan.in_manifest[path] = None if value is None else param_text(typ, value)
            plan.hit("param_in_manifest", path)
            continue
        plan.tags[path] = param_text(typ, value)
        if typ != "string":
            plan.hit("param_as_text", path)
    return plan


# -- metric points ------------------------------------------------------------------

def special_text(value: float | None) -> str | None:
    """'NaN', 'inf', '-inf' or 'null' for a value JSON cannot carry; None for a finite float."""
    if value is None:
        return "null"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


def special_value(text: str) -> float | None:
    return None if text == "null" else float(text)


def source_step(dest_step: int, multiplier: int) -> Decimal:
    """The canonical decimal step of an integer LitLogger step (exact)."""
    return (Decimal(int(dest_step)) / Decimal(multiplier)).quantize(Decimal(1).scaleb(-STEP_SCALE))


# -- files ---------------------------------------------------------------------------

def file_remote(attr: str, step: str | None, source_path: str, member: str | None) -> tuple[str, bool]:
    """The artifact path of a file (relative to the experiment), and whether the attribute was renamed.

    The SDK normalises the drive path (lightning_sdk/teamspace.py `upload_file`: os.path.normpath),
    so a '..' segment would leave the experiment's folder: such attributes get a hashed folder.
    """
    parts = attr.split("/")
    renamed = any(p in ("", ".", "..") for p in parts)
    folder = f"_/{hashlib.blake2b(attr.encode(), digest_size=4).hexdigest()}" if renamed else attr
    name = member if member is not None else (posixpath.basename(source_path.rstrip("/")) or "file")
    name = "/".join(p if p not in ("", ".", "..") else "_" for p in name.split("/"))
    middle = f"step={step}/" if step is not None else ""
    return f"{FILES_PREFIX}{folder}/{middle}{name}", renamed


def series_remote(path: str) -> str:
    return SERIES_PREFIX + hashlib.blake2b(path.encode(), digest_size=8).hexdigest() + ".jsonl"


# -- the manifest ---------------------------------------------------------------------

@dataclass
class Manifest:
    """What LitLogger cannot give back by itself; uploaded as trackport/manifest.json before the mark."""

    origin_uri: str
    project_id: str
    run_id: str
    external_id: str
    multiplier: int = 1
    types: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)        # path -> text (or None): not in tags
    metrics: dict[str, int] = field(default_factory=dict)       # metric name -> points sent
    special: dict[str, list[list]] = field(default_factory=dict)  # name -> [[dest step, ms, text]]
    series_files: dict[str, str] = field(default_factory=dict)  # string/histogram path -> artifact path
    files: list[list] = field(default_factory=list)   # [attr, type, step text, source path, remote, member, ms]

    def dumps(self) -> bytes:
        doc = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
               "origin": {"uri": self.origin_uri, "project_id": self.project_id, "run_id": self.run_id},
               "external_id": self.external_id, "step_multiplier": self.multiplier, "types": self.types,
               "params": self.params, "metrics": self.metrics, "special": self.special,
               "series_files": self.series_files, "files": self.files}
        return json.dumps(doc, sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def loads(cls, data: bytes) -> "Manifest":
        doc = json.loads(data)
        if doc.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a trackport LitLogger manifest")
        origin = doc["origin"]
        return cls(origin["uri"], origin["project_id"], origin["run_id"], doc["external_id"],
                   int(doc["step_multiplier"]), doc.get("types", {}), doc.get("params", {}),
                   doc.get("metrics", {}), doc.get("special", {}), doc.get("series_files", {}),
                   doc.get("files", []))


def decimal_step(text: str) -> Decimal:
    """A step recorded as its exact decimal text (files, series files)."""
    return Decimal(text)
