"""Decimal steps to integer steps, by exact integer arithmetic.

A canonical step is decimal(18,6): an integer `u` of millionths.  A destination
that takes integer steps gets `u * multiplier / 10**6`, computed on int64
without ever going through a float.  The multiplier is the smallest power of
ten that makes every step of the run an integer, unless the user sets one.
When a user-set multiplier leaves a fraction, the step is floored (declared
transformation `step_floored`) and two distinct source steps of one series
landing on one destination step is an error before anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .schema import STEP_SCALE, STEP_TYPE

_DENOM = 10**STEP_SCALE
_INT64_MAX = np.iinfo(np.int64).max


MAX_UNSCALED = 10**18 - 1   # the largest magnitude of a decimal(18,6) step, in millionths


def decimal_steps(unscaled: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """decimal(18,6) steps from int64 millionths, null where `valid` is False.

    Built from the decimal's two 64-bit words directly: Arrow's int64 ->
    decimal(18,6) cast wants precision 25, and no float or Decimal is involved.
    """
    unscaled = np.ascontiguousarray(unscaled, dtype=np.int64)
    if unscaled.size and int(np.abs(unscaled).max()) > MAX_UNSCALED:
        raise OverflowError(f"step {int(np.abs(unscaled).max())} millionths does not fit decimal(18,6)")
    words = np.empty((unscaled.size, 2), dtype="<i8")
    words[:, 0] = unscaled
    words[:, 1] = unscaled >> 63
    validity, nulls = None, 0
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        nulls = int(unscaled.size - valid.sum())
        if nulls:
            validity = pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
    return pa.Array.from_buffers(STEP_TYPE, unscaled.size, [validity, pa.py_buffer(words.tobytes())],
                                 null_count=nulls)


def unscaled(steps: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Steps as int64 millionths (nulls become 0; use the validity mask separately)."""
    if isinstance(steps, pa.ChunkedArray):
        if steps.num_chunks == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([unscaled(c) for c in steps.chunks])
    if not steps.type.equals(STEP_TYPE):
        steps = pc.cast(steps, STEP_TYPE)
    buf = steps.buffers()[1]
    if buf is None or len(steps) == 0:
        return np.zeros(len(steps), dtype=np.int64)
    # decimal128 is two little-endian 64-bit words per value; decimal(18,6) fits the low word.
    words = np.frombuffer(buf, dtype="<i8", count=2 * (steps.offset + len(steps)))
    low = words[2 * steps.offset :: 2].copy()
    if steps.null_count:
        low[~np.asarray(steps.is_valid())] = 0
    return low


def unscaled_list(steps: pa.Array | pa.ChunkedArray) -> list[int | None]:
    """Steps as Python ints of millionths, None where a point has no step (for writers that
    go point by point)."""
    micro = unscaled(steps).tolist()
    if not steps.null_count:
        return micro
    return [m if ok else None for m, ok in zip(micro, np.asarray(steps.is_valid()).tolist())]


def step_text(step: Decimal | int | str | None) -> str | None:
    """The shortest exact decimal text of a step: Decimal("7.500000") -> "7.5",
    Decimal("100.000000") -> "100"; None stays None.  No float is involved (a float
    given is taken at its exact binary value)."""
    return None if step is None else format(Decimal(step).normalize(), "f")


def unscaled_text(unscaled: int | None) -> str | None:
    """`step_text` of a step given in millionths (as `unscaled` returns them): 7500000 -> "7.5"."""
    if unscaled is None:
        return None
    sign = "-" if unscaled < 0 else ""
    whole, frac = divmod(abs(int(unscaled)), _DENOM)
    return f"{sign}{whole}" if not frac else f"{sign}{whole}." + f"{frac:0{STEP_SCALE}d}".rstrip("0")


def decimal_places(values: np.ndarray) -> int:
    """Fewest decimal places (0..6) that represent every value exactly."""
    if values.size == 0:
        return 0
    for places in range(STEP_SCALE + 1):
        if not np.any(values % (10 ** (STEP_SCALE - places))):
            return places
    return STEP_SCALE


def multiplier_for(places: int) -> int:
    return 10**places


@dataclass(frozen=True)
class StepConverter:
    multiplier: int
    chosen: str = "auto"   # "auto" or "user"

    def convert(self, steps: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, int]:
        """Return (int64 destination steps with the source's nulls, count of floored steps)."""
        if isinstance(steps, pa.ChunkedArray):
            steps = steps.combine_chunks() if steps.num_chunks != 1 else steps.chunk(0)
        u = unscaled(steps)
        # u * multiplier / 10**6, reduced first so the product stays inside int64
        g = math.gcd(self.multiplier, _DENOM)
        m, denom = self.multiplier // g, _DENOM // g
        if u.size and m > 1 and int(np.abs(u).max()) > _INT64_MAX // m:
            raise OverflowError(
                f"step multiplier {self.multiplier} overflows 64-bit integer steps at step "
                f"{Decimal(int(np.abs(u).max())).scaleb(-STEP_SCALE)}"
            )
        dest, rem = np.divmod(u * m, denom)
        valid = np.asarray(steps.is_valid()) if steps.null_count else None
        floored = int(np.count_nonzero(rem if valid is None else rem[valid]))
        mask = None if valid is None else ~valid
        return pa.array(dest, pa.int64(), mask=mask), floored


def find_collisions(attribute: pa.Array, source_steps: np.ndarray, dest_steps: np.ndarray) -> list[str]:
    """Series where distinct source steps share one destination step (examples, sorted)."""
    table = pa.table({"a": attribute, "s": source_steps, "d": dest_steps})
    pairs = table.group_by(["a", "d"]).aggregate([("s", "count_distinct")])
    hits = pairs.filter(pc.greater(pairs.column("s_count_distinct"), 1))
    out = []
    for a, d in zip(hits.column("a").to_pylist(), hits.column("d").to_pylist()):
        out.append(f"{a} at destination step {d}")
    return sorted(out)
