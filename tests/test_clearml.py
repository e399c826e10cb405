"""ClearML connector: offline sessions written by the real `clearml` SDK, read back as JSON.

The SDK itself is the independent witness on both sides: sessions it writes from a plain
training script (Task.init, report_scalar, report_text, report_histogram, report_image,
upload_artifact) are what the source must read, and the sessions the sink writes must be
ClearML's own format (task.json, metrics.jsonl events with the original `timestamp`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.compute as pc
import pytest

from support import read_plain_export, run_cli
from trackport.testing import conformance
from trackport.testing.corpus import build_corpus
from trackport.testing.exporter_layout import write_exporter_export

pytest.importorskip("clearml", reason="pip install 'trackport[clearml]' (part of the test extra)")

REPO = Path(__file__).resolve().parent.parent


def _tree(root: Path) -> dict[str, str]:
    """Every file under root with its digest (and every folder), to prove nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def _zips(root: Path) -> list[Path]:
    return sorted(root.glob("*.zip"))


def _events(zip_path: Path) -> list[dict]:
    with zipfile.ZipFile(zip_path) as zf:
        lines = zf.read("metrics.jsonl").decode().splitlines()
    return [ev for line in lines if line.strip() for ev in json.loads(line)]


def _task(zip_path: Path) -> dict:
    with zipfile.ZipFile(zip_path) as zf:
        return json.loads(zf.read("task.json"))


# -- a session written by the SDK from a plain training script (the source's input) --------
_SCRIPT = r"""
import os, sys, logging
from clearml import Task
Task.set_offline(True)
task = Task.init(project_name="vision/cls", task_name="plain run", reuse_last_task_id=False,
                 auto_connect_frameworks={"detect_repository": False, "matplotlib": False},
                 auto_resource_monitoring=False, auto_connect_streams=False,
                 auto_connect_arg_parser=False)
task.connect({"lr": 0.01, "layers": 3}, name="Args")
task.add_tags(["baseline"])
task.set_comment("a note")
log = task.get_logger()
for i, v in enumerate([1.5, 1.25, 0.5]):
    log.report_scalar("loss", "train", value=v, iteration=i * 10)
log.report_text("hello console", print_console=False)
log.report_text("an error line", level=logging.ERROR, print_console=False)
log.report_histogram("weights", "layer1", values=[3, 1, 2], iteration=5)
import numpy as np
log.report_image("samples", "img", iteration=2, image=np.zeros((4, 4, 3), dtype=np.uint8))
path = os.path.join(sys.argv[1], "model.bin")
open(path, "wb").write(b"weights!")
task.upload_artifact("model", artifact_object=path, wait_on_upload=True)
print(task.id)
task.close()
"""


def _sdk_session(tmp_path: Path) -> tuple[Path, str]:
    """A session the SDK writes itself, in an isolated HOME / cache, offline."""
    home = tmp_path / "home"
    home.mkdir()
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    # no repository detection: it would also ask ClearML's update server (no network here)
    env.update(HOME=str(home), CLEARML_CACHE_DIR=str(cache), CLEARML_OFFLINE_MODE="1")
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    task_id = [line for line in out.stdout.splitlines() if line.startswith("offline-")][-1].strip()
    return cache / "offline", task_id


def test_source_reads_a_session_the_sdk_wrote_without_changing_it(tmp_path):
    offline, task_id = _sdk_session(tmp_path)
    assert (offline / f"{task_id}.zip").exists() and (offline / task_id).is_dir()
    before = _tree(offline)
    tables = read_plain_export(_export(f"clearml:{offline}", tmp_path / "back"))
    assert _tree(offline) == before                       # reading changed nothing, created nothing
    assert list(tables) == [("vision/cls", task_id)]     # folder + zip of one task: one run
    table = tables[("vision/cls", task_id)]
    rows = {r["attribute_path"]: r for r in table.filter(pc.is_null(table.column("step"))).to_pylist()}
    assert rows["sys/name"]["string_value"] == "plain run"
    assert rows["sys/tags"]["string_set_value"] == ["baseline"]
    assert rows["sys/description"]["string_value"] == "a note"
    assert rows["Args/lr"]["string_value"] == "0.01" and rows["Args/layers"]["string_value"] == "3"
    artifact = rows["artifacts/model"]["file_value"]["path"]
    exported = tmp_path / "back" / "files" / [p.name for p in (tmp_path / "back" / "files").iterdir()][0]
    assert (exported / artifact).read_bytes() == b"weights!"

    def series(path):
        got = table.filter(pc.equal(table.column("attribute_path"), path)).to_pylist()
        return sorted(got, key=lambda r: r["step"])

    loss = series("loss/train")
    assert [(int(r["step"]), r["float_value"]) for r in loss] == [(0, 1.5), (10, 1.25), (20, 0.5)]
    events = {(e["iter"], e["value"]): e["timestamp"] for e in _events(offline / f"{task_id}.zip")
              if e["type"] == "training_stats_scalar"}
    assert [int(r["timestamp"].timestamp() * 1000) for r in loss] == [events[(0, 1.5)], events[(10, 1.25)],
                                                                      events[(20, 0.5)]]
    assert "hello console" in "\n".join(r["string_value"] for r in series("monitoring/stdout"))
    assert [r["string_value"] for r in series("monitoring/stderr")] == ["an error line"]
    (plot,) = series("clearml/plots/weights/layer1")
    assert int(plot["step"]) == 5 and json.loads(plot["string_value"])["data"][0]["y"] == [3, 1, 2]
    (image,) = series("samples/img")
    assert int(image["step"]) == 2
    assert (exported / image["file_value"]["path"]).read_bytes()[:3] == b"\xff\xd8\xff"   # ClearML's JPEG


