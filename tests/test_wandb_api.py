"""`wandb://ENTITY[/PROJECT]`: the real `wandb.Api` (through its wandb-core sidecar)
against our local W&B server (tests/wandb_server.py), end to end through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from support import read_plain_export, run_cli, runs_by_id
from trackport.connectors.parquet import layout
from wandb_server import PNG, T0, fixture_runs, wandb_server  # noqa: F401  (fixture)


def _series(table: pa.Table, path: str) -> list[dict]:
    rows = table.filter(pc.equal(table.column("attribute_path"), path)).to_pylist()
    return sorted(rows, key=lambda r: r["step"])


def _single(table: pa.Table, path: str) -> dict:
    rows = table.filter(pc.equal(table.column("attribute_path"), path)).to_pylist()
    assert len(rows) == 1, (path, rows)
    return rows[0]


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _assert_no_secret(key: str, *texts: str, roots: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert key not in text
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path


def test_export_every_point_config_summary_files(wandb_server, tmp_path):
    out = tmp_path / "export"
    code, report, output = run_cli("export", "wandb://entity/proj-a", str(out))
    assert code == 0, output
    runs = runs_by_id(report)
    assert {r: runs[r]["status"] for r in runs} == {"longrun1": "moved", "media002": "moved"}
    # The origin names the server by host, never by credentials.
    assert report["source"] == f"wandb://entity/proj-a?host={wandb_server.url.removeprefix('http://')}"

    tables = read_plain_export(out)
    fixture = {r.id: r for r in fixture_runs()["entity"]["proj-a"]}
    long = tables[("entity/proj-a", "longrun1")]

    # Every history point (parquet-exported steps and live pages alike), its step and timestamp.
    loss = _series(long, "train/loss")
    assert [int(r["step"]) for r in loss] == list(range(2500))
    expected = {row["_step"]: row for row in fixture["longrun1"].history}
    for r in loss:
        step = int(r["step"])
        assert r["attribute_type"] == "float_series"
        assert r["float_value"] == expected[step]["train/loss"]
        assert int(r["timestamp"].timestamp() * 1000) == _ms(expected[step]["_timestamp"])
    acc = _series(long, "val/acc")
    assert [int(r["step"]) for r in acc] == list(range(0, 2500, 10))
    assert len(_series(long, "wandb/runtime")) == 2500
    served = wandb_server.operations(200)
    assert "parquet:longrun1" in served and served.count("HistoryPage") >= 2   # both history paths
    assert "RunSampledHistory" not in served                                     # never the sample

    # Config and summary keep their types; nested config is flattened with '/'.
    assert _single(long, "config/lr")["float_value"] == 0.001
    assert _single(long, "config/epochs")["attribute_type"] == "int"
    assert _single(long, "config/epochs")["int_value"] == 30
    assert _single(long, "config/use_amp")["bool_value"] is True
    assert _single(long, "config/optimizer/name")["string_value"] == "adam"
    assert _single(long, "config/model/depth")["int_value"] == 12
    assert _single(long, "summary/best_epoch")["int_value"] == 27
    assert _single(long, "summary/train/loss")["float_value"] == 1.0 / 2500
    # Run attributes.
    assert _single(long, "sys/name")["string_value"] == "long-run"
    assert _single(long, "sys/custom_run_id")["string_value"] == "longrun1"
    assert _single(long, "sys/description")["string_value"] == "the long one"
    assert _single(long, "sys/tags")["string_set_value"] == ["baseline", "long"]
    assert _single(long, "sys/group_tags")["string_set_value"] == ["sweep-a"]
    assert _single(long, "wandb/job_type")["string_value"] == "train"
    assert _single(long, "wandb/state")["string_value"] == "finished"
    assert _single(long, "sys/creation_time")["datetime_value"].isoformat() == "2026-01-02T03:04:05+00:00"

    # System metrics under monitoring/ without the `system.` prefix, each point with its time.
    cpu = _series(long, "monitoring/cpu")
    assert [r["float_value"] for r in cpu] == [10.0 + i for i in range(84)]
    assert [int(r["timestamp"].timestamp() * 1000) for r in cpu] == [_ms(T0 + i * 15.0) for i in range(84)]
    assert len(_series(long, "monitoring/gpu.0.temp")) == 84
    assert not any(p.startswith("monitoring/system.") for p in long.column("attribute_path").to_pylist())
    # output.log as monitoring/stdout lines.
    assert [r["string_value"] for r in _series(long, "monitoring/stdout")] == \
        ["epoch 1", "epoch 2", "loss=0.5 ünïcode"]

    # Every run file, byte-equal, at the attribute the shared mapping gives it.
    files_root = layout.project_files_dir(out, "entity/proj-a")
    by_attr = {r["attribute_path"]: r["file_value"]["path"] for r in long.to_pylist()
               if r["attribute_type"] == "file"}
    assert set(by_attr) == {"wandb/files/output.log", "source_code/requirements", "source_code/files/x.py",
                            "checkpoints/model.ckpt", "wandb/files/config.yaml",
                            "wandb/files/wandb-metadata.json"}
    for attr, path in by_attr.items():
        name = path.split("/files/", 1)[1]
        assert (files_root / path).read_bytes() == fixture["longrun1"].files[name], attr

    # Media: the image as a file_series of its file, the histogram as histogram_series.
    media = tables[("entity/proj-a", "media002")]
    image = _series(media, "samples")
    assert [(int(r["step"]), r["attribute_type"]) for r in image] == [(7, "file_series")]
    assert (files_root / image[0]["file_value"]["path"]).read_bytes() == PNG
    meta = _series(media, "wandb/media/samples")
    assert json.loads(meta[0]["string_value"])["_type"] == "image-file"
    media_files = {r["attribute_path"] for r in media.to_pylist() if r["attribute_type"] == "file"}
    assert media_files == {"wandb/files/output.log", "wandb/files/artifact/x.bin"}   # the image once
    hist = _series(media, "weights")
    assert hist[0]["histogram_value"] == {"type": "COUNTING", "edges": [0.0, 0.5, 1.0, 1.5],
                                          "values": [1.0, 2.0, 3.0]}
    assert [int(r["step"]) for r in _series(media, "loss")] == [0, 3, 7, 20]
    assert _single(media, "config/nested/deep/x")["float_value"] == 1.5
    assert _single(media, "config/name")["string_value"] == "ünïcode ✓"
    assert _single(media, "sys/failed")["bool_value"] is True      # state crashed

    # Listing and files came in several pages; the one 429 was survived.
    assert served.count("RunFiles") >= 4
    assert wandb_server.operations(429) == ["RunFiles"]
    assert wandb_server.rejected_auth == 0
    _assert_no_secret(wandb_server.api_key, output, json.dumps(report), roots=(out, tmp_path))


def test_copy_to_mlflow_then_verify_and_rerun(wandb_server, tmp_path):
    dest = f"mlflow:sqlite:///{tmp_path / 'm.db'}"
    code, report, output = run_cli("copy", "wandb://entity/proj-a", dest)
    assert code == 0, output
    assert report["totals"]["moved"] == 2
    assert wandb_server.operations(429) == ["RunFiles"]
    longrun = next(r for r in report["runs"] if r["run_id"] == "longrun1")   # the source's part of the report
    assert longrun["transformations"]["stdout_line_step"] == 3
    assert longrun["details"]["source"]["history_rows"] == 2500

    code, report, output = run_cli("verify", "wandb://entity/proj-a", dest)
    assert code == 0, output
    assert {r["status"] for r in report["runs"]} == {"verified"}

    code, report, output = run_cli("copy", "wandb://entity/proj-a", dest)
    assert code == 0, output
    assert report["totals"]["runs"] == 2 and report["totals"].get("skipped") == 2
    assert report["totals"]["points"] == 0
    _assert_no_secret(wandb_server.api_key, output, json.dumps(report), roots=(tmp_path,))


def test_entity_lists_every_project(wandb_server, tmp_path):
    code, report, output = run_cli("export", "wandb://entity", str(tmp_path / "all"))
    assert code == 0, output
    assert sorted((r["project_id"], r["run_id"]) for r in report["runs"]) == [
        ("entity/proj-a", "longrun1"), ("entity/proj-a", "media002"), ("entity/proj_b", "other003")]
    assert wandb_server.operations(200).count("GetProjects") == 2       # three projects, pages of two
    # --project and --runs select before anything is fetched.
    before = wandb_server.operations(200).count("Run")
    code, report, output = run_cli("export", "wandb://entity", str(tmp_path / "one"),
                                   "--project", "entity/proj_b")
    assert code == 0, output
    assert [r["run_id"] for r in report["runs"]] == ["other003"]
    assert wandb_server.operations(200).count("Run") == before + 1


def test_throttled_server_is_retried_not_waited_out(wandb_server, tmp_path):
    """More 429s than wandb-core's bounded retries: a TransientError, and the pipeline retries the run."""
    wandb_server.rate_limits["RunHistoryKeys"] = 5
    code, report, output = run_cli("export", "wandb://entity/proj_b", str(tmp_path / "x"))
    assert code == 0, output
    assert report["runs"][0]["status"] == "moved"
    assert wandb_server.operations(429).count("RunHistoryKeys") == 5
    tables = read_plain_export(tmp_path / "x")
    acc = _series(tables[("entity/proj_b", "other003")], "acc")
    assert [(int(r["step"]), r["float_value"]) for r in acc] == [(0, 1.0)]


