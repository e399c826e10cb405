"""Comet <-> canonical mapping: pure functions and constants, no SDK, no I/O.

An `OfflineExperiment` archive (comet_ml/offline.py `_mark_as_ended`, comet_ml/offline_utils.py
`create_experiment_archive`) is a zip holding
  experiment.json   offline_id (the experiment key), workspace, project_name, start_time,
                    stop_time (epoch ms), tags
  messages.json     one JSON line per message: {"type": ..., "payload": ...}
                    (comet_ml/streamer/handlers/offline_handler.py `_process_message`)
  <tmp names>       the bytes of every logged asset, named by the file_upload message's file_path
What trackport writes, per run:
  metric_msg        every float point with its timestamp, its integer step (decimal steps x the
                    run's multiplier) and epoch null
  parameter_msg     single float/int/bool/string values outside sys/ (Comet hyperparameters)
  log_other         the other single values as text, sys/name as Comet's Name, `trackport.origin`
                    first and `trackport.mark` last
  standard_output   monitoring/stdout and monitoring/stderr points, with their timestamps (a copy
                    for Comet's Output tab; read back from rows.jsonl)
  file_upload       every file, named by its attribute path, with its exact origin in metadata
  trackport/rows.jsonl   (an asset) the exact canonical rows Comet's messages cannot hold or
                    would change: every single value with its type, string and histogram series,
                    points without a timestamp, metric names over Comet's 100 characters, and
                    each file row
  trackport/manifest.json (an asset) origin, source version, step multiplier: the completion mark
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from trackport.core.capabilities import Capabilities
from trackport.core.schema import ms_from_datetime

MESSAGES = "messages.json"            # comet_ml/config/config_constants.py OFFLINE_EXPERIMENT_MESSAGES_JSON_FILE_NAME
EXPERIMENT = "experiment.json"        # OFFLINE_EXPERIMENT_JSON_FILE_NAME
STAGING = ".trackport-staging"        # archives being written; moved into the folder once complete
ROWS_ASSET = "trackport/rows.jsonl"
MANIFEST_ASSET = "trackport/manifest.json"
OTHER_ORIGIN = "trackport.origin"
OTHER_MARK = "trackport.mark"
MANIFEST_VERSION = 1
# comet_ml/config/config_constants.py MAXIMAL_KEY_LENGTH: longer metric names are cut by the SDK
MAX_KEY = 100
# log_other / string parameter values longer than this are cut (MAXIMAL_VALUE_LENGTH); the exact
# value is in trackport/rows.jsonl
MAX_VALUE = 1000
# Others the SDK logs by itself (OfflineExperiment._start) or trackport's own, not run data
SDK_OTHERS = {"offline_experiment", OTHER_ORIGIN, OTHER_MARK}
SDK_METRICS = {"process duration"}     # logged by the SDK itself at end() (comet_ml/experiment.py _on_end)

CAPABILITIES = Capabilities(
    integer_steps=True,           # metric_msg steps: integers (decimal steps scaled, multiplier kept)
    keeps_timestamps=True,        # MetricMessage.local_timestamp holds each point's original time
    max_key_length=None,          # longer names are kept exactly in trackport/rows.jsonl
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    transformations={
        "series_as_asset": f"string series points are kept exactly in the {ROWS_ASSET} asset of the "
                           f"archive (Comet's text samples cannot hold a timestamp per point) and read back "
                           f"unchanged",
        "histogram_as_asset": f"histogram points are kept exactly (edges, values, type) in the {ROWS_ASSET} "
                              f"asset (log_histogram_3d re-bins values into its own buckets) and read back "
                              f"unchanged",
        "point_beside": f"float points Comet's metric_msg cannot hold as they are (no timestamp: the SDK "
                        f"stamps 'now'; a name over {MAX_KEY} characters) are kept in {ROWS_ASSET}",
        "params_as_text": "single values Comet's parameters do not type (datetime, string_set, sys/*, "
                          "null) are logged as Comet 'others' (text); every single value is kept with "
                          f"its type in {ROWS_ASSET} and read back from there",
    },
)

SOURCE_CAPABILITIES = Capabilities(
    replayable=True,
    transformations={
        "comet_meta_as_sys": "an archive Comet's SDK wrote: experiment.json start/stop time, tags and "
                             "the Name other are read as sys/creation_time, sys/modification_time, "
                             "sys/tags and sys/name",
        "epoch_as_series": "a metric point's Comet epoch is read as a float point of the series "
                           "comet/epoch/<metric> at the same step",
        "comet_message_as_text": "Comet messages with no canonical type (system details, git metadata, "
                                 "installed packages, HTML, graphs, ...) are read as their JSON text under "
                                 "comet/<message type>",
    },
)

CONSOLE = {"monitoring/stdout": False, "monitoring/stderr": True}     # path -> stderr
API_SOURCE_CAPABILITIES = Capabilities(
    replayable=True,
    transformations={
        "api_values_as_text": "Comet's REST API returns parameter and other values as text "
                              "(valueCurrent): they are read as strings under parameters/ and others/",
        "epoch_as_series": SOURCE_CAPABILITIES.transformations["epoch_as_series"],
    },
)

SERIES_TYPES = ("float_series", "string_series", "histogram_series", "file_series")
FILE_TYPES = ("file", "file_set", "artifact", "file_series")
PARAM_NATIVE = ("float", "int", "bool", "string")


def experiment_key(workspace: str, project: str, origin: dict) -> str:
    """A deterministic Comet experiment key: 32 lowercase hex characters (the SDK takes any
    alphanumeric key of 32-50 characters: OfflineExperiment docstring, comet_ml/offline.py)."""
    text = json.dumps([workspace, project, origin["uri"], origin["project_id"], origin["run_id"]])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def manifest(origin: dict, version: str | None, multiplier: int, sdk: str) -> dict:
    return {"trackport": MANIFEST_VERSION, "complete": True, "origin": origin, "version": version,
            "step_multiplier": multiplier, "comet_ml": sdk}


def step_micro(dest_step: int | None, multiplier: int) -> int | None:
    """A Comet integer step back in millionths of the canonical step (exact: multipliers are powers
    of ten; a user multiplier above 10**6 floors, as the write floored it)."""
    if dest_step is None:
        return None
    return int(Decimal(int(dest_step)) * 1_000_000 / Decimal(multiplier))


def native_step_micro(step: Any) -> int | None:
    """A step as Comet's SDK wrote it (an int, or a float from old SDKs) in millionths."""
    if step is None:
        return None
    return int((Decimal(repr(step) if isinstance(step, float) else int(step)) * 1_000_000).to_integral_value())


