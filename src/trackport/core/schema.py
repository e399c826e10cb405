"""The canonical long-row format: one row per scalar value or series point.

Column for column the schema neptune-exporter writes (docs/format.md),
so its exports load unchanged and ours load with it.  Readers accept extra
top-level columns; writers only ever add new nullable top-level columns.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

STEP_TYPE = pa.decimal128(18, 6)
STEP_SCALE = 6
TIMESTAMP_TYPE = pa.timestamp("ms", tz="UTC")
FILE_TYPE = pa.struct([pa.field("path", pa.string())])
HISTOGRAM_TYPE = pa.struct(
    [
        pa.field("type", pa.string()),
        pa.field("edges", pa.list_(pa.float64())),
        pa.field("values", pa.list_(pa.float64())),
    ]
)

SCHEMA = pa.schema(
    [
        pa.field("project_id", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("attribute_path", pa.string()),
        pa.field("attribute_type", pa.string()),
        pa.field("step", STEP_TYPE),
        pa.field("timestamp", TIMESTAMP_TYPE),
        pa.field("int_value", pa.int64()),
        pa.field("float_value", pa.float64()),
        pa.field("string_value", pa.string()),
        pa.field("bool_value", pa.bool_()),
        pa.field("datetime_value", TIMESTAMP_TYPE),
        pa.field("string_set_value", pa.list_(pa.string())),
        pa.field("file_value", FILE_TYPE),
        pa.field("histogram_value", HISTOGRAM_TYPE),
    ]
)
COLUMNS = tuple(SCHEMA.names)

# In-memory only: the integer step a destination with integer steps receives,
# computed by the core (exact decimal arithmetic, collisions checked) and never
# written to an export.
DEST_STEP = "dest_step"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def ms_from_datetime(value: Any) -> int | None:
    """Milliseconds since the epoch (the canonical timestamps' unit) of a time: a datetime
    (naive = UTC), a numpy datetime64, a pandas Timestamp, or a number already in ms (a
    non-finite float: None).  Exact integer arithmetic, floored to the ms.  None stays None;
    anything else is a TypeError."""
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


# attribute_type -> the column holding its value
VALUE_COLUMN: dict[str, str] = {
    "float": "float_value",
    "int": "int_value",
    "string": "string_value",
    "bool": "bool_value",
    "datetime": "datetime_value",
    "string_set": "string_set_value",
    "float_series": "float_value",
    "string_series": "string_value",
    "histogram_series": "histogram_value",
    "file": "file_value",
    "file_series": "file_value",
    "file_set": "file_value",
    "artifact": "file_value",
}
ATTRIBUTE_TYPES = frozenset(VALUE_COLUMN)

PARAM_TYPES = frozenset({"float", "int", "string", "bool", "datetime", "string_set"})
METRIC_TYPES = frozenset({"float_series"})
SERIES_TYPES = frozenset({"string_series", "histogram_series"})
FILE_TYPES = frozenset({"file", "file_series", "file_set", "artifact"})
STEPPED_TYPES = frozenset({"float_series", "string_series", "histogram_series", "file_series"})


def series_rows(table: pa.Table) -> pa.ChunkedArray:
    """Which rows are series points: a step, or a series type even without one (a point
    whose step a source could not know is still a point, counted as one)."""
    stepped = pa.array(sorted(STEPPED_TYPES))
    return pc.or_(pc.is_valid(table.column("step")),
                  pc.fill_null(pc.is_in(table.column("attribute_type"), value_set=stepped), False))

# Data classes, as selected with --classes: the row types each moves.  `artifacts` names no
# row type: it selects the entries of format extensions (artifact and model versions, in the
# projects a connector's spec declares), which move whole (model.Selection).
ARTIFACTS_CLASS = "artifacts"
CLASSES: dict[str, frozenset[str]] = {
    "params": PARAM_TYPES,
    "metrics": METRIC_TYPES,
    "series": SERIES_TYPES,
    "files": FILE_TYPES,
    ARTIFACTS_CLASS: frozenset(),
}
ALL_TYPES = frozenset(t for types in CLASSES.values() for t in types)
CLASS_OF_TYPE = {t: c for c, types in CLASSES.items() for t in types}


class SchemaError(ValueError):
    """A batch or file does not fit the canonical schema."""


def conform(batch: pa.RecordBatch | pa.Table, where: str = "") -> pa.Table:
    """Cast a batch to the canonical column types, keeping extra columns.

    Missing canonical columns are added as nulls.  A column that cannot be cast
    without loss raises SchemaError naming the column and `where`.
    """
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    arrays = []
    fields = []
    for field in SCHEMA:
        if field.name in table.column_names:
            col = table.column(field.name)
            if not col.type.equals(field.type):
                try:
                    col = _cast_column(col, field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise SchemaError(
                        f"{where + ': ' if where else ''}column {field.name!r} has type {col.type}, "
                        f"expected {field.type} ({exc})"
                    ) from None
        else:
            col = pa.nulls(table.num_rows, field.type)
        arrays.append(col)
        fields.append(field)
    for name in table.column_names:
        if name not in SCHEMA.names:
            arrays.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _cast_column(col, target: pa.DataType):
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
        if col.type.equals(target):
            return col
    if _is_text(col.type) and not _is_text(target):
        # Arrow would parse "2.5" into a step or a float; a text column where numbers belong
        # is a broken writer, and parsing it would hide that (docs/format.md, "Hostile input").
        raise pa.ArrowInvalid("text is never parsed into numbers, times or structs")
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(col.type):
        # Finer units are truncated to ms only when nothing is lost.
        casted = col.cast(pa.timestamp(col.type.unit, tz="UTC") if col.type.tz is None else col.type)
        return pc.cast(casted, target, safe=True)
    if pa.types.is_large_string(col.type) and pa.types.is_string(target):
        return col.cast(target)
    return pc.cast(col, target, safe=True)


def _is_text(kind: pa.DataType) -> bool:
    return any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string,
                                       pa.types.is_binary, pa.types.is_large_binary))


def check_types(table: pa.Table, where: str = "") -> None:
    """Reject attribute types this version does not know, naming them."""
    unknown = pc.unique(table.column("attribute_type")).to_pylist()
    bad = sorted(t for t in unknown if t not in ATTRIBUTE_TYPES)
    if bad:
        raise SchemaError(
            f"{where + ': ' if where else ''}unknown attribute_type {', '.join(map(repr, bad))}; "
            f"known: {', '.join(sorted(ATTRIBUTE_TYPES))}"
        )


def rows_to_table(rows: Iterable[Mapping], extra: Mapping[str, object] | None = None) -> pa.Table:
    """Build a canonical table from dict rows (small payloads only, not hot paths)."""
    cols: dict[str, list] = {name: [] for name in COLUMNS}
    for row in rows:
        merged = {**(extra or {}), **row}
        for name in COLUMNS:
            cols[name].append(merged.get(name))
    return pa.Table.from_pydict(cols, schema=SCHEMA)


class SeriesColumns:
    """Series points gathered one at a time (a log replay, an SDK's point objects),
    turned into one canonical table per batch: one list per column, no dict rows.

    `add` puts the value in its type's column (a file_series value is the file's
    path); `weight` roughly counts the 8-byte cells held, to bound a batch's memory.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.path: list[str] = []
        self.type: list[str] = []
        self.step: list = []
        self.ts: list[int | None] = []
        self.float: list[float | None] = []
        self.string: list[str | None] = []
        self.hist: list[dict | None] = []
        self.file: list[dict | None] = []
        self.weight = 0

    def __len__(self) -> int:
        return len(self.path)

    def add(self, path: str, kind: str, step, ts_ms: int | None, value) -> None:
        self.path.append(path)
        self.type.append(kind)
        self.step.append(step)
        self.ts.append(ts_ms)
        self.float.append(value if kind == "float_series" else None)
        self.string.append(value if kind == "string_series" else None)
        self.hist.append(value if kind == "histogram_series" else None)
        self.file.append({"path": value} if kind == "file_series" else None)
        if kind == "string_series" and value is not None:
            self.weight += len(value) // 8
        elif kind == "histogram_series" and value is not None:
            self.weight += len(value["edges"]) + len(value["values"])

    def take_micro(self, project_id: str, run_id: str) -> pa.Table:
        """The canonical table when `self.step` holds steps in millionths (None: no step);
        the columns are emptied for the next batch."""
        from .steps import decimal_steps

        valid = np.array([s is not None for s in self.step], dtype=bool)
        micro = np.array([0 if s is None else s for s in self.step], dtype=np.int64)
        table = self.table(project_id, run_id, decimal_steps(micro, None if valid.all() else valid))
        self.clear()
        return table

    def table(self, project_id: str, run_id: str, steps: pa.Array) -> pa.Table:
        """The canonical table; `steps` is the step column the caller built from `self.step`."""
        n = len(self.path)
        arrays = {
            "project_id": pa.array([project_id] * n, pa.string()),
            "run_id": pa.array([run_id] * n, pa.string()),
            "attribute_path": pa.array(self.path, pa.string()),
            "attribute_type": pa.array(self.type, pa.string()),
            "step": steps,
            "timestamp": pa.array(self.ts, pa.int64()).cast(TIMESTAMP_TYPE),
            "float_value": pa.array(self.float, pa.float64()),
            "string_value": pa.array(self.string, pa.string()),
            "histogram_value": pa.array(self.hist, HISTOGRAM_TYPE),
            "file_value": pa.array(self.file, FILE_TYPE),
        }
        return pa.Table.from_arrays([arrays[f.name] if f.name in arrays else pa.nulls(n, f.type)
                                     for f in SCHEMA], schema=SCHEMA)
