"""Minfx connector: the Neptune 2.x sink writing through the real `minfx` client, offline.

No Minfx server can run here (it is a hosted service), so the destination is the
client's own offline mode: the queues `minfx sync` uploads.  Oracles independent of
trackport: the queue files the client wrote (JSON lines, counted here directly), their
metadata naming the minfx client version, and runs written by `minfx.init_run` itself
read back through `minfx:PATH`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from neptune_support import sorted_string_sets
from support import read_plain_export, run_cli, runs_by_id
from trackport.connectors.neptune import mapping as nmp
from trackport.testing import conformance

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sample-export"


def _args(data: Path) -> list[str]:
    return ["--minfx-mode", "offline", "--minfx-data-dir", str(data)]


def _target(tmp_path: Path) -> conformance.Target:
    data = tmp_path / "minfx-data"
    return conformance.Target("minfx://trackport-tests/corpus", _args(data), back=f"minfx:{data}",
                              expect=lambda run: sorted_string_sets(run.table))


def _points(tables) -> int:
    return sum(t.filter(pc.is_valid(t.column("step"))).num_rows for t in tables)


def _queue_ops(data: Path) -> dict[Path, list[dict]]:
    """queue folder -> the operations the minfx client wrote there (its data-N.log JSON lines)."""
    out: dict[Path, list[dict]] = {}
    for log in sorted(data.rglob("data-*.log")):
        out.setdefault(log.parent, []).extend(json.loads(line)["obj"] for line in log.read_text().splitlines() if line)
    return out


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_minfx_is_listed_with_its_options_and_capabilities():
    import os
    import subprocess
    import sys

    import trackport

    env = {**os.environ, "PYTHONPATH": str(Path(trackport.__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "trackport", "connectors", "--json"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    (item,) = [c for c in json.loads(done.stdout)["connectors"] if c["name"] == "minfx"]
    assert item["schemes"] == ["minfx"] and item["installed"]
    assert "--minfx-mode" in {o["flag"] for o in item["options"]}
    caps = item["capabilities"]["minfx"]
    assert "error" not in caps and "histogram_in_restore" in json.dumps(caps)


def test_sample_export_moves_every_point_through_the_minfx_client(tmp_path):
    import minfx

    before = _tree_digest(SAMPLE)
    parts = [pq.read_table(p) for p in sorted((SAMPLE / "data").glob("*/*.parquet"))]
    data = tmp_path / "data"
    code, report, out = run_cli("copy", str(SAMPLE), "minfx://ws/proj", *_args(data))
    assert code == 0, out
    assert report["totals"]["moved"] == 5 and not report["totals"]["drops"]
    assert report["totals"]["points"] == _points(parts) == 5330

    # the queues are the minfx client's: its version in their metadata, every float point in them
    queues = _queue_ops(data)
    assert len(queues) == 5
    for queue in queues:
        meta = json.loads((queue / "metadata.json").read_text())
        assert meta["neptuneClientVersion"] == minfx.__version__ and meta["mode"] == "offline"
    floats = sum(len(op["values"]) for ops in queues.values() for op in ops if op["type"] == "LogFloats")
    float_rows = sum(t.filter(pc.equal(t.column("attribute_type"), "float_series")).num_rows for t in parts)
    assert floats == float_rows
    for ops in queues.values():
        assigned = {"/".join(op["path"]): op.get("value") for op in ops if op["type"].startswith("Assign")}
        assert assigned[nmp.COMPLETE] is True and assigned[nmp.ORIGIN_URI].startswith("parquet:")

    code, checked, out = run_cli("verify", str(SAMPLE), "minfx://ws/proj", *_args(data))
    assert code == 0 and checked["totals"]["verified"] == 5, out
    code, again, out = run_cli("copy", str(SAMPLE), "minfx://ws/proj", *_args(data))
    assert code == 0 and again["totals"]["skipped"] == 5 and again["totals"]["points"] == 0, out
    assert len(_queue_ops(data)) == 5
    assert _tree_digest(SAMPLE) == before


def test_wandb_offline_runs_move_every_history_point_and_verify_clean(tmp_path):
    import wandb_offline_support as wos

    wos.make_runs(tmp_path / "w")
    src = f"wandb:{tmp_path / 'w' / 'wandb'}"
    before = _tree_digest(tmp_path / "w")
    code, exported, out = run_cli("export", src, str(tmp_path / "wandb-export"))
    assert code == 0, out
    source = read_plain_export(tmp_path / "wandb-export")
    data = tmp_path / "data"
    # --minfx-keep-all: every history point, not only what the Neptune W&B mapping keeps
    args = [*_args(data), "--minfx-keep-all"]
    code, report, out = run_cli("copy", src, "minfx://ws", *args)
    assert code == 0, out
    assert report["totals"]["moved"] == wos.ENTRIES and not report["totals"]["drops"]
    assert report["totals"]["points"] == _points(source.values()) == exported["totals"]["points"]
    code, checked, out = run_cli("verify", src, "minfx://ws", *args)
    assert code == 0 and checked["totals"]["verified"] == wos.ENTRIES, out
    code, again, out = run_cli("copy", src, "minfx://ws", *args)
    assert code == 0 and again["totals"]["skipped"] == wos.ENTRIES, out
    assert _tree_digest(tmp_path / "w") == before


def test_a_partial_run_is_repaired_without_duplicates(tmp_path):
    from trackport.testing.corpus import build_corpus
    from trackport.testing.exporter_layout import write_exporter_export

    corpus = [r for r in build_corpus(big=False) if r.case in ("scalars", "steps")]
    src = tmp_path / "src"
    write_exporter_export(src, corpus)
    data = tmp_path / "data"
    assert run_cli("copy", str(src), "minfx://ws/proj", *_args(data))[0] == 0
    queue = next(q for q, ops in _queue_ops(data).items()
                 if any(op.get("value") == "CORP-6" for op in ops))
    log = queue / "data-1.log"
    log.write_bytes(b"\n".join(l for l in log.read_bytes().split(b"\n") if b"trackport\", \"complete" not in l))
    code, report, out = run_cli("copy", str(src), "minfx://ws/proj", *_args(data))
    assert code == 0, out
    assert {r["run_id"]: r["status"] for r in report["runs"]} == {"CORP-1": "skipped", "CORP-6": "repaired"}
    assert len(_queue_ops(data)) == 2
    assert run_cli("verify", str(src), "minfx://ws/proj", *_args(data))[0] == 0


def test_runs_the_minfx_client_wrote_offline_are_a_source(tmp_path, monkeypatch):
    import minfx
    from minfx.neptune_v2.types import File

    data = tmp_path / "client-data"
    monkeypatch.setenv("NEPTUNE_DATA_DIRECTORY", str(data))
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 24)
    run = minfx.init_run(project="ws/native", mode="offline", capture_hardware_metrics=False,
                         capture_stdout=False, capture_stderr=False, capture_traceback=False,
                         git_ref=False, source_files=[])
    run["params/lr"] = 0.01
    run["params/name"] = "adam"
    for step in range(4):
        run["train/loss"].append(1.0 / (step + 1), step=step, timestamp=1_714_521_600 + step)
    run["logs"].append("hello", step=0, timestamp=1_714_521_600)
    run["weights"].upload(str(png))
    run.stop()
    before = _tree_digest(data)

    out = tmp_path / "export"
    code, report, text = run_cli("export", f"minfx:{data}", str(out), "--minfx-project", "ws/native")
    assert code == 0, text
    (table,) = read_plain_export(out).values()
    rows = {(r["attribute_path"], None if r["step"] is None else int(r["step"])): r for r in table.to_pylist()}
    assert [rows[("train/loss", s)]["float_value"] for s in range(4)] == [1.0, 0.5, 1 / 3, 0.25]
    assert int(rows[("train/loss", 3)]["timestamp"].timestamp()) == 1_714_521_603
    assert rows[("params/lr", None)]["float_value"] == 0.01 and rows[("params/name", None)]["string_value"] == "adam"
    assert rows[("logs", 0)]["string_value"] == "hello"
    assert rows[("weights", None)]["attribute_type"] == "file"
    assert report["totals"]["points"] == 5
    assert _tree_digest(data) == before


def test_uri_mistakes_are_usage_errors(tmp_path):
    from trackport.core.errors import UsageError
    from trackport.core.registry import open_sink, open_source

    with pytest.raises(UsageError, match="minfx://WORKSPACE"):
        open_sink(f"minfx:{tmp_path}", {"minfx_mode": "offline"})
    with pytest.raises(UsageError, match="minfx:PATH"):
        open_source("minfx://ws/proj", {})
    with pytest.raises(UsageError, match="--minfx-mode"):
        open_sink("minfx://ws/p", {"minfx_mode": "sync", "minfx_data_dir": str(tmp_path)})
    with pytest.raises(UsageError, match="no Minfx data"):
        open_source(f"minfx:{tmp_path / 'absent'}", {})


# -- conformance (trackport.testing.conformance) ------------------------------------------------
def test_conformance_round_trip(tmp_path):
    conformance.round_trip(_target(tmp_path), tmp_path)


def test_conformance_run_times(tmp_path):
    conformance.run_times(_target(tmp_path), tmp_path)


def test_conformance_files_and_bytes(tmp_path):
    conformance.files_and_bytes(_target(tmp_path), tmp_path)


def test_conformance_sigkill_heals(tmp_path):
    conformance.sigkill_heals(_target(tmp_path), tmp_path)
