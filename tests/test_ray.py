"""`--executor ray` on a real 3-node Ray cluster on this machine (docs/scale-out.md).

The cluster (`ray.cluster_utils.Cluster`: a head and two worker nodes of one CPU each, every
process on 127.0.0.1) is started once for the module.  The command runs as its own process,
the Ray driver, connected with --ray-address, and copies a parquet export (on disk, and on
moto's S3 server on 127.0.0.1) into a real MLflow server; the destination is then counted run by run and point by point, and `verify`d.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_concurrency import _check_mlflow, _runs, _verify_clean
from mlflow_server import _free_port
from s3_server import FOREIGN_AWS, aws_env, start_s3
from support import run_cli
from trackport.core.model import RunRef
from trackport.core.ray_executor import plan_batches
from trackport.testing.exporter_layout import write_exporter_export

SRC_PATH = str(Path(__file__).resolve().parents[1] / "src")
COMMAND_TIMEOUT_S = 600


# For the cluster's processes and the driver's: no calls to outside hosts, and every address
# the loopback one (Ray otherwise turns 127.0.0.1 into the machine's address when connecting;
# ray/_private/services.py, get_node_ip_address).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _node_args() -> dict:
    """One CPU, on 127.0.0.1, with ports of its own: the two CI legs each run a cluster at the
    same time, and a node's agents given their ports do not make its raylet wait for a port
    file (which times out on a loaded machine)."""
    return {"node_ip_address": "127.0.0.1", "num_cpus": 1, "metrics_agent_port": _free_port(),
            "dashboard_agent_listen_port": _free_port(), "runtime_env_agent_port": _free_port()}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server; started before the cluster, whose processes take the AWS settings
    from the environment they start in (as a real cluster's nodes have their own)."""
    server, endpoint = start_s3()
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    from ray.cluster_utils import Cluster

    env = {**RAY_ENV, **aws_env(s3_endpoint)}
    saved = {k: os.environ.get(k) for k in (*env, *FOREIGN_AWS)}
    for name in FOREIGN_AWS:
        os.environ.pop(name, None)
    os.environ.update(env)
    cluster = None
    try:
        for attempt in range(3):
            # Ray gives a node 30 s to register (ray/_private/node.py, hard-coded); a machine
            # busy with the other CI leg can miss that: start the cluster again.
            try:
                cluster = Cluster(initialize_head=True, head_node_args={
                    **_node_args(), "gcs_server_port": _free_port(), "include_dashboard": False})
                workers = [cluster.add_node(**_node_args()) for _ in range(2)]
                cluster.wait_for_nodes()
                break
            except Exception:
                if cluster is not None:
                    cluster.shutdown()
                    cluster = None
                if attempt == 2:
                    raise
        yield cluster, workers
    finally:
        if cluster is not None:
            cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """12 runs of 2 series x 3,000 points: enough work that tasks are running on every node."""
    root = tmp_path_factory.mktemp("ray-src") / "export"
    runs = _runs(12, 3_000)
    write_exporter_export(root, runs)
    return root, runs


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": SRC_PATH + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "trackport", *args, "--json", "--no-progress"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    assert out.strip().startswith("{"), f"stdout holds more than the report:\n{out[:3000]}\nstderr:\n{err[-3000:]}"
    return proc.returncode, json.loads(out), err


def _experiment_runs(tracking_uri: str, experiment: str) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return 0 if exp is None else len(client.search_runs([exp.experiment_id], max_results=1000))


def test_a_ray_copy_into_a_server_is_exact(cluster, source, tmp_path, mlflow_server):
    ray_cluster, _ = cluster
    src, runs = source
    exp = f"ray-{tmp_path.name}"
    proc = _start(tmp_path, "copy", str(src), f"mlflow+{mlflow_server}", "--mlflow-experiment", exp,
                  "--executor", "ray", "--ray-address", ray_cluster.address, "--workers", "2")
    code, report, err = _finish(proc)
    assert code == 0, err[-3000:]
    assert report["totals"]["moved"] == len(runs) and report["totals"].get("failed", 0) == 0, report["totals"]
    assert report["totals"]["points"] == sum(r.table.num_rows for r in runs) - 3 * len(runs)
    _check_mlflow(mlflow_server, exp, runs)
    _verify_clean(src, f"mlflow+{mlflow_server}", "--mlflow-experiment", exp)
    # the ledger is the driver's, one row per run
    import sqlite3

    with sqlite3.connect(tmp_path / ".trackport" / "ledger.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == len(runs)
    # the same command again moves nothing
    code, report, err = _finish(_start(tmp_path, "copy", str(src), f"mlflow+{mlflow_server}", "--mlflow-experiment",
                                       exp, "--executor", "ray", "--ray-address", ray_cluster.address))
    assert code == 0 and report["totals"]["skipped"] == len(runs), err[-3000:]


def test_a_node_removed_mid_copy_from_s3_leaves_every_run_exactly_once(cluster, source, tmp_path, mlflow_server):
    """issue 24's "done when": parquet:s3://... -> an MLflow server on 3 nodes, one removed."""
    import s3fs

    ray_cluster, workers = cluster
    src, runs = source
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket := f"ray-{os.getpid()}-{time.monotonic_ns()}")
    on_s3 = f"parquet:s3://{bucket}/export"
    code, report, out = run_cli("export", str(src), on_s3)
    assert code == 0 and report["totals"]["moved"] == len(runs), out
    exp = f"ray-node-{tmp_path.name}"
    proc = _start(tmp_path, "copy", on_s3, f"mlflow+{mlflow_server}", "--mlflow-experiment", exp,
                  "--executor", "ray", "--ray-address", ray_cluster.address, "--workers", "2")
    deadline = time.monotonic() + 300
    while _experiment_runs(mlflow_server, exp) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the copy ended before a node could be removed: give it more work"
    ray_cluster.remove_node(workers[0], allow_graceful=False)   # as a node that dies
    code, report, err = _finish(proc)
    assert code == 0, err[-3000:]
    assert report["totals"].get("failed", 0) == 0 and report["totals"]["runs"] == len(runs), report["totals"]
    _check_mlflow(mlflow_server, exp, runs)
    _verify_clean(on_s3, f"mlflow+{mlflow_server}", "--mlflow-experiment", exp)


def test_batches_balance_by_weight():
    refs = [RunRef("p", f"r{i}") for i in range(10)]
    weights = [1_000, 10, 10, 10, 10, 10, 10, 10, 10, 10]
    batches = plan_batches(refs, weights, tasks=4)
    assert batches[0] == [refs[0]]                     # the heavy run alone, first
    assert sorted(r.run_id for b in batches for r in b) == sorted(r.run_id for r in refs)
    assert all(sum(weights[refs.index(r)] for r in b) <= 1_000 // 4 for b in batches[1:])
    assert plan_batches([], [], 4) == []
