"""Metric points as MLflow's SQL store keeps them, and back.

Pure functions, no MLflow import.  The SQL store keeps NaN (is_nan) but replaces +-inf by
+-1.7976931348623157e308, and SQLite stores -0.0 as 0; one metric row is kept per
(key, step, timestamp, value), so an exact repeat is stored once.  What the store cannot
give back is listed in the run's manifest (manifest.py) and restored here on reading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from trackport.core.schema import STEP_SCALE

if TYPE_CHECKING:
    from .manifest import AttributeEntry

FLOAT_MAX = 1.7976931348623157e308

_DENOM = 10**STEP_SCALE


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
                     entry: AttributeEntry) -> np.ndarray:
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


def restore_inf(values: np.ndarray) -> np.ndarray:
    values = np.array(values, dtype=np.float64)
    values[values == FLOAT_MAX] = np.inf
    values[values == -FLOAT_MAX] = -np.inf
    return values


_FIX_TEXT = {"inf": np.inf, "-inf": -np.inf, "-0.0": -0.0}


def fix_texts(values: np.ndarray) -> list[str]:
    return ["-0.0" if v == 0 else ("inf" if v > 0 else "-inf") for v in values.tolist()]


def restore_values(values: np.ndarray, steps: np.ndarray, timestamps: np.ndarray,
                   entry: AttributeEntry) -> np.ndarray:
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

