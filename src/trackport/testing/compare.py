"""Exact table comparison for tests.

`pa.Table.equals` calls NaN unequal to itself and -0.0 equal to 0.0; the
corpus holds both on purpose, so tests compare with `table_differences`:
floats are equal when both are NaN or when their bits are equal.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa


def table_differences(expected: pa.Table, actual: pa.Table, limit: int = 10) -> list[str]:
    """Human-readable differences (empty when the tables are identical, row order included)."""
    if not expected.schema.equals(actual.schema, check_metadata=False):
        return [f"schema differs:\n--- expected\n{expected.schema}\n--- actual\n{actual.schema}"]
    if expected.num_rows != actual.num_rows:
        return [f"row count differs: expected {expected.num_rows}, got {actual.num_rows}"]
    out: list[str] = []
    for name in expected.column_names:
        a = _one_chunk(expected.column(name))
        b = _one_chunk(actual.column(name))
        row = _first_difference(a, b)
        if row is not None:
            out.append(f"column {name!r}: first difference at row {row}: expected {a[row].as_py()!r}, got {b[row].as_py()!r}")
            if len(out) >= limit:
                break
    return out


def same_value(x: Any, y: Any) -> bool:
    """Python-value equality where NaN equals NaN and -0.0 differs from 0.0."""
    if isinstance(x, float) and isinstance(y, float):
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return x == y and math.copysign(1.0, x) == math.copysign(1.0, y)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(same_value(i, j) for i, j in zip(x, y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same_value(x[k], y[k]) for k in x)
    return type(x) is type(y) and x == y


def _one_chunk(col: pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _first_difference(a: pa.Array, b: pa.Array) -> int | None:
    if pa.types.is_floating(a.type):
        va = np.asarray(a.is_valid())
        vb = np.asarray(b.is_valid())
        fa = a.fill_null(0).to_numpy(zero_copy_only=False)
        fb = b.fill_null(0).to_numpy(zero_copy_only=False)
        same_bits = fa.view(np.int64 if fa.itemsize == 8 else np.int32) == fb.view(np.int64 if fb.itemsize == 8 else np.int32)
        both_nan = np.isnan(fa) & np.isnan(fb)
        ok = (va == vb) & (~va | same_bits | both_nan)
        bad = np.flatnonzero(~ok)
        return int(bad[0]) if bad.size else None
    if a.equals(b) and not _holds_floats(a.type):
        return None
    for i, (x, y) in enumerate(zip(a.to_pylist(), b.to_pylist())):
        if not same_value(x, y):
            return i
    return None


def _holds_floats(t: pa.DataType) -> bool:
    if pa.types.is_floating(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _holds_floats(t.value_type)
    if pa.types.is_struct(t):
        return any(_holds_floats(t.field(i).type) for i in range(t.num_fields))
    return False
