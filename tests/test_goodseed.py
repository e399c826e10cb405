"""GoodSeed connector: real run files written by the real `goodseed` package, read back and moved.

Oracles independent of trackport: the run file's own SQLite tables read with sqlite3, and
GoodSeed's own local server (`goodseed serve`) answering over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import wandb_offline_support as wos
from support import read_plain_export, run_cli, runs_by_id
from trackport.testing import conformance

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sample-export"


def fingerprint(root: Path) -> dict[str, tuple]:
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = ("dir", st.st_mtime_ns)
        else:
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _points(tables) -> int:
    return sum(t.filter(pc.is_valid(t.column("step"))).num_rows for t in tables)


def _db_rows(db: Path, sql: str, *args) -> list[tuple]:
    mode = "mode=ro" if Path(f"{db}-wal").exists() else "mode=ro&immutable=1"   # immutable: no -shm left
    conn = sqlite3.connect(f"file:{db}?{mode}", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def offline_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb-runs")
    wos.make_runs(root)
    return root


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A training as a GoodSeed user logs it, through goodseed.Run (local storage)."""
    import goodseed

    home = tmp_path_factory.mktemp("goodseed-home")
    run = goodseed.Run(project="team/vision", run_id="exp-1", goodseed_home=str(home), storage="local",
                       name="first try", tags=["bert", "v2"], description="notes", git_ref=False,
                       capture_hardware_metrics=False, capture_stdout=False, capture_stderr=False,
                       capture_traceback=False)
    run.log_configs({"lr": 0.001, "epochs": 3, "amp": True, "opt": {"name": "adam"}})
    for step in (0, 1, 2.5):
        run.log_metrics({"train/loss": 1.0 / (step + 1), "acc": step / 10}, step=step)
        run.log_strings({"phase": "warm" if step < 1 else "main"}, step=step)
    run.close()
    return home


# -- the source: run files GoodSeed wrote ---------------------------------------------------------

def test_source_reads_every_point_and_config_goodseed_wrote_without_changing_a_byte(native, tmp_path):
    before = fingerprint(native)
    code, report, out = run_cli("export", f"goodseed:{native}", str(tmp_path / "export"))
    assert code == 0, out
    (table,) = read_plain_export(tmp_path / "export").values()
    assert (table.column("project_id")[0].as_py(), table.column("run_id")[0].as_py()) == ("team/vision", "exp-1")
    db = native / "projects" / "team" / "vision" / "runs" / "exp-1.sqlite"
    stored = _db_rows(db, "SELECT s.path, p.step, p.y, p.ts FROM metric_points p JOIN metric_series s "
                          "ON p.series_id = s.id ORDER BY s.path, p.step")
    got = sorted((r["attribute_path"], float(r["step"]), r["float_value"], int(r["timestamp"].timestamp()))
                 for r in table.to_pylist() if r["attribute_type"] == "float_series")
    assert got == sorted(stored) and len(got) == 6
    rows = {r["attribute_path"]: r for r in table.to_pylist() if r["step"] is None}
    assert rows["lr"]["float_value"] == 0.001 and rows["epochs"]["int_value"] == 3
    assert rows["amp"]["bool_value"] is True and rows["opt/name"]["string_value"] == "adam"
    assert sorted(rows["sys/tags"]["string_set_value"]) == ["bert", "v2"]
    assert rows["sys/name"]["string_value"] == "first try"           # from run_meta
    assert rows["sys/failed"]["bool_value"] is False
    phase = [r for r in table.to_pylist() if r["attribute_path"] == "phase"]
    assert sorted((float(r["step"]), r["string_value"]) for r in phase) == [(0, "warm"), (1, "main"), (2.5, "main")]
    assert report["runs"][0]["transformations"]["run_meta_as_sys"] >= 1
    assert fingerprint(native) == before, "reading changed the GoodSeed folder"


def test_a_run_still_writing_is_read_with_its_wal_and_left_untouched(tmp_path):
    """A training that has not closed its run: the points in the -wal file are read, and no byte
    of the folder changes (SQLite would otherwise touch the -shm)."""
    import goodseed

    home = tmp_path / "home"
    run = goodseed.Run(project="p", run_id="live", goodseed_home=str(home), storage="local", git_ref=False,
                       capture_hardware_metrics=False, capture_stdout=False, capture_stderr=False,
                       capture_traceback=False)
    try:
        run.log_metrics({"loss": 0.5}, step=1)
        run.log_metrics({"loss": 0.25}, step=2)
        db = home / "projects" / "p" / "runs" / "live.sqlite"
        assert Path(f"{db}-wal").exists()
        before = fingerprint(home)
        for args in (("export", f"goodseed:{home}", str(tmp_path / "export")),
                     ("plan", f"goodseed:{home}", f"goodseed:{tmp_path / 'dest'}"),
                     ("copy", f"goodseed:{home}", f"goodseed:{tmp_path / 'dest'}"),
                     ("verify", f"goodseed:{home}", f"goodseed:{tmp_path / 'dest'}")):
            code, report, out = run_cli(*args)
            assert code == 0, out
            assert fingerprint(home) == before, f"{args[0]} changed the source"
        (table,) = read_plain_export(tmp_path / "export").values()
        loss = table.filter(pc.equal(table.column("attribute_path"), "loss"))
        assert sorted(loss.column("float_value").to_pylist()) == [0.25, 0.5]
    finally:
        run.close()