def test_bad_key_and_missing_project_are_clear(wandb_server, tmp_path, monkeypatch):
    code, _report, output = run_cli("export", "wandb://entity/nope", str(tmp_path / "x"))
    assert code == 2 and "no W&B project entity/nope" in output
    wrong = "tp-wrong-wandb-key-0000000000000000000000000000000000"
    monkeypatch.setenv("WANDB_API_KEY", wrong)
    code, _report, output = run_cli("export", "wandb://entity/proj-a", str(tmp_path / "y"))
    assert code == 2
    assert "WANDB_API_KEY" in output
    assert wrong not in output and wandb_server.api_key not in output
    assert wandb_server.rejected_auth >= 1
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    # wandb's process-wide settings keep the key the first call of this process read from
    # WANDB_API_KEY (wbauth/authenticate.py `_use_system_auth` falls back to them); a fresh
    # CLI process starts without it.
    from trackport.connectors.wandb.client import import_wandb

    import_wandb()
    from wandb.sdk.lib.wbauth import authenticate

    authenticate.unauthenticate_session(update_settings=True)
    code, _report, output = run_cli("export", "wandb://entity/proj-a", str(tmp_path / "z"))
    assert code == 2 and "no W&B credentials" in output and "WANDB_API_KEY" in output


@pytest.mark.parametrize("uri", ["wandb://", "wandb://a/b/c", "wandb://user:pw@entity/p"])
def test_bad_uris(uri, wandb_server, tmp_path):
    code, _report, output = run_cli("export", uri, str(tmp_path / "x"))
    assert code == 2, output
    assert "user:pw" not in output


