"""Canonical <-> MLflow mapping: pure functions, no MLflow import.

Everything here is deterministic, so a resumed load computes exactly the keys,
texts and artifact paths the first attempt used.

MLflow facts this module encodes (mlflow/utils/validation.py, MLflow 3.17):
- param/metric/tag keys match `^[/\\w.\\- :]*$` (unicode `\\w`), must equal their
  `posixpath.normpath` (no `//`, `/./`, `..` parts, trailing `/`), must not
  start with `/` or `..`, and are at most 250 characters;
- param values are at most 6,000 characters and tag values 8,000 (longer
  ones are cut silently);
- the SQL store keeps NaN (is_nan) but replaces +-inf by +-1.7976931348623157e308,
  and SQLite stores -0.0 as 0.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.capabilities import Capabilities
from trackport.core.schema import STEP_SCALE

MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_RUN_NAME_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ENTITIES_PER_BATCH = 1000
# The REST API refuses requests over 1 MB; stay well under it (JSON escaping included).
MAX_BATCH_BYTES = 800_000
FLOAT_MAX = 1.7976931348623157e308

KEY_RULE = (
    "letters, digits, '_', '-', '.', ' ', ':' and '/'; no empty, '.' or '..' path parts, "
    "no leading or trailing '/'; at most 250 characters"
)

# Tags trackport writes on every run it creates.
TAG_ORIGIN_URI = "trackport.origin.uri"
TAG_ORIGIN_PROJECT = "trackport.origin.project"
TAG_ORIGIN_RUN = "trackport.origin.run_id"
TAG_MULTIPLIER = "trackport.step_multiplier"
TAG_COMPLETE = "trackport.complete"
TAG_SOURCE_VERSION = "trackport.source_version"   # the source's run_version when completed
TAG_FORK_PARENT = "trackport.fork.parent_run_id"
TAG_FORK_STEP = "trackport.fork.step"
TRACKPORT_TAG_PREFIX = "trackport."

# MLflow system tags mapped to run fields.
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"
TAG_PARENT = "mlflow.parentRunId"
RESERVED_TAGS = frozenset({TAG_RUN_NAME, TAG_NOTE, TAG_PARENT})

ARTIFACT_DIR = "trackport"
MANIFEST_PATH = "trackport/attributes.json"
LONG_PARAM_PREFIX = "trackport-artifact:"
FOREIGN_TAG_PREFIX = "mlflow/tags/"
MANIFEST_FORMAT = "trackport.mlflow.attributes"
MANIFEST_VERSION = 1

# Every transformation the MLflow sink may count, with what it means.
TRANSFORMATIONS: dict[str, str] = {
    "key_sanitized": "attribute path changed to fit MLflow key rules (bad character -> '_', "
    "path normalised, over 250 characters -> cut + '--<8 hex>'); original kept in trackport/attributes.json",
    "key_collision_renamed": "two attribute paths (or tags) landing on one MLflow key: the later one "
    "(sorted, unchanged paths first) gets a '--<8 hex>' suffix",
    "param_to_artifact": "param text over 6,000 characters stored whole as artifact "
    "trackport/params/<key>.txt; the param holds a 'trackport-artifact:' pointer",
    "tag_truncated": "tag value (description, key/value tag) cut to 8,000 characters; the full "
    "value is kept in the matching param",
    "inf_to_float_max": "+-inf metric value stored by MLflow as +-1.7976931348623157e308 "
    "(read back as +-inf for runs trackport wrote)",
    "timestamp_filled": "missing or negative point timestamp sent as 0 ms (read back as null)",
    "step_filled": "missing step of a series point sent as step 0",
    "step_scaled": "decimal step multiplied by trackport.step_multiplier to an integer MLflow step "
    "(divided back exactly when read)",
    "step_floored": "step left with a fraction by a user-set multiplier, floored",
    "series_to_artifact": "string/histogram series stored as a JSON-lines artifact "
    "series/<key>.jsonl (read back as the series)",
    "run_name_truncated": "run name over 250 characters cut for MLflow's run name column "
    "(the whole name stays in the sys/name param)",
    "file_extension_added": "file artifact named after its attribute path, plus the file's "
    "extension when the path has none",
    "duplicate_point_in_manifest": "a point repeated exactly (same step, time and value) within a "
    "batch: MLflow's metric table holds it once, the manifest counts the copies (read back whole)",
}

# What distinguishes a renamed key: MLflow keys cannot hold '~', so '--' + 8 hex.
SUFFIX = "--"
# What MLflow holds, for the planner, the reports and the conformance suite.
CAPABILITIES = Capabilities(
    integer_steps=True,
    keeps_timestamps=True,
    max_key_length=MAX_KEY_LENGTH,
    key_rule=KEY_RULE,
    max_param_length=MAX_PARAM_LENGTH,
    replayable=False,
    transformations=dict(TRANSFORMATIONS),
)

_BAD_KEY_CHAR = re.compile(r"[^\w./\- :]")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DENOM = 10**STEP_SCALE


def short_hash(text: str) -> str:
    """8 hex characters of blake2b: the deterministic suffix of renamed keys."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=4).hexdigest()


