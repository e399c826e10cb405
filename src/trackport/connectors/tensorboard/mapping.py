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
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from trackport.core.capabilities import Capabilities
from trackport.core.layout import safe  # noqa: F401  (re-exported for the source)
from trackport.core.schema import STEP_SCALE, ms_from_datetime
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
# trackport's own plugin name: values no TensorBoard dashboard draws (no plugin of that name exists).
TRACKPORT_PLUGIN = "trackport"
EXACT_SUFFIX = "/.trackport-exact"     # the exact float64 twin of a scalar float32 cannot hold


def exact_tag(tag: str) -> str:
    """The tag of the exact DT_DOUBLE twin written beside a float32 scalar that rounds."""
    return tag + EXACT_SUFFIX


def scalar_of_exact_tag(tag: str) -> str | None:
    return tag[: -len(EXACT_SUFFIX)] if tag.endswith(EXACT_SUFFIX) else None


CAPABILITIES = Capabilities(
    integer_steps=True,
    keeps_timestamps=True,
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    # an event holds a value: a point without one is dropped (sink.py counts "null_value")
    null_point_drops={"float_series": "null_value", "string_series": "null_value",
                      "histogram_series": "null_value"},
    transformations={
        "params_in_mark": "params and run metadata are shown as HParams (numbers, text, booleans; "
                          "datetimes as ISO text, string sets as JSON); their exact types and values "
                          f"live in {MARKER} and read back unchanged",
        "file_beside_events": f"files that are not PNG/JPEG/GIF images (and single files, file sets, "
                              f"artifacts) are stored under <run>/{FILES_DIR}/ and listed in {MARKER}",
        "null_wall_time_zero": "a point without timestamp is written with wall time 0 (read back as null)",
        "scalar_float32_display": "scalars are written as tf.summary.scalar writes them (float32 "
                                  "`scalars` tensors, shown by both TensorBoard loaders), so TensorBoard "
                                  "displays a float64 value rounded to float32; where it rounds, the exact "
                                  "value is kept in the same event under the `trackport` plugin (tag "
                                  "`<tag>/.trackport-exact`, drawn by no dashboard) and read back unchanged",
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


# HistogramProto fields the canonical {type, edges, values} does not hold: kept in the type
# string, `COUNTING;max=2.5;num=6.0;sum=4.0;sum_squares=6.0` (each value Python's exact float
# repr), only the fields that differ from what edges/values imply (max = last edge, num = the
# sum of the counts, sum = sum_squares = 0).  min is always edges[0].  TF1 and Keras end the
# buckets with a sentinel limit (DBL_MAX) and TensorBoard takes `max` as the last right edge
# (tensorboard/plugins/histogram/... data_compat migrates `histo` that way), so `max` matters.
HISTOGRAM_STATS = ("max", "num", "sum", "sum_squares")


def _implied_stats(edges: list[float], values: list[float]) -> dict[str, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {"max": edges[-1] if edges else 0.0, "num": float(sum(finite)), "sum": 0.0, "sum_squares": 0.0}


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def histogram_type(base: str, stats: dict[str, float], edges: list[float], values: list[float]) -> str:
    implied = _implied_stats(edges, values)
    extra = [f"{k}={float(stats[k])!r}" for k in HISTOGRAM_STATS
             if k in stats and not _same(float(stats[k]), implied[k])]
    return ";".join([base, *extra])


def split_histogram_type(typ: str | None) -> tuple[str, dict[str, float]]:
    """`COUNTING;max=2.5` -> ("COUNTING", {"max": 2.5}); a plain type -> (type, {})."""
    first, *items = (typ or HISTOGRAM_TYPE).split(";")
    stats, rest = {}, []
    for item in items:
        key, sep, text = item.partition("=")
        try:
            if not sep or key not in HISTOGRAM_STATS:
                raise ValueError(item)
            stats[key] = float(text)
        except ValueError:
            rest.append(item)          # not ours: part of the type itself
    return ";".join([first, *rest]), stats


def histogram_from_proto(minimum: float, bucket_limit, bucket, maximum: float | None = None,
                         num: float = 0.0, sum_: float = 0.0, sum_squares: float = 0.0) -> dict:
    """HistogramProto -> canonical: edges = [min] + bucket limits (right edges), values = counts,
    and max/num/sum/sum_squares in the type where edges and counts do not imply them."""
    edges = [float(minimum), *map(float, bucket_limit)]
    values = [float(v) for v in bucket]
    stats = {"num": num, "sum": sum_, "sum_squares": sum_squares}
    if maximum is not None:
        stats["max"] = maximum
    return {"type": histogram_type(HISTOGRAM_TYPE, stats, edges, values), "edges": edges, "values": values}


def histogram_from_tensor(array: np.ndarray) -> dict:
    """A `histograms` plugin tensor ([k, 3]: left, right, count) -> canonical edges/values."""
    arr = np.asarray(array, dtype=np.float64).reshape(-1, 3) if np.size(array) else np.zeros((0, 3))
    if arr.shape[0] == 0:
        return {"type": HISTOGRAM_TYPE, "edges": [], "values": []}
    edges = [*arr[:, 0].tolist(), float(arr[-1, 1])]
    return {"type": HISTOGRAM_TYPE, "edges": edges, "values": arr[:, 2].tolist()}


def histogram_to_proto_fields(edges: list[float], values: list[float], typ: str | None = None) -> dict:
    """Canonical histogram -> HistogramProto fields, so `histogram_from_proto` gives it back exactly
    (max/num/sum/sum_squares from the type where it holds them)."""
    edges = list(edges or [])
    values = list(values or [])
    fields = _implied_stats(edges, values)
    fields.update(split_histogram_type(typ)[1])
    return {"min": edges[0] if edges else 0.0, **fields, "bucket_limit": edges[1:], "bucket": values}


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


def blob_path(run_id: str, prefix_tag: str, step: int, ordinal: int, ext: str) -> str:
    """The file path given to a file kept inside an event file (source side): unique per run
    (`safe(run_id)` first, as W&B's `<run>/files/...` and neptune-exporter's `<project>/<run>/...`),
    so two runs logging one tag at one step never share a file in an export."""
    return f"{safe(run_id)}/{prefix_tag}/{step}_{ordinal}.{ext}"


# -- restarts -------------------------------------------------------------------------

@dataclass(frozen=True)
class Restart:
    """A training restart as TensorBoard sees it: at event `ordinal` of its directory, the points
    read before it with a step >= `step` are orphaned (of every tag, or of `tags` only)."""

    ordinal: int
    step: int
    tags: frozenset[str] | None = None


class RestartTracker:
    """TensorBoard's rules for orphaned data, per event directory (plugin_event_accumulator
    `_MaybePurgeOrphanedData`, on by default with `--purge_orphaned_data`): with file_version >= 2
    every SessionLog START after the first is a restart at its step; in older files a summary
    event whose step is below the previous summary's step is one, for its tags."""

    def __init__(self) -> None:
        self.version: float | None = None
        self.seen_start = False
        self.recent = -1

    def feed(self, ordinal: int, file_version: str, is_start: bool, step: int,
             summary_tags: list[str] | None) -> Restart | None:
        if file_version:
            try:
                self.version = float(file_version.split(":", 1)[1])
            except (IndexError, ValueError):
                pass
        found = None
        if self.version and self.version >= 2:
            if is_start:
                if self.seen_start:
                    found = Restart(ordinal, step)
                self.seen_start = True
        elif summary_tags is not None and step < self.recent:
            found = Restart(ordinal, step, frozenset(summary_tags))
        if summary_tags is not None:
            self.recent = step
        return found


# --tensorboard-orphans: which view of a restarted training moves
ORPHANS_KEEP = "keep"                      # every point (TensorBoard with purging off)
ORPHANS_DEFAULT_LOADER = "default-loader"  # what `tensorboard --logdir` shows (tensorboard-data-server)
ORPHANS_PYTHON_LOADER = "python-loader"    # what `tensorboard --load_fast=false` shows
ORPHAN_VIEWS = (ORPHANS_KEEP, ORPHANS_DEFAULT_LOADER, ORPHANS_PYTHON_LOADER)


def preempted(steps_by_tag: dict[str, Any]) -> dict[str, bytearray]:
    """TensorBoard's default loader (the Rust tensorboard-data-server) keeps each series' steps
    increasing: a value at step s preempts the earlier values of its tag with a step >= s
    (its reservoir's preemption, data/server/reservoir.rs).  Per tag, per value in file order:
    1 where the value is hidden; only tags with a hidden value are returned."""
    out = {}
    for tag, steps in steps_by_tag.items():
        arr = np.asarray(steps, dtype=np.int64)
        if arr.size < 2 or bool(np.all(np.diff(arr) > 0)):
            continue
        later_min = np.minimum.accumulate(arr[::-1])[::-1]       # min of steps[k:]
        hidden = np.zeros(arr.size, dtype=np.uint8)
        hidden[:-1] = later_min[1:] <= arr[:-1]
        out[tag] = bytearray(hidden.tobytes())
    return out


def orphaned(restarts: list[Restart], ordinal: int, step: int, tag: str) -> bool:
    """Whether TensorBoard hides the point at event `ordinal`: a later restart at or below its step."""
    return any(r.ordinal > ordinal and step >= r.step and (r.tags is None or tag in r.tags) for r in restarts)


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