def _export(src: str, dest: Path, *args: str) -> Path:
    code, report, out = run_cli("export", src, str(dest), *args)
    assert code == 0, out
    return dest


# -- W&B offline runs -> ClearML offline sessions (the "done" command) ---------------
def test_wandb_offline_runs_copy_into_sessions_with_every_point_and_time(tmp_path):
    import wandb_offline_support as wos

    root = tmp_path / "w"
    wos.make_runs(root)
    src_before = _tree(root)
    dest = tmp_path / "offline"
    code, plan, out = run_cli("plan", f"wandb:{root / 'wandb'}", f"clearml:{dest}")
    assert code == 0, out
    code, report, out = run_cli("copy", f"wandb:{root / 'wandb'}", f"clearml:{dest}")
    assert code == 0, out
    assert report["totals"]["moved"] == wos.ENTRIES and not report["totals"]["drops"]
    # every history point the W&B source read landed (the source reads them once more here)
    src_export = read_plain_export(_export(f"wandb:{root / 'wandb'}", tmp_path / "src"))
    src_points = sum(t.filter(pc.is_valid(t.column("step"))).num_rows for t in src_export.values())
    assert report["totals"]["points"] == src_points == sum(r["points"] for r in plan["runs"])
    code, verify, out = run_cli("verify", f"wandb:{root / 'wandb'}", f"clearml:{dest}")
    assert code == 0 and verify["totals"]["verified"] == wos.ENTRIES, out
    assert _tree(root) == src_before                    # the W&B folders are untouched

    # one ClearML session zip per run, nothing else but trackport's (empty) staging folder
    zips = _zips(dest)
    assert len(zips) == wos.ENTRIES
    assert sorted(p.name for p in dest.iterdir()) == sorted([".trackport", *(z.name for z in zips)])
    assert not any((dest / ".trackport").iterdir())
    rich = next(z for z in zips if _task(z)["name"] == "rich run")
    task = _task(rich)
    assert task["project_name"] == f"{wos.ENTITY}/{wos.PROJECT}" and set(task["tags"]) == {"baseline", "ünï"}
    assert task["comment"] == "notes ✓"
    assert task["hyperparams"]["trackport"]["complete"]["value"] == "true"
    assert task["hyperparams"]["trackport"]["origin_run"]["value"] == wos.RICH_ID
    # ClearML's own events hold every loss point at its W&B step with its W&B time (ms)
    loss = sorted((e["iter"], e.get("timestamp"), e["value"]) for e in _events(rich)
                  if e["type"] == "training_stats_scalar" and (e["metric"], e["variant"]) == ("loss", "loss"))
    expected = [(s, round(ts * 1000), v) for s, vals, ts in wos.HISTORY for k, v in vals.items() if k == "loss"]
    assert [(i, t) for i, t, _ in loss] == [(s, t) for s, t, _ in expected]
    assert [v for _, _, v in loss] == [0.0 if v != v or v in (float("inf"),) else v for _, _, v in expected]

    # a rerun moves nothing and writes no second session
    code, report, out = run_cli("copy", f"wandb:{root / 'wandb'}", f"clearml:{dest}")
    assert code == 0 and report["totals"]["skipped"] == wos.ENTRIES and report["totals"]["points"] == 0, out
    assert _zips(dest) == zips


def test_sample_export_moves_every_point_and_verifies(tmp_path):
    sample = REPO / "examples" / "sample-export"
    before = _tree(sample)
    dest = tmp_path / "offline"
    code, report, out = run_cli("copy", str(sample), f"clearml:{dest}")
    assert code == 0, out
    exported = read_plain_export(sample)
    points = sum(t.filter(pc.is_valid(t.column("step"))).num_rows for t in exported.values())
    assert report["totals"]["points"] == points and report["totals"]["moved"] == len(exported)
    assert not report["totals"]["drops"]
    code, verify, out = run_cli("verify", str(sample), f"clearml:{dest}")
    assert code == 0 and verify["totals"]["verified"] == len(exported), out
    assert len(_zips(dest)) == len(exported)
    assert _tree(sample) == before


