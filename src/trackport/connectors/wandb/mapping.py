"""W&B <-> canonical mapping: pure functions, no wandb import, no I/O.

Shared by both W&B sources (`wandb:PATH` offline run files, `wandb://ENTITY/PROJECT`
through the API) and by the W&B sink.  docs/wandb.md has the table.

W&B facts this module encodes (wandb 0.31):
- history rows carry `_step` (int), `_timestamp` (float seconds) and `_runtime`;
  media values are dicts with a `_type` (`image-file`, `table-file`,
  `histogram`, ...) and, for files, a `path` relative to the run's files dir
  (wandb/sdk/data_types/base_types/media.py `to_json`);
- histograms are `{"_type": "histogram", "values": [...], "bins": [...]}`,
  or from the API sometimes `packedBins: {min, size, count}`
  (wandb/sdk/data_types/histogram.py);
- system metrics are `system.<name>` in the API and `<name>` in offline
  `stats` records: W&B's server names an offline stats item `system.` + its key
  (so a wandb 0.21 key `system.powerWatts` is `system.system.powerWatts` there),
  a nested value (`network: {sent, recv}` of wandb 0.10-0.12) flattened with
  '.' (`system.network.sent`): `send_stats` and `_flatten` of
  wandb/sdk/internal/sender.py, e.g.
  https://github.com/wandb/wandb/blob/v0.12.21/wandb/sdk/internal/sender.py;
  `system_metric_points` gives both sources the same canonical paths;
- the API returns config as `{key: {"value": v, "desc": ...}}`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, NamedTuple

from trackport.core.schema import ms_from_datetime

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Floats hold every integer of at most 53 bits exactly.
FLOAT_EXACT_INT = 2**53

# Canonical paths of run-level metadata (docs/format.md, the `sys/` vocabulary).
NAME = "sys/name"
CUSTOM_RUN_ID = "sys/custom_run_id"
DESCRIPTION = "sys/description"
TAGS = "sys/tags"
GROUP_TAGS = "sys/group_tags"
CREATION_TIME = "sys/creation_time"
MODIFICATION_TIME = "sys/modification_time"
FAILED = "sys/failed"
FORK_PARENT = "sys/forking/parent"
FORK_STEP = "sys/forking/step"
STDOUT = "monitoring/stdout"
STDERR = "monitoring/stderr"
RUNTIME_SERIES = "wandb/runtime"

# What the W&B sources may report (run_report.transformed(kind, ...)).
SOURCE_TRANSFORMATIONS: dict[str, str] = {
    "value_to_json": "config/summary list, None or empty dict stored as a string attribute "
    "holding its JSON text (W&B has no canonical list/null type)",
    "bool_to_float": "bool history value stored as float_series point 1.0/0.0",
    "int_to_float": "history int beyond 2**53 stored as float (nearest value)",
    "int_to_string": "config/summary int outside int64 stored as its decimal text",
    "history_json_value": "history list value stored as a string_series point of its JSON text",
    "history_nested_key": "nested dict logged to history flattened to keys joined by '.' "
    "(as W&B's API shows them)",
    "history_null_skipped": "null history value (no point) not exported",
    "media_to_file": "history media (image, table, audio, ...) exported as file_series of its file; "
    "its metadata kept under wandb/media/<key> as string_series JSON",
    "console_lines": "console output fragments joined into lines (split at '\\n'), "
    "each line stamped with the time of its first fragment",
    "system_metric_index_step": "system metric points stepped 0,1,2,... in arrival order "
    "(W&B system metrics have timestamps, no step)",
    "system_metric_nested_key": "nested system metric value (wandb 0.10-0.12 `network: {sent, recv}`) "
    "flattened to keys joined by '.' (`monitoring/network.sent`, as W&B's server names it)",
    "resumed_runs_merged": "several offline run folders of one run id (a resumed run, a run started "
    "again by a sweep agent) read as one run in time order: history once per step, the later "
    "config, summary and run files winning (counted once per folder merged in)",
    "resumed_file_replaced": "a run file a later folder of the same run id wrote again: the later "
    "one is kept (as W&B keeps a run's last upload of a file)",
}

# What the W&B sources may leave out (run_report.dropped(kind, ...)): the exit code is 1
# unless --allow-drops.
SOURCE_DROPS: dict[str, str] = {
    "history_row_without_step": "a history row with no `_step` (or one that is not an integer): "
    "it cannot be placed in a series",
    "resumed_step_repeated": "a history point a later folder of a resumed run logged again at a "
    "step an earlier folder holds: the earlier point is kept (as W&B keeps a resumed run's "
    "history and drops lower steps)",
}


class Row(NamedTuple):
    """One single value: canonical (attribute_path, attribute_type, value)."""

    path: str
    type: str
    value: Any


# ---------------------------------------------------------------------------
# identity


def project_id(entity: str, project: str) -> str:
    """`ENTITY/PROJECT` (an offline run without an entity gets `-`)."""
    return f"{entity or '-'}/{project or 'uncategorized'}"


def datetime_from_seconds(seconds: float) -> datetime:
    """UTC datetime of a W&B time in seconds, rounded to the canonical millisecond."""
    return datetime.fromtimestamp(round(seconds * 1000) / 1000, tz=timezone.utc)


def ms_from_seconds(seconds: float) -> int:
    """Milliseconds of a W&B `_timestamp` (float seconds), rounded to the nearest ms."""
    return int(round(float(seconds) * 1000))


# ---------------------------------------------------------------------------
# single values: config and summary


def typed_rows(prefix: str, value: Any, hits: dict[str, int] | None = None) -> list[Row]:
    """Flatten one config/summary value under `prefix` into typed rows.

    dict -> one row per leaf, keys joined by '/' (`config/a/b`); bool/int/float/str keep
    their type; list, None and {} -> `string` holding the JSON text (`value_to_json`);
    an int outside int64 -> `string` (`int_to_string`).  `hits` counts transformations.
    """
    out: list[Row] = []
    _flatten(prefix, value, out, hits if hits is not None else {})
    return out


def _count(hits: dict[str, int], kind: str) -> None:
    hits[kind] = hits.get(kind, 0) + 1


def _flatten(path: str, value: Any, out: list[Row], hits: dict[str, int]) -> None:
    if isinstance(value, Mapping) and value:
        for key in value:
            _flatten(f"{path}/{key}", value[key], out, hits)
    elif isinstance(value, bool):
        out.append(Row(path, "bool", value))
    elif isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            out.append(Row(path, "int", value))
        else:
            _count(hits, "int_to_string")
            out.append(Row(path, "string", str(value)))
    elif isinstance(value, float):
        out.append(Row(path, "float", value))
    elif isinstance(value, str):
        out.append(Row(path, "string", value))
    else:
        _count(hits, "value_to_json")
        out.append(Row(path, "string", json_text(value)))


def json_text(value: Any) -> str:
    """Compact JSON text of a value, NaN/Infinity as W&B writes them."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def load_json(text: str) -> Any:
    """W&B `value_json` text (Python's json reads its NaN/Infinity/-Infinity)."""
    return json.loads(text)