def test_goodseed_to_goodseed_keeps_the_native_run_and_reruns_skip(native, tmp_path):
    dest = f"goodseed:{tmp_path / 'copy'}"
    code, report, out = run_cli("copy", f"goodseed:{native}", dest)
    assert code == 0 and report["totals"]["moved"] == 1, out
    code, checked, out = run_cli("verify", f"goodseed:{native}", dest)
    assert code == 0 and checked["totals"]["verified"] == 1, out
    code, again, out = run_cli("copy", f"goodseed:{native}", dest)
    assert code == 0 and again["totals"]["skipped"] == 1 and again["totals"]["points"] == 0, out


# -- the sink ---------------------------------------------------------------------------------------

def test_sample_export_moves_every_point_and_verifies(tmp_path):
    parts = [pq.read_table(p) for p in sorted((SAMPLE / "data").glob("*/*.parquet"))]
    before = fingerprint(SAMPLE)
    dest = f"goodseed:{tmp_path / 'out'}"
    code, report, out = run_cli("copy", str(SAMPLE), dest)
    assert code == 0, out
    assert report["totals"]["points"] == _points(parts)
    assert not report["totals"]["drops"]
    assert report["totals"]["files"] > 0
    code, checked, out = run_cli("verify", str(SAMPLE), dest)
    assert code == 0 and checked["totals"]["verified"] == report["totals"]["moved"], out
    # exact round trip: the export read back from GoodSeed equals the sample
    back = tmp_path / "back"
    assert run_cli("export", dest, str(back))[0] == 0
    got = read_plain_export(back)
    source = {}
    for t in parts:
        key = (t.column("project_id")[0].as_py(), t.column("run_id")[0].as_py())
        source.setdefault(key, []).append(t)
    assert set(got) == set(source)
    import pyarrow as pa
    for key, tables in source.items():
        assert conformance.canonical_rows(got[key]) == conformance.canonical_rows(pa.concat_tables(tables)), key
    code, again, out = run_cli("copy", str(SAMPLE), dest)
    assert code == 0 and again["totals"]["skipped"] == report["totals"]["moved"], out
    assert fingerprint(SAMPLE) == before


def test_wandb_offline_runs_move_every_history_point_and_verify_clean(offline_root, tmp_path):
    code, exported, out = run_cli("export", f"wandb:{offline_root}", str(tmp_path / "wandb-export"))
    assert code == 0, out
    source = read_plain_export(tmp_path / "wandb-export")
    dest = tmp_path / "out"
    code, report, out = run_cli("copy", f"wandb:{offline_root}", f"goodseed:{dest}")
    assert code == 0, out
    assert report["totals"]["moved"] == wos.ENTRIES and not report["totals"]["drops"]
    assert report["totals"]["points"] == _points(source.values()) == exported["totals"]["points"]

    # GoodSeed's own tables hold the history: every step, timestamp to the millisecond
    db = dest / "projects" / f"{wos.ENTITY}" / f"{wos.PROJECT}" / "runs" / f"{wos.RICH_ID}.sqlite"
    stored = _db_rows(db, "SELECT p.step, p.y, p.ts FROM metric_points p JOIN metric_series s "
                          "ON p.series_id = s.id WHERE s.path = 'loss' ORDER BY p.step")
    finite = [(step, values["loss"], ts) for step, values, ts in wos.HISTORY
              if "loss" in values and values["loss"] == values["loss"]]
    assert [(s, y, round(ts * 1000)) for s, y, ts in stored] == [(s, v, round(t * 1000)) for s, v, t in finite]

    code, checked, out = run_cli("verify", f"wandb:{offline_root}", f"goodseed:{dest}")
    assert code == 0 and checked["totals"]["verified"] == wos.ENTRIES, out
    back = tmp_path / "back"
    assert run_cli("export", f"goodseed:{dest}", str(back))[0] == 0
    for key, table in read_plain_export(back).items():
        assert conformance.canonical_rows(table) == conformance.canonical_rows(source[key])
    code, again, out = run_cli("copy", f"wandb:{offline_root}", f"goodseed:{dest}")
    assert code == 0 and again["totals"]["skipped"] == wos.ENTRIES and again["totals"]["points"] == 0, out


