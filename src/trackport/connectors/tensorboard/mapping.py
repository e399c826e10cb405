"""TensorBoard <-> canonical mapping: pure functions, no SDK, no I/O.

Read side (any logdir): a run is a directory holding event files (or a group
of them, see `group_runs`); each summary value becomes canonical rows by its
plugin:

  scalars (simple_value, or a `scalars` tensor)  -> float_series
  histo (HistogramProto), `histograms` tensors    -> histogram_series (type COUNTING)
  image / audio values, `images`/`audio` tensors -> file_series (the encoded bytes)
  `text` tensors                                  -> string_series
  `hparams` session start info                    -> params `hparams/<name>`
  other plugins' tensors, graphs, run metadata    -> files holding the serialized proto

Write side: see sink.py; everything TensorBoard cannot hold natively (typed
params, files that are not images, null wall times, decimal steps) is kept
exactly in the run's completion mark `trackport-run.json`, which the source
reads back, so a round trip is exact.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from trackport.core.capabilities import Capabilities
from trackport.core.layout import safe  # noqa: F401  (re-exported for the source)
from trackport.core.schema import STEP_SCALE
from trackport.core.steps import decimal_steps

MARKER = "trackport-run.json"          # completion mark + exact attribute manifest, written last
ORIGIN_FILE = "trackport-origin.json"  # written first: whose run this directory is
FILES_DIR = "trackport-files"          # files TensorBoard has no summary for
EVENT_FILE_SUFFIX = ".trackport"
MARKER_VERSION = 1

HISTOGRAM_TYPE = "COUNTING"            # the canonical type of a TensorBoard histogram (counts per bucket)

# TensorBoard plugin names (tensorboard/plugins/*/metadata.py PLUGIN_NAME)
SCALARS, HISTOGRAMS, IMAGES, AUDIO, TEXT, HPARAMS = "scalars", "histograms", "images", "audio", "text", "hparams"
HPARAMS_START_TAG = "_hparams_/session_start_info"   # tensorboard/plugins/hparams/metadata.py

CAPABILITIES = Capabilities(
    integer_steps=True,
    keeps_timestamps=True,
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    transformations={
        "params_in_mark": "params and run metadata are shown as HParams (numbers, text, booleans; "
                          "datetimes as ISO text, string sets as JSON); their exact types and values "
                          f"live in {MARKER} and read back unchanged",
        "file_beside_events": f"files that are not PNG/JPEG/GIF images (and single files, file sets, "
                              f"artifacts) are stored under <run>/{FILES_DIR}/ and listed in {MARKER}",
        "null_wall_time_zero": "a point without timestamp is written with wall time 0 (read back as null)",
        "scalar_as_double_tensor": "scalars are written as float64 `scalars` tensors (not float32 "
                                   "simple_value), so values stay exact",
    },
)

_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png", "image/png"), (b"\xff\xd8\xff", "jpg", "image/jpeg"),
                (b"GIF87a", "gif", "image/gif"), (b"GIF89a", "gif", "image/gif"))


# -- runs -----------------------------------------------------------------------------

def run_dir_parts(project_id: str, run_id: str) -> tuple[str, str]:
    """The destination directory of a run, relative to LOGDIR: deterministic from its origin."""
    return safe(project_id), safe(run_id)


@dataclass
class RunGroup:
    """One source run: its name and its event directories with their attribute prefixes."""

    name: str                                   # path relative to LOGDIR ("." for LOGDIR itself)
    dirs: list[tuple[str, str]] = field(default_factory=list)   # (relative dir, attribute prefix)


def group_runs(event_dirs: list[str], depth: int | None, subdirs_as_prefixes: bool,
               own_runs: frozenset[str] = frozenset()) -> list[RunGroup]:
    """Group event directories (POSIX paths relative to LOGDIR, "." for LOGDIR) into runs.

    - default: every directory holding event files is a run;
    - `depth` N: runs are the directories N levels below LOGDIR; event files deeper
      belong to that run, their remaining path becoming an attribute prefix;
    - `subdirs_as_prefixes`: a directory whose parent is not LOGDIR belongs to its
      parent's run (`exp1/train`, `exp1/validation` -> run `exp1`, prefixes `train/`, `validation/`).
    Directories written by the trackport sink (`own_runs`) are always runs of their own.
    """
    groups: dict[str, RunGroup] = {}
    for rel in sorted(event_dirs):
        parts = () if rel == "." else PurePosixPath(rel).parts
        run_parts = parts
        if rel not in own_runs:
            if depth is not None and depth > 0 and len(parts) > depth:
                run_parts = parts[:depth]
            elif depth is None and subdirs_as_prefixes and len(parts) >= 2:
                run_parts = parts[:-1]
        name = "/".join(run_parts) or "."
        prefix = "/".join(parts[len(run_parts):])
        group = groups.setdefault(name, RunGroup(name))
        group.dirs.append((rel, f"{prefix}/" if prefix else ""))
    return [groups[k] for k in sorted(groups)]


# -- values ---------------------------------------------------------------------------

def wall_ms(wall_time: float) -> int | None:
    """Event wall time (float seconds) -> ms; 0 means "no time" (what the sink writes for null)."""
    if not wall_time or not math.isfinite(wall_time):
        return None
    return int(round(wall_time * 1000.0))


def wall_seconds(ms: int | None) -> float:
    return 0.0 if ms is None else ms / 1000.0


def histogram_from_proto(minimum: float, bucket_limit, bucket) -> dict:
    """HistogramProto -> canonical: edges = [min] + bucket limits (right edges), values = counts."""
    return {"type": HISTOGRAM_TYPE, "edges": [float(minimum), *map(float, bucket_limit)],
            "values": [float(v) for v in bucket]}


def histogram_from_tensor(array: np.ndarray) -> dict:
    """A `histograms` plugin tensor ([k, 3]: left, right, count) -> canonical edges/values."""
    arr = np.asarray(array, dtype=np.float64).reshape(-1, 3) if np.size(array) else np.zeros((0, 3))
    if arr.shape[0] == 0:
        return {"type": HISTOGRAM_TYPE, "edges": [], "values": []}
    edges = [*arr[:, 0].tolist(), float(arr[-1, 1])]
    return {"type": HISTOGRAM_TYPE, "edges": edges, "values": arr[:, 2].tolist()}


def histogram_to_proto_fields(edges: list[float], values: list[float]) -> dict:
    """Canonical histogram -> HistogramProto fields, so `histogram_from_proto` gives it back exactly."""
    edges = list(edges or [])
    values = list(values or [])
    finite = [v for v in values if v is not None and math.isfinite(v)]
    lo = edges[0] if edges else 0.0
    hi = edges[-1] if edges else 0.0
    return {"min": lo, "max": hi, "num": float(sum(finite)), "sum": 0.0, "sum_squares": 0.0,
            "bucket_limit": edges[1:], "bucket": values}


def image_kind(data: bytes) -> tuple[str, str] | None:
    """(extension, content type) when `data` is an image TensorBoard can show."""
    for magic, ext, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return ext, mime
    return None


def png_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a PNG header, (0, 0) when unknown."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    return 0, 0


def audio_extension(content_type: str) -> str:
    return {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mpeg": "mp3", "audio/ogg": "ogg"}.get(
        (content_type or "").lower(), "wav")


def text_value(array: np.ndarray) -> str:
    """A `text` tensor -> one string: a scalar as is, several strings as a JSON array."""
    arr = np.asarray(array, dtype=object)
    if arr.size == 1:
        item = arr.reshape(-1)[0]
        return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    decode = np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b), otypes=[object])
    return json.dumps(decode(arr).tolist(), ensure_ascii=False)


def blob_path(prefix_tag: str, step: int, ordinal: int, ext: str) -> str:
    """The file path given to a file kept inside an event file (source side)."""
    return f"{prefix_tag}/{step}_{ordinal}.{ext}"


# -- params ---------------------------------------------------------------------------

def param_to_json(attribute_type: str, value: Any) -> Any:
    """A canonical single value -> JSON (exact) for the completion mark."""
    if value is None:
        return None
    if attribute_type == "datetime":
        return ms_from_datetime(value)
    if attribute_type == "float":
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if attribute_type == "string_set":
        return list(value)
    return value


def param_from_json(attribute_type: str, value: Any) -> Any:
    if value is None:
        return None
    if attribute_type == "datetime":
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc).replace(
            microsecond=(value % 1000) * 1000)
    if attribute_type == "float":
        return float(value)
    return value


def hparam_value(attribute_type: str, value: Any) -> tuple[str, Any] | None:
    """How a param is shown in the HParams dashboard: ("number"|"string"|"bool", value)."""
    if value is None:
        return None
    if attribute_type == "bool":
        return "bool", bool(value)
    if attribute_type in ("int", "float"):
        return "number", float(value)
    if attribute_type == "string":
        return "string", value
    if attribute_type == "datetime":
        return "string", (value if isinstance(value, datetime) else
                          datetime.fromtimestamp(value / 1000, tz=timezone.utc)).isoformat()
    if attribute_type == "string_set":
        return "string", json.dumps(sorted(value), ensure_ascii=False)
    return "string", str(value)


def ms_from_datetime(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# -- steps ----------------------------------------------------------------------------

_DENOM = 10**STEP_SCALE
_MAX_UNSCALED = 10**18 - 1


def step_array(steps: np.ndarray, valid: np.ndarray | None, multiplier: int) -> pa.Array:
    """int64 TensorBoard steps / `multiplier` -> canonical decimal(18,6) steps, exactly."""
    steps = np.asarray(steps, dtype=np.int64)
    factor = _DENOM // multiplier
    if _DENOM % multiplier:
        raise ValueError(f"step multiplier {multiplier} is not a power of ten up to 10**6")
    if steps.size and int(np.abs(steps).max()) > _MAX_UNSCALED // factor:
        raise OverflowError(f"step {int(np.abs(steps).max())} does not fit decimal(18,6)")
    return decimal_steps(steps * factor, valid)


def step_text(step: Decimal | None) -> str | None:
    return None if step is None else format(step.normalize(), "f")
