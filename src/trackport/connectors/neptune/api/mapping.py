"""Pure mapping for the Neptune API sources (`neptune2://`, `neptune3://`).

Client objects and fetched values -> canonical Arrow rows.  No SDK import, no
I/O: the SDK-talking modules (`reader2.py`, `reader3.py`) hand over the objects the
clients return, and the tests build the same objects from the clients' own
types.

Fixes over neptune-exporter's `export` (see docs/neptune.md, "API sources"):
- a run without `sys/custom_run_id` keeps its `sys/id` as run id instead of
  being skipped (3.x);
- 2.x point timestamps come from the server's epoch milliseconds (UTC), never
  from `fetch_values`' naive local `datetime.fromtimestamp` (neptune
  attributes/series/fetchable_series.py); a naive datetime value is read as
  the client's local time and converted to UTC;
- 2.x file series keep their logged steps (not the item index);
- 3.x series are read with lineage NONE, so a fork holds only its own points;
  its lineage is kept as `sys/forking/*`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from trackport.core.errors import UsageError
from trackport.core.model import Selection
from trackport.core.schema import (
    CLASS_OF_TYPE,
    FILE_TYPE,
    PARAM_TYPES,
    HISTOGRAM_TYPE,
    SCHEMA,
    STEP_SCALE,
    TIMESTAMP_TYPE,
    VALUE_COLUMN,
    rows_to_table,
)
from trackport.core.steps import decimal_steps

from ..mapping import CONTAINER_TYPE

GENERATIONS = {"neptune2": 2, "neptune3": 3}
CLASSES_PARAMS = tuple(sorted(PARAM_TYPES))
MAX_UNSCALED_STEP = 10**18 - 1

# neptune 1.x attribute classes (neptune/attributes/__init__.py) -> canonical type.
# GitRef / NotebookRef carry no data the API returns; RunState is `sys/state`.
TYPE_OF_CLASS_2X = {
    "Float": "float",
    "Integer": "int",
    "String": "string",
    "Boolean": "bool",
    "Datetime": "datetime",
    "StringSet": "string_set",
    "RunState": "string",
    "FloatSeries": "float_series",
    "StringSeries": "string_series",
    "File": "file",
    "FileSet": "file_set",
    "FileSeries": "file_series",
    "Artifact": "artifact",
}
IGNORED_CLASSES_2X = frozenset({"GitRef", "NotebookRef", "Namespace"})

# Types neptune-query (3.x) knows (neptune_query/internal/retrieval/attribute_types.py ALL_TYPES).
TYPES_3X = ("float", "int", "string", "bool", "datetime", "string_set", "float_series",
            "string_series", "histogram_series", "file", "file_series")


# -- the URI -----------------------------------------------------------------------
@dataclass(frozen=True)
class ApiTarget:
    """`neptune2://WORKSPACE/PROJECT` or `neptune2://WORKSPACE` (every project, filtered)."""

    scheme: str
    workspace: str
    project: str | None

    @property
    def generation(self) -> int:
        return GENERATIONS[self.scheme]

    @property
    def uri(self) -> str:
        tail = f"/{self.project}" if self.project else ""
        return f"{self.scheme}://{self.workspace}{tail}"

    @property
    def project_id(self) -> str | None:
        return f"{self.workspace}/{self.project}" if self.project else None


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_target(scheme: str, rest: str) -> ApiTarget:
    if scheme not in GENERATIONS:
        raise UsageError(f"unknown Neptune API scheme {scheme!r}")
    text = rest.strip()
    if "@" in text or "?" in text:
        raise UsageError(f"{scheme}: put the API token in NEPTUNE_API_TOKEN, not in the URI")
    text = text.removeprefix("//").strip("/")
    parts = [p for p in text.split("/") if p]
    if not parts or len(parts) > 2 or not all(_NAME.match(p) for p in parts):
        raise UsageError(f"bad Neptune URI {scheme}:{rest!r}; use {scheme}://WORKSPACE/PROJECT "
                         f"(or {scheme}://WORKSPACE to discover every project)")
    return ApiTarget(scheme, parts[0], parts[1] if len(parts) == 2 else None)


def _compile(patterns: Sequence[str] | str | None, option: str) -> list[re.Pattern]:
    if not patterns:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise UsageError(f"bad regex for {option}: {pattern!r} ({exc})") from None
    return out


def choose_projects(target: ApiTarget, discovered: Iterable[str], include: Sequence[str] | str | None,
                    exclude: Sequence[str] | str | None, select: Selection | None = None) -> list[str]:
    """Projects to read, as neptune-exporter's workspace discovery picks them.

    The include / exclude regexes are searched in the project NAME (the part
    after `workspace/`); the explicit project of the URI is taken as it is.
    """
    inc = _compile(include, "--neptune-project-include")
    exc = _compile(exclude, "--neptune-project-exclude")
    if target.project is not None:
        if inc or exc:
            raise UsageError("--neptune-project-include/--neptune-project-exclude need a workspace URI "
                             f"({target.scheme}://{target.workspace}), not a single project")
        chosen = [target.project_id]
    else:
        chosen = []
        for project_id in discovered:
            workspace, _, name = project_id.partition("/")
            if workspace != target.workspace or not name:
                continue
            if inc and not any(r.search(name) for r in inc):
                continue
            if any(r.search(name) for r in exc):
                continue
            if project_id not in chosen:
                chosen.append(project_id)
        chosen.sort()
    if select is not None and select.projects:
        chosen = [p for p in chosen if select.wants_project(p)]
    return chosen


# -- runs and attributes --------------------------------------------------------------
@dataclass(frozen=True)
class ApiRun:
    """A run as listed by the API; `run_id` is the canonical id.  `container` is None for a
    run, MODEL or MODEL_VERSION for an entry of the 2.x model registry (moved as a run)."""

    project_id: str
    sys_id: str
    run_id: str
    custom_run_id: str | None = None
    container: str | None = None


# -- the 2.x model registry --------------------------------------------------------------
# A Neptune model or model version is moved as a run of its own project, with the canonical
# shape the parquet source gives the same entity read from neptune-exporter's `export-models`
# (connectors/parquet/layout.py ENTITY_SCOPES, parquet/source.py): run id = its `sys/id`
# (`PROJ-MOD`, `PROJ-MOD-1`), every attribute as the API holds it (a version's `sys/model_id`
# names its model; a link to a run is whatever attribute the user set), and its type in the
# string attribute CONTAINER_TYPE, added when the entity does not hold one itself.
MODEL = "model"
MODEL_VERSION = "model_version"
# The folder `export-models` puts each kind in (data/<project>/<folder>/, files/<project>/<folder>/);
# the downloaded files of an entity go under the same folder name here.
ENTITY_SCOPE = {MODEL: "models", MODEL_VERSION: "model_versions"}


def entities_from_table(project_id: str, container: str, sys_ids: Sequence[Any]) -> list[ApiRun]:
    """Models or model versions from the `sys/id` column of a 2.x `fetch_models_table()` /
    `fetch_model_versions_table()` frame; run id = the entity's `sys/id`, as export-models names it."""
    if container not in ENTITY_SCOPE:
        raise ValueError(f"not a registry container type: {container!r}")
    out = []
    for sys_id in sys_ids:
        if sys_id is None or (isinstance(sys_id, float) and np.isnan(sys_id)) or not str(sys_id):
            continue
        out.append(ApiRun(project_id, str(sys_id), str(sys_id), None, container))
    return out


