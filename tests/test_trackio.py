"""Trackio connector: the real trackio package and its SQLite stores.

Sources are written by trackio itself (`trackio.init` / `trackio.log` in a child
process with TRACKIO_DIR set); what the sink writes is read by trackio's own
storage class and by its dashboard's HTTP API (`trackio.show` on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

import wandb_offline_support as wos
from support import read_plain_export, run_cli, runs_by_id
from trackport.connectors.trackio import mapping as mp
from trackport.testing import conformance


REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sample-export"

NATIVE = r'''
import sys
import numpy as np
import trackio

phase = sys.argv[1]
if phase == "first":
    trackio.init(project="native.proj", name="first", group="g1",
                 config={"lr": 0.1, "layers": 3, "opt": "adam", "amp": True, "nested": {"a": 1},
                         "tags": ["x", "y"]})
    for i in range(5):
        trackio.log({"loss": 1.0 / (i + 1), "note": f"s{i}", "step": i * 2}, step=i * 10)
    trackio.log({"hist": trackio.Histogram(np_histogram=([1, 2, 3], [0.0, 1.0, 2.5, 4.0])),
                 "img": trackio.Image(np.full((4, 4, 3), 7, dtype=np.uint8))}, step=60)
    trackio.log({"loss": float("nan")}, step=70)
    trackio.finish()
    trackio.init(project="native.proj", name="second", config={"lr": 0.2})
    trackio.log({"loss": 3.0}, step=1)
    trackio.finish()
else:   # the first run grows
    trackio.init(project="native.proj", name="first", resume="must")
    trackio.log({"loss": 0.01}, step=80)
    trackio.finish()
'''


def _write_native(store: Path, phase: str = "first") -> None:
    env = {**os.environ, "TRACKIO_DIR": str(store)}
    for name in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID", "TRACKIO_DATASET_ID"):
        env.pop(name, None)
    subprocess.run([sys.executable, "-c", NATIVE, phase], check=True, env=env, timeout=180,
                   capture_output=True)


def _fingerprint(root: Path) -> dict:
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        rel = str(path.relative_to(root))
        out[rel] = (("dir", st.st_mtime_ns) if path.is_dir() else
                    ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()))
    return out


def _storage_logs(store: Path, project: str, run_id: str) -> list[dict]:
    """The run as trackio's own storage class reads it (a child process: TRACKIO_DIR at import)."""
    code = ("import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage as S\n"
            "print(json.dumps({'runs': S.get_run_records(sys.argv[1]), "
            "'logs': S.get_logs(sys.argv[1], None, run_id=sys.argv[2], max_points=None)}))")
    out = subprocess.run([sys.executable, "-c", code, project, run_id], check=True, capture_output=True,
                         env={**os.environ, "TRACKIO_DIR": str(store)}, timeout=120, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _args(store: Path) -> list[str]:
    return ["--trackio-dir", str(store)]


# -- conformance ---------------------------------------------------------------------------


def _target(tmp_path: Path) -> conformance.Target:
    return conformance.Target("trackio:proj", args=_args(tmp_path / "store"))


def test_conformance_round_trip(tmp_path):
    conformance.round_trip(_target(tmp_path), tmp_path)


def test_conformance_run_times(tmp_path):
    conformance.run_times(_target(tmp_path), tmp_path)


def test_conformance_files_and_bytes(tmp_path):
    conformance.files_and_bytes(_target(tmp_path), tmp_path)


def test_conformance_sigkill_heals(tmp_path):
    conformance.sigkill_heals(_target(tmp_path), tmp_path)


# -- W&B offline runs -> Trackio ---------------------------------------------------------------


def test_wandb_offline_runs_move_every_history_point_and_verify_clean(tmp_path):
    wos.make_runs(tmp_path / "runs")
    src, store = f"wandb:{tmp_path / 'runs'}", tmp_path / "store"
    code, report, out = run_cli("copy", src, "trackio:proj", *_args(store))
    assert code == 0, out
    assert report["totals"]["moved"] == wos.ENTRIES and not report["totals"]["drops"]
    code, export_report, out = run_cli("export", src, str(tmp_path / "export"))
    assert code == 0, out
    source_points = {r["run_id"]: r["points"] for r in export_report["runs"]}
    assert {r["run_id"]: r["points"] for r in report["runs"]} == source_points

    code, verify, out = run_cli("verify", src, "trackio:proj", *_args(store))
    assert code == 0, out
    assert verify["totals"]["verified"] == wos.ENTRIES

    # what trackio itself reads: every history row of the rich run, at its step and time
    names = {r["name"]: r["id"] for r in _storage_logs(store, "proj", "-")["runs"]}
    assert set(names) == {"rich run", wos.SPARSE_ID, "run-rich0001-tab"}, names
    rid = names["rich run"]
    seen = _storage_logs(store, "proj", rid)
    got = {}
    for row in seen["logs"]:
        for key, value in row.items():
            if key not in ("step", "timestamp"):
                got.setdefault(key, []).append((row["step"], row["timestamp"], value))
    for step, values, ts in wos.HISTORY:
        for key, value in values.items():
            want = (step, mp.iso_from_ms(round(ts * 1000)), conformance._norm(value))
            assert want in [(s, t, conformance._norm(v)) for s, t, v in got[mp.metric_key(key)]], (key, step)

    code, report, out = run_cli("copy", src, "trackio:proj", *_args(store))
    assert code == 0, out
    assert report["totals"]["skipped"] == wos.ENTRIES and report["totals"]["points"] == 0


# -- the shipped sample export --------------------------------------------------------------


def test_sample_export_every_point_accounted_for(tmp_path):
    store = tmp_path / "store"
    code, report, out = run_cli("copy", str(SAMPLE), "trackio:sample", *_args(store))
    assert code == 0, out
    rows = sum(pq.read_metadata(p).num_rows for p in (SAMPLE / "data").rglob("*.parquet"))
    points = 0
    for part in (SAMPLE / "data").rglob("*.parquet"):
        table = pq.read_table(part, columns=["step", "attribute_type"])
        points += pc.sum(pc.is_valid(table.column("step"))).as_py() or 0
    assert report["totals"]["points"] == points and rows > points
    assert not report["totals"]["drops"]
    code, verify, out = run_cli("verify", str(SAMPLE), "trackio:sample", *_args(store))
    assert code == 0, out
    assert verify["totals"]["verified"] == report["totals"]["runs"] == 5


# -- Trackio as a source ---------------------------------------------------------------------


def test_runs_trackio_wrote_are_read_whole_read_only_and_incrementally(tmp_path):
    src_store = tmp_path / "src"
    _write_native(src_store)
    before = _fingerprint(src_store)
    code, report, out = run_cli("export", "trackio:native.proj", str(tmp_path / "export"), *_args(src_store))
    assert code == 0, out
    tables = read_plain_export(tmp_path / "export")
    first = next(t for (p, r), t in tables.items()
                 if p == "native.proj" and "first" in t.column("string_value").to_pylist())
    singles = {r["attribute_path"]: r for r in first.filter(pc.is_null(first.column("step"))).to_pylist()}
    assert singles["sys/name"]["string_value"] == "first"
    assert singles["sys/group_tags"]["string_set_value"] == ["g1"]
    assert (singles["config/lr"]["attribute_type"], singles["config/lr"]["float_value"]) == ("float", 0.1)
    assert (singles["config/layers"]["attribute_type"], singles["config/layers"]["int_value"]) == ("int", 3)
    assert singles["config/amp"]["bool_value"] is True
    assert singles["config/nested/a"]["int_value"] == 1
    assert singles["config/tags"]["string_set_value"] == ["x", "y"]
    points = first.filter(pc.is_valid(first.column("step"))).to_pylist()
    by_path = {}
    for p in points:
        by_path.setdefault(p["attribute_path"], []).append(p)
    assert [int(p["step"]) for p in by_path["loss"]] == [0, 10, 20, 30, 40, 70]
    assert math.isnan(by_path["loss"][-1]["float_value"])
    assert [p["string_value"] for p in by_path["note"]] == [f"s{i}" for i in range(5)]
    assert [p["float_value"] for p in by_path["step"]] == [0.0, 2.0, 4.0, 6.0, 8.0]    # stored as __step
    (hist,) = by_path["hist"]
    assert hist["histogram_value"]["edges"] == [0.0, 1.0, 2.5, 4.0]
    assert hist["histogram_value"]["values"] == [1.0, 2.0, 3.0]
    (img,) = by_path["img"]
    assert img["attribute_type"] == "file_series" and img["file_value"]["path"].endswith(".png")
    assert all(p["timestamp"] is not None for p in points)

    # into a second store (PROJECT@DIR names each side's store), verified, and incrementally
    src, dest = f"trackio:native.proj@{src_store}", f"trackio:copy@{tmp_path / 'dest'}"
    code, report, out = run_cli("copy", src, dest)
    assert code == 0, out
    assert report["totals"]["moved"] == 2 and not report["totals"]["drops"]
    assert run_cli("verify", src, dest)[0] == 0
    assert _fingerprint(src_store) == before          # reading changed nothing, made no file

    _write_native(src_store, "grow")
    code, report, out = run_cli("copy", src, dest)
    assert code == 0, out
    statuses = Counter(r["status"] for r in report["runs"])
    assert statuses == Counter({"skipped": 1, "repaired": 1}), statuses
    code, verify, out = run_cli("verify", src, dest)
    assert code == 0, out
    (grown,) = [r for r in report["runs"] if r["status"] == "repaired"]
    rid = mp.run_id_for(f"trackio:native.proj", "native.proj", grown["run_id"])
    logs = _storage_logs(tmp_path / "dest", "copy", rid)["logs"]
    losses = [(row["step"], row["loss"]) for row in logs if "loss" in row]
    assert [s for s, _ in losses] == [0, 10, 20, 30, 40, 70, 80]     # the new point once, nothing twice


# -- the Trackio dashboard finds the copied runs and points ---------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, name: str, body: dict):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/{name}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def test_trackio_dashboard_shows_the_copied_runs_and_points(tmp_path):
    store = tmp_path / "store"
    code, report, out = run_cli("copy", str(SAMPLE), "trackio:sample", *_args(store), "--run", "IMG-1")
    assert code == 0, out
    (run,) = report["runs"]
    port = _free_port()
    script = ("import sys, trackio\n"
              "trackio.show(project='sample', open_browser=False, block_thread=True, host='127.0.0.1', "
              "server_port=int(sys.argv[1]))")
    server = subprocess.Popen([sys.executable, "-c", script, str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "TRACKIO_DIR": str(store)})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "trackio show did not start"
                time.sleep(0.3)
        runs = _api(port, "get_runs_for_project", {"project": "sample"})
        rid = mp.run_id_for(f"parquet:neptune-exporter", "acme/image-classification", "IMG-1")
        assert [r["id"] for r in runs] == [rid]
        logs = _api(port, "get_logs", {"project": "sample", "run_id": rid})
        shown = sum(1 for row in logs for key in row if key not in ("step", "timestamp"))
        assert shown == run["points"] and shown > 0
        configs = _api(port, "get_run_configs", {"project": "sample"})
        assert configs
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- mapping ---------------------------------------------------------------------------------


def test_mapping_names_and_times_are_exact():
    assert mp.metric_key("step") == "__step" and mp.path_of_key("__step") == "step"
    assert mp.metric_key("__x") == "____x" and mp.path_of_key("____x") == "__x"
    assert mp.metric_key("train/loss") == "train/loss"
    for ms in (0, 1, 999, 1_714_521_600_123, -1):
        assert mp.ms_from_iso(mp.iso_from_ms(ms)) == (ms, False)
    assert mp.ms_from_iso(mp.iso_from_ms(None)) == (None, False)
    assert mp.ms_from_iso("2024-05-01T00:00:00.123456+00:00") == (1_714_521_600_123, True)
    assert mp.canonical_project_name("my.model") == "mymodel"
    assert mp.step_to_unscaled(125, 100) == 1_250_000


def test_space_destination_is_refused_with_the_local_route(tmp_path):
    code, _, out = run_cli("copy", str(SAMPLE), "trackio:sample", *_args(tmp_path / "s"),
                           "--trackio-space-id", "user/space")
    assert code == 2 and "trackio sync" in out
    assert not (tmp_path / "s").exists()
