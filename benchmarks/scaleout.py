"""The scale-out benchmark of docs/scale-out.md, in one invocation.

    python benchmarks/scaleout.py                   # 2,000 small runs + 10 runs of 1M points
    python benchmarks/scaleout.py --scale quick     # 1/20 of the runs, 1/20 of the long runs' points
    python benchmarks/scaleout.py --nodes 1,2,3

One export (small runs and long runs, benchmarks/workloads.py) is written to an S3 bucket on
moto's S3 server (127.0.0.1), then copied `parquet:s3://... -> mlflow+http://...` (a real
MLflow server here) with the local executor and `--workers N`, and with `--executor ray` on a
Ray cluster of N one-CPU nodes on this machine, for each N of --nodes.  Each copy is a whole
`trackport` process, timed from start to exit; a fresh experiment each.  Reported: float
points per second, the Ray/local ratio at equal N, the rate per node, and the peak RSS of the
driver and of the busiest Ray worker (memory per worker stays flat as N grows).  Results go to
benchmarks/scaleout.json and replace the generated part of docs/scale-out.md.

All processes run on this one machine: with N above its cores, nodes share CPUs, and the
MLflow server (its workers and its SQLite store) shares them too; the table says what this
machine measured, docs/scale-out.md says how to read it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from bench import checked, machine, run_child, trackport, write_markdown  # noqa: E402
from workloads import Workload, write_workload  # noqa: E402

BEGIN, END = "<!-- scaleout:begin -->", "<!-- scaleout:end -->"
SMALL_PROJECT, LONG_PROJECT = "scale/small", "scale/long"
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def shapes(scale: str) -> tuple[Workload, Workload]:
    """(the small runs, the long runs) of issue 24: 2,000 x 30 points and 10 x 1M points."""
    divide = {"full": 1, "quick": 20, "smoke": 400}[scale]
    return (Workload("small", runs=max(4, 2_000 // divide), metrics=5, steps=6, extras=False),
            Workload("long", runs=max(2, 10 // max(1, divide // 20)), metrics=1,
                     steps=max(5_000, 1_000_000 // divide), extras=False))


def ray_worker_peak_mb() -> float:
    """The largest peak RSS (VmHWM) of this machine's live Ray worker processes (the workers
    that ran tasks stay alive, idle, until the cluster stops)."""
    peak = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            # a Ray worker names itself after what it runs (setproctitle): ray::_move_batch,
            # ray::IDLE, ray::_Coordinator
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return round(peak / 1024, 1)


def start_cluster(nodes: int):
    from mlflow_server import _free_port
    from ray.cluster_utils import Cluster

    def node_args() -> dict:
        return {"node_ip_address": "127.0.0.1", "num_cpus": 1, "metrics_agent_port": _free_port(),
                "dashboard_agent_listen_port": _free_port(), "runtime_env_agent_port": _free_port()}

    cluster = Cluster(initialize_head=True, head_node_args={**node_args(), "gcs_server_port": _free_port(),
                                                             "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node_args())
    cluster.wait_for_nodes()
    return cluster


def copy(source: str, server: str, experiment: str, *extra: str) -> tuple[float, float, dict]:
    child = run_child(trackport("copy", source, f"mlflow+{server}", "--mlflow-experiment", experiment,
                                "--state-dir", tempfile.mkdtemp(prefix="scaleout-state-"), *extra))
    report = checked(child, f"copy ({' '.join(extra)})")
    totals = report["totals"]
    if totals.get("failed") or totals.get("moved", 0) != totals["runs"]:
        raise SystemExit(f"copy ({' '.join(extra)}) did not move every run: {totals}")
    return child.seconds, child.peak_rss_mb, totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=("full", "quick", "smoke"), default="full")
    parser.add_argument("--nodes", default="1,2,3", help="cluster sizes (one-CPU nodes) and local --workers")
    parser.add_argument("--out", type=Path, default=HERE / "scaleout.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "scale-out.md")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed after)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.nodes.split(",") if n.strip()]

    from mlflow_server import start_mlflow_server, stop_mlflow_server
    from s3_server import FOREIGN_AWS, aws_env, start_s3

    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # moto's server: no line per request
    work = args.work or Path(tempfile.mkdtemp(prefix="trackport-scaleout-"))
    work.mkdir(parents=True, exist_ok=True)
    s3, endpoint = start_s3()
    for name in FOREIGN_AWS:
        os.environ.pop(name, None)
    os.environ.update({**aws_env(endpoint), **RAY_ENV, "MLFLOW_DISABLE_TELEMETRY": "true"})
    server_proc = None
    try:
        small, long = shapes(args.scale)
        local = work / "export"
        write_workload(local, small, project=SMALL_PROJECT)
        write_workload(local, long, seed=7, project=LONG_PROJECT)
        points = small.metric_points + long.metric_points
        import s3fs

        bucket = f"scaleout-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
        on_s3 = f"parquet:s3://{bucket}/export"
        exported = run_child(trackport("export", str(local), on_s3, "--state-dir", str(work / "state")))
        checked(exported, "export to S3")
        server_proc, server = start_mlflow_server(work / "mlflow", workers=4)
        rows = []
        for n in sizes:
            seconds, rss, _ = copy(on_s3, server, f"local-{n}-{uuid.uuid4().hex[:6]}", "--workers", str(n))
            cluster = start_cluster(n)
            try:
                ray_seconds, ray_rss, _ = copy(on_s3, server, f"ray-{n}-{uuid.uuid4().hex[:6]}",
                                               "--executor", "ray", "--ray-address", cluster.address,
                                               "--workers", "1")
                worker_mb = ray_worker_peak_mb()
            finally:
                cluster.shutdown()
            rows.append({"nodes": n, "local_s": round(seconds, 2), "local_rate": round(points / seconds),
                         "local_rss_mb": round(rss, 1), "ray_s": round(ray_seconds, 2), "ray_rate": round(points / ray_seconds),
                         "ray_driver_rss_mb": round(ray_rss, 1), "ray_worker_rss_mb": worker_mb,
                         "ratio": round(seconds / ray_seconds, 2), "ray_rate_per_node": round(points / ray_seconds / n)})
            print(json.dumps(rows[-1]), flush=True)
        result = {"date": date.today().isoformat(), "scale": args.scale, "machine": machine(),
                  "small": small.describe(), "long": long.describe(), "points": points,
                  "export_to_s3_s": round(exported.seconds, 2), "rows": rows}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(args.markdown, markdown(result), BEGIN, END)
    finally:
        if server_proc is not None:
            stop_mlflow_server(server_proc)
        s3.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Generated by `python benchmarks/scaleout.py --scale {result['scale']}` on {result['date']}: "
        f"{m['platform']}, {m['cpus']} CPUs, Python {m['python']}.  Workload: {result['small']} "
        f"plus {result['long']} ({result['points']:,} float points), exported to moto's S3 server in "
        f"{result['export_to_s3_s']} s, then copied `parquet:s3://... -> mlflow+http://...` (an MLflow "
        f"server with 4 workers on this machine).  Rates are float points per second over the whole "
        f"process; N is the local `--workers` and the Ray cluster's one-CPU nodes (`--workers 1` per task).",
        "",
        "| N | local s | local /s | Ray s | Ray /s | Ray / local | Ray /s per node | driver RSS MB | Ray worker RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['nodes']} | {r['local_s']} | {r['local_rate']:,} | {r['ray_s']} | {r['ray_rate']:,} | "
                     f"{r['ratio']:.2f} | {r['ray_rate_per_node']:,} | {r['ray_driver_rss_mb']} | "
                     f"{r['ray_worker_rss_mb']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