def container_type_table(project_id: str, run_id: str, container: str) -> pa.Table:
    """The CONTAINER_TYPE row of a model or model version."""
    return scalar_table(project_id, run_id, [(CONTAINER_TYPE, "string", container)])


def run_identity(generation: int, sys_id: str, custom_run_id: str | None) -> str:
    """2.x: `sys/id` (as neptune-exporter names 2.x runs); 3.x: `sys/custom_run_id`, else `sys/id`."""
    if generation == 3 and custom_run_id:
        return custom_run_id
    return sys_id


def runs_from_table(project_id: str, generation: int, sys_ids: Sequence[Any],
                    custom_ids: Sequence[Any] | None) -> list[ApiRun]:
    """Runs from the columns of a runs table (2.x `fetch_runs_table().to_pandas()`)."""
    out = []
    customs = list(custom_ids) if custom_ids is not None else [None] * len(sys_ids)
    for sys_id, custom in zip(sys_ids, customs):
        if sys_id is None or (isinstance(sys_id, float) and np.isnan(sys_id)):
            continue
        custom = custom if isinstance(custom, str) and custom else None
        out.append(ApiRun(project_id, str(sys_id), run_identity(generation, str(sys_id), custom), custom))
    return out


def wants(select: Selection, path: str, attribute_type: str) -> bool:
    """The same rule as Selection.filter: class first, then the regex (sys/* always kept)."""
    if attribute_type not in select.types:
        return False
    pattern = select.attribute_pattern
    return pattern is None or path.startswith("sys/") or pattern.search(path) is not None


