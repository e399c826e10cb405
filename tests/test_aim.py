"""Aim connector (`aim:REPO`): real repositories written and read by the `aim` package.

Aim publishes no wheels for Python 3.13 (its RocksDB binding, aimrocks, has none).  On
Python <= 3.12 these tests run in this process; on 3.13 and later the one test defined here
runs this very file with pytest in a venv built from pyenv's Python 3.12 with aim installed
(cached under ~/.cache/trackport-tests, see aim_venv.py) and fails with its output unless
every test passes there.  Nothing is skipped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
SAMPLE = REPO_ROOT / "examples" / "sample-export"
IN_PROCESS = sys.version_info < (3, 13)


def _snapshot(root: Path) -> dict:
    """Every path under root with its bytes' digest and mtime (folders too)."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.blake2b(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (digest, st.st_mtime_ns)
    return out


if not IN_PROCESS:

    def test_aim_suite_in_python312_venv():
        from aim_venv import run_suite_in_venv

        passed = run_suite_in_venv(HERE / "test_aim.py")
        assert passed >= 8, f"only {passed} Aim tests passed in the Python 3.12 venv"

else:
    import pyarrow as pa
    import pyarrow.compute as pc

    from support import read_plain_export, run_cli, runs_by_id
    from trackport.testing import conformance

    def _copy_ok(src: str, dest: str, *args: str) -> dict:
        code, report, out = run_cli("copy", src, dest, *args)
        assert code == 0, out
        return report

    # -- conformance (trackport.testing.conformance) ----------------------------------------

    def test_conformance_round_trip(tmp_path):
        conformance.round_trip(conformance.Target(f"aim:{tmp_path / 'repo'}"), tmp_path)

    def test_conformance_run_times(tmp_path):
        conformance.run_times(conformance.Target(f"aim:{tmp_path / 'repo'}"), tmp_path)

    def test_conformance_files_and_bytes(tmp_path):
        conformance.files_and_bytes(conformance.Target(f"aim:{tmp_path / 'repo'}"), tmp_path)

    def test_conformance_sigkill_heals(tmp_path):
        conformance.sigkill_heals(conformance.Target(f"aim:{tmp_path / 'repo'}"), tmp_path)

    # -- what lands in Aim, seen through Aim's own SDK ---------------------------------------

    def test_sink_writes_what_aim_shows(tmp_path):
        """The corpus, read back with Aim's own Run API: deterministic hash, nested params,
        metric values with their steps and wall times, Text, Distribution, Image bytes, tags."""
        from aim.sdk.repo import Repo
        from aim.sdk.run import Run

        from trackport.connectors.aim import mapping as mp
        from trackport.testing.corpus import build_corpus, corpus_case
        from trackport.testing.exporter_layout import write_exporter_export

        runs = build_corpus(big=False)
        src = tmp_path / "src"
        write_exporter_export(src, runs)
        report = _copy_ok(str(src), f"aim:{tmp_path / 'repo'}")
        assert report["totals"]["moved"] == len(runs)
        repo = Repo(str(tmp_path / "repo"))

        def open_run(case):
            run = corpus_case(runs, case)
            h = mp.run_hash("parquet:neptune-exporter", run.project_id, run.run_id)
            assert runs_by_id(report)[run.run_id]["dest_id"] == h
            return run, Run(h, repo=repo, read_only=True)

        _, nested = open_run("nested_config")
        assert nested.name == "corpus-nested_config"
        assert nested.experiment == "trackport-tests/corpus"
        meta = repo.request_tree("meta", nested.hash, read_only=True).subtree(("meta", "chunks", nested.hash))
        params = meta.collect("attrs")
        assert params["config"]["optimizer"]["lr"] == 0.001
        assert params["config"]["optimizer"]["betas"] == {"0": 0.9, "1": 0.999}
        assert params["config"]["data"]["sources"] == ["imagenet", "coco"]
        assert params[mp.MARK_KEY]["complete"] is True

        scalars, run = open_run("scalars")
        assert sorted(run.tags) == ["baseline", "tag with space", "ünïcode"]
        assert run.creation_time == pytest.approx((1_714_521_600_000 + 3_600_000 + 123) / 1000)

        fork, _ = open_run("fork_parent")
        from trackport.connectors.aim.client import AimReader

        reader = AimReader(tmp_path / "repo")
        h = mp.run_hash("parquet:neptune-exporter", fork.project_id, fork.run_id)
        meta, seqs = reader.meta(h), reader.seqs(h)
        (ctx_id, ctx, name, trace), = reader.sequences(meta)
        assert (ctx, name, trace["dtype"]) == ({}, "metrics/loss", "float")
        points = reader.points(seqs, h, ctx_id, name, 2)
        table = fork.table.filter(pc.equal(fork.table.column("attribute_path"), "metrics/loss"))
        want = [(int(s), v, int(t.timestamp() * 1000 + 0.5))
                for s, v, t in zip(table.column("step").to_pylist(), table.column("float_value").to_pylist(),
                                   table.column("timestamp").to_pylist())]
        assert [(s, v, round(t * 1000)) for s, v, _, t in points] == want
        assert trace["last_step"] == 99 and trace["max"] == max(v for _, v, _ in want)

        # histograms: a Distribution over the same range; the uneven one keeps its exact edges
        hist, _ = open_run("histograms")
        h = mp.run_hash("parquet:neptune-exporter", hist.project_id, hist.run_id)
        meta, seqs = reader.meta(h), reader.seqs(h)
        got = {name: (c, t) for c, _, name, t in reader.sequences(meta)}
        assert got["metrics/grad_hist"][1]["dtype"] == "aim.distribution"
        (step0, dist, _, _), _ = reader.points(seqs, h, got["metrics/grad_hist"][0], "metrics/grad_hist", 1)
        assert list(dist.range) == [0.0, 1000.0] and dist.bin_count == 4
        assert dist.weights.tolist() == [5.0, 4.0, 3.0, 2.0]
        assert dist.storage["trackport"]["edges"] == [0.0, 1.0, 10.0, 100.0, 1000.0]

        # images: the PNG bytes exactly as the source held them
        files, _ = open_run("files")
        h = mp.run_hash("parquet:neptune-exporter", files.project_id, files.run_id)
        meta, seqs = reader.meta(h), reader.seqs(h)
        got = {name: (c, t) for c, _, name, t in reader.sequences(meta)}
        assert got["images/samples"][1]["dtype"] == "aim.image"
        from trackport.connectors.aim.client import object_bytes

        images = reader.points(seqs, h, got["images/samples"][0], "images/samples", 1)
        prefix = f"{files.project_id}/{files.run_id}/images/samples"
        assert [object_bytes(v) for _, v, _, _ in images] == [files.files[f"{prefix}/{i}.png"] for i in range(3)]
        # the other files are Aim artifacts under REPO/aim-artifacts/<hash>/
        ckpt = tmp_path / "repo" / "aim-artifacts" / h / "files" / "model_checkpoint" / "model_checkpoint"
        assert ckpt.read_bytes() == files.files[f"{files.project_id}/{files.run_id}/files/model_checkpoint"]
        reader.close()

    # -- the shipped sample export, reruns, and the source left as it was ---------------------

    def test_sample_export_every_point_verify_rerun_and_read_only(tmp_path):
        import pyarrow.parquet as pq

        repo = tmp_path / "repo"
        report = _copy_ok(str(SAMPLE), f"aim:{repo}")
        rows = pa.concat_tables([pq.read_table(p) for p in sorted((SAMPLE / "data").rglob("*.parquet"))])
        series = pc.is_in(rows.column("attribute_type"),
                          value_set=pa.array(["float_series", "string_series", "histogram_series", "file_series"]))
        assert report["totals"]["points"] == pc.sum(series).as_py()
        assert not report["totals"]["drops"]
        code, verify, out = run_cli("verify", str(SAMPLE), f"aim:{repo}")
        assert code == 0, out
        assert verify["totals"]["verified"] == len(report["runs"])
        again = _copy_ok(str(SAMPLE), f"aim:{repo}")
        assert again["totals"]["skipped"] == len(report["runs"]) and not again["totals"].get("moved")

        # reading the Aim repository changes nothing in it
        before = _snapshot(repo)
        back = tmp_path / "back"
        code, _, out = run_cli("export", f"aim:{repo}", str(back))
        assert code == 0, out
        assert len(read_plain_export(back)) == len(report["runs"])
        assert _snapshot(repo) == before

    # -- Aim as a source: a run written by Aim itself --------------------------------------------

    NATIVE = r'''
import os, sys, numpy as np
from aim import Run, Text, Distribution, Image
run = Run(repo=sys.argv[1], experiment="native-exp", system_tracking_interval=None,
          capture_terminal_logs=False)
run["hparams"] = {"lr": 0.01, "optimizer": {"name": "adam", "betas": [0.9, 0.99]}, "n": None}
run.name = "native run"
run.add_tag("aim-tag")
for i in range(5):
    run.track(1.0 / (i + 1), name="loss", step=i * 10, epoch=i // 2, context={"subset": "train"})
    run.track(float(i), name="acc", step=i)
run.track(Text("hello aim"), name="notes", step=3)
run.track(Distribution(hist=[1, 2, 3], bin_range=(0.0, 3.0)), name="weights", step=2)
img = np.zeros((4, 5, 3), dtype=np.uint8); img[1, 2] = [255, 0, 0]
run.track(Image(img), name="samples", step=7)
print(run.hash, flush=True)
if sys.argv[2] == "kill":      # a training that died mid-run: no close, write-ahead logs not flushed
    os._exit(0)
run.close()
'''

    def _native_run(repo: Path, how: str) -> str:
        from aim.sdk.repo import Repo

        if not (repo / ".aim").exists():
            Repo(str(repo), init=True)
        done = subprocess.run([sys.executable, "-c", NATIVE, str(repo), how], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    def test_source_reads_a_native_aim_run_without_changing_it(tmp_path):
        repo = tmp_path / "native"
        closed = _native_run(repo, "close")
        killed = _native_run(repo, "kill")
        wal = [p for p in (repo / ".aim").rglob("*.log") if p.stat().st_size and killed in str(p)]
        assert wal, "the killed run left no unflushed write-ahead log: the read-only check proves less"
        before = _snapshot(repo)
        back = tmp_path / "back"
        code, report, out = run_cli("export", f"aim:{repo}", str(back))
        assert code == 0, out
        assert _snapshot(repo) == before             # no lock file, no flushed log, no folder
        tables = read_plain_export(back)
        assert set(tables) == {("native-exp", closed), ("native-exp", killed)}
        for h in (closed, killed):
            t = tables[("native-exp", h)]
            rows = {(r["attribute_path"], r["step"]): r for r in t.to_pylist()}
            assert rows[("sys/name", None)]["string_value"] == "native run"
            assert rows[("sys/tags", None)]["string_set_value"] == ["aim-tag"]
            assert rows[("hparams/optimizer/name", None)]["string_value"] == "adam"
            assert rows[("hparams/optimizer/betas", None)]["string_value"] == "[0.9, 0.99]"
            assert rows[("hparams/lr", None)]["float_value"] == 0.01
            loss = sorted((r["step"], r["float_value"]) for r in t.to_pylist()
                          if r["attribute_path"] == "loss/subset=train")
            assert loss == [(Decimal(i * 10), 1.0 / (i + 1)) for i in range(5)]
            epochs = sorted((r["step"], r["float_value"]) for r in t.to_pylist()
                            if r["attribute_path"] == "aim/epoch/loss/subset=train")
            assert epochs == [(Decimal(i * 10), float(i // 2)) for i in range(5)]
            assert rows[("notes", Decimal(3))]["string_value"] == "hello aim"
            assert rows[("weights", Decimal(2))]["histogram_value"] == {
                "type": "COUNTING", "edges": [0.0, 1.0, 2.0, 3.0], "values": [1.0, 2.0, 3.0]}
            image = rows[("samples", Decimal(7))]
            from trackport.connectors.parquet.layout import project_files_dir

            data = (project_files_dir(back, "native-exp") / image["file_value"]["path"]).read_bytes()
            assert data.startswith(b"\x89PNG")
            stamps = [r["timestamp"] for r in t.to_pylist() if r["attribute_path"] == "acc"]
            assert len(stamps) == 5 and all(s is not None for s in stamps)
        tr = runs_by_id(report)[closed]["transformations"]
        assert tr["context_in_path"] >= 1 and tr["epoch_series"] == 5 and tr["list_param_to_json"] == 1

    # -- W&B offline runs: every history point, where `aim convert wandb` samples ---------------

    def test_wandb_offline_runs_every_point_verify_clean(tmp_path):
        import wandb_offline_support as wos

        root = tmp_path / "wb"
        root.mkdir()
        wos.make_runs(root)
        src = f"wandb:{root / 'wandb'}"
        repo = tmp_path / "repo"
        report = _copy_ok(src, f"aim:{repo}")
        assert report["totals"]["moved"] == wos.ENTRIES and not report["totals"]["drops"]
        code, verify, out = run_cli("verify", src, f"aim:{repo}")
        assert code == 0, out
        assert verify["totals"]["verified"] == wos.ENTRIES
        # every series point of the W&B source is in Aim, step and time included
        direct, back = tmp_path / "direct", tmp_path / "back"
        assert run_cli("export", src, str(direct))[0] == 0
        assert run_cli("export", f"aim:{repo}", str(back))[0] == 0
        want, got = read_plain_export(direct), read_plain_export(back)
        assert set(want) == set(got)
        for key in want:
            def points(t):
                keep = t.filter(pc.is_in(t.column("attribute_type"), value_set=pa.array(
                    ["float_series", "string_series", "histogram_series", "file_series"])))
                return conformance.canonical_rows(keep)
            assert points(got[key]) == points(want[key])
            assert len(points(want[key])) > 0 or key[0].startswith("wandb-artifacts/")   # an artifact has none
        rich = want[(f"{wos.ENTITY}/{wos.PROJECT}", wos.RICH_ID)]
        loss = rich.filter(pc.equal(rich.column("attribute_path"), "loss"))
        assert loss.num_rows == sum(1 for _, v, _ in wos.HISTORY if "loss" in v)
        assert _copy_ok(src, f"aim:{repo}")["totals"]["skipped"] == wos.ENTRIES

    # -- Aim's own UI server finds the copied runs and points -----------------------------------

    def _free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def test_aim_up_serves_the_copied_runs(tmp_path):
        import urllib.request

        from trackport.connectors.aim import mapping as mp
        from trackport.testing.corpus import build_corpus, corpus_case
        from trackport.testing.exporter_layout import write_exporter_export

        runs = build_corpus(big=False)
        picked = [corpus_case(runs, "fork_parent"), corpus_case(runs, "string_series")]
        src = tmp_path / "src"
        write_exporter_export(src, picked)
        repo = tmp_path / "repo"
        _copy_ok(str(src), f"aim:{repo}")
        port = _free_port()
        aim = Path(sys.executable).with_name("aim")
        proc = subprocess.Popen([str(aim), "up", "--host", "127.0.0.1", "--port", str(port), "--repo", str(repo)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/projects/", timeout=5) as r:
                        r.read()
                    break
                except OSError:
                    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
                    assert time.monotonic() < deadline, "aim up did not answer in 120 s"
                    time.sleep(0.5)
            h = mp.run_hash("parquet:neptune-exporter", picked[0].project_id, picked[0].run_id)
            with urllib.request.urlopen(f"{base}/runs/{h}/info/", timeout=30) as r:
                info = json.loads(r.read())
            assert info["props"]["name"] == "corpus-fork_parent"
            assert info["props"]["experiment"]["name"] == "trackport-tests/corpus"
            assert [t["name"] for t in info["traces"]["metric"]] == ["metrics/loss"]
            req = urllib.request.Request(f"{base}/runs/{h}/metric/get-batch/", method="POST",
                                         data=json.dumps([{"name": "metrics/loss", "context": {}}]).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                (trace,) = json.loads(r.read())
            table = picked[0].table
            loss = table.filter(pc.equal(table.column("attribute_path"), "metrics/loss"))
            assert trace["iters"] == [int(s) for s in loss.column("step").to_pylist()]
            assert trace["values"] == loss.column("float_value").to_pylist()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
