"""End to end against a real MLflow server: the issue's "done when", run for real.

A neptune-exporter export is copied into a local `mlflow server` with every
point, step and timestamp; a rerun adds nothing; a load killed with SIGKILL
in the middle of a run heals on rerun; `trackport verify` proves each state.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from support import run_cli, runs_by_id
from trackport.testing.corpus import CORPUS_PROJECT, build_corpus, corpus_run_id
from trackport.testing.exporter_layout import write_exporter_export

REPO = Path(__file__).resolve().parent.parent


def _client(server: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server)


def _runs_of(server: str, experiment: str):
    client = _client(server)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_copy_moves_every_point_and_a_rerun_adds_nothing(tmp_path, mlflow_server):
    corpus = build_corpus(big=False)
    src = tmp_path / "export"
    write_exporter_export(src, corpus, part_rows=500)
    exp = f"{tmp_path.name}-{{project}}"
    dest = f"mlflow+{mlflow_server}"

    code, report, out = run_cli("copy", str(src), dest, "--mlflow-experiment", exp, "--workers", "3")
    assert code == 0, out
    experiment = exp.format(project=CORPUS_PROJECT)
    runs = _runs_of(mlflow_server, experiment)
    assert len(runs) == len(corpus)
    assert all(r.data.tags.get("trackport.complete") == "true" for r in runs)

    # every point of the series, exact steps and original timestamps
    big = next(r for r in runs if r.data.tags["trackport.origin.run_id"] == corpus_run_id("big_series"))
    history = _client(mlflow_server).get_metric_history(big.info.run_id, "metrics/big_series")
    source = next(r for r in corpus if r.case == "big_series").table
    series = source.filter(pc.equal(source.column("attribute_path"), "metrics/big_series"))
    want = sorted(zip((int(s) for s in series.column("step").to_pylist()),
                      (int(t.timestamp() * 1000) for t in series.column("timestamp").to_pylist()),
                      series.column("float_value").to_pylist()))
    got = sorted((m.step, m.timestamp, m.value) for m in history)
    assert got == want

    code, report, out = run_cli("verify", str(src), dest, "--mlflow-experiment", exp)
    assert code == 0, out

    points_before = sum(len(_client(mlflow_server).get_metric_history(big.info.run_id, k)) for k in big.data.metrics)
    code, report, out = run_cli("copy", str(src), dest, "--mlflow-experiment", exp)
    assert code == 0 and report["totals"]["skipped"] == len(corpus)
    assert len(_runs_of(mlflow_server, experiment)) == len(corpus)
    points_after = sum(len(_client(mlflow_server).get_metric_history(big.info.run_id, k)) for k in big.data.metrics)
    assert points_after == points_before


def test_state_lost_runs_are_found_through_the_destination(tmp_path, mlflow_server):
    corpus = build_corpus(big=False)[:3]
    src = tmp_path / "export"
    write_exporter_export(src, corpus)
    exp = f"{tmp_path.name}-{{project}}"
    dest = f"mlflow+{mlflow_server}"
    assert run_cli("copy", str(src), dest, "--mlflow-experiment", exp)[0] == 0
    shutil.rmtree(tmp_path / ".trackport")  # the local ledger is gone
    code, report, _ = run_cli("copy", str(src), dest, "--mlflow-experiment", exp, "--state-dir", str(tmp_path / "new-state"))
    assert code == 0 and report["totals"]["skipped"] == 3


def _wait_for_partial_run(server: str, experiment: str, timeout: float = 120.0):
    """Until the destination holds a started-but-incomplete run with some metrics."""
    client = _client(server)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            for run in client.search_runs([exp.experiment_id]):
                if run.data.tags.get("trackport.complete") != "true" and run.data.metrics:
                    return run
        time.sleep(0.05)
    raise AssertionError("the load never got half-way")


def test_a_killed_load_heals_on_rerun(tmp_path, mlflow_server):
    corpus = [r for r in build_corpus(big=True) if r.case in ("scalars", "big_series", "histograms", "files")]
    src = tmp_path / "export"
    write_exporter_export(src, corpus, part_rows=20_000)
    exp = f"{tmp_path.name}-{{project}}"
    experiment = exp.format(project=CORPUS_PROJECT)
    dest = f"mlflow+{mlflow_server}"
    cmd = [sys.executable, "-m", "trackport", "load", str(src), dest, "--mlflow-experiment", exp,
           "--no-progress", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        partial = _wait_for_partial_run(mlflow_server, experiment)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert partial.data.tags.get("trackport.complete") is None

    code, report, out = run_cli("load", str(src), dest, "--mlflow-experiment", exp)
    assert code == 0, out
    statuses = {r["status"] for r in report["runs"]}
    assert "repaired" in statuses
    runs = _runs_of(mlflow_server, experiment)
    origins = [r.data.tags["trackport.origin.run_id"] for r in runs]
    assert sorted(origins) == sorted(r.run_id for r in corpus)  # each exactly once
    code, report, out = run_cli("verify", str(src), dest, "--mlflow-experiment", exp)
    assert code == 0, out
    assert report["totals"]["verified"] == len(corpus)


def test_readme_main_command_fills_the_default_store(tmp_path):
    """`trackport copy examples/sample-export` with no destination: a local mlflow.db."""
    sample = REPO / "examples" / "sample-export"
    code, report, out = run_cli("copy", str(sample))
    assert code == 0, out
    assert (tmp_path / "mlflow.db").exists()
    assert report["destination"] == f"mlflow:sqlite:///{tmp_path / 'mlflow.db'}"
    code, report, out = run_cli("verify", str(sample))
    assert code == 0, out
    assert report["totals"]["verified"] == report["totals"]["runs"] > 0


@pytest.mark.parametrize("where", ["server", "sqlite"])
def test_bad_input_names_the_run_and_the_others_still_move(tmp_path, where, request):
    from trackport.connectors.parquet import layout

    corpus = build_corpus(big=False)[:2]
    src = tmp_path / "export"
    write_exporter_export(src, corpus)
    part = layout.part_path(src, CORPUS_PROJECT, corpus[1].run_id, 0)
    part.write_bytes(part.read_bytes()[:100])
    if where == "server":
        dest = f"mlflow+{request.getfixturevalue('mlflow_server')}"
    else:
        dest = f"mlflow:sqlite:///{tmp_path / 'x.db'}"
    code, report, out = run_cli("copy", str(src), dest, "--mlflow-experiment", f"{tmp_path.name}-{{project}}")
    assert code == 1
    runs = runs_by_id(report)
    assert runs[corpus[0].run_id]["status"] == "moved"
    failed = [r for r in report["runs"] if r["status"] == "failed"]
    assert len(failed) == 1 and part.name in failed[0]["error"]


def test_secrets_never_reach_logs_reports_or_exports(tmp_path, mlflow_server, monkeypatch):
    """A planted token, in the tracker's env var and in a URI, appears in no artefact of ours."""
    token = "tp-secret-7f3a9c1e5d"
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)  # the server ignores it; the SDK sends it
    corpus = build_corpus(big=False)[:2]
    src = tmp_path / "export"
    write_exporter_export(src, corpus)
    host = mlflow_server.split("://", 1)[1]
    dest = f"mlflow+http://user:{token}@{host}"
    log = tmp_path / "debug.log"
    exp = ["--mlflow-experiment", f"{tmp_path.name}-{{project}}"]
    outputs = []
    back = ("export", dest, str(tmp_path / "back"), "--project", exp[1].format(project=CORPUS_PROJECT))
    for args in (("copy", str(src), dest), ("verify", str(src), dest), back,
                 ("plan", str(src), dest)):
        code, report, out = run_cli(*args, *exp, "--log-file", str(log), "--report", str(tmp_path / "r.json"))
        assert code == 0, out
        outputs.append(out)
        outputs.append((tmp_path / "r.json").read_text())
    artefacts = [log.read_text(errors="replace"), *outputs]
    for path in list((tmp_path / "back").rglob("*")) + list((tmp_path / ".trackport").rglob("*")):
        if path.is_file():
            artefacts.append(path.read_bytes().decode("utf-8", "replace"))
    assert all(token not in text for text in artefacts)
    assert "user:" not in outputs[0]