def class_of(attribute_type: str) -> str:
    return CLASS_OF_TYPE.get(attribute_type, "params")


# -- values -------------------------------------------------------------------------------
def to_utc(value: datetime) -> datetime:
    """A datetime in UTC; a naive one is the client's local time (as `datetime.fromtimestamp` makes)."""
    if value.tzinfo is None:
        value = value.astimezone()   # interprets the naive value in the process' local zone
    return value.astimezone(timezone.utc)


def scalar_value(attribute_type: str, value: Any) -> Any:
    """A client's atom value as the canonical column holds it."""
    if value is None:
        return None
    if attribute_type == "datetime":
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
        return to_utc(value)
    if attribute_type == "string_set":
        return sorted(str(v) for v in value)
    if attribute_type == "int":
        return int(value)
    if attribute_type == "float":
        return float(value)
    if attribute_type == "bool":
        return bool(value)
    return str(value)


def scalar_table(project_id: str, run_id: str, items: Iterable[tuple[str, str, Any]]) -> pa.Table:
    """(path, type, value) of single values -> canonical rows (one row each; small)."""
    rows = []
    for path, attribute_type, value in items:
        value = scalar_value(attribute_type, value)
        if value is None:
            continue
        rows.append({"attribute_path": path, "attribute_type": attribute_type,
                     VALUE_COLUMN[attribute_type]: value})
    return rows_to_table(rows, {"project_id": project_id, "run_id": run_id})


def file_table(project_id: str, run_id: str, items: Iterable[tuple[str, str, Any, Any, str]]) -> pa.Table:
    """(path, type, step, timestamp_ms, relative file path) -> canonical file rows."""
    items = list(items)
    n = len(items)
    if not n:
        return SCHEMA.empty_table()
    paths, types, steps, stamps, files = zip(*items)
    step_arr = np.array([np.nan if s is None else float(s) for s in steps], dtype=np.float64)
    ts_arr = np.array([-1 if t is None else int(t) for t in stamps], dtype=np.int64)
    return _assemble(project_id, run_id, pa.array(paths, pa.string()), pa.array(types, pa.string()),
                     steps_from_float(step_arr), _timestamps(ts_arr, ts_arr >= 0 if n else None),
                     {"file_value": pa.array([{"path": f} for f in files], FILE_TYPE)}, n)