# ---------------------------------------------------------------------------
# keys


def sanitize_key(path: str, max_length: int = MAX_KEY_LENGTH) -> str:
    """The MLflow key for an attribute path: valid for params, metrics and tags.

    Characters outside `[\\w./\\- :]` become `_`; empty path parts are dropped;
    a `.` part becomes `_` and a `..` part `__`; a key still starting with
    `..` gets `_.`; a key over `max_length` is cut and gets `--<8 hex>` of
    the ORIGINAL path.
    """
    text = _BAD_KEY_CHAR.sub("_", path)
    parts = []
    for part in text.split("/"):
        if not part:
            continue
        if part == ".":
            part = "_"
        elif part == "..":
            part = "__"
        parts.append(part)
    key = "/".join(parts) or "_"
    if key.startswith(".."):
        key = "_" + key[1:]
    if len(key) > max_length:
        key = key[: max_length - len(SUFFIX) - 8] + SUFFIX + short_hash(path)
    return key


def is_valid_key(key: str, max_length: int = MAX_KEY_LENGTH) -> bool:
    """MLflow's own check (validate_param_and_metric_name + path_not_unique + length)."""
    if not key or len(key) > max_length or not re.fullmatch(r"[/\w.\- :]*", key):
        return False
    norm = posixpath.normpath(key)
    return not (norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"))


def _with_suffix(key: str, source: str, salt: str = "", max_length: int = MAX_KEY_LENGTH) -> str:
    suffix = SUFFIX + short_hash(source + salt)
    return key[: max_length - len(suffix)] + suffix


@dataclass
class KeyInfo:
    key: str
    sanitized: bool = False
    renamed: bool = False


class KeyMap:
    """Attribute path -> MLflow key, unique within a run, decided from the full path set.

    Paths that need no change are placed first, then the rest in sorted order;
    a key already taken gets a `--<hash of the path>` suffix.  Paths met later
    (not in the initial set) are placed on demand, in arrival order.
    """

    def __init__(self, paths: Iterable[str] = (), reserved: Iterable[str] = (),
                 max_length: int = MAX_KEY_LENGTH):
        self.max_length = max_length
        self._info: dict[str, KeyInfo] = {}
        self._used: set[str] = set(reserved)
        unique = set(paths)
        plain = sorted(p for p in unique if sanitize_key(p, max_length) == p)
        changed = sorted(p for p in unique if sanitize_key(p, max_length) != p)
        for path in plain + changed:
            self.info(path)

    def info(self, path: str) -> KeyInfo:
        got = self._info.get(path)
        if got is not None:
            return got
        key = sanitize_key(path, self.max_length)
        info = KeyInfo(key, sanitized=key != path)
        n = 0
        while info.key in self._used:
            info.key = _with_suffix(key, path, str(n) if n else "", self.max_length)
            info.renamed = True
            n += 1
        self._used.add(info.key)
        self._info[path] = info
        return info

    def key(self, path: str) -> str:
        return self.info(path).key

    def items(self):
        return self._info.items()


# ---------------------------------------------------------------------------
# values


def ms_from_datetime(value: Any) -> int | None:
    """Milliseconds since the epoch (UTC) of a datetime, numpy/pandas timestamp or ms number."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[ms]").astype(np.int64))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value) if math.isfinite(value) else None
    if hasattr(value, "to_pydatetime"):
        return ms_from_datetime(value.to_pydatetime())
    raise TypeError(f"not a time: {value!r}")


def datetime_from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(ms))


def iso_from_ms(ms: int) -> str:
    dt = datetime_from_ms(ms)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}.{dt.microsecond // 1000:03d}Z")


_ISO_RE = re.compile(
    r"^(?P<y>-?\d{4,})-(?P<mo>\d\d)-(?P<d>\d\d)[T ](?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)"
    r"(?:\.(?P<f>\d{1,9}))?(?P<tz>Z|[+-]\d\d:?\d\d)?$"
)


def ms_from_iso(text: str) -> int:
    m = _ISO_RE.match(text.strip())
    if not m:
        raise ValueError(f"not an ISO 8601 time: {text!r}")
    dt = datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"]),
                  tzinfo=timezone.utc)
    ms = ms_from_datetime(dt)
    frac = (m["f"] or "0")[:3].ljust(3, "0")
    ms += int(frac)
    tz = m["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        ms -= sign * (int(digits[:2]) * 60 + int(digits[2:])) * 60_000
    return ms


def param_text(attribute_type: str, value: Any) -> str:
    """The text of a single value as an MLflow param (exact, and parsed back by `param_value`)."""
    if attribute_type == "int":
        return str(int(value))
    if attribute_type == "float":
        return repr(float(value))
    if attribute_type == "bool":
        return "True" if value else "False"
    if attribute_type == "datetime":
        return iso_from_ms(ms_from_datetime(value))
    if attribute_type == "string_set":
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)


def param_value(attribute_type: str, text: str) -> Any:
    """Inverse of `param_text`."""
    if attribute_type == "int":
        return int(text)
    if attribute_type == "float":
        return float(text)
    if attribute_type == "bool":
        if text in ("True", "true", "1"):
            return True
        if text in ("False", "false", "0"):
            return False
        raise ValueError(f"not a bool: {text!r}")
    if attribute_type == "datetime":
        return datetime_from_ms(ms_from_iso(text))
    if attribute_type == "string_set":
        got = json.loads(text)
        if not isinstance(got, list):
            raise ValueError(f"not a JSON array: {text[:80]!r}")
        return [str(x) for x in got]
    return text


def long_param_artifact(key: str) -> str:
    return f"{ARTIFACT_DIR}/params/{key}.txt"


def long_param_pointer(artifact_path: str) -> str:
    return LONG_PARAM_PREFIX + artifact_path


def clip_tag(value: str) -> tuple[str, bool]:
    if len(value) <= MAX_TAG_LENGTH:
        return value, False
    return value[:MAX_TAG_LENGTH], True


# ---------------------------------------------------------------------------
# tags


def tag_plan(values: dict[str, tuple[str, Any]], param_text_of=param_text
             ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """MLflow tags for a run's single values; (tags, transformations: kind -> examples).

    - each `sys/tags` element -> tag `<sanitised element>` = "";
    - `sys/description` -> `mlflow.note.content`;
    - string `mlflow/tags/<k>` -> tag `<k>` (MLflow key/value tags, round trip);
    - `sys/forking/parent` / `sys/forking/step` -> trackport.fork.* tags.
    Keys that would land on a reserved tag (mlflow.runName, mlflow.note.content,
    mlflow.parentRunId, trackport.*) get a `_` prefix; keys already used get `--<hash>`.
    """
    tags: dict[str, str] = {}
    hits: dict[str, list[str]] = {}

    def hit(kind: str, example: str) -> None:
        hits.setdefault(kind, []).append(example)

    def place(source: str, value: str) -> None:
        key = sanitize_key(source)
        if key != source:
            hit("key_sanitized", source)
        wanted = key
        if key in RESERVED_TAGS or key.startswith(TRACKPORT_TAG_PREFIX):
            key = sanitize_key("_" + key)
        n = 0
        candidate = key
        while candidate in tags:
            candidate = _with_suffix(key, source, str(n) if n else "")
            n += 1
        if candidate != wanted:
            hit("key_collision_renamed", source)
        value, cut = clip_tag(value)
        if cut:
            hit("tag_truncated", source)
        tags[candidate] = value

    description = values.get("sys/description")
    if description is not None and description[1] is not None:
        note, cut = clip_tag(str(description[1]))
        if cut:
            hit("tag_truncated", "sys/description")
        tags[TAG_NOTE] = note
    parent = values.get("sys/forking/parent")
    if parent is not None and parent[1] not in (None, ""):
        tags[TAG_FORK_PARENT] = clip_tag(str(parent[1]))[0]
        fork_step = values.get("sys/forking/step")
        if fork_step is not None and fork_step[1] is not None:
            tags[TAG_FORK_STEP] = param_text_of(fork_step[0], fork_step[1])
    kv = sorted((p[len(FOREIGN_TAG_PREFIX):], v) for p, (t, v) in values.items()
                if p.startswith(FOREIGN_TAG_PREFIX) and t == "string" and v is not None)
    for name, value in kv:
        if name:
            place(name, str(value))
    elements = values.get("sys/tags")
    if elements is not None and elements[1]:
        for element in sorted(set(str(e) for e in elements[1] if e is not None and str(e) != "")):
            place(element, "")
    return tags, hits


# ---------------------------------------------------------------------------
# artifacts


def series_artifact(key: str) -> str:
    return f"series/{key}.jsonl"


def _artifact_name(name: str) -> str:
    """One artifact path part: a file's basename made safe."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    safe = _BAD_KEY_CHAR.sub("_", name)
    if safe in ("", ".", ".."):
        safe = "_" + safe
    return safe


def file_artifact(key: str, source_path: str) -> tuple[str, bool]:
    """Artifact path of a single file: the key, plus the file's extension if the key has none."""
    last = key.rsplit("/", 1)[-1]
    if "." in last.strip("."):
        return key, False
    ext = posixpath.splitext(_artifact_name(source_path))[1]
    return (key + ext, True) if ext else (key, False)


def file_series_artifact(key: str, step_text_value: str | None, source_path: str) -> str:
    step = step_text_value if step_text_value is not None else "none"
    return f"{key}/step_{step}/{_artifact_name(source_path)}"


def file_in_dir_artifact(key: str, source_path: str) -> str:
    return f"{key}/{_artifact_name(source_path)}"


# ---------------------------------------------------------------------------
# steps and timestamps


def step_text(unscaled: int) -> str:
    """Exact shortest decimal text of a step given in millionths: 7500000 -> '7.5'."""
    sign = "-" if unscaled < 0 else ""
    q, r = divmod(abs(int(unscaled)), _DENOM)
    if not r:
        return f"{sign}{q}"
    return f"{sign}{q}." + f"{r:0{STEP_SCALE}d}".rstrip("0")


def step_texts(steps: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """`step_text` for a whole decimal column (nulls stay None)."""
    text = pc.cast(steps, pa.string())
    text = pc.replace_substring_regex(text, r"(\.\d*[1-9])0+$", r"\1")
    text = pc.replace_substring_regex(text, r"\.0+$", "")
    return text.to_pylist()


def unscaled_from_text(text: str) -> int:
    """Millionths of a decimal step text; exact (raises on more than 6 decimals)."""
    text = text.strip()
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    whole, _, frac = body.partition(".")
    if len(frac) > STEP_SCALE or not (whole or frac) or not (whole + frac).isdigit():
        raise ValueError(f"not a decimal(18,6) step: {text!r}")
    return sign * (int(whole or "0") * _DENOM + int(frac.ljust(STEP_SCALE, "0") or "0"))


def unscaled_from_dest(dest: np.ndarray, multiplier: int) -> np.ndarray:
    """Canonical step millionths of integer MLflow steps written with `multiplier` (exact)."""
    dest = np.asarray(dest, dtype=np.int64)
    if multiplier <= 0:
        raise ValueError(f"bad step multiplier {multiplier}")
    if _DENOM % multiplier == 0:
        factor = _DENOM // multiplier
        limit = (10**18 - 1) // factor
        if dest.size and int(np.abs(dest).max()) > limit:
            raise OverflowError(f"step {int(np.abs(dest).max())} / {multiplier} does not fit decimal(18,6)")
        return dest * factor
    # A multiplier that does not divide 10**6: exact rational, floored to millionths.
    return np.array([(int(d) * _DENOM) // multiplier for d in dest.tolist()], dtype=np.int64)


def point_identity(steps: np.ndarray, timestamps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Structured (step, timestamp, value bits) as MLflow's SQL store keys a metric row.

    NaN is one identity whatever its payload; +-inf is the +-float max the store keeps;
    -0.0 is 0.0.
    """
    values = np.asarray(values, dtype=np.float64).copy()
    nan = np.isnan(values)
    values[np.isposinf(values)] = FLOAT_MAX
    values[np.isneginf(values)] = -FLOAT_MAX
    values[values == 0] = 0.0          # -0.0 and 0.0 are one SQL value
    values[nan] = np.nan
    bits = values.view(np.int64).copy()
    bits[nan] = 0x7FF8000000000000
    out = np.empty(values.size, dtype=_IDENTITY)
    out["s"] = steps
    out["t"] = timestamps
    out["v"] = bits
    return out


_IDENTITY = np.dtype([("s", "<i8"), ("t", "<i8"), ("v", "<i8")])


def repeated_points(codes: np.ndarray, identity: np.ndarray) -> np.ndarray:
    """True for every copy after the first of a point (series code, step, time, stored value)
    that occurs more than once: MLflow's metric table keeps one row for them all."""
    n = codes.size
    if n < 2:
        return np.zeros(n, dtype=bool)
    columns = (identity["v"], identity["t"], identity["s"], codes)
    order = np.lexsort(columns)
    same = np.ones(n - 1, dtype=bool)
    for col in columns:
        ordered = col[order]
        same &= ordered[1:] == ordered[:-1]
    repeated = np.zeros(n, dtype=bool)
    repeated[order[1:][same]] = True
    return repeated


def copies_per_point(steps: np.ndarray, timestamps: np.ndarray, stored_values: np.ndarray,
                     entry: "AttributeEntry") -> np.ndarray:
    """How many times each point of a page read from MLflow was sent (1, or more for the
    repeats the manifest lists)."""
    counts = np.ones(steps.size, dtype=np.int64)
    if not entry.repeats or not steps.size:
        return counts
    repeats = np.array([tuple(r) for r in entry.repeats], dtype=_IDENTITY)
    repeats.sort(kind="stable")
    probe = point_identity(steps, timestamps, stored_values)
    lo = np.searchsorted(repeats, probe, side="left")
    hi = np.searchsorted(repeats, probe, side="right")
    return counts + (hi - lo)


class PointIndex:
    """Sorted identities of the points already in a run (for resuming without resending)."""

    def __init__(self, identities: np.ndarray):
        self._sorted = np.sort(identities)

    def __len__(self) -> int:
        return self._sorted.size

    def contains(self, identities: np.ndarray) -> np.ndarray:
        if self._sorted.size == 0 or identities.size == 0:
            return np.zeros(identities.size, dtype=bool)
        pos = np.searchsorted(self._sorted, identities)
        pos = np.minimum(pos, self._sorted.size - 1)
        return self._sorted[pos] == identities


# ---------------------------------------------------------------------------
# manifest


@dataclass
class AttributeEntry:
    """How one canonical attribute was stored in an MLflow run."""

    path: str
    type: str
    kind: str                      # param | metric | series | file
    key: str
    artifact: str | None = None    # series jsonl, long param text
    transformations: dict[str, int] = field(default_factory=dict)
    null: bool = False             # a param whose value was null
    inf: bool = False              # a metric with +-inf points
    float_max: bool = False        # ...that also holds genuine +-float max values
    fixes: list[list] = field(default_factory=list)  # [MLflow step, ts ms, "inf"|"-inf"|"-0.0"]
    repeats: list[list] = field(default_factory=list)  # [MLflow step, ts ms, value bits]: one extra copy each
    null_timestamps: bool = False  # a metric with filled timestamps
    null_steps: bool = False
    files: list[list] = field(default_factory=list)  # [step text|None, ts ms|None, source path, artifact]

    def count(self, kind: str, n: int = 1) -> None:
        self.transformations[kind] = self.transformations.get(kind, 0) + n

    def to_json(self) -> dict:
        out: dict[str, Any] = {"type": self.type, "kind": self.kind, "key": self.key}
        if self.artifact:
            out["artifact"] = self.artifact
        if self.transformations:
            out["transformations"] = dict(sorted(self.transformations.items()))
        for name in ("null", "inf", "float_max", "null_timestamps", "null_steps"):
            if getattr(self, name):
                out[name] = True
        if self.fixes:
            out["fixes"] = self.fixes
        if self.repeats:
            out["repeats"] = self.repeats
        if self.files:
            out["files"] = self.files
        return out

    @classmethod
    def from_json(cls, path: str, data: dict) -> "AttributeEntry":
        return cls(
            path=path,
            type=data["type"],
            kind=data["kind"],
            key=data.get("key", path),
            artifact=data.get("artifact"),
            transformations=dict(data.get("transformations", {})),
            null=bool(data.get("null")),
            inf=bool(data.get("inf")),
            float_max=bool(data.get("float_max")),
            fixes=[list(f) for f in data.get("fixes", [])],
            repeats=[list(r) for r in data.get("repeats", [])],
            null_timestamps=bool(data.get("null_timestamps")),
            null_steps=bool(data.get("null_steps")),
            files=[list(f) for f in data.get("files", [])],
        )


@dataclass
class Manifest:
    """`trackport/attributes.json`: what a run's MLflow entities mean canonically."""

    origin_uri: str = ""
    project_id: str = ""
    run_id: str = ""
    step_multiplier: int = 1
    attributes: dict[str, AttributeEntry] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    def entry(self, path: str, attribute_type: str, kind: str, key: str) -> AttributeEntry:
        got = self.attributes.get(path)
        if got is None:
            got = self.attributes[path] = AttributeEntry(path, attribute_type, kind, key)
        return got

    def to_json(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "origin": {"uri": self.origin_uri, "project_id": self.project_id, "run_id": self.run_id},
            "step_multiplier": self.step_multiplier,
            "attributes": {p: e.to_json() for p, e in self.attributes.items()},
            "tags": sorted(self.tags),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a trackport MLflow manifest (format {data.get('format')!r})")
        if int(data.get("version", 0)) > MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')} is newer than this trackport")
        origin = data.get("origin") or {}
        return cls(
            origin_uri=origin.get("uri", ""),
            project_id=origin.get("project_id", ""),
            run_id=origin.get("run_id", ""),
            step_multiplier=int(data.get("step_multiplier", 1)),
            attributes={p: AttributeEntry.from_json(p, e) for p, e in data.get("attributes", {}).items()},
            tags=list(data.get("tags", [])),
        )

    @classmethod
    def loads(cls, text: str) -> "Manifest":
        return cls.from_json(json.loads(text))

    # What the run's MLflow entities are accounted for by this manifest.
    def param_keys(self) -> set[str]:
        return {e.key for e in self.attributes.values() if e.kind == "param"}

    def metric_keys(self) -> set[str]:
        return {e.key for e in self.attributes.values() if e.kind == "metric"}

    def artifact_paths(self) -> set[str]:
        out = set()
        for e in self.attributes.values():
            if e.artifact:
                out.add(e.artifact)
            for f in e.files:
                out.add(f[3])
        return out

    def file_map(self) -> dict[str, str]:
        """Source file path -> artifact path (what the run's FileAccess resolves)."""
        out = {}
        for e in self.attributes.values():
            for f in e.files:
                out.setdefault(f[2], f[3])
        return out


def restore_inf(values: np.ndarray) -> np.ndarray:
    values = np.array(values, dtype=np.float64)
    values[values == FLOAT_MAX] = np.inf
    values[values == -FLOAT_MAX] = -np.inf
    return values


_FIX_TEXT = {"inf": np.inf, "-inf": -np.inf, "-0.0": -0.0}


def fix_texts(values: np.ndarray) -> list[str]:
    return ["-0.0" if v == 0 else ("inf" if v > 0 else "-inf") for v in values.tolist()]


def restore_values(values: np.ndarray, steps: np.ndarray, timestamps: np.ndarray,
                   entry: "AttributeEntry") -> np.ndarray:
    """The canonical values of a page of MLflow points (inf and -0.0 the store lost)."""
    if entry.inf and not entry.float_max:
        values = restore_inf(values)
    if entry.fixes:
        values = np.array(values, dtype=np.float64)
        key = np.dtype([("s", "<i8"), ("t", "<i8")])
        fixes = np.empty(len(entry.fixes), dtype=key)
        fixes["s"] = [f[0] for f in entry.fixes]
        fixes["t"] = [f[1] for f in entry.fixes]
        fix_values = np.array([_FIX_TEXT[f[2]] for f in entry.fixes], dtype=np.float64)
        order = np.argsort(fixes, kind="stable")
        fixes, fix_values = fixes[order], fix_values[order]
        probe = np.empty(values.size, dtype=key)
        probe["s"] = steps
        probe["t"] = timestamps
        pos = np.minimum(np.searchsorted(fixes, probe), fixes.size - 1)
        hit = fixes[pos] == probe
        # Only where the store holds what it makes of that value (+-float max for inf, 0 for -0.0).
        stored = np.where(np.isinf(fix_values[pos]), np.sign(fix_values[pos]) * FLOAT_MAX, 0.0)
        hit &= values == stored
        values[hit] = fix_values[pos[hit]]
    return values


# ---------------------------------------------------------------------------
# request sizing


def json_size(text: str) -> int:
    """Upper bound of a string's size inside a JSON request body."""
    if text.isascii():
        return len(text) + 2 + text.count('"') + text.count("\\") + 5 * sum(1 for c in text if c < " ")
    return len(json.dumps(text))


def entry_size(key: str, value: str) -> int:
    """Upper bound of one param or tag inside a log_batch request body."""
    return json_size(key) + json_size(value) + 24


def batches(items: list, sizes: list[int], max_count: int, max_bytes: int = MAX_BATCH_BYTES):
    """Consecutive slices of `items` with at most `max_count` items and about `max_bytes` bytes."""
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_count or total + size > max_bytes):
            yield items[start:i]
            start, total = i, 0
        total += size
    if start < len(items):
        yield items[start:]


def experiment_name(template: str | None, project_id: str) -> str:
    template = template or "{project}"
    try:
        return template.format(project=project_id)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad experiment name template {template!r}: {exc}") from None


def search_value(text: str) -> str | None:
    """`text` quoted for an MLflow search filter, or None when it cannot be quoted safely."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return None
