"""The reference: a raw MLflow client with no trackport code in its path.

    python benchmarks/raw_mlflow.py EXPORT TRACKING_URI --threads N

Reads a neptune-exporter export with pyarrow and moves what a hand-written
client would: one MLflow run per source run, its single values as params, every
float_series point with `log_batch` (1,000 metrics per call, MLflow's limit),
and the run's files (plus its string and histogram series as one JSON-lines
artifact each, as trackport keeps them) as artifacts.  All calls of all runs
are spread over one pool of N threads.  No checks, no resume, no manifest,
no step conversion beyond integer division.

Prints `{"points": .., "seconds": ..}`: time from the first run's creation to
the last call's answer.  Reading the export and building the `Metric` objects
are outside it, so `seconds` is a ceiling no client can beat; the benchmark
also times the whole process, which is the like-for-like figure.  For
`sqlite:///` URIs the store is used directly (`SqlAlchemyStore.log_batch`),
which is that path's ceiling.
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
PARAM_TYPES = ("string", "int", "float", "bool", "datetime")
FILE_TYPES = ("file", "file_series", "file_set")


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


def read_extras(export: Path, work: Path):
    """{run_id: (params [(key, text)], artifacts [(local path, artifact dir)])}."""
    extras: dict[str, tuple[list, list]] = {}
    for part in sorted((export / "data").glob("*/*_part_*.parquet")):
        table = pq.read_table(part)
        table = table.filter(pc.invert(pc.equal(table["attribute_type"], "float_series")))
        if not table.num_rows:
            continue
        run_id = table["run_id"][0].as_py()
        params, artifacts = extras.setdefault(run_id, ([], []))
        series: dict[str, list[str]] = {}
        files_root = export / "files" / part.parent.name
        for row in table.to_pylist():
            typ, path = row["attribute_type"], row["attribute_path"]
            if typ in PARAM_TYPES and row["step"] is None:
                value = row[f"{typ}_value"] if typ != "float" else row["float_value"]
                params.append((path, str(value)[:6000]))
            elif typ in FILE_TYPES and row["file_value"]:
                local = files_root / row["file_value"]["path"]
                artifacts.append((local, path.rsplit("/", 1)[0] if "/" in path else None))
            elif typ in ("string_series", "histogram_series"):
                value = row["string_value"] if typ == "string_series" else row["histogram_value"]
                series.setdefault(path, []).append(json.dumps([str(row["step"]), value], default=str))
        for path, lines in series.items():
            local = work / run_id / (path.replace("/", "_") + ".jsonl")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text("\n".join(lines))
            artifacts.append((local, "series"))
    return extras


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("export", type=Path)
    parser.add_argument("tracking_uri")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--experiment", default="raw-reference")
    args = parser.parse_args()

    import tempfile

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    runs = {run_id: [Metric(k, v, t, s) for k, v, t, s in points]
            for run_id, points in read_points(args.export).items()}
    work = Path(tempfile.mkdtemp(prefix="raw-mlflow-"))
    extras = read_extras(args.export, work)
    client = MlflowClient(args.tracking_uri)
    store = client._tracking_client.store  # the raw store: no per-call validation copies
    started = time.perf_counter()
    exp = client.get_experiment_by_name(args.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(args.experiment)
    with ThreadPoolExecutor(args.threads) as pool:
        futures = []
        for run_id in sorted(set(runs) | set(extras)):
            mlflow_run = client.create_run(exp_id, run_name=run_id).info.run_id
            params, artifacts = extras.get(run_id, ([], []))
            for i in range(0, len(params), 100):
                futures.append(pool.submit(store.log_batch, mlflow_run, [],
                                           [Param(k, v) for k, v in params[i:i + 100]], []))
            metrics = runs.get(run_id, [])
            futures.extend(pool.submit(store.log_batch, mlflow_run, metrics[i:i + BATCH], [], [])
                           for i in range(0, len(metrics), BATCH))
            futures.extend(pool.submit(client.log_artifact, mlflow_run, str(local), folder)
                           for local, folder in artifacts)
        for future in futures:
            future.result()
    seconds = time.perf_counter() - started
    print(json.dumps({"points": sum(len(p) for p in runs.values()), "seconds": seconds}))


if __name__ == "__main__":
    main()
