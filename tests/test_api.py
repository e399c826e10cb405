"""The Python API (docs/python-api.md): every command as a function, against the same real
components the CLI tests use (parquet exports written by the test kit, MLflow SQLite stores).

The API returns the object the CLI's --json serialises, raises documented errors (usage
distinct from run failures, a run failure carrying its partial report), reports progress as
events, honours the connectors' environment variables, prints nothing, and can be cancelled
from another thread leaving the destination as Ctrl-C does: resumable.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import trackport
from support import run_cli
from trackport.testing.corpus import build_corpus, corpus_case
from trackport.testing.exporter_layout import write_exporter_export

CASES = ("scalars", "steps", "files", "string_series", "nan_inf")


@pytest.fixture(scope="module")
def corpus():
    return [r for r in build_corpus(big=False) if r.case in CASES]


@pytest.fixture
def export(tmp_path, corpus) -> Path:
    root = tmp_path / "export"
    write_exporter_export(root, corpus)
    return root


def test_public_names_are_declared():
    assert {"copy", "export", "load", "plan", "verify", "inspect", "CommandReport", "RunReport", "Totals",
            "Difference", "ProgressEvent", "UsageError", "RunsFailedError", "Cancelled"} <= set(trackport.__all__)
    for name in trackport.__all__:
        assert getattr(trackport, name) is not None, name


def test_copy_returns_the_report_the_cli_prints(tmp_path, export, capfd):
    api_db, cli_db = tmp_path / "api.db", tmp_path / "cli.db"
    report = trackport.copy(f"parquet:{export}", f"mlflow:sqlite:///{api_db}", state_dir=tmp_path / "state")
    assert isinstance(report, trackport.CommandReport) and report.exit_code == 0
    out, err = capfd.readouterr()
    assert out == "" and "trackport" not in err, (out, err)   # a library prints nothing of its own

    code, cli_report, out = run_cli("copy", str(export), f"mlflow:sqlite:///{cli_db}", "--state-dir",
                                    str(tmp_path / "state2"))
    assert code == 0, out
    ours = report.to_json()
    assert ours["totals"] == cli_report["totals"]
    assert ours["totals"]["moved"] == len(CASES)
    assert [(r["run_id"], r["status"], r["points"], r["files"]) for r in ours["runs"]] == \
        [(r["run_id"], r["status"], r["points"], r["files"]) for r in cli_report["runs"]]
    # the typed totals are the same numbers
    assert report.totals.points == ours["totals"]["points"] > 0
    assert report.totals.statuses == {"moved": len(CASES)}

    again = trackport.copy(f"parquet:{export}", f"mlflow:sqlite:///{api_db}", state_dir=None)
    assert again.totals.statuses == {"skipped": len(CASES)}


def test_verify_returns_differences_as_objects(tmp_path, export, corpus):
    out = tmp_path / "copy"
    trackport.export(f"parquet:{export}", out, state_dir=None)
    checked = trackport.verify(f"parquet:{export}", f"parquet:{out}")
    assert checked.exit_code == 0 and checked.totals.statuses == {"verified": len(CASES)}
    assert all(r.differences == [] for r in checked.runs)

    # drop one series' last point from the copy, as a damaged destination would
    scalars = corpus_case(corpus, "scalars")
    part = next(p for p in (out / "data").rglob("*.parquet")
                if scalars.run_id in pq.read_table(p, columns=["run_id"]).column(0).to_pylist())
    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows - 1), part)
    checked = trackport.verify(f"parquet:{export}", f"parquet:{out}", check=False)
    assert checked.exit_code == 1
    damaged = next(r for r in checked.runs if r.run_id == scalars.run_id)
    assert damaged.status in ("different", "failed"), damaged
    if damaged.status == "different":
        first = damaged.differences[0]
        assert isinstance(first, trackport.Difference)
        assert first.kind in ("series", "value") and first.path and first.message.startswith(first.kind)
        assert checked.to_json()["runs"][[r.run_id for r in sorted(checked.runs, key=lambda r: r.run_id)]
                                        .index(scalars.run_id)]["details"]["differences"][0]["path"] == first.path


def test_a_run_failure_raises_with_its_partial_report(tmp_path, export, corpus):
    files_run = corpus_case(corpus, "files").run_id
    next((export / "files").rglob("*.png")).unlink()
    dest = f"parquet:{tmp_path / 'out'}"
    with pytest.raises(trackport.RunsFailedError) as caught:
        trackport.copy(f"parquet:{export}", dest, state_dir=None)
    report = caught.value.report
    status = {r.run_id: r.status for r in report.runs}
    assert status.pop(files_run) == "failed" and set(status.values()) == {"moved"}
    assert files_run in str(caught.value)
    # the same, returned instead of raised
    report = trackport.copy(f"parquet:{export}", dest, state_dir=None, raise_on_failure=False)
    assert report.exit_code == 1 and report.totals.statuses == {"failed": 1, "skipped": len(CASES) - 1}
    # plan returns what it found (the run copy would refuse) instead of raising
    planned = trackport.plan(f"parquet:{export}", dest)
    assert planned.exit_code == 1 and {r.run_id for r in planned.runs if r.status == "failed"} == {files_run}


def test_usage_errors_are_not_run_failures(tmp_path, export, monkeypatch):
    src = f"parquet:{export}"
    with pytest.raises(trackport.UsageError, match="mlflow_experimnt"):
        trackport.copy(src, f"mlflow:sqlite:///{tmp_path / 'm.db'}", mlflow_experimnt="x")
    with pytest.raises(trackport.UsageError, match="--part-size"):
        trackport.export(src, tmp_path / "out", part_size="big")
    with pytest.raises(trackport.UsageError, match="classes"):
        trackport.plan(src, classes="params,nope")
    with pytest.raises(trackport.UsageError, match="unknown scheme"):
        trackport.copy(src, "nope:x")
    assert not issubclass(trackport.UsageError, trackport.RunsFailedError)
    # a connector option's environment variable counts as the CLI's does, checked the same way
    monkeypatch.setenv("NEPTUNE_EXPORTER_PLUTO_BATCH_ROWS", "many")
    with pytest.raises(trackport.UsageError, match="NEPTUNE_EXPORTER_PLUTO_BATCH_ROWS"):
        trackport.plan(src, f"parquet:{tmp_path / 'out'}")
    monkeypatch.setenv("NEPTUNE_EXPORTER_PLUTO_BATCH_ROWS", "250")
    assert trackport.Options.build().get("pluto_batch_rows") == 250


def test_progress_events_add_up(tmp_path, export):
    events: list[trackport.ProgressEvent] = []
    report = trackport.export(f"parquet:{export}", tmp_path / "out", state_dir=None, progress=events.append,
                              workers=2)
    kinds = [e.kind for e in events]
    assert kinds[0] == "started" and events[0].total_runs == len(CASES) and kinds[-1] == "finished"
    assert kinds.count("run_started") == kinds.count("run_finished") == len(CASES)
    assert {e.status for e in events if e.kind == "run_finished"} == {"moved"}
    assert sum(e.points for e in events if e.kind == "points") == sum(r.rows for r in report.runs) > 0


def test_cancel_from_another_thread_leaves_a_resumable_destination(tmp_path, export):
    src, dest = f"parquet:{export}", f"mlflow:sqlite:///{tmp_path / 'm.db'}"
    cancel = threading.Event()

    def stop_after_first_batch(event):
        if event.kind == "points":
            cancel.set()

    with pytest.raises(trackport.Cancelled) as caught:
        trackport.copy(src, dest, state_dir=None, progress=stop_after_first_batch, cancel=cancel, workers=2)
    partial = caught.value.report
    assert isinstance(partial, trackport.CommandReport)
    cut = [r for r in partial.runs if r.status == "cancelled"]
    assert cut and all("resumes" in r.error for r in cut), partial.to_json()
    assert partial.totals.statuses.get("moved", 0) < len(CASES)
    assert trackport.verify(src, dest).exit_code == 1   # not all there yet

    resumed = trackport.copy(src, dest, state_dir=None)
    assert set(resumed.totals.statuses) <= {"moved", "repaired", "skipped"}, resumed.to_json()
    assert {r.run_id: r.status for r in resumed.runs}[cut[0].run_id] == "repaired"   # written, not committed
    checked = trackport.verify(src, dest)
    assert checked.exit_code == 0 and checked.totals.statuses == {"verified": len(CASES)}


def test_one_task_per_project_in_a_thread_pool(tmp_path):
    sample = Path(__file__).resolve().parents[1] / "examples" / "sample-export"
    src, dest = f"parquet:{sample}", f"mlflow:sqlite:///{tmp_path / 'm.db'}"
    projects = sorted({r.project_id for r in trackport.plan(src, f"parquet:{tmp_path / 'x'}").runs})
    assert len(projects) >= 2
    with ThreadPoolExecutor(max_workers=len(projects)) as pool:
        reports = list(pool.map(lambda p: trackport.copy(src, dest, projects=[p], state_dir=None), projects))
    for project, report in zip(projects, reports):
        assert {r.project_id for r in report.runs} == {project} and report.exit_code == 0
    checked = trackport.verify(src, dest)
    assert checked.exit_code == 0 and checked.totals.runs == sum(r.totals.runs for r in reports)


def test_inspect_returns_the_summary_the_cli_prints(export):
    found = trackport.inspect(export)
    assert found.exit_code == 0 and found.projects
    code, printed, out = run_cli("inspect", str(export))
    assert code == 0 and printed == found.to_json(), out