def test_system_metrics_at_best_resolution_and_run_notes(wandb_server):
    """wandb-events.jsonl (every point) wins over the sampled events stream; what the
    source transformed, left out and at which resolution is kept for the run's report."""
    from trackport.core.model import Selection
    from trackport.core.registry import open_source

    source = open_source("wandb://entity", {})
    try:
        select = Selection()
        refs = {r.run_id: r for r in source.list_runs(select)}
        assert set(refs) == {"longrun1", "media002", "other003"}

        other = pa.concat_tables(list(source.read_run(refs["other003"], select)))
        cpu = _series(other, "monitoring/cpu")
        assert [(int(r["step"]), r["float_value"]) for r in cpu] == [(i, float(i)) for i in range(5)]
        notes = source.run_notes(refs["other003"])
        assert notes["details"]["system_metrics"] == "wandb-events.jsonl: every point"
        assert notes["transformations"]["system_bookkeeping_left_out"] == 10   # _runtime and _wandb of 5 rows
        assert not notes["drops"]
        assert "RunFullHistory" not in wandb_server.operations(200)

        long = pa.concat_tables(list(source.read_run(refs["longrun1"], select)))
        assert len(_series(long, "monitoring/cpu")) == 84
        notes = source.run_notes(refs["longrun1"])
        assert notes["details"]["system_metrics"].startswith("events stream: 84 points")
        assert notes["details"]["history_rows"] == 2500
        assert notes["transformations"]["stdout_line_step"] == 3
        assert notes["transformations"]["value_to_json"] == 2       # config seed None, betas list
        assert set(notes["transformations"]) <= set(source.capabilities.transformations)

        # Files come from the server on first use, by absolute path, size-checked.
        files = source.files(refs["longrun1"])
        local = files.local_path("longrun1/files/model.ckpt")
        assert local.is_absolute() and local.read_bytes() == bytes(range(256)) * 40
    finally:
        source.close()
    assert not local.exists()          # the temporary folder goes with the source


