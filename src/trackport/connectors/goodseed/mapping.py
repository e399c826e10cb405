"""GoodSeed <-> canonical mapping: pure functions, no SDK, no I/O.

A GoodSeed run file (goodseed/storage.py, schema version 1) has the tables
  run_meta(key, value)                          run_id, project, name, created_at, closed_at, status
  configs(path, type_tag, value)                single values; tags null/bool/int/float/str/datetime/string_set
  metric_series + metric_points(step REAL, y REAL NOT NULL, ts INTEGER)   float series,
                                                PRIMARY KEY (series, step): one point per step
  string_series + string_points(step, value TEXT NOT NULL, ts)            string series
GoodSeed writes `ts` as whole unix seconds (run.py: int(datetime.now().timestamp())); the sink
stores ms / 1000 as a REAL in the same column (SQLite keeps a REAL in an INTEGER-affinity
column when it is not integral: https://www.sqlite.org/datatype3.html#type_affinity), which
GoodSeed's server turns into ISO text unchanged, so every timestamp keeps its milliseconds.

What these tables cannot hold is kept in the same file, in a table of trackport's own that
GoodSeed ignores (`trackport_points`): histograms, files (their bytes beside the run file, in
`<run_id>.files/`), NaN values (SQLite stores NaN as NULL, refused by `y REAL NOT NULL`) and -0.0
(stored as 0),
points without a step or timestamp, a second point at one step of a series, steps a float does
not hold exactly, and single values without a value.  run_meta `trackport_origin` (written
first) and `trackport_mark` (the completion mark, written last) make reruns find the run.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from trackport.core.capabilities import Capabilities
from trackport.core.layout import safe

POINTS_TABLE = "trackport_points"
META_ORIGIN = "trackport_origin"
META_MARK = "trackport_mark"
MARK_VERSION = 1
FILES_SUFFIX = ".files"
ORIGIN_URI = "goodseed"

RUN_ID_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9_-]*[a-zA-Z0-9])?$")   # goodseed/run.py _RUN_ID_RE
MAX_RUN_ID = 128
PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)*$")

CAPABILITIES = Capabilities(
    integer_steps=False,          # step REAL: decimal steps a float holds exactly are kept as they are
    keeps_timestamps=True,
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    transformations={
        "histogram_beside": f"GoodSeed has no histograms: histogram points are kept in the run file's "
                            f"{POINTS_TABLE} table (not shown by GoodSeed's viewer) and read back unchanged",
        "file_beside": f"GoodSeed has no files: file bytes are copied to <run_id>{FILES_SUFFIX}/ beside the "
                       f"run file and listed in {POINTS_TABLE} (not shown by GoodSeed's viewer)",
        "point_beside": f"points GoodSeed's tables cannot hold (NaN, -0.0, no step or timestamp, a second point "
                        f"at one step, a step a float does not hold exactly, a single value without a "
                        f"value) are kept in {POINTS_TABLE} (not shown by GoodSeed's viewer) and read back",
        "run_id_sanitized": "a run or project id GoodSeed does not accept as a file name is written as "
                            "safe(id); the exact ids are kept in run_meta trackport_origin",
    },
)

SOURCE_CAPABILITIES = Capabilities(
    replayable=True,
    transformations={
        "run_meta_as_sys": "GoodSeed's run_meta name / created_at / closed_at / status are read as "
                           "sys/name, sys/creation_time, sys/modification_time and sys/failed",
    },
)

# canonical single type -> GoodSeed config type_tag (goodseed/utils.py serialize_value)
TAG_OF = {"float": "float", "int": "int", "string": "str", "bool": "bool", "datetime": "datetime",
          "string_set": "string_set"}
TYPE_OF_TAG = {v: k for k, v in TAG_OF.items()}


def run_file_id(run_id: str) -> tuple[str, bool]:
    """GoodSeed's run id (the file name): the run id when GoodSeed accepts it, else safe() of it."""
    if RUN_ID_RE.match(run_id) and len(run_id) <= MAX_RUN_ID:
        return run_id, False
    s = safe(run_id)
    if not s[0].isalnum():
        s = "r" + s
    if len(s) > MAX_RUN_ID:
        s = s[: MAX_RUN_ID - 17] + s[-17:]
    return s, True


def project_folder(project_id: str) -> tuple[str, bool]:
    """A project folder below projects/ (GoodSeed nests `workspace/project`)."""
    if PROJECT_RE.match(project_id) and ".." not in project_id and len(project_id) <= 200:
        return project_id, False
    return safe(project_id), True


def config_value(typ: str, value: Any) -> tuple[str, str]:
    """A canonical single value (not None) as GoodSeed's (type_tag, text)."""
    if typ == "bool":
        return "bool", "true" if value else "false"
    if typ == "float":
        return "float", repr(float(value))
    if typ == "int":
        return "int", str(int(value))
    if typ == "datetime":
        return "datetime", to_utc(value).isoformat()
    if typ == "string_set":
        return "string_set", json.dumps(list(value), ensure_ascii=False)
    return "str", str(value)


def from_config(tag: str, text: str | None) -> tuple[str, Any]:
    """GoodSeed's (type_tag, text) as a canonical (type, value)."""
    if tag == "null" or text is None:
        return "string", None
    if tag == "bool":
        return "bool", text.lower() == "true"
    if tag == "int":
        return "int", int(text)
    if tag == "float":
        return "float", float(text)
    if tag == "datetime":
        return "datetime", to_utc(datetime.fromisoformat(text))
    if tag == "string_set":
        return "string_set", [str(v) for v in json.loads(text)]
    return "string", text


def to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def step_float(micro: int) -> float | None:
    """A step (in millionths) as GoodSeed's REAL, or None when a float does not give it back exactly."""
    f = micro / 1_000_000
    return f if float_micro(f) == micro else None


def float_micro(step: float) -> int:
    return int((Decimal(repr(float(step))) * 1_000_000).to_integral_value())


def ts_seconds(ms: int) -> float | int:
    """A ms timestamp as GoodSeed's `ts` (unix seconds; fractional when it has milliseconds)."""
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def ts_ms(ts: Any) -> int:
    return int(round(float(ts) * 1000))


def native_float(value: float) -> bool:
    """A float series value GoodSeed's `y REAL NOT NULL` keeps exactly: inf yes; NaN no (SQLite stores
    it as NULL); -0.0 no (SQLite stores it as the integer 0)."""
    return value is not None and not math.isnan(value) and not (value == 0 and math.copysign(1.0, value) < 0)


def json_value(typ: str, value: Any) -> str:
    if typ == "datetime" and value is not None:
        value = to_utc(value).isoformat()
    return json.dumps(value, ensure_ascii=False)


def from_json(typ: str, text: str) -> Any:
    value = json.loads(text)
    if typ == "datetime" and value is not None:
        value = to_utc(datetime.fromisoformat(value))
    return value