def unwrap_api_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`{k: {"value": v, "desc": d}}` (API and config.yaml shape) -> `{k: v}`."""
    out = {}
    for key, item in config.items():
        if isinstance(item, Mapping) and "value" in item and set(item) <= {"value", "desc"}:
            out[key] = item["value"]
        else:
            out[key] = item
    return out


def config_rows(config: Mapping[str, Any], hits: dict[str, int] | None = None) -> list[Row]:
    """Config (already unwrapped, nested dicts) -> rows under `config/`.

    W&B's own `_wandb` key (SDK bookkeeping) goes to `wandb/config/_wandb/...`.
    """
    rows: list[Row] = []
    for key, value in config.items():
        prefix = f"wandb/config/{key}" if key == "_wandb" else f"config/{key}"
        rows.extend(typed_rows(prefix, value, hits))
    return rows


def summary_rows(summary: Mapping[str, Any], hits: dict[str, int] | None = None) -> list[Row]:
    """Summary (nested dicts) -> rows under `summary/` (every key, `_`-keys included)."""
    rows: list[Row] = []
    for key, value in summary.items():
        rows.extend(typed_rows(f"summary/{key}", value, hits))
    return rows


def set_nested(target: dict, keys: Iterable[str], value: Any) -> None:
    """`target[k1][k2]... = value`, creating dicts (a W&B nested_key update)."""
    keys = list(keys)
    node = target
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


def remove_nested(target: dict, keys: Iterable[str]) -> None:
    keys = list(keys)
    node = target
    for key in keys[:-1]:
        node = node.get(key)
        if not isinstance(node, dict):
            return
    node.pop(keys[-1], None)


# ---------------------------------------------------------------------------
# run metadata


@dataclass
class RunInfo:
    """The run-level attributes W&B keeps, whatever the source."""

    run_id: str
    entity: str = ""
    project: str = ""
    display_name: str = ""
    notes: str = ""
    tags: tuple[str, ...] = ()
    group: str = ""
    job_type: str = ""
    created: datetime | None = None
    heartbeat: datetime | None = None
    state: str = ""                     # finished, failed, crashed, running, ...
    exit_code: int | None = None
    fork_parent: str = ""
    fork_step: float | int | None = None
    extra: dict[str, Any] | None = None  # other attributes: name -> JSON-able value -> wandb/<name>


def run_rows(info: RunInfo, hits: dict[str, int] | None = None) -> list[Row]:
    """The `sys/*` and `wandb/*` rows of a run."""
    rows = [Row(CUSTOM_RUN_ID, "string", info.run_id)]
    if info.display_name:
        rows.append(Row(NAME, "string", info.display_name))
    if info.notes:
        rows.append(Row(DESCRIPTION, "string", info.notes))
    if info.tags:
        rows.append(Row(TAGS, "string_set", sorted(set(info.tags))))
    if info.group:
        rows.append(Row(GROUP_TAGS, "string_set", [info.group]))
    if info.created is not None:
        rows.append(Row(CREATION_TIME, "datetime", info.created))
    if info.heartbeat is not None:
        rows.append(Row(MODIFICATION_TIME, "datetime", info.heartbeat))
    if info.state:
        rows.append(Row("wandb/state", "string", info.state))
        rows.append(Row(FAILED, "bool", info.state in ("failed", "crashed")))
    if info.exit_code is not None:
        rows.append(Row("wandb/exit_code", "int", int(info.exit_code)))
    if info.job_type:
        rows.append(Row("wandb/job_type", "string", info.job_type))
    if info.entity:
        rows.append(Row("wandb/entity", "string", info.entity))
    if info.project:
        rows.append(Row("wandb/project", "string", info.project))
    if info.fork_parent:
        rows.append(Row(FORK_PARENT, "string", info.fork_parent))
        if info.fork_step is not None:
            step = info.fork_step
            kind = "int" if isinstance(step, int) or float(step).is_integer() else "float"
            rows.append(Row(FORK_STEP, kind, int(step) if kind == "int" else float(step)))
    for key, value in sorted((info.extra or {}).items()):
        if value in (None, "", [], {}):
            continue
        rows.extend(typed_rows(f"wandb/{key}", value, hits))
    return rows


# ---------------------------------------------------------------------------
# history


HISTOGRAM_TYPE_NAME = "histogram"


def is_media(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("_type"), str)


def histogram_value(value: Mapping[str, Any]) -> dict | None:
    """W&B histogram dict -> canonical `{type, edges, values}` (None when it is not one)."""
    if value.get("_type") != HISTOGRAM_TYPE_NAME:
        return None
    counts = value.get("values")
    bins = value.get("bins")
    packed = value.get("packedBins")
    if bins is None and isinstance(packed, Mapping):
        lo, size, n = float(packed["min"]), float(packed["size"]), int(packed["count"])
        bins = [lo + i * size for i in range(n + 1)]
    if not isinstance(counts, list) or not isinstance(bins, list):
        return None
    return {"type": "COUNTING", "edges": [float(b) for b in bins], "values": [float(c) for c in counts]}


class HistoryPoint(NamedTuple):
    """A history value classified: `type` is a canonical series type, `value` its cell."""

    path: str
    type: str       # float_series | string_series | histogram_series | file_series
    value: Any      # float | str | {type, edges, values} | media file path (relative to files/)


def history_points(key: str, value: Any, hits: dict[str, int]) -> list[HistoryPoint]:
    """One history key/value -> canonical series points (at the row's step and timestamp).

    - numbers -> float_series (bool -> 1.0/0.0 `bool_to_float`);
    - strings -> string_series; lists -> string_series JSON text (`history_json_value`);
    - histograms -> histogram_series;
    - media with a `path` -> file_series of that file, plus the media dict (minus nothing)
      as a string_series JSON point at `wandb/media/<key>` (`media_to_file`);
    - other media without a file -> string_series JSON point at `wandb/media/<key>`;
    - plain nested dicts -> their leaves under `<key>.<sub>` (`history_nested_key`);
    - None -> nothing (`history_null_skipped`).
    `_runtime` goes to `wandb/runtime`.
    """
    if key == "_runtime":
        key = RUNTIME_SERIES
    if value is None:
        _count(hits, "history_null_skipped")
        return []
    if isinstance(value, bool):
        _count(hits, "bool_to_float")
        return [HistoryPoint(key, "float_series", 1.0 if value else 0.0)]
    if isinstance(value, int):
        if abs(value) > FLOAT_EXACT_INT:
            _count(hits, "int_to_float")
        return [HistoryPoint(key, "float_series", float(value))]
    if isinstance(value, float):
        return [HistoryPoint(key, "float_series", value)]
    if isinstance(value, str):
        return [HistoryPoint(key, "string_series", value)]
    if isinstance(value, Mapping):
        if is_media(value):
            hist = histogram_value(value)
            if hist is not None:
                return [HistoryPoint(key, "histogram_series", hist)]
            _count(hits, "media_to_file")
            meta = HistoryPoint(f"wandb/media/{key}", "string_series", json_text(value))
            path = value.get("path")
            if isinstance(path, str) and path:
                return [HistoryPoint(key, "file_series", path), meta]
            return [meta]
        if not value:
            _count(hits, "history_json_value")
            return [HistoryPoint(key, "string_series", "{}")]
        _count(hits, "history_nested_key")
        out: list[HistoryPoint] = []
        for sub, subvalue in value.items():
            out.extend(history_points(f"{key}.{sub}", subvalue, hits))
        return out
    _count(hits, "history_json_value")
    return [HistoryPoint(key, "string_series", json_text(value))]


SYSTEM_PREFIX = "system."


def system_metric_path(name: str) -> str:
    """A system metric as W&B's API names it (`system.cpu`) -> `monitoring/cpu`.

    Only the one `system.` the API adds is removed: `system.system.powerWatts`
    (an offline stats key `system.powerWatts`) -> `monitoring/system.powerWatts`.
    """
    return "monitoring/" + (name[len(SYSTEM_PREFIX):] if name.startswith(SYSTEM_PREFIX) else name)


def stats_metric_name(key: str) -> str:
    """W&B's (API) name of an offline `stats` record item: `system.` + its key."""
    return SYSTEM_PREFIX + key


def system_metric_points(name: str, value: Any, hits: dict[str, int]) -> list[HistoryPoint]:
    """One system metric, named as W&B's API names it, -> canonical points under `monitoring/`.

    A nested value is flattened with '.' as W&B's server does for stats records
    (`system.network: {sent, recv}` -> `system.network.sent`, `system_metric_nested_key`);
    a leaf is classified as a history value (numbers -> float_series, ...).
    """
    if isinstance(value, Mapping) and value and not is_media(value):
        _count(hits, "system_metric_nested_key")
        out: list[HistoryPoint] = []
        for sub, subvalue in value.items():
            out.extend(system_metric_points(f"{name}.{sub}", subvalue, hits))
        return out
    return history_points(system_metric_path(name), value, hits)


# ---------------------------------------------------------------------------
# metric definitions (`define_metric`: custom x-axes)
#
# `run.define_metric(name, step_metric=..., step_sync=..., hidden=..., summary=...)` is kept
# as one string attribute per metric: `wandb/define_metric/<name>` (a glob name such as
# `train/*` keeps its `*`) holding compact JSON with sorted keys and only the fields set:
# `step_metric` (the x-axis key), `step_sync`, `hidden`, `summary` (list, in W&B's field
# order), `goal` (`minimize`/`maximize`, older SDKs), `expanded_from_glob`.  `{}` is a metric
# defined with nothing else.  The offline log has MetricRecords (wandb_internal.proto); the
# server keeps them in config `_wandb.m` as wandb-core encodes them: a list of dicts keyed by
# field number ("1" name, "2" glob name, "5" 1-based index of the step metric in the list,
# "6" options [1 step_sync, 2 hidden, 3 defined], "7" summary [1 min, 2 max, 3 mean, 4 best,
# 5 last, 6 none, 7 copy, 8 first], "8" goal, "10" expanded from glob).

DEFINE_METRIC_PREFIX = "wandb/define_metric/"
METRIC_SUMMARY_OPS = ("min", "max", "mean", "best", "last", "none", "copy", "first")  # fields 1..8
METRIC_GOALS = {1: "minimize", 2: "maximize"}
# what wandb 0.31's `run.define_metric` can write back
METRIC_WRITABLE_SUMMARY = {"min", "max", "mean", "last", "none", "copy", "first"}


def metric_definition_text(step_metric: str = "", step_sync: bool = False, hidden: bool = False,
                           summary: Iterable[str] = (), goal: str = "",
                           expanded_from_glob: bool = False) -> str:
    """The canonical JSON text of one metric definition (only the fields set)."""
    out: dict[str, Any] = {}
    if step_metric:
        out["step_metric"] = step_metric
    if step_sync:
        out["step_sync"] = True
    if hidden:
        out["hidden"] = True
    ops = [op for op in METRIC_SUMMARY_OPS if op in set(summary)]
    if ops:
        out["summary"] = ops
    if goal:
        out["goal"] = goal
    if expanded_from_glob:
        out["expanded_from_glob"] = True
    return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def metric_record_rows(records: Iterable[Any]) -> list[Row]:
    """Offline MetricRecords (protobuf, in log order) -> `wandb/define_metric/<name>` rows.

    Several records of one name merge as the SDK merges them: a record with
    `_control.overwrite` replaces the earlier definition, any other fills in the fields it
    sets (protobuf MergeFrom).  Records naming neither a metric nor a glob are skipped.
    """
    merged: dict[str, Any] = {}
    for record in records:
        name = record.name or record.glob_name
        if not name:
            continue
        known = merged.get(name)
        if known is None or record._control.overwrite:
            copy = type(record)()
            copy.CopyFrom(record)
            merged[name] = copy
        else:
            known.MergeFrom(record)
    rows = []
    for name, m in merged.items():
        summary = [op for op in METRIC_SUMMARY_OPS if getattr(m.summary, op)]
        text = metric_definition_text(m.step_metric, m.options.step_sync, m.options.hidden, summary,
                                      METRIC_GOALS.get(int(m.goal), ""), m.expanded_from_glob)
        rows.append(Row(DEFINE_METRIC_PREFIX + name, "string", text))
    return rows


def metric_config_rows(entries: Any) -> list[Row]:
    """Config `_wandb.m` (the server's encoding, see above) -> `wandb/define_metric/<name>` rows.

    An entry with no field but its name and no `defined` option is a step metric W&B
    created itself for a `step_metric` reference: it is not a definition and is left out
    (the raw list stays at `wandb/config/_wandb/m`).
    """
    if not isinstance(entries, list):
        return []
    names = [e.get("1") or e.get("2") if isinstance(e, Mapping) else None for e in entries]
    rows = []
    for entry, name in zip(entries, names):
        if not isinstance(name, str) or not name:
            continue
        options = set(entry.get("6") or ())
        index = entry.get("5")
        step_metric = ""
        if isinstance(index, int) and 1 <= index <= len(names) and isinstance(names[index - 1], str):
            step_metric = names[index - 1]
        elif isinstance(entry.get("4"), str):     # an unresolved step_metric name
            step_metric = entry["4"]
        summary = [METRIC_SUMMARY_OPS[n - 1] for n in entry.get("7") or ()
                   if isinstance(n, int) and 1 <= n <= len(METRIC_SUMMARY_OPS)]
        goal = METRIC_GOALS.get(entry.get("8"), "")
        expanded = bool(entry.get("10"))
        if not (step_metric or options or summary or goal or expanded):
            continue
        rows.append(Row(DEFINE_METRIC_PREFIX + name, "string", metric_definition_text(
            step_metric, 1 in options, 2 in options, summary, goal, expanded)))
    return rows


def metric_definition(text: Any) -> dict | None:
    """A `wandb/define_metric/<name>` value -> its fields (None when it is not a JSON object)."""
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def metric_unwritable(definition: Mapping[str, Any]) -> list[str]:
    """Fields of a definition wandb 0.31's `define_metric` cannot write (goal, summary best, ...)."""
    out = [k for k in ("goal", "expanded_from_glob") if definition.get(k)]
    if any(op not in METRIC_WRITABLE_SUMMARY for op in definition.get("summary") or ()):
        out.append("summary")
    return out


# ---------------------------------------------------------------------------
# run files


# (glob on the path relative to the run's files dir, attribute path template, type)
# First match wins.  `{path}` is the whole relative path, `{name}` its basename.
FILE_RULES: tuple[tuple[str, str], ...] = (
    ("requirements.txt", "source_code/requirements"),
    ("code/*", "source_code/files/{rest}"),
    ("output.log", "wandb/files/output.log"),
    ("config.yaml", "wandb/files/config.yaml"),
    ("wandb-*", "wandb/files/{path}"),
    ("media/*", "wandb/files/{path}"),
    ("artifact/*", "wandb/files/{path}"),
    ("*.ckpt", "checkpoints/{path}"),
    ("*checkpoint*", "checkpoints/{path}"),
)


def classify_file(rel_path: str) -> tuple[str, str]:
    """A run file (path relative to the run's files dir, '/' separated) -> (attribute path, type).

    Every file is its own `file` attribute (never a `file_set`), so files stream one by one
    and each keeps its own digest for verify.
    """
    rel = rel_path.replace("\\", "/").lstrip("/")
    for pattern, template in FILE_RULES:
        if fnmatch.fnmatchcase(rel, pattern) or (pattern.endswith("/*") and rel.startswith(pattern[:-1])):
            rest = rel.split("/", 1)[1] if "/" in rel else rel
            return template.format(path=rel, rest=rest), "file"
    return f"files/{rel}", "file"


# ---------------------------------------------------------------------------
# sink side: canonical -> W&B


RUN_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
RUN_ID_LENGTH = 16
# W&B run ids: at most 128 characters, no '/', '\\', '#', '?', '%', ':'
# (wandb/sdk/lib/runid.py, wandb_settings.py `validate_run_id`); ours are lower-case base36.


def dest_run_id(origin_uri: str, project_id: str, run_id: str) -> str:
    """Deterministic W&B run id for a source run: 16 base36 characters of blake2b."""
    digest = hashlib.blake2b(
        "\x00".join((origin_uri, project_id, run_id)).encode("utf-8"), digest_size=16
    ).digest()
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(RUN_ID_LENGTH):
        number, rem = divmod(number, 36)
        chars.append(RUN_ID_ALPHABET[rem])
    return "tp" + "".join(chars[: RUN_ID_LENGTH - 2])


_BAD_PROJECT = re.compile(r"[/\\#?%:]")


def dest_project(name: str) -> str:
    """A W&B project name for a canonical project id (characters W&B refuses -> '_')."""
    return _BAD_PROJECT.sub("-", name)[:128] or "trackport"


# ---------------------------------------------------------------------------
# runs trackport wrote: the sink encodes, both sources decode
#
# A W&B run written by the sink carries:
# - config `_trackport` = {"format", "origin": {uri, project_id, run_id}, "complete"}:
#   the origin identifies the run on a rerun; `complete` becomes true last;
# - config `<path>` = value of every single-valued attribute (for people, in W&B's UI);
# - history: series point of `<path>` at W&B step = dest_step, `_timestamp` = the
#   earliest timestamp of the step; a point whose timestamp differs from it also
#   logs `_trackport/ts/<key>` = its timestamp in ms (exact);
# - file `trackport/manifest.json` (saved before the completion mark): the exact
#   canonical types and single values, the step multiplier, the W&B key of every
#   series, histogram types, and where every file went.

from trackport.core.capabilities import Capabilities  # noqa: E402

TRACKPORT_KEY = "_trackport"
TS_PREFIX = "_trackport/ts/"
ESCAPED_PREFIX = "trackport_escaped/"
MANIFEST_PATH = "trackport/manifest.json"
MANIFEST_FORMAT = "trackport.wandb.manifest"
MANIFEST_VERSION = 1
FILES_DIR = "trackport/files"
MAX_HISTOGRAM_BINS = 512      # wandb.Histogram.MAX_LENGTH (wandb/sdk/data_types/histogram.py)
MAX_TAG_LENGTH = 64           # W&B refuses longer tags (wandb/sdk/wandb_settings.py run_tags)

SOURCE_CAPABILITIES = Capabilities(transformations=dict(SOURCE_TRANSFORMATIONS))

SINK_TRANSFORMATIONS: dict[str, str] = {
    "fork_recorded": "fork lineage kept in config (sys/forking/parent, sys/forking/step), "
    "not as a W&B fork_from (which needs the parent on the same server and is beta)",
    "histogram_as_json": "histogram W&B cannot hold as wandb.Histogram (over 512 bins or "
    "edges != values + 1) logged as JSON text at its key (read back as the histogram)",
    "key_escaped": "series key starting with '_' (W&B's reserved prefix) logged as "
    "'trackport_escaped/<key>' (read back under its path)",
    "creation_time_at_copy": "online only: W&B's server dates a run (createdAt) when the copy "
    "creates it (wandb-core's UpsertBucket mutation carries no start time); the run record "
    "and config keep sys/creation_time (offline runs keep it in the .wandb run record)",
    "tag_skipped": "tag W&B refuses (empty or over 64 characters) not set as a W&B tag; "
    "kept in config sys/tags",
    "metric_definition_partial": "a wandb/define_metric/<name> field wandb 0.31's define_metric "
    "cannot set (goal, summary 'best', expanded_from_glob) is left out of the W&B metric "
    "definition (the attribute keeps it, in config and the manifest); a value that is not a JSON "
    "object defines no metric",
    "artifact_kept_as_run": "an artifact version (project wandb-artifacts/...) W&B does not let a "
    "user log: a type it reserves (wandb-*, job, run_table named run-*, code named source-*: what "
    "the SDK makes itself) or no name/type; written as a run only (its files as run files)",
    "artifact_use_recorded": "a run's wandb/used_artifacts (consumer lineage) kept in config and the "
    "manifest, not made a W&B use_artifact: offline, where wandb 0.31 refuses use_artifact "
    "(wandb/sdk/wandb_run.py:3111); online, only for a used version this copy did not log into the "
    "destination (not selected, kept as a run) or whose use W&B refused",
    "artifact_link_recorded": "an artifact version's wandb/artifact/links (registry collections) kept in "
    "config and the manifest, not linked again: offline, where wandb 0.31's link_artifact raises "
    "NotImplementedError (wandb/sdk/wandb_run.py:3036); online, only when W&B refused the link",
}

SINK_CAPABILITIES = Capabilities(
    integer_steps=True,
    keeps_timestamps=True,
    key_rule="any; keys starting with '_' are escaped",
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    transformations=dict(SINK_TRANSFORMATIONS),
)


def wandb_key(path: str) -> str:
    """The history key of a series path (W&B reserves keys starting with '_')."""
    return ESCAPED_PREFIX + path if path.startswith("_") else path


def single_json(attribute_type: str, value: Any) -> Any:
    """A single value as exact JSON (datetime -> ms since the epoch, string_set -> list)."""
    if value is None:
        return None
    if attribute_type == "datetime":
        if isinstance(value, datetime):
            return ms_from_datetime(value)
        return int(value)
    if attribute_type == "string_set":
        return list(value)
    if attribute_type == "float":
        return float(value)
    return value


def single_value(attribute_type: str, value: Any) -> Any:
    """Inverse of `single_json`."""
    if value is None:
        return None
    if attribute_type == "datetime":
        return datetime.fromtimestamp(0, tz=timezone.utc) + _ms_delta(int(value))
    if attribute_type == "float":
        return float(value)
    return value


def _ms_delta(ms: int):
    from datetime import timedelta

    return timedelta(milliseconds=ms)


def dumps_manifest(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, ensure_ascii=False, sort_keys=True, allow_nan=True)


def origin_from_config(config: Mapping[str, Any]) -> tuple[str, str] | None:
    """(project_id, run_id) of the source run a trackport-written W&B run came from."""
    mark = config.get(TRACKPORT_KEY)
    if not isinstance(mark, Mapping):
        return None
    origin = mark.get("origin")
    if not isinstance(origin, Mapping):
        return None
    project, run = origin.get("project_id"), origin.get("run_id")
    if isinstance(project, str) and isinstance(run, str):
        return project, run
    return None


def is_complete(config: Mapping[str, Any]) -> bool:
    mark = config.get(TRACKPORT_KEY)
    return isinstance(mark, Mapping) and mark.get("complete") is True


class Decoder:
    """Turns a trackport-written W&B run back into the canonical rows it was made from."""

    def __init__(self, manifest: Mapping[str, Any]):
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a {MANIFEST_FORMAT} file")
        self.manifest = manifest
        self.multiplier = int(manifest.get("step_multiplier") or 1)
        self.series: dict[str, str] = dict(manifest.get("series", {}))      # path -> type
        self.paths: dict[str, str] = {wandb_key(p): p for p in self.series}  # W&B key -> path
        self.hist_types: dict[str, str] = dict(manifest.get("hist_types", {}))
        self.hist_json: set[str] = set(manifest.get("hist_json", []))
        self.neg_zero: set[tuple[str, int]] = {(k, int(st)) for k, st in manifest.get("neg_zero", [])}
        self._row_step: int | None = None

    def step(self, step: int):
        """The canonical step of a W&B step (exact: Decimal when a multiplier was used)."""
        if self.multiplier == 1:
            return int(step)
        from decimal import Decimal

        return (Decimal(int(step)) / Decimal(self.multiplier)).quantize(Decimal("0.000001"))

    def history_row(self, row: Mapping[str, Any], ts_ms: int | None,
                    wandb_step: int | None = None) -> list[tuple[str, str, int | None, Any]]:
        """One history row (at W&B step `wandb_step`) -> [(path, series type, timestamp ms, value)]."""
        out = []
        for key, value in row.items():
            if key.startswith(TS_PREFIX) or key == "_runtime":
                continue
            path = self.paths.get(key)
            if path is None:
                continue
            kind = self.series[path]
            ts = row.get(TS_PREFIX + key, ts_ms)
            if value is None:  # a point without a value, logged as null: kept as such
                pass
            elif kind == "float_series":
                value = float(value)
                if value == 0.0 and (key, wandb_step) in self.neg_zero:
                    value = -0.0
            elif kind == "string_series":
                value = str(value)
            elif kind == "histogram_series":
                if path in self.hist_json:
                    value = json.loads(value)
                else:
                    value = histogram_value(value)
                    if value is not None:
                        value["type"] = self.hist_types.get(path, value["type"])
            out.append((path, kind, None if ts is None else int(ts), value))
        return out

    def single_rows(self) -> list[Row]:
        return [Row(path, kind, single_value(kind, value))
                for path, (kind, value) in sorted(self.manifest.get("singles", {}).items())]

    def file_rows(self) -> list[dict]:
        """[{path, type, step (text or None), timestamp ms, rel}] of every file written."""
        return list(self.manifest.get("files", []))
