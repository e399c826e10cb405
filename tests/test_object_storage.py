"""Parquet exports on object storage (docs/object-storage.md), against moto's S3 server.

moto runs as a real HTTP server on 127.0.0.1 (server mode); trackport reaches it through
s3fs with the standard AWS settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), in-process
and as `python -m trackport` subprocesses: export, verify, inspect and copy back exactly;
a writer SIGKILLed mid-export, then the same command again; two exporters at once; and the
URIs that must stay usage errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from s3_server import FOREIGN_AWS, aws_env, start_s3
from support import canonical_rows, read_plain_export, run_cli, runs_by_id
from trackport.connectors.parquet import layout
from trackport.testing.corpus import CorpusRun, build_corpus
from trackport.testing.exporter_layout import write_exporter_export


TESTS = Path(__file__).resolve().parent
SRC_PATH = str(TESTS.parent / "src")


@pytest.fixture(scope="module")
def s3_endpoint():
    server, endpoint = start_s3()
    yield endpoint
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A new bucket on the moto server; the AWS settings every process reads."""
    for name in FOREIGN_AWS:
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_env(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    bucket = f"tp-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return fs, bucket


@pytest.fixture(scope="module")
def corpus() -> list[CorpusRun]:
    return build_corpus(big=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("objects-src") / "export"
    write_exporter_export(root, corpus, part_rows=700)   # multi-part runs
    return root


def _manifests(fs, prefix: str) -> dict[str, dict]:
    return {name: json.loads(fs.cat_file(name)) for name in fs.find(f"{prefix}/data")
            if name.endswith(layout.RUN_MANIFEST_SUFFIX)}


def _check_runs(fs, prefix: str, corpus: list[CorpusRun]) -> None:
    """Each run once: one manifest per run, listing parts that exist and hold its rows."""
    manifests = _manifests(fs, prefix)
    assert sorted((m["project_id"], m["run_id"]) for m in manifests.values()) == \
        sorted((r.project_id, r.run_id) for r in corpus)
    for name, manifest in manifests.items():
        folder = name.rsplit("/", 1)[0]
        for part in manifest["parts"]:
            assert fs.exists(f"{folder}/{part}"), (name, part)


def _compare_back(local: Path, corpus: list[CorpusRun]) -> None:
    """A local export, read knowing only neptune-exporter's layout, holds the corpus exactly."""
    plain = read_plain_export(local)
    assert set(plain) == {(r.project_id, r.run_id) for r in corpus}
    for run in corpus:
        assert canonical_rows(plain[(run.project_id, run.run_id)]) == canonical_rows(run.table), run.case
        for rel, data in run.files.items():
            assert (layout.project_files_dir(local, run.project_id) / rel).read_bytes() == data, rel


def test_export_verify_inspect_and_back(s3, source, corpus, tmp_path):
    fs, bucket = s3
    dest = f"parquet:s3://{bucket}/exp"
    code, report, out = run_cli("export", str(source), dest, "--part-size", "4000")
    assert code == 0, out
    assert report["totals"]["moved"] == len(corpus)
    _check_runs(fs, f"{bucket}/exp", corpus)
    manifest = json.loads(fs.cat_file(f"{bucket}/exp/trackport.json"))
    assert manifest["sources"] == ["parquet:neptune-exporter"]

    code, checked, out = run_cli("verify", str(source), dest)
    assert code == 0 and checked["totals"]["verified"] == len(corpus), out
    code, again, out = run_cli("export", str(source), dest)
    assert code == 0 and again["totals"]["skipped"] == len(corpus), out

    code, summary, out = run_cli("inspect", dest)
    assert code == 0, out
    assert summary["root"] == f"s3://{bucket}/exp" and summary["format"] == "trackport"
    assert summary["totals"]["runs"] == len(corpus)
    assert summary["totals"]["rows"] == sum(r.table.num_rows for r in corpus)
    assert summary["totals"]["file_bytes"] == sum(len(d) for r in corpus for d in r.files.values())
    assert not any(p["damaged_runs"] or p["unreadable"] for p in summary["projects"])
    assert run_cli("inspect", dest, "--check")[0] == 0

    # back to local folders: a copy from the bucket, and the bucket as a load source
    back = tmp_path / "back"
    code, moved, out = run_cli("copy", dest, f"parquet:{back}")
    assert code == 0 and moved["totals"]["moved"] == len(corpus), out
    _compare_back(back, corpus)
    assert run_cli("verify", dest, f"parquet:{back}")[0] == 0
    # the runs keep their origin: the first export's destination finds them all
    code, again, out = run_cli("export", dest, str(tmp_path / "direct"))
    assert code == 0, out
    code, again, out = run_cli("export", str(source), str(tmp_path / "direct"))
    assert code == 0 and again["totals"]["skipped"] == len(corpus), out

    # and bucket to bucket
    code, moved, out = run_cli("copy", dest, f"parquet:s3://{bucket}/copy")
    assert code == 0 and moved["totals"]["moved"] == len(corpus), out
    assert run_cli("verify", dest, f"parquet:s3://{bucket}/copy")[0] == 0


def test_a_damaged_part_is_refused_and_the_next_export_repairs_it(s3, source, corpus):
    fs, bucket = s3
    dest = f"parquet:s3://{bucket}/exp"
    assert run_cli("export", str(source), dest)[0] == 0
    name, manifest = next((n, m) for n, m in _manifests(fs, f"{bucket}/exp").items()
                          if m["run_id"] == corpus[1].run_id)
    part = f"{name.rsplit('/', 1)[0]}/{manifest['parts'][0]}"
    fs.pipe_file(part, fs.cat_file(part)[:-20])       # cut short: no footer
    code, report, out = run_cli("verify", str(source), dest)
    assert code == 1 and runs_by_id(report)[corpus[1].run_id]["status"] == "failed", out
    code, report, out = run_cli("export", str(source), dest)
    assert code == 0 and runs_by_id(report)[corpus[1].run_id]["status"] == "repaired", out
    assert run_cli("verify", str(source), dest)[0] == 0
    assert not fs.exists(part)                          # the replaced manifest's parts are gone


def test_parts_no_manifest_lists_are_never_read_and_a_manifest_cannot_point_outside(s3, source, corpus):
    fs, bucket = s3
    dest = f"parquet:s3://{bucket}/exp"
    assert run_cli("export", str(source), dest)[0] == 0
    manifests = _manifests(fs, f"{bucket}/exp")
    (name_a, a), (name_b, b) = [(n, m) for n, m in manifests.items()
                                if m["run_id"] in (corpus[0].run_id, corpus[2].run_id)]
    # a stray part in run a's folder (another run's rows, under a writer token of its own)
    folder_a = name_a.rsplit("/", 1)[0]
    stray = f"{folder_a}/{a['parts'][0].split('/')[0]}/0000abcd-1-0000abcd_part_0.parquet"
    fs.copy(f"{name_b.rsplit('/', 1)[0]}/{b['parts'][0]}", stray)
    code, checked, out = run_cli("verify", str(source), dest)
    assert code == 0 and checked["totals"]["verified"] == len(corpus), out
    code, summary, out = run_cli("inspect", dest, "--check")
    assert code == 0 and summary["totals"]["rows"] == sum(r.table.num_rows for r in corpus), out
    # a manifest listing a part outside its run's folder: that run fails alone, named
    b["parts"] = ["../../../trackport.json"]
    fs.pipe_file(name_b, json.dumps(b).encode())
    code, checked, out = run_cli("verify", str(source), dest)
    got = runs_by_id(checked)
    assert code == 1 and got[corpus[2].run_id]["status"] == "failed", out
    assert sum(r["status"] == "verified" for r in got.values()) == len(corpus) - 1, out
    code, report, out = run_cli("export", str(source), dest)       # the next export repairs it
    assert code == 0 and runs_by_id(report)[corpus[2].run_id]["status"] == "repaired", out
    assert run_cli("verify", str(source), dest)[0] == 0


def _child_env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC_PATH + os.pathsep + str(TESTS) + os.pathsep
            + os.environ.get("PYTHONPATH", "")}


@pytest.mark.parametrize("kill_at, leaves_parts", [
    ("return:_HashingFile.close:3", True),    # right after its 3rd part object was uploaded
    ("call:_HashingFile.close:5", None),      # as its 5th part's upload begins: that object never appears
], ids=["after-an-upload", "mid-upload"])
def test_sigkill_mid_export_then_the_same_command_finishes_it(s3, source, corpus, tmp_path, kill_at, leaves_parts):
    """`python -m trackport export` killed once part objects exist: the rerun exits 0, the
    export verifies, and the parts the killed writer left are never listed (and are deleted)."""
    from crash_support import child_command

    fs, bucket = s3
    dest = f"parquet:s3://{bucket}/exp"
    args = ["export", str(source), dest, "--part-size", "4000", "--workers", "1", "--no-progress"]
    killed = subprocess.run(child_command([kill_at], args),
                            env=_child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    parts = [n for n in fs.find(f"{bucket}/exp/data") if n.endswith(".parquet")]
    assert parts, "the kill should come once part objects exist"
    listed = {f"{n.rsplit('/', 1)[0]}/{p}" for n, m in _manifests(fs, f"{bucket}/exp").items() for p in m["parts"]}
    leftovers = [p for p in parts if p not in listed]
    if leaves_parts:
        assert leftovers, "the kill should leave parts no manifest lists"
    # a reader meanwhile sees the runs whose manifest was written, and nothing of the others
    done = {m["run_id"] for m in _manifests(fs, f"{bucket}/exp").values()}
    assert len(done) < len(corpus)
    code, summary, out = run_cli("inspect", f"parquet:s3://{bucket}/exp")
    assert code == 0, out
    assert summary["totals"]["runs"] == len(done)
    assert summary["totals"]["rows"] == sum(r.table.num_rows for r in corpus if r.run_id in done)

    rerun = subprocess.run([sys.executable, "-m", "trackport", *args], env=_child_env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _check_runs(fs, f"{bucket}/exp", corpus)
    code, checked, out = run_cli("verify", str(source), dest)
    assert code == 0 and checked["totals"]["verified"] == len(corpus), out
    assert not [p for p in leftovers if fs.exists(p)], "the killed writer's parts were not cleaned"
    back = tmp_path / "back"
    assert run_cli("copy", dest, str(back))[0] == 0
    _compare_back(back, corpus)


_CHILD = r"""
import os, sys, time
import trackport.cli, trackport.connectors.parquet.objects, s3fs
go = sys.argv[1]
open(go + ".ready." + str(os.getpid()), "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
sys.argv = ["trackport"] + sys.argv[2:]
trackport.cli.main()
"""


@pytest.mark.parametrize("shared_locks", [False, True], ids=["as-two-machines", "one-machine"])
def test_two_exporters_at_once_leave_each_run_once(s3, source, corpus, tmp_path, shared_locks):
    """Two `trackport export` processes released together into one prefix.  As two machines
    (each its own TMPDIR: no claim is shared) both write every run; the manifest rule leaves
    exactly one copy of each; on one machine the per-user claims make them take turns."""
    fs, bucket = s3
    dest = f"parquet:s3://{bucket}/exp"
    go = tmp_path / "go"
    procs = []
    for i in range(2):
        env = _child_env()
        if not shared_locks:
            own = tmp_path / f"host{i}"
            own.mkdir()
            env["TMPDIR"] = str(own)
        err = open(tmp_path / f"stderr-{i}.txt", "w+")
        procs.append((subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(go), "export", str(source), dest, "--part-size", "4000",
             "--workers", "2", "--no-progress", "--state-dir", str(tmp_path / f"state{i}")],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err), err))
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.monotonic() < deadline:
        assert all(p.poll() is None for p, _ in procs), "a process ended before the start"
        time.sleep(0.01)
    go.touch()
    for i, (proc, err) in enumerate(procs):
        code = proc.wait(timeout=300)
        err.seek(0)
        assert code == 0, f"process {i} exited {code}:\n{err.read()[-3000:]}"
        err.close()
    _check_runs(fs, f"{bucket}/exp", corpus)
    manifest = json.loads(fs.cat_file(f"{bucket}/exp/trackport.json"))
    assert manifest["sources"] == ["parquet:neptune-exporter"]
    code, checked, out = run_cli("verify", str(source), dest)
    assert code == 0 and checked["totals"]["verified"] == len(corpus), out
    back = tmp_path / "back"
    assert run_cli("copy", dest, str(back))[0] == 0
    _compare_back(back, corpus)


def test_two_sources_into_one_prefix_keep_both_entries(s3, source, corpus):
    """The export manifest's sources: trackport.json is created once, each source adds a
    marker object of its own (no read-modify-write), and readers see the union."""
    from trackport.core.registry import open_sink, open_source

    fs, bucket = s3
    dest = f"parquet:s3://{bucket}/exp"
    assert run_cli("export", str(source), dest, "--run", corpus[0].run_id + "$")[0] == 0
    other = open_sink(dest)
    other._ensure_export_manifest("tensorboard:/elsewhere/logs")   # a second source, another process
    assert json.loads(fs.cat_file(f"{bucket}/exp/trackport.json"))["sources"] == ["parquet:neptune-exporter"]
    reader = open_source(dest)
    assert reader.export.manifest["sources"] == ["parquet:neptune-exporter", "tensorboard:/elsewhere/logs"]
    code, summary, out = run_cli("inspect", dest)
    assert code == 0 and summary["manifest"]["sources"] == reader.export.manifest["sources"], out


# -- refusals -------------------------------------------------------------------------------------------

def test_an_unknown_scheme_is_a_usage_error_and_no_local_folder(s3, source, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for args in (("export", str(source), "parquet:foo://bucket/exp"), ("copy", str(source), "parquet:foo://b/x"),
                 ("load", "parquet:foo://bucket/exp"), ("inspect", "parquet:foo://bucket/exp"),
                 ("export", str(source), "foo://bucket/exp")):
        code, _, out = run_cli(*args)
        assert code == 2, (args, out)
        assert "foo://" in out or "unknown scheme 'foo'" in out, out
    # (the command's own state folder, .trackport/, aside)
    assert not [p for p in work.rglob("*") if ":" in p.name or "foo" in p.name or "bucket" in p.name], \
        "a local folder named after the URL"


def test_a_missing_store_package_names_the_extra(s3, source, tmp_path, monkeypatch):
    import importlib

    registry = importlib.import_module("fsspec.registry")   # (`fsspec.registry` is its read-only view)
    monkeypatch.chdir(tmp_path)
    # s3fs as if not installed: fsspec's import of it fails and names the package
    monkeypatch.setitem(sys.modules, "s3fs", None)
    monkeypatch.delitem(registry._registry, "s3", raising=False)
    code, _, out = run_cli("export", str(source), "parquet:s3://bucket/exp")
    assert code == 2, out
    assert "pip install 'trackport[s3]'" in out and "s3fs" in out, out
    # a protocol fsspec knows whose package is not there at all
    registry.register_implementation("tpmissing", "trackport_no_such_package.FS",
                                            errtxt="Install trackport_no_such_package to use tpmissing://")
    try:
        code, _, out = run_cli("inspect", "parquet:tpmissing://bucket/exp")
        assert code == 2 and "trackport_no_such_package" in out, out
    finally:
        registry.known_implementations.pop("tpmissing", None)
    assert not [p for p in tmp_path.rglob("*") if ":" in p.name]


def test_credentials_in_the_uri_are_refused_and_not_shown(s3, source, tmp_path, monkeypatch):
    fs, bucket = s3
    monkeypatch.chdir(tmp_path)
    for uri in (f"parquet:s3://AKIAEXAMPLE:s3cr3tValue@{bucket}/exp",
                f"parquet:s3://{bucket}/exp?secret=s3cr3tValue",
                f"parquet:s3://{bucket}/exp?X-Amz-Signature=s3cr3tValue"):
        for args in (("export", str(source), uri), ("inspect", uri)):
            code, _, out = run_cli(*args)
            assert code == 2, out
            assert "s3cr3tValue" not in out, out
            assert "credentials" in out, out
    assert not fs.find(bucket), "nothing is written"


def test_a_missing_bucket_is_a_usage_error(s3, source):
    code, _, out = run_cli("export", str(source), f"parquet:s3://no-such-bucket-{uuid.uuid4().hex[:8]}/exp")
    assert code == 2 and "does not exist" in out, out
