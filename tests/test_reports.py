"""The machine-readable report of every command, and exit codes that follow it.

Each command is driven through its outcomes with the parquet and MLflow (SQLite)
destinations: all moved -> 0; one run failed -> 1 while the others move; a
drop without --allow-drops -> 1, with it -> 0 and the drop still reported; a
rerun skips every run; a partial run is repaired; verify with a difference or
a missing run -> 1; a usage error -> 2, no report on stdout and one line on
stderr; Ctrl-C -> 130.  `plan` reports the transformations `copy` counts.
That every sink fills `files` and `bytes` per run is checked by each connector's
own tests through `trackport.testing.conformance.files_and_bytes`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from support import run_cli, runs_by_id
from trackport.cli import cli
from trackport.connectors.parquet import layout
from trackport.testing.corpus import build_corpus, corpus_case
from trackport.testing.exporter_layout import write_exporter_export

CASES = ("scalars", "steps", "files", "string_series", "nan_inf", "histograms")
RUN_FIELDS = {"project_id", "run_id", "status", "dest_id", "rows", "points", "params", "files", "bytes",
              "transformations", "drops", "examples", "warnings", "error"}


@pytest.fixture(scope="module")
def corpus():
    return [r for r in build_corpus(big=False) if r.case in CASES]


@pytest.fixture
def export(tmp_path, corpus) -> Path:
    root = tmp_path / "export"
    write_exporter_export(root, corpus)
    return root


def _files_of(export: Path) -> tuple[int, int]:
    """(count, bytes) of the files under an export's files root."""
    files = [p for p in (export / "files").rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _case_run(corpus, case: str) -> str:
    return corpus_case(corpus, case).run_id


def _statuses(report: dict) -> dict[str, str]:
    return {r["run_id"]: r["status"] for r in report["runs"]}


def _check_shape(report: dict, command: str, code: int) -> None:
    """The documented shape (docs/reports.md): totals agree with the runs, the exit code is in it."""
    assert report["command"] == command and report["exit_code"] == code
    runs = report["runs"]
    totals = report["totals"]
    assert totals["runs"] == len(runs)
    for status in {r["status"] for r in runs}:
        assert totals[status] == sum(r["status"] == status for r in runs)
    for key in ("points", "params", "files", "bytes"):   # what moved: failed/missing runs left out
        assert totals[key] == sum(r[key] for r in runs if r["status"] not in ("failed", "missing")), key
    for run in runs:
        assert RUN_FIELDS <= set(run), set(run) ^ RUN_FIELDS
        assert (run["error"] is not None) == (run["status"] in ("failed", "different", "missing")), run
    assert [(r["project_id"], r["run_id"]) for r in runs] == sorted((r["project_id"], r["run_id"]) for r in runs)


def _cli(*args: str, report: Path | None = None) -> tuple[int, dict, str]:
    extra = ("--report", str(report)) if report else ()
    code, data, out = run_cli(*args, *extra)
    if report is not None and data:
        assert json.loads(report.read_text()) == data      # --report holds what --json printed
    return code, data, out


# -- copy / export / load ----------------------------------------------------------------------
def test_copy_to_parquet_failed_dropped_allowed_skipped_and_repaired(tmp_path, export, corpus):
    files_run = _case_run(corpus, "files")
    victim = next(p for p in (export / "files").rglob("*.png"))
    missing = victim.relative_to(next((export / "files").iterdir())).as_posix()
    moved_aside = victim.read_bytes()
    victim.unlink()
    dest = f"parquet:{tmp_path / 'out'}"
    report_file = tmp_path / "report.json"

    # one run cannot move (a file is missing): exit 1, the others moved
    code, report, out = _cli("copy", str(export), dest, report=report_file)
    assert code == 1, out
    _check_shape(report, "copy", 1)
    status = _statuses(report)
    assert status.pop(files_run) == "failed" and set(status.values()) == {"moved"}
    failed = runs_by_id(report)[files_run]
    for part in (files_run, missing, "file missing", "Fix:", "--allow-drops"):
        assert part in failed["error"], (part, failed["error"])
    for run in report["runs"]:
        if run["status"] == "moved":
            assert run["rows"] > 0 and run["points"] + run["params"] > 0 and run["dest_id"]
    assert runs_by_id(report)[_case_run(corpus, "steps")]["transformations"] == {}  # parquet keeps decimals

    # with --allow-drops the run moves without that file: exit 0, the drop reported
    code, report, out = _cli("copy", str(export), dest, "--allow-drops", report=report_file)
    assert code == 0, out
    _check_shape(report, "copy", 0)
    run = runs_by_id(report)[files_run]
    assert run["status"] == "moved" and run["drops"] == {"missing_file": 1}
    assert any(missing in e for e in run["examples"]["missing_file"])
    count, size = _files_of(export)
    assert (run["files"], run["bytes"]) == (count, size)            # every file that was there, counted
    assert report["totals"]["drops"] == {"missing_file": 1}
    assert report["totals"]["skipped"] == len(corpus) - 1

    # the same drop without --allow-drops is exit 1 even when nothing else fails (a fresh destination)
    code, report, out = _cli("copy", str(export), f"parquet:{tmp_path / 'out2'}", "--run", files_run,
                             "--allow-drops")
    assert code == 0 and report["totals"]["drops"] == {"missing_file": 1}
    victim.write_bytes(moved_aside)

    # a rerun: every run skipped as complete, exit 0
    code, report, out = _cli("copy", str(export), dest)
    assert code == 0, out
    assert set(_statuses(report).values()) == {"skipped"}
    assert all(r["dest_id"] for r in report["runs"])

    # a partial run (its completion mark lost) is repaired, the rest skipped
    scalars = corpus_case(corpus, "scalars")
    layout.run_manifest_path(tmp_path / "out", scalars.project_id, scalars.run_id).unlink()
    code, report, out = _cli("copy", str(export), dest)
    assert code == 0, out
    status = _statuses(report)
    assert status.pop(scalars.run_id) == "repaired" and set(status.values()) == {"skipped"}
    assert runs_by_id(report)[scalars.run_id]["params"] > 0

    # verify reads what is there: the files run lacks the file the source has again -> 1
    code, report, out = _cli("verify", str(export), dest)
    assert code == 1, out
    _check_shape(report, "verify", 1)
    status = _statuses(report)
    assert status.pop(files_run) == "different" and set(status.values()) == {"verified"}
    differences = runs_by_id(report)[files_run]["details"]["differences"]
    assert any(d["aspect"] == "missing in destination" and d["kind"] == "file" and "images/samples" in d["path"]
               and d["message"].startswith("file ") for d in differences), differences


def test_a_drop_without_allow_drops_is_exit_1_and_the_run_is_not_written(tmp_path, export, corpus):
    files_run = _case_run(corpus, "files")
    next((export / "files").rglob("*.png")).unlink()
    code, report, out = _cli("copy", str(export), f"parquet:{tmp_path / 'out'}", "--run", files_run)
    assert code == 1 and report["runs"][0]["status"] == "failed"
    assert not (tmp_path / "out" / "data").exists() or not list((tmp_path / "out" / "data").rglob("*.parquet"))


def test_load_plan_verify_export_with_mlflow_sqlite(tmp_path, export, corpus):
    dest = f"mlflow:sqlite:///{tmp_path / 'mlflow.db'}"
    count, size = _files_of(export)
    code, planned, out = _cli("plan", str(export), dest)
    assert code == 0, out
    _check_shape(planned, "plan", 0)
    assert set(_statuses(planned).values()) == {"planned"}
    assert planned["destination_capabilities"]

    code, loaded, out = _cli("load", str(export), dest, report=tmp_path / "r.json")
    assert code == 0, out
    _check_shape(loaded, "load", 0)
    assert set(_statuses(loaded).values()) == {"moved"}
    by_id = runs_by_id(loaded)
    assert (by_id[_case_run(corpus, "files")]["files"], by_id[_case_run(corpus, "files")]["bytes"]) == (count, size)
    assert by_id[_case_run(corpus, "steps")]["transformations"]["step_scaled"] > 0
    assert by_id[_case_run(corpus, "nan_inf")]["transformations"]["inf_to_float_max"] > 0

    # plan counted what load counted, run by run; the one value-dependent kind (how many
    # points are +-inf) is announced by plan for every run with metrics, not counted
    for run_id, run in by_id.items():
        predicted = dict(runs_by_id(planned)[run_id]["transformations"])
        done = {k: v for k, v in run["transformations"].items() if k != "inf_to_float_max"}
        assert predicted == done, (run_id, predicted, done)
        assert runs_by_id(planned)[run_id]["drops"] == run["drops"]
        assert runs_by_id(planned)[run_id]["points"] == run["points"]
        if run["points"] and corpus_case(corpus, "nan_inf").run_id == run_id:
            assert any("inf" in line for line in runs_by_id(planned)[run_id]["details"]["destination"])

    code, report, out = _cli("verify", str(export), dest)
    assert code == 0, out
    _check_shape(report, "verify", 0)
    assert set(_statuses(report).values()) == {"verified"}

    code, back, out = _cli("export", dest, str(tmp_path / "back"))
    assert code == 0, out
    _check_shape(back, "export", 0)
    assert set(_statuses(back).values()) == {"moved"}
    assert sum(r["files"] for r in back["runs"]) >= count

    # a source value that differs, and a source run the destination does not have -> 1
    steps = corpus_case(corpus, "steps")
    changed = steps.table.set_column(
        steps.table.schema.get_field_index("float_value"), "float_value",
        pc.add(steps.table.column("float_value"), pa.scalar(1.0)))
    from trackport.testing.corpus import CorpusRun

    write_exporter_export(export, [CorpusRun(steps.project_id, steps.run_id, changed, steps.files, steps.case),
                                   CorpusRun(steps.project_id, "NEW-1", steps.table.set_column(
                                       steps.table.schema.get_field_index("run_id"), "run_id",
                                       pa.array(["NEW-1"] * steps.table.num_rows)), {}, "new")])
    code, report, out = _cli("verify", str(export), dest)
    assert code == 1, out
    _check_shape(report, "verify", 1)
    status = _statuses(report)
    assert status.pop(steps.run_id) == "different" and status.pop("NEW-1") == "missing"
    assert set(status.values()) == {"verified"}
    assert runs_by_id(report)[steps.run_id]["details"]["differences"]


# -- usage errors, inspect, Ctrl-C -------------------------------------------------------------
USAGE_ERRORS = {
    "copy": ["copy", "nosuch:thing", "parquet:out"],
    "export": ["export", "{export}", "out", "--classes", "params,colours"],
    "load": ["load", "{export}", "mlflow:sqlite://relative.db"],
    "plan": ["plan", "{export}", "parquet:out", "--run", "("],
    "verify": ["verify", "{export}", "nosuch://x"],
    "inspect": ["inspect", "{missing}"],
}


@pytest.mark.parametrize("command", sorted(USAGE_ERRORS))
def test_usage_error_is_exit_2_one_line_on_stderr_no_report(tmp_path, export, command):
    args = [a.format(export=export, missing=tmp_path / "no-such-export") for a in USAGE_ERRORS[command]]
    report_file = tmp_path / "report.json"
    extra = ["--report", str(report_file)] if command != "inspect" else []
    result = CliRunner().invoke(cli, [*args, *extra, "--json", "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trackport: error: "), result.stderr
    assert not report_file.exists()


def test_inspect_exit_codes_follow_its_report(tmp_path, export, corpus):
    code, summary, out = run_cli("inspect", str(export))
    assert code == 0, out
    assert summary["totals"]["runs"] == len(corpus)
    part = sorted((export / "data").rglob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: len(part.read_bytes()) // 2])      # torn
    code, summary, out = run_cli("inspect", str(export))
    assert code == 1, out
    unreadable = [line for p in summary["projects"] for line in p["unreadable"]]
    assert len(unreadable) == 1 and part.name in unreadable[0]


@pytest.mark.parametrize("workers", [1, 3])
def test_ctrl_c_is_exit_130_and_the_rerun_repairs(tmp_path, corpus, pluto_server, workers):
    """Interrupted at a known point: the local Pluto server holds every metrics request.  With
    several runs open in worker threads the command still ends at once (it does not wait for
    them), leaves its scratch folder behind as a crash would, and the next command sweeps it."""
    cases = ["steps"] if workers == 1 else ["steps", "scalars", "nan_inf"]
    runs = [corpus_case(corpus, c) for c in cases]
    export = tmp_path / "export"
    write_exporter_export(export, runs)
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    env = {**os.environ, **pluto_server.env(), "TMPDIR": str(scratch_root)}
    pluto_server.hold("POST", "/ingest/metrics")
    proc = subprocess.Popen([sys.executable, "-m", "trackport", "copy", str(export), "pluto://proj",
                             "--no-progress", "--workers", str(workers)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert pluto_server.held.wait(120), "the copy never sent its metrics"
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)   # the held requests are still held
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        pluto_server.release()
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert err.decode().strip().splitlines()[-1] == "trackport: interrupted; rerun the same command to resume"
    assert out == b""                                   # no report for an interrupted command
    assert (scratch_root / f"trackport-pid{proc.pid}").is_dir()
    rerun = subprocess.run([sys.executable, "-m", "trackport", "copy", str(export), "pluto://proj",
                            "--no-progress", "--json"], cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    statuses = _statuses(json.loads(rerun.stdout))
    assert statuses[runs[0].run_id] == "repaired"
    assert set(statuses) == {r.run_id for r in runs} and set(statuses.values()) <= {"repaired", "moved"}
    # the dead command's folder swept, ours removed; the destination's shared lock folder stays
    # (core/claims.py: every process writing that destination uses it)
    assert [p.name for p in scratch_root.iterdir() if not p.name.startswith("trackport-locks-")] == []


def test_the_table_view_shows_names_that_look_like_markup(tmp_path, corpus):
    """Run ids, paths and errors are data: `[/x]` in a name neither crashes nor styles the view."""
    scalars = corpus_case(corpus, "scalars")
    name = "odd[/x][bold]run"
    table = scalars.table.set_column(scalars.table.schema.get_field_index("run_id"), "run_id",
                                     pa.array([name] * scalars.table.num_rows))
    from trackport.testing.corpus import CorpusRun

    write_exporter_export(tmp_path / "export", [CorpusRun(scalars.project_id, name, table, {}, "odd")])
    result = CliRunner().invoke(cli, ["copy", str(tmp_path / "export"), f"parquet:{tmp_path / 'out'}",
                                      "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert name in result.stdout.replace("\n", "").replace("│", "").replace(" ", "") or "odd[/x]" in result.stdout
    assert "runs 1 (moved 1)" in result.stdout


def test_progress_records_where_no_bar_can_be_drawn(tmp_path):
    """stderr not a terminal: a progress record every 10 s and one at the end, a JSON object
    with --json (stdout keeps the one report); --no-progress: none."""
    from trackport.core.progress import PeriodicProgress

    sample = Path(__file__).resolve().parent.parent / "examples" / "sample-export"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    done = subprocess.run([sys.executable, "-m", "trackport", "copy", str(sample), f"parquet:{tmp_path / 'out'}",
                           "--json", "--state-dir", str(tmp_path / ".trackport")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    last = json.loads(done.stderr.strip().splitlines()[-1])
    assert last["progress"] == "finished" and last["runs_done"] == last["runs_total"] == 5
    assert last["rows"] >= report["totals"]["points"] > 0
    quiet = subprocess.run([sys.executable, "-m", "trackport", "copy", str(sample), f"parquet:{tmp_path / 'out'}",
                            "--json", "--no-progress", "--state-dir", str(tmp_path / ".trackport")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0 and "progress" not in quiet.stderr
    # the records come every `every` seconds, with rate and ETA
    lines: list[str] = []
    now = [0.0]
    progress = PeriodicProgress(lines.append, as_json=False, every=10.0)
    progress._clock = lambda: now[0]
    progress.start(4)
    for at, call in ((5.0, lambda: progress.points(1000)),           # too soon
                     (11.0, lambda: progress.run_done("a", "moved")),  # a record: 1 of 4 runs in 11 s
                     (12.0, lambda: progress.points(500)),            # too soon
                     (25.0, progress.finish)):                        # the last record
        now[0] = at
        call()
    assert lines == ["progress: 1/4 runs, 1,000 rows (91/s), 11 s, eta 33 s",
                     "progress: 1/4 runs, 1,500 rows (60/s), 25 s"]