# -- series ---------------------------------------------------------------------------------
def steps_from_float(steps: np.ndarray) -> pa.Array:
    """decimal128(18,6) steps from float steps (NaN -> null), exact to 6 places.

    Neptune keeps steps as doubles; both clients log them fixed-point with 6
    decimals (neptune-scale) or as integers, so rounding the scaled double to
    the nearest millionth recovers the logged decimal.
    """
    steps = np.asarray(steps, dtype=np.float64)
    valid = ~np.isnan(steps)
    scaled = np.zeros(steps.shape, dtype=np.float64)
    scaled[valid] = np.round(steps[valid] * 10**STEP_SCALE)
    if valid.any() and np.abs(scaled[valid]).max() > MAX_UNSCALED_STEP:
        raise OverflowError("a step does not fit decimal(18,6)")
    return decimal_steps(scaled.astype(np.int64), valid)


def _timestamps(ms: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    ms = np.asarray(ms, dtype=np.int64)
    mask = None if valid is None or valid.all() else ~valid
    return pa.array(ms, pa.int64(), mask=mask).cast(TIMESTAMP_TYPE)


def _assemble(project_id: str, run_id: str, paths: pa.Array, types: pa.Array, steps: pa.Array,
              timestamps: pa.Array, values: dict[str, pa.Array], n: int) -> pa.Table:
    columns = []
    for field in SCHEMA:
        name = field.name
        if name == "project_id":
            col = pa.array(np.full(n, project_id, dtype=object), pa.string())
        elif name == "run_id":
            col = pa.array(np.full(n, run_id, dtype=object), pa.string())
        elif name == "attribute_path":
            col = paths
        elif name == "attribute_type":
            col = types
        elif name == "step":
            col = steps
        elif name == "timestamp":
            col = timestamps
        elif name in values:
            col = values[name]
        else:
            col = pa.nulls(n, field.type)
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def series_table(project_id: str, run_id: str, path: str, attribute_type: str, steps: np.ndarray,
                 timestamps_ms: np.ndarray, values: pa.Array) -> pa.Table:
    """One series from column arrays: float steps, epoch-ms UTC timestamps, typed values."""
    n = len(values)
    ts = np.asarray(timestamps_ms)
    valid = None
    if ts.dtype.kind == "f":
        valid = ~np.isnan(ts)
        ts = np.where(valid, ts, 0).round().astype(np.int64)
    column = VALUE_COLUMN[attribute_type]
    return _assemble(project_id, run_id,
                     pa.array(np.full(n, path, dtype=object), pa.string()),
                     pa.array(np.full(n, attribute_type, dtype=object), pa.string()),
                     steps_from_float(steps), _timestamps(ts, valid), {column: values}, n)


def points_2x(project_id: str, run_id: str, path: str, attribute_type: str, points: Sequence[Any]) -> pa.Table:
    """2.x series points (neptune.internal.backends.api_model.FloatPointValue / StringPointValue:
    `timestampMillis`, `step`, `value`) -> rows, timestamps straight from the server's epoch ms."""
    n = len(points)
    steps = number_step_less(np.fromiter((np.nan if p.step is None else p.step for p in points), np.float64, n))
    stamps = np.fromiter((p.timestampMillis for p in points), np.int64, n)
    if attribute_type == "float_series":
        values = pa.array(np.fromiter((p.value for p in points), np.float64, n), pa.float64())
    else:
        values = pa.array([p.value for p in points], pa.string())
    return series_table(project_id, run_id, path, attribute_type, steps, stamps, values)


def number_step_less(steps: np.ndarray) -> np.ndarray:
    """Float steps with a point the server returned without a step (NaN) numbered as Neptune
    numbers a step-less point: the series' previous step + 1, 0 for its first point.  The hosted
    2.x service numbers them itself; a Neptune-compatible backend may return them bare."""
    missing = np.isnan(steps)
    if not missing.any():
        return steps
    out = steps.copy()
    last = None
    for i in range(len(out)):        # only for series holding a step-less point
        if missing[i]:
            out[i] = 0.0 if last is None else last + 1.0
        last = out[i]
    return out


def step_less_count(points: Sequence[Any]) -> int:
    return sum(1 for p in points if getattr(p, "step", 0) is None)


def metric_points_3x(project_id: str, run_id: str, path: str, points: Sequence[tuple],
                     include_previews: bool) -> tuple[pa.Table, int]:
    """3.x float points (neptune_query.internal.retrieval.metrics.FloatPointValue:
    (timestamp_ms, step, value, is_preview, completion_ratio)) -> (rows, preview points left out)."""
    if not points:
        return series_table(project_id, run_id, path, "float_series", np.empty(0), np.empty(0, np.int64),
                            pa.array([], pa.float64())), 0
    grid = np.array(points, dtype=np.float64).reshape(len(points), 5)
    keep = np.ones(len(points), dtype=bool) if include_previews else grid[:, 3] == 0
    left_out = int((~keep).sum())
    grid = grid[keep]
    table = series_table(project_id, run_id, path, "float_series", grid[:, 1], grid[:, 0],
                         pa.array(grid[:, 2], pa.float64()))
    return table, left_out


def series_points_3x(project_id: str, run_id: str, path: str, attribute_type: str,
                     points: Sequence[Any]) -> pa.Table:
    """3.x string / histogram series (neptune_query.internal.retrieval.series.SeriesValue:
    step, value, timestamp_millis) -> rows."""
    n = len(points)
    steps = np.fromiter((p.step for p in points), np.float64, n)
    stamps = np.fromiter((p.timestamp_millis for p in points), np.float64, n)
    if attribute_type == "histogram_series":
        values = pa.array([{"type": p.value.type, "edges": list(p.value.edges), "values": list(p.value.values)}
                           for p in points], HISTOGRAM_TYPE)
    else:
        values = pa.array([p.value for p in points], pa.string())
    return series_table(project_id, run_id, path, attribute_type, steps, stamps, values)


def file_series_steps_2x(count: int, steps: Sequence[float] | None, where: str) -> list[float]:
    """Item index -> logged step of a 2.x file series.

    The 2.x client downloads file-series items by index only; the logged steps
    come from the series values (sorted by step, as the items are).  Without
    them the run cannot be moved faithfully: the caller raises RunError.
    """
    if steps is None:
        raise ValueError(f"{where}: the server did not return the logged steps of this file series")
    steps = sorted(float(s) for s in steps)
    if len(steps) != count:
        raise ValueError(f"{where}: {count} files but {len(steps)} logged steps")
    return steps


def safe_part(text: str) -> str:
    """A file-system-safe path segment (attribute paths keep their `/` levels); a changed
    segment gets a digest of the original so `a b` and `a_b` stay apart."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:160]
    if cleaned != text or cleaned in (".", ".."):
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=4).hexdigest()
        cleaned = f"{cleaned}-{digest}"
    return cleaned


def local_file_path(run_id: str, attribute_path: str, step: float | None = None, suffix: str = "",
                    container: str | None = None) -> str:
    """Relative path (under the source's download root) of one downloaded file; a model's or
    model version's files go under `models/` / `model_versions/`, as export-models puts them."""
    parts = [safe_part(run_id)] + [safe_part(p) for p in attribute_path.split("/") if p]
    if container is not None:
        parts.insert(0, ENTITY_SCOPE[container])
    if step is not None:
        parts.append(f"step_{step:.6f}".rstrip("0").rstrip(".") + suffix)
    elif suffix:
        parts[-1] = parts[-1] + suffix
    return "/".join(parts)


__all__ = [
    "ApiRun", "ApiTarget", "CONTAINER_TYPE", "ENTITY_SCOPE", "GENERATIONS", "MODEL", "MODEL_VERSION",
    "container_type_table", "entities_from_table", "TYPES_3X", "TYPE_OF_CLASS_2X", "choose_projects", "class_of",
    "file_series_steps_2x", "file_table", "local_file_path", "metric_points_3x", "number_step_less",
    "step_less_count", "parse_target", "points_2x",
    "run_identity", "runs_from_table", "scalar_table", "series_points_3x", "series_table", "steps_from_float",
    "to_utc", "wants",
]
