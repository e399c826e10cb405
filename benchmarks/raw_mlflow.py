"""The reference: a raw MLflow `log_batch` client with no trackport code in its path.

    python benchmarks/raw_mlflow.py EXPORT TRACKING_URI --threads N

Reads every float_series point of a neptune-exporter export with pyarrow,
creates one MLflow run per source run and sends the points with
`log_batch` (1,000 metrics per call, MLflow's limit) from N threads, the
calls of all runs spread over one pool.  Prints `{"points": .., "seconds": ..}`.
Time counts from the first run's creation to the last call's answer; reading
the export and building the `Metric` objects are outside it, so this is a
ceiling no client can beat.  For `sqlite:///` URIs the store is used directly
(`SqlAlchemyStore.log_batch`), which is that path's ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

BATCH = 1_000


def read_points(export: Path):
    """{run_id: [(key, value, ts_ms, step)]} for every float_series row."""
    runs: dict[str, list] = {}
    for part in sorted((export / "data").glob("*/*_part_*.parquet")):
        table = pq.read_table(part, columns=["run_id", "attribute_path", "attribute_type", "step",
                                             "timestamp", "float_value"])
        table = table.filter(pc.equal(table["attribute_type"], "float_series"))
        if not table.num_rows:
            continue
        run_id = table["run_id"][0].as_py()
        steps = pc.cast(pc.divide(table["step"], 1), "int64").to_numpy(zero_copy_only=False)
        stamps = table["timestamp"].cast("int64").to_numpy(zero_copy_only=False)
        runs.setdefault(run_id, []).extend(zip(
            table["attribute_path"].to_pylist(), table["float_value"].to_numpy(zero_copy_only=False).tolist(),
            stamps.tolist(), steps.tolist()))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("export", type=Path)
    parser.add_argument("tracking_uri")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--experiment", default="raw-reference")
    args = parser.parse_args()

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    runs = {run_id: [Metric(k, v, t, s) for k, v, t, s in points]
            for run_id, points in read_points(args.export).items()}
    client = MlflowClient(args.tracking_uri)
    store = client._tracking_client.store  # the raw store: no per-call validation copies
    started = time.perf_counter()
    exp = client.get_experiment_by_name(args.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(args.experiment)
    calls = []
    for run_id, metrics in runs.items():
        mlflow_run = client.create_run(exp_id, run_name=run_id).info.run_id
        calls.extend((mlflow_run, metrics[i:i + BATCH]) for i in range(0, len(metrics), BATCH))
    with ThreadPoolExecutor(args.threads) as pool:
        for future in [pool.submit(store.log_batch, run, batch, [], []) for run, batch in calls]:
            future.result()
    seconds = time.perf_counter() - started
    print(json.dumps({"points": sum(len(p) for p in runs.values()), "seconds": seconds}))


if __name__ == "__main__":
    main()
