"""Trackio <-> canonical mapping: pure functions, no SDK, no I/O.

Trackio (https://github.com/gradio-app/trackio) keeps one SQLite file per project,
`TRACKIO_DIR/<canonical project>.db` (trackio/sqlite_storage.py):

  metrics(id, run_id, run_name, timestamp TEXT, step INTEGER, metrics TEXT JSON, log_id, space_id)
  configs(run_id UNIQUE, run_name, config TEXT JSON, created_at)
  system_metrics(run_id, run_name, timestamp, metrics JSON)      -- no step
  alerts(run_id, run_name, timestamp, title, text, level, step)

A metrics row holds every value logged at one `trackio.log` call: numbers,
strings, `{"_type": "trackio.histogram", "bins", "values"}`, media
`{"_type": "trackio.image", "file_path": <relative to TRACKIO_DIR/media>}`; NaN and
+/-inf are the strings "NaN", "Infinity", "-Infinity" (trackio/utils.py
serialize_values).  A key in RESERVED_KEYS or starting with "__" is stored with
"__" in front (trackio/run.py Run.log).  The config holds the user's keys plus
`_Username`, `_Created` and `_Group` (trackio/run.py Run.__init__).

trackport's own record of a run it wrote is the config key `_trackport` (keys
starting with `_` are Trackio's internal ones and hidden from its CLI): the
origin, the completion mark, the step multiplier and the exact type of every
attribute, so reading back is exact.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any

from trackport.core.capabilities import Capabilities

MANIFEST_KEY = "_trackport"
MANIFEST_VERSION = 1
DB_EXT = ".db"
MEDIA_DIR = "media"
FILES_FOLDER = "trackport"          # MEDIA/<canonical project>/<run id>/trackport/<canonical file path>

# trackio/utils.py RESERVED_KEYS: Run.log renames these (and keys starting with "__") to "__" + key.
RESERVED_KEYS = ("project", "run", "timestamp", "step", "time", "metrics")
# trackio/utils.py serialize_values: non-finite floats become these strings.
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

HISTOGRAM = "trackio.histogram"     # trackio/histogram.py Histogram.TYPE
IMAGE = "trackio.image"             # trackio/media/image.py TrackioImage.TYPE
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp")
DEFAULT_HISTOGRAM_TYPE = "COUNTING"

# The ISO text of a point without timestamp: Trackio's column is NOT NULL.  Real times
# are always written with six fraction digits, so this exact text reads back as null.
NULL_TIMESTAMP = "1970-01-01T00:00:00+00:00"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

CAPABILITIES = Capabilities(
    integer_steps=True,               # metrics.step is INTEGER NOT NULL
    keeps_timestamps=True,            # ISO text, written with millisecond precision
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    transformations={
        "kept_in_trackport_config": "run metadata Trackio has no field for (tags, description, "
                                    "custom id, forking, failed, ...) and every attribute's exact "
                                    "type are kept in the run's config under `_trackport` (hidden by "
                                    "Trackio); read back unchanged",
        "file_in_media_folder": "files that are not images (single files, file sets, artifacts, "
                                "other file series) are copied into the run's media folder "
                                "(media/<project>/<run id>/trackport/) and listed under "
                                "`_trackport`; the Trackio dashboard does not show them; read back "
                                "unchanged",
        "null_timestamp_epoch": "a point without timestamp is stored at 1970-01-01T00:00:00+00:00 "
                                "(Trackio needs one); read back as null",
    },
)

# What the source declares when it reads a store trackport did not write.
SOURCE_TRANSFORMATIONS = {
    "timestamp_to_ms": "Trackio keeps microseconds; canonical timestamps are milliseconds (floored)",
    "system_metric_step_from_order": "system metrics have no step in Trackio: each gets its "
                                     "position (0, 1, ...) in the run's system metrics as step",
    "bool_metric_to_float": "a boolean metric value becomes a float_series point 1.0 / 0.0",
    "trackio_object_as_json": "a logged object with no canonical type (tables, markdown, traces, "
                              "video, audio, ...) becomes a string_series point holding its JSON",
    "config_value_as_json": "a config value with no canonical type (a list of numbers, null) becomes "
                            "a string param holding its JSON",
}


# -- names --------------------------------------------------------------------


def canonical_project_name(project: str) -> str:
    """trackio/utils.py canonical_project_name: the DB file and media folder name."""
    kept = "".join(c for c in project if c.isalnum() or c in ("-", "_")).rstrip()
    return kept or "default"


def run_id_for(origin_uri: str, project_id: str, run_id: str) -> str:
    """The Trackio run id of an origin: deterministic, so a rerun finds the run."""
    text = json.dumps([origin_uri, project_id, run_id], ensure_ascii=False)
    return "tp" + hashlib.blake2b(text.encode("utf-8"), digest_size=15).hexdigest()


def metric_key(path: str) -> str:
    """The metrics-JSON key of an attribute path, renamed as Trackio's Run.log renames."""
    if path in RESERVED_KEYS or path.startswith("__"):
        return "__" + path
    return path