def test_api_source_reads_sdk_runs_as_the_offline_source_does(tmp_path, monkeypatch):
    """Runs written by the real SDK (offline), put on our server as `wandb sync` would:
    `wandb://` and `wandb:` give the same history points, config, summary and run attributes."""
    from wandb_offline_support import make_runs
    from wandb_server import WandbServer, fake_run_from_offline

    make_runs(tmp_path / "sdk")
    entities: dict = {}
    for run_dir in sorted((tmp_path / "sdk" / "wandb").glob("offline-run-*")):
        entity, project, fake = fake_run_from_offline(run_dir)
        entities.setdefault(entity, {}).setdefault(project, []).append(fake)
    key = "tp-secret-wandb-key-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    server = WandbServer(key, entities, page_cap=2).start()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", key)
    try:
        code, _r, output = run_cli("export", f"wandb:{tmp_path / 'sdk'}", str(tmp_path / "offline"))
        assert code == 0, output
        code, _r, output = run_cli("export", "wandb://acme/vision", str(tmp_path / "api"))
        assert code == 0, output
    finally:
        server.stop()
    # the artifact the SDK made of a wandb.Table is an offline-source entry only (docs/wandb.md, "Artifacts")
    offline = {k: t for k, t in read_plain_export(tmp_path / "offline").items()
               if not k[0].startswith("wandb-artifacts/")}
    api = read_plain_export(tmp_path / "api")
    assert set(offline) == set(api) == {("acme/vision", "rich0001"), ("acme/vision", "sparse01")}

    def comparable(table: pa.Table) -> set:
        out = set()
        for r in table.to_pylist():
            path = r["attribute_path"]
            if path.startswith(("monitoring/", "wandb/", "sys/modification_time")) or r["attribute_type"] in (
                    "file", "file_series"):
                continue      # console/system timing, W&B bookkeeping and file locations differ by design
            value = next((r[c] for c in ("float_value", "int_value", "string_value", "bool_value",
                                         "datetime_value", "string_set_value", "histogram_value")
                          if r[c] is not None), None)
            if isinstance(value, float) and math.isnan(value):
                value = "NaN"
            if isinstance(value, list):
                value = tuple(value)
            if isinstance(value, dict):
                value = json.dumps(value, sort_keys=True)
            out.add((path, r["attribute_type"], None if r["step"] is None else str(r["step"]),
                     None if r["timestamp"] is None else r["timestamp"].isoformat(), value))
        return out

    for ident in offline:
        want, got = comparable(offline[ident]), comparable(api[ident])
        assert want == got, (ident, sorted(want - got, key=repr)[:5], sorted(got - want, key=repr)[:5])
    rich = api[("acme/vision", "rich0001")]
    assert [int(r["step"]) for r in _series(rich, "loss")] == [0, 1, 5, 17, 1000]
    assert any(r["attribute_type"] == "file_series" for r in rich.to_pylist())     # the image


def test_both_readers_give_a_runs_system_metrics_the_same_paths(tmp_path, monkeypatch):
    """Stats records of wandb 0.10-0.12 (`network: {sent, recv}`) and 0.21 (`system.powerWatts`),
    put on our server as W&B's sender does (`system.` + key, nested values flattened: the
    events stream holds `system.network.sent` and `system.system.powerWatts`): `wandb:` and
    `wandb://` give every system metric point the same path, step, time and value."""
    from wandb_offline_support import ENTITY, PROJECT, PROTO_ID, STATS, STATS_PATHS, write_proto_run
    from wandb_server import WandbServer, fake_run_from_offline

    run_dir = write_proto_run(tmp_path / "sdk")
    entity, project, fake = fake_run_from_offline(run_dir)
    assert {"system.network.sent", "system.system.powerWatts"} <= set(fake.events[0])
    key = "tp-secret-wandb-key-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    server = WandbServer(key, {entity: {project: [fake]}}).start()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", key)
    try:
        code, _r, output = run_cli("export", f"wandb:{tmp_path / 'sdk'}", str(tmp_path / "offline"))
        assert code == 0, output
        code, _r, output = run_cli("export", f"wandb://{ENTITY}/{PROJECT}", str(tmp_path / "api"))
        assert code == 0, output
    finally:
        server.stop()
    ident = (f"{ENTITY}/{PROJECT}", PROTO_ID)
    tables = [read_plain_export(tmp_path / name)[ident] for name in ("offline", "api")]

    def monitoring(table: pa.Table) -> dict:
        out: dict = {}
        for r in table.to_pylist():
            if r["attribute_path"].startswith("monitoring/"):
                out.setdefault(r["attribute_path"], []).append(
                    (r["attribute_type"], str(r["step"]), r["timestamp"], r["float_value"]))
        return {k: sorted(v) for k, v in out.items()}

    offline, api = (monitoring(t) for t in tables)
    assert set(offline) == set(STATS_PATHS)
    assert offline == api
    assert [v for *_, v in api["monitoring/network.recv"]] == [float(items["network"]["recv"]) for _, items in STATS]