def test_partial_runs_are_repaired_without_duplicate_points(offline_root, tmp_path):
    dest = tmp_path / "out"
    assert run_cli("copy", f"wandb:{offline_root}", f"goodseed:{dest}")[0] == 0
    db = dest / "projects" / wos.ENTITY / wos.PROJECT / "runs" / f"{wos.RICH_ID}.sqlite"
    count = "SELECT COUNT(*) FROM metric_points"
    good = _db_rows(db, count)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM run_meta WHERE key = 'trackport_mark'")        # as a crash before the mark
    conn.execute("DELETE FROM metric_points WHERE rowid % 2 = 0")            # half the points written
    conn.commit()
    conn.close()
    code, report, out = run_cli("copy", f"wandb:{offline_root}", f"goodseed:{dest}")
    assert code == 0, out
    assert runs_by_id(report)[wos.RICH_ID]["status"] == "repaired"
    assert runs_by_id(report)[wos.SPARSE_ID]["status"] == "skipped"
    assert _db_rows(db, count) == good
    assert _db_rows(db, "SELECT COUNT(*) FROM trackport_points") == \
        _db_rows(db, "SELECT COUNT(DISTINCT seq) FROM trackport_points")
    code, checked, out = run_cli("verify", f"wandb:{offline_root}", f"goodseed:{dest}")
    assert code == 0, out


def test_a_run_file_trackport_did_not_write_is_never_overwritten(native, tmp_path):
    import shutil

    dest = tmp_path / "out"
    theirs = dest / "projects" / "team" / "vision" / "runs" / "exp-1.sqlite"
    theirs.parent.mkdir(parents=True)
    shutil.copyfile(native / "projects" / "team" / "vision" / "runs" / "exp-1.sqlite", theirs)
    before = theirs.read_bytes()
    # a copy from an export holding a run with the same ids lands on that file: refused
    code, _, out = run_cli("export", f"goodseed:{native}", str(tmp_path / "exp"))
    assert code == 0, out
    code, report, out = run_cli("copy", str(tmp_path / "exp"), f"goodseed:{dest}")
    assert code == 1, out
    assert "not written by trackport" in report["runs"][0]["error"]
    assert theirs.read_bytes() == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_goodseed_server_shows_the_copied_runs_and_points(tmp_path):
    dest = tmp_path / "home"
    code, report, out = run_cli("copy", str(SAMPLE), f"goodseed:{dest}")
    assert code == 0, out
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "goodseed.cli", "serve", str(dest / "projects"),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                runs = json.loads(urllib.request.urlopen(f"{base}/api/runs", timeout=5).read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "goodseed serve did not start"
                time.sleep(0.2)
        runs = runs.get("runs", runs) if isinstance(runs, dict) else runs
        assert len(runs) == report["totals"]["moved"]
        assert all(r["status"] == "finished" for r in runs)
        run = next(r for r in runs if r["metric_paths"])
        path = run["metric_paths"][0]
        url = f"{base}/api/runs/{run['project']}/{run['run_id']}/metrics?path={urllib.request.quote(path)}"
        metrics = json.loads(urllib.request.urlopen(url, timeout=10).read())["metrics"]
        db = dest / "projects" / run["project"] / "runs" / f"{run['run_id']}.sqlite"
        stored = _db_rows(db, "SELECT COUNT(*) FROM metric_points p JOIN metric_series s ON p.series_id = s.id "
                              "WHERE s.path = ?", path)[0][0]
        assert len(metrics) == stored > 0
        assert all(m["logged_at"].startswith("20") for m in metrics)     # ts read as unix seconds
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- conformance (trackport.testing.conformance) -------------------------------------------------

def test_conformance_round_trip(tmp_path):
    conformance.round_trip(conformance.Target(f"goodseed:{tmp_path / 'dest'}"), tmp_path)


def test_conformance_run_times(tmp_path):
    conformance.run_times(conformance.Target(f"goodseed:{tmp_path / 'dest'}"), tmp_path)


def test_conformance_files_and_bytes(tmp_path):
    conformance.files_and_bytes(conformance.Target(f"goodseed:{tmp_path / 'dest'}"), tmp_path)


def test_conformance_sigkill_heals(tmp_path):
    conformance.sigkill_heals(conformance.Target(f"goodseed:{tmp_path / 'dest'}"), tmp_path)
