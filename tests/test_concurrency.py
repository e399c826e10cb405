"""Two (or four) identical commands at once against one destination end as one does.

Real processes (`python -m trackport`-equivalent, each importing trackport from this
checkout) are started together behind a barrier file, write one destination at the
same time, and must leave exactly one complete destination run per source run with
every point once, `verify` clean, every process exiting 0 (docs/reliability.md,
"Concurrent use").  Plus: duplicates are seen by verify and copy, and a SQLite store
whose creation was interrupted is cleaned up by the next command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import trackport
from support import run_cli
from trackport.connectors.parquet import layout
from trackport.testing.corpus import BASE_MS, CorpusRun, concat, increasing_ms, rows_table, series_table
from trackport.testing.exporter_layout import write_exporter_export

PROJECT = "conc/project"
SRC_PATH = str(Path(trackport.__file__).resolve().parents[1])   # the trackport under test
PROCESS_TIMEOUT_S = 300

# Imports done before the barrier, so the processes start writing together.
_CHILD = r"""
import os, sys, time
import trackport.cli
for name in sys.argv[2].split(","):
    if name:
        __import__(name)
go = sys.argv[1]
open(go + ".ready." + str(os.getpid()), "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
sys.argv = ["trackport"] + sys.argv[3:]
trackport.cli.main()
"""


def _runs(n_runs: int, points: int) -> list[CorpusRun]:
    rng = np.random.default_rng(15)
    runs = []
    for r in range(n_runs):
        run_id = f"RUN-{r}"
        tables = [rows_table(PROJECT, run_id, [
            {"path": "sys/name", "type": "string", "value": f"run {r}"},
            {"path": "config/lr", "type": "float", "value": 0.001 * (r + 1)},
            {"path": "config/layers", "type": "int", "value": r + 2},
        ])]
        for name in ("loss", "acc"):
            ts = increasing_ms(rng, BASE_MS + r * 3_600_000, points, 1, 20)
            tables.append(series_table(PROJECT, run_id, f"train/{name}", "float_series",
                                       rng.standard_normal(points), None, ts))
        runs.append(CorpusRun(PROJECT, run_id, concat(tables), {}, "conc"))
    return runs


@pytest.fixture(scope="module")
def small_source(tmp_path_factory) -> tuple[Path, list[CorpusRun]]:
    """4 runs, 2 series x 400 points each: many requests per run, little time."""
    root = tmp_path_factory.mktemp("conc-src") / "export"
    runs = _runs(4, 400)
    write_exporter_export(root, runs)
    return root, runs


@pytest.fixture(scope="module")
def export_source(tmp_path_factory) -> tuple[Path, list[CorpusRun]]:
    """4 runs of 15,000 rows (60,000 in all, as issue 15 measured), several parts each."""
    root = tmp_path_factory.mktemp("conc-export-src") / "export"
    runs = _runs(4, 7_500)
    write_exporter_export(root, runs, part_rows=4_000)
    return root, runs


def _race(tmp: Path, commands: list[list[str]], preload: tuple[str, ...] = (),
          env_per_process: list[dict] | None = None) -> list[tuple[int, str]]:
    """Start every command as its own process, release them at once; (exit code, stderr) each."""
    go = tmp / f"go-{time.monotonic_ns()}"
    procs = []
    for i, args in enumerate(commands):
        env = {**os.environ, "PYTHONPATH": SRC_PATH + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if env_per_process:
            env.update(env_per_process[i])
        err = open(tmp / f"stderr-{go.name}-{i}.txt", "w+")
        procs.append((subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(go), ",".join(preload), *args, "--no-progress"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err), err))
    deadline = time.monotonic() + 120
    while len(list(tmp.glob(f"{go.name}.ready.*"))) < len(procs) and time.monotonic() < deadline:
        if any(p.poll() is not None for p, _ in procs):
            break
        time.sleep(0.01)
    go.touch()   # every process has imported what it preloads: they start together
    out = []
    for proc, err in procs:
        try:
            code = proc.wait(timeout=PROCESS_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        err.seek(0)
        out.append((code, err.read()))
        err.close()
    return out


def _all_ok(results: list[tuple[int, str]]) -> None:
    for i, (code, err) in enumerate(results):
        assert code == 0, f"process {i} exited {code}:\n{err[-3000:]}"


def _mlflow_census(tracking_uri: str, experiment: str) -> dict[str, list[tuple[str, bool, dict]]]:
    """Every active MLflow run of the experiment by origin run id: (id, complete, points per key)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        tags = run.data.tags
        points = {k: len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}
        out.setdefault(tags.get("trackport.origin.run_id"), []).append(
            (run.info.run_id, tags.get("trackport.complete") == "true", points))
    return out


def _check_mlflow(tracking_uri: str, experiment: str, runs: list[CorpusRun]) -> None:
    census = _mlflow_census(tracking_uri, experiment)
    assert sorted(census) == sorted(r.run_id for r in runs)
    for run in runs:
        found = census[run.run_id]
        assert len(found) == 1, f"{run.run_id}: {len(found)} MLflow runs: {found}"
        _, complete, points = found[0]
        assert complete
        expected = Counter(run.table.filter(
            np.asarray(run.table.column("attribute_type").to_pylist()) == "float_series"
        ).column("attribute_path").to_pylist())
        assert points == dict(expected), run.run_id


def _verify_clean(source: Path, dest: str, *extra: str) -> None:
    code, report, out = run_cli("verify", str(source), dest, *extra)
    assert code == 0, out
    assert report["totals"]["verified"] == report["totals"]["runs"]


# -- item 1: N identical copies at once -----------------------------------------------------------

TRIALS = [pytest.param(2, 0, id="2procs-a"), pytest.param(2, 1, id="2procs-b"), pytest.param(4, 2, id="4procs")]
MLFLOW_PRELOAD = ("trackport.connectors.mlflow.client", "trackport.connectors.parquet.source")


@pytest.mark.parametrize("n, trial", TRIALS)
def test_concurrent_copies_into_sqlite(small_source, tmp_path, n, trial):
    src, runs = small_source
    db = tmp_path / "m.db"
    dest = f"mlflow:sqlite:///{db}"
    exp = f"conc-{trial}"
    cmd = ["copy", str(src), dest, "--mlflow-experiment", exp, "--workers", "2"]
    _all_ok(_race(tmp_path, [cmd] * n, MLFLOW_PRELOAD))
    _check_mlflow(f"sqlite:///{db}", exp, runs)
    _verify_clean(src, dest, "--mlflow-experiment", exp)


@pytest.mark.parametrize("n, trial", TRIALS)
def test_concurrent_copies_into_a_server(small_source, tmp_path, mlflow_server, n, trial):
    src, runs = small_source
    exp = f"conc-server-{tmp_path.name}"
    cmd = ["copy", str(src), f"mlflow+{mlflow_server}", "--mlflow-experiment", exp, "--workers", "2"]
    _all_ok(_race(tmp_path, [cmd] * n, MLFLOW_PRELOAD))
    _check_mlflow(mlflow_server, exp, runs)
    _verify_clean(src, f"mlflow+{mlflow_server}", "--mlflow-experiment", exp)


@pytest.mark.parametrize("n", [2, 4])
def test_concurrent_copies_into_a_server_from_other_machines(small_source, tmp_path, mlflow_server, n):
    """Processes that share no lock folder (as on two machines: each its own TMPDIR) rely on
    the MLflow sink's claim: the loser deletes its run and goes on with the winner's."""
    src, runs = small_source
    exp = f"conc-hosts-{tmp_path.name}"
    cmd = ["copy", str(src), f"mlflow+{mlflow_server}", "--mlflow-experiment", exp, "--workers", "2"]
    envs = []
    for i in range(n):
        own = tmp_path / f"host{i}"
        own.mkdir()
        envs.append({"TMPDIR": str(own)})
    _all_ok(_race(tmp_path, [[*cmd, "--state-dir", str(tmp_path / f"state{i}")] for i in range(n)],
                  MLFLOW_PRELOAD, envs))
    _check_mlflow(mlflow_server, exp, runs)
    _verify_clean(src, f"mlflow+{mlflow_server}", "--mlflow-experiment", exp)


@pytest.mark.parametrize("n, trial", TRIALS)
def test_concurrent_copies_into_tensorboard(small_source, tmp_path, n, trial):
    src, runs = small_source
    logdir = tmp_path / "tb"
    cmd = ["copy", str(src), f"tensorboard:{logdir}", "--workers", "2"]
    _all_ok(_race(tmp_path, [cmd] * n, ("trackport.connectors.tensorboard.sink",)))
    run_dirs = [p for p in logdir.rglob("*") if p.is_dir() and any(p.glob("events.out.tfevents.*"))]
    assert len(run_dirs) == len(runs)
    for d in run_dirs:
        assert len(list(d.glob("events.out.tfevents.*"))) == 1, d
    _verify_clean(src, f"tensorboard:{logdir}")


# -- item 4: N exports into one folder --------------------------------------------------------------

def _check_export(out: Path, runs: list[CorpusRun]) -> None:
    assert not [p for p in out.rglob("*.tmp")], "temporary files left in the export"
    for run in runs:
        manifest_path = layout.run_manifest_path(out, run.project_id, run.run_id)
        manifest = layout.read_json(manifest_path)
        stem = layout.safe(run.run_id)
        on_disk = sorted(p.name for p in manifest_path.parent.glob(f"{stem}_part_*"))
        assert sorted(manifest["parts"]) == on_disk, run.run_id
        rows = sum(pq.ParquetFile(manifest_path.parent / p).metadata.num_rows for p in on_disk)
        assert rows == manifest["rows"] == run.num_rows, run.run_id


@pytest.mark.parametrize("n, trial", TRIALS)
def test_concurrent_exports_into_one_folder(export_source, tmp_path, n, trial):
    src, runs = export_source
    out = tmp_path / "out"
    cmd = ["export", str(src), str(out), "--workers", "2", "--part-size", "65536"]
    _all_ok(_race(tmp_path, [cmd] * n, ("trackport.connectors.parquet.sink",)))
    _check_export(out, runs)
    _verify_clean(src, f"parquet:{out}")


# -- item 2: duplicates are a difference ---------------------------------------------------------------

def test_verify_and_copy_see_a_restored_duplicate(small_source, tmp_path):
    """Copy, delete the MLflow run, copy again (a new run), restore the first: two active
    runs of one origin.  verify lists both and exits 1; copy refuses to call that success."""
    from mlflow.tracking import MlflowClient

    src, runs = small_source
    db = tmp_path / "m.db"
    dest = f"mlflow:sqlite:///{db}"
    args = ["--mlflow-experiment", "dup", "--run", "^RUN-0$"]
    code, report, out = run_cli("copy", str(src), dest, *args)
    assert code == 0, out
    first = report["runs"][0]["dest_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    client.delete_run(first)
    code, report, out = run_cli("copy", str(src), dest, *args)
    assert code == 0, out
    second = report["runs"][0]["dest_id"]
    assert second != first
    client.restore_run(first)

    code, report, out = run_cli("verify", str(src), dest, *args)
    assert code == 1, out
    (run,) = report["runs"]
    assert run["status"] == "different"
    assert sorted(run["details"]["duplicates"]) == sorted([first, second])
    assert first in run["error"] and second in run["error"]

    code, report, out = run_cli("copy", str(src), dest, *args)
    assert code == 1, out
    (run,) = report["runs"]
    assert run["status"] == "failed"
    assert first in run["error"] and second in run["error"]

    client.delete_run(second)   # the fix the message gives: keep one
    code, report, out = run_cli("verify", str(src), dest, *args)
    assert code == 0, out


# -- item 18: an interrupted store creation leaves nothing behind -----------------------------------

def test_interrupted_sqlite_creation_is_cleaned_by_the_next_command(small_source, tmp_path):
    src, _ = small_source
    leftovers: list[str] = []
    for attempt in range(30):      # the window is milliseconds wide; a busy machine may need many tries
        db = tmp_path / f"m{attempt}.db"
        proc = subprocess.Popen(
            [sys.executable, "-m", "trackport", "copy", str(src), f"mlflow:sqlite:///{db}", "--no-progress"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": SRC_PATH}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(db.parent.glob(f".{db.name}.*.creating-journal")):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        proc.wait()
        leftovers = sorted(p.name for p in db.parent.glob(f".{db.name}.*.creating*"))
        if leftovers and not db.exists():
            break
    assert leftovers, "could not interrupt a store creation in 30 attempts"
    assert any(name.endswith("-journal") for name in leftovers)
    code, _, out = run_cli("copy", str(src), f"mlflow:sqlite:///{db}")
    assert code == 0, out
    assert sorted(p.name for p in db.parent.glob(f".{db.name}.*.creating*")) == []
    assert not list(db.parent.glob(f"{db.name}-journal"))
    _verify_clean(src, f"mlflow:sqlite:///{db}")


def test_a_claim_says_whether_another_process_wrote_the_run_since_this_one_started(tmp_path):
    """What lets a sink trust what it learnt at the start (and skip a search before creating
    a run): the lock file records its last holder and whether it let go; only a holder that let
    go after `since`, or one that died holding the claim, makes the run 'written meanwhile'."""
    from trackport.core.claims import OriginClaims
    from trackport.core.model import Origin

    claims = OriginClaims(tmp_path / "locks")
    origin = Origin("parquet:/x", "p", "R-1")
    started = time.time()
    with claims.hold(origin, "run R-1", started) as meanwhile:
        assert meanwhile is False                         # nobody held it before
    assert claims.path(origin).read_text() == f"pid {os.getpid()} released"
    with claims.hold(origin, "run R-1", started) as meanwhile:
        assert meanwhile is False                         # this process itself

    def another(record: str, age_s: float) -> None:
        claims.path(origin).write_text(record)
        os.utime(claims.path(origin), (time.time() - age_s,) * 2)

    another("pid 1 released", age_s=3600)                  # let go long before this process started
    with claims.hold(origin, "run R-1", started) as meanwhile:
        assert meanwhile is False
    another("pid 1 released", age_s=0)                     # let go after this process started
    with claims.hold(origin, "run R-1", started) as meanwhile:
        assert meanwhile is True
    another("pid 1", age_s=3600)                           # died holding it, however long ago
    with claims.hold(origin, "run R-1", started) as meanwhile:
        assert meanwhile is True
