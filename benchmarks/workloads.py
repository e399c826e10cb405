"""Synthetic exports for the benchmarks, in neptune-exporter's layout.

Each workload is written part by part with `pyarrow.parquet.ParquetWriter`, so
even the 10M-point run never exists in memory at once.  Values come from a
seeded generator: the same workload is byte-identical between invocations.

Proportions follow what real exports hold: mostly float series, a few string
series (console lines), some histograms and a handful of files per run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trackport.core.layout import safe
from trackport.core.schema import SCHEMA
from trackport.testing.corpus import BASE_MS, png_bytes, rows_table, series_table

PROJECT = "bench/synthetic"
CHUNK_POINTS = 500_000     # rows per generated batch
PART_ROWS = 2_000_000      # rows per part file, as neptune-exporter rolls parts over


@dataclass(frozen=True)
class Workload:
    name: str
    runs: int
    metrics: int
    steps: int
    extras: bool = True     # string series, histograms and files per run

    @property
    def metric_points(self) -> int:
        return self.runs * self.metrics * self.steps

    def describe(self) -> str:
        return f"{self.runs:,} run(s) x {self.metrics:,} metric(s) x {self.steps:,} steps"


def workloads(scale: str) -> list[Workload]:
    """The cases of issue 6, at full size or divided for a quick look."""
    full = [
        Workload("standard", runs=10, metrics=20, steps=600),          # 120k points, the reference size
        Workload("wide", runs=1, metrics=1_000, steps=120),
        Workload("many-runs", runs=2_000, metrics=5, steps=6, extras=False),
        Workload("long-1M", runs=1, metrics=1, steps=1_000_000, extras=False),
        Workload("long-10M", runs=1, metrics=1, steps=10_000_000, extras=False),
        # Small real migrations, where fixed per-command and per-run costs weigh most (issue 22:
        # a 60,000-point export of 4 runs; the same points over 200 runs).
        Workload("small-4", runs=4, metrics=5, steps=3_000),
        Workload("small-200", runs=200, metrics=5, steps=60),
    ]
    if scale == "full":
        return full
    divide = {"quick": 20, "smoke": 1000}[scale]
    return [
        Workload(w.name, max(1, w.runs // (divide if w.runs > 100 else 1)), w.metrics,
                 max(5, w.steps // divide), w.extras)
        for w in full
    ]


def write_workload(root: Path, workload: Workload, seed: int = 6, project: str = PROJECT) -> int:
    """Write the workload's export under `root` (as `project`); return its number of rows."""
    rng = np.random.default_rng(seed)
    files_root = root / "files" / safe(project)
    data_root = root / "data" / safe(project)
    data_root.mkdir(parents=True, exist_ok=True)
    rows = 0
    for r in range(workload.runs):
        run_id = f"RUN-{r + 1}"
        writer = _PartWriter(data_root, run_id)
        for table in _run_tables(rng, workload, run_id, files_root, project):
            writer.write(table)
            rows += table.num_rows
        writer.close()
    return rows


def _run_tables(rng, workload: Workload, run_id: str, files_root: Path, project: str = PROJECT):
    created = BASE_MS + rng.integers(0, 10**9)
    yield rows_table(project, run_id, [
        {"path": "sys/name", "type": "string", "value": f"bench {run_id}"},
        {"path": "sys/creation_time", "type": "datetime", "value": int(created)},
        {"path": "config/lr", "type": "float", "value": 0.001},
        {"path": "config/batch_size", "type": "int", "value": 256},
        {"path": "config/optimizer", "type": "string", "value": "adamw"},
    ])
    for m in range(workload.metrics):
        path = f"train/metric_{m:04d}"
        for start in range(0, workload.steps, CHUNK_POINTS):
            n = min(CHUNK_POINTS, workload.steps - start)
            steps = np.arange(start, start + n, dtype=np.int64)
            values = rng.standard_normal(n).cumsum() * 0.01 + 1.0
            stamps = created + steps * 37
            yield series_table(project, run_id, path, "float_series", values,
                               steps_micro=steps * 1_000_000, timestamps_ms=stamps)
    if not workload.extras:
        return
    lines = max(1, workload.steps // 10)
    yield series_table(project, run_id, "monitoring/stdout", "string_series",
                       [f"step {i}: loss ok, throughput {i * 3} samples/s" for i in range(lines)],
                       timestamps_ms=created + np.arange(lines, dtype=np.int64) * 370)
    hist_steps = max(1, workload.steps // 100)
    hists = [{"type": "COUNTING", "edges": [float(e) for e in np.linspace(-1, 1, 33)],
              "values": [float(v) for v in rng.integers(0, 100, 32)]} for _ in range(hist_steps)]
    yield series_table(project, run_id, "train/weights", "histogram_series", hists,
                       timestamps_ms=created + np.arange(hist_steps, dtype=np.int64) * 3700)
    file_rows = []
    for i in range(3):
        rel = f"{project}/{run_id}/images/sample/{i}.png"
        target = files_root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png_bytes(i, size=32))
        file_rows.append({"path": "images/sample", "type": "file_series", "value": rel, "step": i})
    rel = f"{project}/{run_id}/model/config.json"
    (files_root / rel).parent.mkdir(parents=True, exist_ok=True)
    (files_root / rel).write_text(json.dumps({"layers": 12, "hidden": 768}))
    file_rows.append({"path": "model/config", "type": "file", "value": rel})
    yield rows_table(project, run_id, file_rows)


class _PartWriter:
    """neptune-exporter's part roll-over: `.tmp` parts renamed at the end, part_0 last."""

    def __init__(self, folder: Path, run_id: str):
        self.folder = folder
        self.stem = safe(run_id)
        self.part = 0
        self.rows_in_part = 0
        self.writer: pq.ParquetWriter | None = None
        self.written: list[Path] = []

    def _path(self, part: int) -> Path:
        return self.folder / f"{self.stem}_part_{part}.parquet"

    def write(self, table: pa.Table) -> None:
        table = table.cast(SCHEMA)
        while table.num_rows:
            if self.writer is None:
                tmp = self._path(self.part).with_suffix(".parquet.tmp")
                self.writer = pq.ParquetWriter(tmp, SCHEMA, compression="snappy")
                self.written.append(tmp)
            room = PART_ROWS - self.rows_in_part
            head, table = table.slice(0, room), table.slice(room)
            self.writer.write_table(head)
            self.rows_in_part += head.num_rows
            if self.rows_in_part >= PART_ROWS:
                self.writer.close()
                self.writer = None
                self.part += 1
                self.rows_in_part = 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for tmp in reversed(self.written):
            tmp.rename(tmp.with_suffix(""))