def metric_value(value: float) -> Any:
    """A float as the SDK's MetricMessage keeps it (comet_ml/convert_utils.py fix_special_floats)."""
    if math.isnan(value):
        return "NaN"
    if value == math.inf:
        return "Infinity"
    if value == -math.inf:
        return "-Infinity"
    return value


def from_metric_value(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return float(value)              # "NaN", "Infinity", "-Infinity", numbers as text
        except ValueError:
            return None
    return float(value)


def param_native(path: str, typ: str, value: Any) -> bool:
    """A single value Comet's parameter_msg holds with its type."""
    if value is None or path.startswith("sys/") or typ not in PARAM_NATIVE or len(path) > MAX_KEY:
        return False
    if typ == "float" and not math.isfinite(value):
        return False
    return not (typ == "string" and len(value) > MAX_VALUE)


def other_text(typ: str, value: Any) -> Any:
    """A single value as a Comet 'other' (numbers and bools as they are, the rest as text)."""
    if value is None:
        return None
    if typ == "datetime":
        return to_utc(value).isoformat()
    if typ == "string_set":
        return json.dumps(sorted(value), ensure_ascii=False)
    if typ == "float" and not math.isfinite(value):
        return repr(value)
    return value


def to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


# -- trackport/rows.jsonl: exact canonical rows --------------------------------------------------

def row_json(path: str, typ: str, step_micro_: int | None, ts_ms: int | None, value: Any) -> str:
    if typ == "datetime" and value is not None:
        value = ms_from_datetime(value)
    if typ in ("float", "float_series") and value is not None and not math.isfinite(value):
        value = {"float": repr(value)}
    elif typ in ("float", "float_series") and value == 0 and value is not None and math.copysign(1, value) < 0:
        value = {"float": "-0.0"}
    return json.dumps({"p": path, "t": typ, "s": step_micro_, "ts": ts_ms, "v": value},
                      ensure_ascii=False, allow_nan=False)


def row_from_json(line: str) -> tuple[str, str, int | None, int | None, Any]:
    row = json.loads(line)
    typ, value = row["t"], row["v"]
    if isinstance(value, dict) and set(value) == {"float"}:
        value = float(value["float"])
    elif typ in ("float", "float_series") and value is not None:
        value = float(value)
    elif typ == "datetime" and value is not None:
        value = datetime.fromtimestamp(value / 1000, timezone.utc)
    return row["p"], typ, row["s"], row["ts"], value


def ms_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc)


def typed_value(value: Any) -> tuple[str, Any]:
    """A value of a Comet message (JSON) as a canonical single (type, value)."""
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        return "float", value
    if value is None:
        return "string", None
    if isinstance(value, str):
        return "string", value
    return "string", json.dumps(value, ensure_ascii=False, sort_keys=True)
