"""What `trackport report` draws: each float series of a run, source over destination,
reduced to a bounded envelope (min, max and mean per step bin), computed with Arrow and
numpy while `verify` reads the two sides.

The reduction is for drawing only; `verify`'s fingerprints decide what differs.  A series
keeps at most `MAX_BINS` bins, fewer when the report holds many series (`BIN_BUDGET` bins
across all runs, never fewer than `MIN_BINS` per series), so the page stays a bounded size:
1,000 runs x 100 series draw 20 bins each (a 48 MB page, written in 4 s).  Values are
quantised to 16 bits within the series' own range, which no screen can tell apart.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import steps as stepmath

MAX_BINS = 200
MIN_BINS = 16
BIN_BUDGET = 2_000_000
_EMPTY = np.uint16(65535)     # a bin with no finite point


class SeriesTap:
    """The float-series points of one side of one run, kept as numpy arrays while the tables
    pass through `watch` unchanged (one run's float points: what verify streams anyway)."""

    def __init__(self) -> None:
        self.parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def watch(self, tables: Iterable[Any]) -> Iterator[Any]:
        for table in tables:
            self._keep(table if isinstance(table, pa.Table) else pa.Table.from_batches([table]))
            yield table

    def _keep(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        mask = pc.fill_null(pc.and_(pc.equal(table.column("attribute_type"), "float_series"),
                                    pc.is_valid(table.column("step"))), False)
        points = table.filter(mask).select(["attribute_path", "step", "float_value"])
        if points.num_rows == 0:
            return
        points = points.sort_by([("attribute_path", "ascending")])
        runs = pc.run_end_encode(points.column("attribute_path").combine_chunks())
        start = 0
        for end, path in zip(runs.run_ends.to_pylist(), runs.values.to_pylist()):
            group = points.slice(start, end - start)
            steps = stepmath.unscaled(group.column("step")).astype(np.float64) / 1e6
            values = np.asarray(group.column("float_value").to_numpy(zero_copy_only=False), dtype=np.float64)
            self.parts.setdefault(path, []).append((steps, values))
            start = end

    def series(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        parts = self.parts.get(path) or []
        if not parts:
            return np.zeros(0), np.zeros(0)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _binned(steps: np.ndarray, values: np.ndarray, lo: float, width: float, bins: int) -> np.ndarray:
    """(3, bins) float64: min, max and mean of the finite values in each step bin (NaN: none)."""
    out = np.full((3, bins), np.nan)
    finite = np.isfinite(values)
    steps, values = steps[finite], values[finite]
    if values.size == 0:
        return out
    idx = np.clip(((steps - lo) / width).astype(np.int64), 0, bins - 1) if width > 0 else np.zeros(steps.size, np.int64)
    order = np.argsort(idx, kind="stable")
    idx, values = idx[order], values[order]
    used, starts = np.unique(idx, return_index=True)
    counts = np.diff(np.append(starts, idx.size))
    out[0, used] = np.minimum.reduceat(values, starts)
    out[1, used] = np.maximum.reduceat(values, starts)
    out[2, used] = np.add.reduceat(values, starts) / counts
    return out


def _quantised(binned: np.ndarray, vlo: float, vhi: float) -> str:
    span = vhi - vlo
    scaled = np.zeros_like(binned) if span <= 0 else (binned - vlo) / span * 65534.0
    q = np.where(np.isnan(binned), _EMPTY, np.rint(np.nan_to_num(scaled)).clip(0, 65534)).astype("<u2")
    return base64.b64encode(q.tobytes()).decode("ascii")


@dataclass
class SeriesDrawing:
    path: str
    bins: int
    step_lo: float
    step_hi: float
    value_lo: float
    value_hi: float
    source_points: int
    destination_points: int
    source_nonfinite: int
    destination_nonfinite: int
    source: str          # base64 of little-endian uint16 [min..., max..., mean...], "" when no point
    destination: str
    differs: bool = False

    def to_json(self) -> dict:
        return {"path": self.path, "bins": self.bins, "x": [self.step_lo, self.step_hi],
                "y": [self.value_lo, self.value_hi], "n": [self.source_points, self.destination_points],
                "nonfinite": [self.source_nonfinite, self.destination_nonfinite],
                "src": self.source, "dst": self.destination, "differs": self.differs}


def draw_series(path: str, source: tuple[np.ndarray, np.ndarray], destination: tuple[np.ndarray, np.ndarray],
                bins: int) -> SeriesDrawing:
    steps = np.concatenate([source[0], destination[0]])
    values = np.concatenate([source[1], destination[1]])
    finite = values[np.isfinite(values)]
    lo, hi = (float(steps.min()), float(steps.max())) if steps.size else (0.0, 0.0)
    vlo, vhi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    bins = bins if hi > lo else 1
    width = (hi - lo) / bins
    sides = []
    for steps_, values_ in (source, destination):
        sides.append(_quantised(_binned(steps_, values_, lo, width, bins), vlo, vhi) if values_.size else "")
    return SeriesDrawing(path, bins, lo, hi, vlo, vhi, int(source[1].size), int(destination[1].size),
                         int((~np.isfinite(source[1])).sum()), int((~np.isfinite(destination[1])).sum()),
                         sides[0], sides[1])


@dataclass
class RunDrawing:
    """One run as the report shows it."""

    project_id: str
    run_id: str
    name: str
    status: str = ""
    error: str | None = None
    series: list[SeriesDrawing] = field(default_factory=list)
    params: list[tuple[str, Any, Any, bool]] = field(default_factory=list)   # path, source, destination, differs
    files: list[tuple[str, Any, Any, bool]] = field(default_factory=list)    # label, source digest, destination digest, differs
    differences: list[str] = field(default_factory=list)


class Drawings:
    """Collects every run's drawing while `verify` runs (thread-safe: runs are compared in
    parallel).  `total_runs` (set by verify) sizes the bins per series."""

    def __init__(self) -> None:
        self.runs: list[RunDrawing] = []
        self.total_runs = 1
        self._lock = threading.Lock()

    def bins_for(self, series_in_run: int) -> int:
        share = BIN_BUDGET // max(1, self.total_runs * max(1, series_in_run))
        return max(MIN_BINS, min(MAX_BINS, share))

    def add_run(self, run: RunDrawing, source: SeriesTap, destination: SeriesTap, different: set[str]) -> None:
        paths = sorted(set(source.parts) | set(destination.parts))
        bins = self.bins_for(len(paths))
        for path in paths:
            drawing = draw_series(path, source.series(path), destination.series(path), bins)
            drawing.differs = path in different
            run.series.append(drawing)
        source.parts.clear()
        destination.parts.clear()
        with self._lock:
            self.runs.append(run)