def test_a_partial_session_is_replaced_not_duplicated_and_a_grown_run_replaces_its_zip(tmp_path):
    runs = build_corpus(big=False)
    scalars = next(r for r in runs if r.case == "fork_parent")
    src = tmp_path / "src"
    write_exporter_export(src, [scalars])
    dest = tmp_path / "offline"
    code, report, out = run_cli("copy", str(src), f"clearml:{dest}")
    assert code == 0, out
    (first,) = _zips(dest)
    # a killed copy's leftovers: the staging folder of the run, with its origin, and no mark
    from trackport.connectors.clearml import mapping as mp
    from trackport.core.registry import open_sink, open_source

    source = open_source(str(src))
    (ref,) = list(source.list_runs(__import__("trackport.core.model", fromlist=["Selection"]).Selection()))
    origin = source.origin(ref)
    staging = dest / mp.STAGING / mp.origin_key(origin.uri, origin.project_id, origin.run_id)
    first.unlink()
    staging.mkdir(parents=True)
    (staging / "origin.json").write_text(json.dumps({"origin": {"uri": origin.uri, "project_id": origin.project_id,
                                                                "run_id": origin.run_id}}))
    (staging / "scalars.arrow").write_bytes(b"half")
    sink = open_sink(f"clearml:{dest}", read_only=True)
    found = sink.find_run(origin)
    assert found is not None and not found.complete
    code, report, out = run_cli("copy", str(src), f"clearml:{dest}")
    assert code == 0 and report["runs"][0]["status"] == "repaired", out
    (second,) = _zips(dest)
    assert not staging.exists()
    assert run_cli("verify", str(src), f"clearml:{dest}")[0] == 0
    # the source run grows: the copy writes a new session and removes the old zip
    grown = scalars.table
    import pyarrow as pa

    extra = grown.slice(0, 1).set_column(grown.schema.get_field_index("attribute_path"), "attribute_path",
                                         pa.array(["config/added"], pa.string()))
    extra = extra.set_column(extra.schema.get_field_index("step"), "step", pa.nulls(1, extra.schema.field("step").type))
    extra = extra.set_column(extra.schema.get_field_index("timestamp"), "timestamp",
                             pa.nulls(1, extra.schema.field("timestamp").type))
    scalars.table = pa.concat_tables([grown, extra])
    write_exporter_export(tmp_path / "src2", [scalars])
    import shutil

    shutil.rmtree(src)
    shutil.move(str(tmp_path / "src2"), src)
    code, report, out = run_cli("copy", str(src), f"clearml:{dest}")
    assert code == 0 and report["runs"][0]["status"] != "skipped", out
    (third,) = _zips(dest)
    assert third != second
    assert run_cli("verify", str(src), f"clearml:{dest}")[0] == 0
    sink.close()


def test_the_users_home_and_clearml_settings_are_left_alone(tmp_path, monkeypatch):
    """The writer process runs with its own HOME and config: ~/.clearml and ~/clearml.conf
    stay as they were, and a CLEARML_TASK_ID / API host of the user's changes nothing."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLEARML_TASK_ID", "not-a-task")          # would make the SDK act as an agent
    monkeypatch.setenv("CLEARML_API_HOST", "http://127.0.0.1:9")
    src = tmp_path / "src"
    write_exporter_export(src, [r for r in build_corpus(big=False) if r.case == "empty"])
    code, report, out = run_cli("copy", str(src), f"clearml:{tmp_path / 'offline'}")
    assert code == 0, out
    assert list(home.iterdir()) == []
    assert len(_zips(tmp_path / "offline")) == 1


# -- conformance (trackport.testing.conformance) ----------------------------------------------
def test_conformance_round_trip(tmp_path):
    # exact round trip: what ClearML cannot hold natively is kept in the trackport record
    conformance.round_trip(conformance.Target(f"clearml:{tmp_path / 'offline'}"), tmp_path)


def test_conformance_run_times(tmp_path):
    conformance.run_times(conformance.Target(f"clearml:{tmp_path / 'offline'}"), tmp_path)


def test_conformance_files_and_bytes(tmp_path):
    conformance.files_and_bytes(conformance.Target(f"clearml:{tmp_path / 'offline'}"), tmp_path)


def test_conformance_sigkill_heals(tmp_path):
    conformance.sigkill_heals(conformance.Target(f"clearml:{tmp_path / 'offline'}"), tmp_path)
