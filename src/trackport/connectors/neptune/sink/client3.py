"""The only module importing `neptune-scale` (3.x client), lazily, inside functions."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from trackport.core.errors import RunError

log = logging.getLogger(__name__)


def start_run(project: str, mode: str, run_id: str, log_directory: str, creation_ms: int | None,
              fork_run_id: str | None, fork_step: float | None, where: tuple[str, str]):
    from neptune_scale import Run

    kwargs: dict[str, Any] = dict(
        run_id=run_id, project=project, mode=mode, log_directory=log_directory,
        enable_console_log_capture=False, source_tracking_config=None, runtime_namespace=None,
    )
    if creation_ms is not None:
        kwargs["creation_time"] = as_datetime(creation_ms)
    if fork_run_id:
        kwargs["fork_run_id"] = fork_run_id
        kwargs["fork_step"] = fork_step
    try:
        return Run(**kwargs)
    except Exception as exc:
        raise RunError(f"{type(exc).__name__}: {exc}", project_id=where[0], run_id=where[1]) from None


def as_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def histogram(edges: list[float], values: list[float], counts: bool):
    from neptune_scale.types import Histogram

    if counts:
        return Histogram(bin_edges=edges, counts=[int(v) for v in values])
    return Histogram(bin_edges=edges, densities=values)


def quiet() -> None:
    logging.getLogger("neptune").setLevel(logging.ERROR)


def append_points(run, path: str, kind: str, micro_steps: list[int], ts_ms: list[int], values: list,
                  chunk: int = 20_000) -> None:
    """Append a whole series in few SQLite transactions.

    `Run.log_metrics` commits one SQLite transaction (synchronous=FULL) per
    call (neptune_scale/sync/operations_repository.py), ~4 ms each; a series
    of 100k points would take minutes.  Here the same UpdateRunSnapshot
    operations the SDK builds (neptune_scale/sync/metadata_splitter.py: one
    step, one timestamp, `append {key: value}`) are made with exact integer
    steps and ms timestamps and saved through the run's own operations
    repository in chunks, which `neptune sync` uploads like any other.
    """
    from google.protobuf.timestamp_pb2 import Timestamp
    from neptune_api.proto.neptune_pb.ingest.v1.common_pb2 import Step, UpdateRunSnapshot, Value

    repo = run._operations_repo  # no public multi-step API in neptune-scale 0.30
    ops = []
    for micro, ms, v in zip(micro_steps, ts_ms, values):
        whole, frac = divmod(int(micro), 1_000_000)
        value = Value(float64=v) if kind == "float" else Value(string=v)
        ops.append(UpdateRunSnapshot(
            step=Step(whole=whole, micro=frac),
            timestamp=Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000),
            append={path: value},
        ))
        if len(ops) >= chunk:
            repo.save_update_run_snapshots(ops)
            ops = []
    if ops:
        repo.save_update_run_snapshots(ops)