def test_runs_trackport_wrote_read_back_through_the_api(tmp_path, monkeypatch):
    """Corpus -> W&B sink (offline, real SDK) -> on our server as `wandb sync` would put it ->
    `wandb://`: decoded through the run's manifest under its origin's ids, row for row what the
    `wandb:` source reads back from the same run files (the conformance suite compares that to
    the corpus)."""
    from trackport.testing.corpus import build_corpus
    from trackport.testing.exporter_layout import write_exporter_export
    from support import canonical_rows
    from wandb_server import WandbServer, fake_run_from_offline

    write_exporter_export(tmp_path / "src", build_corpus(big=False), part_rows=30_000)
    dest = tmp_path / "dest"
    code, _r, output = run_cli("copy", str(tmp_path / "src"), "wandb://trackport/corpus",
                               "--wandb-mode", "offline", "--wandb-dir", str(dest))
    assert code == 0, output
    entities: dict = {}
    for run_dir in sorted((dest / "wandb").glob("offline-run-*")):
        entity, project, fake = fake_run_from_offline(run_dir)
        entities.setdefault(entity, {}).setdefault(project, []).append(fake)
    key = "tp-secret-wandb-key-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
    server = WandbServer(key, entities, page_cap=5).start()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", key)
    try:
        code, _r, output = run_cli("export", f"wandb:{dest}", str(tmp_path / "offline"))
        assert code == 0, output
        code, report, output = run_cli("export", "wandb://trackport/corpus", str(tmp_path / "api"))
        assert code == 0, output
    finally:
        server.stop()
    # the artifact the SDK made of a wandb.Table is an offline-source entry only (docs/wandb.md, "Artifacts")
    offline = {k: t for k, t in read_plain_export(tmp_path / "offline").items()
               if not k[0].startswith("wandb-artifacts/")}
    api = read_plain_export(tmp_path / "api")
    assert set(api) == set(offline) and len(api) == 13
    for ident, table in offline.items():
        assert canonical_rows(api[ident]) == canonical_rows(table), ident


def test_a_run_that_grew_is_exported_again_once_and_an_unchanged_one_is_skipped(wandb_server, tmp_path):
    """run_version from the run query (state, heartbeat, history line count, summary): a run
    that logged more steps on the server since the first export is exported again with every
    point once; a run that did not change is skipped."""
    out = tmp_path / "export"
    code, report, output = run_cli("export", "wandb://entity/proj-a", str(out))
    assert code == 0 and report["totals"]["moved"] == 2, output
    (long,) = [r for r in wandb_server.entities["entity"]["proj-a"] if r.id == "longrun1"]
    for step in range(2500, 2510):                   # the training went on
        long.history.append({"_step": step, "_timestamp": T0 + step * 0.5, "_runtime": step * 0.5,
                             "train/loss": 1.0 / (step + 1)})
    long.heartbeat_at = "2026-01-02T05:00:00"
    code, report, output = run_cli("export", "wandb://entity/proj-a", str(out))
    assert code == 0, output
    runs = runs_by_id(report)
    assert runs["longrun1"]["status"] == "repaired" and runs["longrun1"]["details"]["source_changed"] is True
    assert runs["media002"]["status"] == "skipped", output
    loss = _series(read_plain_export(out)[("entity/proj-a", "longrun1")], "train/loss")
    assert [int(r["step"]) for r in loss] == list(range(2510))                 # each point once
    code, report, output = run_cli("export", "wandb://entity/proj-a", str(out))
    assert code == 0 and report["totals"]["skipped"] == 2, output