def path_of_key(key: str) -> str:
    return key[2:] if key.startswith("__") else key


# -- times ----------------------------------------------------------------------


def iso_from_ms(ms: int | None) -> str:
    if ms is None:
        return NULL_TIMESTAMP
    dt = _EPOCH + timedelta(milliseconds=int(ms))
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond:06d}+00:00"


def ms_from_iso(text: str | None) -> tuple[int | None, bool]:
    """(milliseconds, whether sub-millisecond digits were floored).  NULL_TIMESTAMP -> None."""
    if text is None or text == NULL_TIMESTAMP:
        return None, False
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return micros // 1000, bool(micros % 1000)


# -- values -------------------------------------------------------------------


def encode_float(value: float | None) -> Any:
    if value is None:
        return None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float(value)


def decode_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return NONFINITE[value]
    return float(value)


def encode_param(kind: str, value: Any) -> Any:
    """A canonical single value as the JSON Trackio's config holds."""
    if value is None:
        return None
    if kind == "float":
        return encode_float(value)
    if kind == "datetime":
        return iso_from_ms(ms_of(value))
    if kind == "string_set":
        return list(value)
    return value


def decode_param(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "float":
        return decode_float(value)
    if kind == "int":
        return int(value)
    if kind == "datetime":
        return ms_from_iso(value)[0]
    if kind == "string_set":
        return [str(v) for v in value]
    return value


def ms_of(value: Any) -> int | None:
    """A datetime cell (datetime or ms) as integer milliseconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return int(value)


def infer_param(value: Any) -> tuple[str, Any] | None:
    """(canonical type, value) of a config value of a run trackport did not write;
    None: no canonical type (the caller keeps it as JSON text)."""
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return ("int", value) if -(2**63) <= value < 2**63 else ("string", str(value))
    if isinstance(value, float):
        return "float", value
    if isinstance(value, str):
        if value in NONFINITE:
            return "float", NONFINITE[value]
        return "string", value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "string_set", list(value)
    return None


def flatten_config(config: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config dicts as `a/b/c` keys (how Trackio's dashboard shows them too)."""
    out: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(flatten_config(value, name + "/"))
        else:
            out.append((name, value))
    return out


def histogram_to_trackio(value: dict) -> dict:
    out = {"_type": HISTOGRAM, "bins": [encode_float(e) for e in value["edges"]],
           "values": [encode_float(v) for v in value["values"]]}
    kind = value.get("type")
    if kind and kind != DEFAULT_HISTOGRAM_TYPE:
        out["type"] = kind          # extra field: Trackio ignores it, trackport reads it back
    return out


def histogram_from_trackio(value: dict) -> dict:
    return {"type": value.get("type") or DEFAULT_HISTOGRAM_TYPE,
            "edges": [decode_float(e) for e in value.get("bins") or []],
            "values": [decode_float(v) for v in value.get("values") or []]}


def is_image(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES


def media_folder(project: str, trackio_run_id: str) -> str:
    """Where the files of a run trackport wrote live, relative to TRACKIO_DIR/media."""
    return f"{canonical_project_name(project)}/{trackio_run_id}/{FILES_FOLDER}"


def step_to_unscaled(step: int, multiplier: int) -> int:
    """A Trackio integer step back to canonical millionths (exact: multiplier is a power of ten)."""
    if multiplier <= 1_000_000:
        return int(step) * (1_000_000 // multiplier)
    return int(step) * 1_000_000 // multiplier
