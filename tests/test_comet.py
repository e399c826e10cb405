"""Comet connector: OfflineExperiment archives written by the real `comet_ml` SDK, read back.

Oracles independent of trackport: the archive's own experiment.json and messages.json read with
zipfile/json, and the SDK's own offline validators (the JSON schemas `comet upload`'s
OfflineSender checks every message with, comet_ml/offline.py `_init_message_validators`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from support import read_plain_export, run_cli
from trackport.testing import conformance

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sample-export"


def _points(tables) -> int:
    return sum(t.filter(pc.is_valid(t.column("step"))).num_rows for t in tables)


def fingerprint(root: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = (path.stat().st_size, path.stat().st_mtime_ns,
                                                hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def archive_messages(archive: Path) -> tuple[dict, list[dict], set[str]]:
    with zipfile.ZipFile(archive) as zf:
        meta = json.loads(zf.read("experiment.json"))
        messages = [json.loads(line) for line in zf.read("messages.json").decode().splitlines() if line.strip()]
        return meta, messages, set(zf.namelist())


def manifest_of(archive: Path) -> dict:
    """trackport/manifest.json, found as the SDK names assets: by the file_upload message's fileName."""
    _, messages, _ = archive_messages(archive)
    (member,) = [m["payload"]["file_path"] for m in messages if m["type"] == "file_upload"
                 and m["payload"]["additional_params"]["fileName"] == "trackport/manifest.json"]
    with zipfile.ZipFile(archive) as zf:
        return json.loads(zf.read(member))


def sdk_validate(archive: Path) -> int:
    """Every message of the archive through the validator `comet upload` uses for its type
    (comet_ml/offline.py OfflineSender: experiment.json, metric, parameter, log_other, file_upload);
    raises jsonschema's ValidationError on the first invalid one.  Returns the messages checked."""
    from comet_ml import schemas

    meta, messages, names = archive_messages(archive)
    schemas.get_experiment_file_validator().validate(meta)
    validators = {"metric_msg": schemas.get_metric_msg_validator(),
                  "parameter_msg": schemas.get_parameter_msg_validator(),
                  "log_other": schemas.get_log_other_msg_validator(),
                  "file_upload": schemas.get_upload_msg_validator(),
                  "standard_output": schemas.get_standard_output_msg_validator()}
    for message in messages:
        assert message["type"] in validators, message["type"]
        validators[message["type"]].validate(message["payload"])
        if message["type"] == "file_upload":
            assert message["payload"]["file_path"] in names
    return len(messages)


def offline_args(folder: Path) -> list[str]:
    return ["--comet-mode", "offline", "--comet-offline-dir", str(folder)]


# -- the sample export: every point, each with its step and timestamp in Comet's own messages ----

def test_sample_export_moves_every_point_verifies_and_reruns_add_nothing(tmp_path):
    parts = [pq.read_table(p) for p in sorted((SAMPLE / "data").glob("*/*.parquet"))]
    before = fingerprint(SAMPLE)
    folder = tmp_path / "archives"
    code, report, out = run_cli("copy", str(SAMPLE), "comet://ws/proj", *offline_args(folder))
    assert code == 0, out
    assert report["totals"]["points"] == _points(parts)
    assert not report["totals"]["drops"]
    archives = sorted(folder.glob("*.zip"))
    assert len(archives) == report["totals"]["moved"] == len({(t.column("project_id")[0].as_py(),
                                                                t.column("run_id")[0].as_py()) for t in parts})
    assert not list((folder / ".trackport-staging").glob("*.zip"))

    # every float point of the source is a metric_msg with its step and original timestamp
    source = pa.concat_tables(parts)
    floats = source.filter(pc.equal(source.column("attribute_type"), "float_series"))
    want = sorted((r["run_id"], r["attribute_path"], r["step"], int(r["timestamp"].timestamp() * 1000))
                  for r in floats.select(["run_id", "attribute_path", "step", "timestamp"]).to_pylist())
    got, outputs = [], []
    for archive in archives:
        meta, messages, _ = archive_messages(archive)
        manifest = manifest_of(archive)
        run_id, multiplier = manifest["origin"]["run_id"], manifest["step_multiplier"]
        assert meta["workspace"] == "ws" and meta["project_name"] == "proj"
        assert meta["offline_id"] == archive.stem and meta["user_provided_experiment_key"] is True
        got += [(run_id, m["payload"]["metric"]["metricName"], Decimal(m["payload"]["metric"]["step"]) / multiplier,
                 m["payload"]["local_timestamp"])
                for m in messages if m["type"] == "metric_msg" and m["payload"]["metric"]["metricName"] != "process duration"]
        outputs += [(run_id, m["payload"]["stderr"], m["payload"]["output"], m["payload"]["local_timestamp"])
                    for m in messages if m["type"] == "standard_output"]
        assert sdk_validate(archive) > 10          # what `comet upload` checks, message by message
    assert sorted(got) == want
    console = source.filter(pc.is_in(source.column("attribute_path"),
                                     value_set=pa.array(["monitoring/stdout", "monitoring/stderr"])))
    assert console.num_rows > 0
    assert sorted(outputs) == sorted((r["run_id"], r["attribute_path"].endswith("stderr"), r["string_value"],
                                      int(r["timestamp"].timestamp() * 1000)) for r in console.to_pylist())

    code, checked, out = run_cli("verify", str(SAMPLE), "comet://ws/proj", *offline_args(folder))
    assert code == 0 and checked["totals"]["verified"] == report["totals"]["moved"], out

    back = tmp_path / "back"
    assert run_cli("export", f"comet:{folder}", str(back))[0] == 0
    got_runs = read_plain_export(back)
    by_run: dict = {}
    for t in parts:
        by_run.setdefault((t.column("project_id")[0].as_py(), t.column("run_id")[0].as_py()), []).append(t)
    assert set(got_runs) == set(by_run)
    for key, tables in by_run.items():
        assert conformance.canonical_rows(got_runs[key]) == conformance.canonical_rows(pa.concat_tables(tables)), key

    zips = fingerprint(folder)
    code, again, out = run_cli("copy", str(SAMPLE), "comet://ws/proj", *offline_args(folder))
    assert code == 0 and again["totals"]["skipped"] == report["totals"]["moved"], out
    assert again["totals"]["points"] == 0
    assert {k: v for k, v in fingerprint(folder).items() if k.endswith(".zip")} == \
        {k: v for k, v in zips.items() if k.endswith(".zip")}
    assert fingerprint(SAMPLE) == before


def test_an_unfinished_archive_is_written_again_and_never_duplicated(tmp_path):
    folder = tmp_path / "archives"
    assert run_cli("copy", str(SAMPLE), "comet://ws/proj", *offline_args(folder))[0] == 0
    archives = sorted(folder.glob("*.zip"))
    victim = archives[0]
    good = archive_messages(victim)[1]
    # as a process killed before the rename: the archive is only in the staging folder, cut short
    staging = folder / ".trackport-staging"
    staging.joinpath(victim.name).write_bytes(victim.read_bytes()[:200])
    victim.unlink()
    code, report, out = run_cli("copy", str(SAMPLE), "comet://ws/proj", *offline_args(folder))
    assert code == 0, out
    assert sorted(r["status"] for r in report["runs"]).count("repaired") == 1
    assert sorted(folder.glob("*.zip")) == archives
    assert not list(staging.glob("*.zip"))
    kinds = [(m["type"], m["payload"].get("metric", {}).get("metricName")) for m in archive_messages(victim)[1]]
    assert sorted(kinds, key=repr) == sorted([(m["type"], m["payload"].get("metric", {}).get("metricName"))
                                              for m in good], key=repr)
    code, checked, out = run_cli("verify", str(SAMPLE), "comet://ws/proj", *offline_args(folder))
    assert code == 0, out


# -- the source: archives the SDK itself wrote -------------------------------------------------------

@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A training as a Comet user logs it offline, through comet_ml.OfflineExperiment."""
    import comet_ml

    folder = tmp_path_factory.mktemp("native")
    exp = comet_ml.OfflineExperiment(project_name="vision", workspace="team", offline_directory=str(folder),
                                     log_code=False, log_graph=False, auto_param_logging=False,
                                     auto_metric_logging=False, parse_args=False, auto_output_logging=False,
                                     log_env_details=False, log_git_metadata=False, log_git_patch=False,
                                     display_summary_level=0)
    exp.set_name("first try")
    exp.add_tags(["bert", "v2"])
    exp.log_parameters({"lr": 0.001, "epochs": 3, "amp": True, "opt": "adam"})
    exp.log_other("notes", "hello")
    for step in range(3):
        exp.log_metric("loss", 1.0 / (step + 1), step=step, epoch=step // 2)
    weights = folder / "weights.bin"
    weights.write_bytes(b"\x00\x01weights")
    exp.log_asset(str(weights), file_name="model/weights.bin")
    key = exp.get_key()
    exp.end()
    return folder, key


def test_source_reads_an_archive_the_sdk_wrote_without_changing_a_byte(native, tmp_path):
    folder, key = native
    before = fingerprint(folder)
    code, report, out = run_cli("export", f"comet:{folder}", str(tmp_path / "export"))
    assert code == 0, out
    ((project, run_id), table), = read_plain_export(tmp_path / "export").items()
    assert (project, run_id) == ("team/vision", key)
    rows = table.to_pylist()
    singles = {r["attribute_path"]: r for r in rows if r["step"] is None and r["attribute_type"] != "string_series"}
    assert singles["parameters/lr"]["float_value"] == 0.001 and singles["parameters/epochs"]["int_value"] == 3
    assert singles["parameters/amp"]["bool_value"] is True and singles["parameters/opt"]["string_value"] == "adam"
    assert singles["others/notes"]["string_value"] == "hello"
    assert singles["sys/name"]["string_value"] == "first try"
    assert sorted(singles["sys/tags"]["string_set_value"]) == ["bert", "v2"]
    _, messages, _ = archive_messages(next(folder.glob("*.zip")))
    stored = sorted((m["payload"]["metric"]["step"], m["payload"]["metric"]["metricValue"], m["payload"]["local_timestamp"])
                    for m in messages if m["type"] == "metric_msg" and m["payload"]["metric"]["metricName"] == "loss")
    loss = sorted((int(r["step"]), r["float_value"], int(r["timestamp"].timestamp() * 1000))
                  for r in rows if r["attribute_path"] == "loss")
    assert loss == stored and len(loss) == 3
    epochs = sorted((int(r["step"]), r["float_value"]) for r in rows if r["attribute_path"] == "comet/epoch/loss")
    assert epochs == [(0, 0.0), (1, 0.0), (2, 1.0)]
    files = [r for r in rows if r["attribute_type"] == "file"]
    assert len(files) == 1 and files[0]["attribute_path"].endswith("model/weights.bin")
    data = tmp_path / "export" / "files"
    assert [p.read_bytes() for p in data.rglob("weights.bin")] == [b"\x00\x01weights"]
    assert report["runs"][0]["transformations"]["epoch_as_series"] == 3
    assert fingerprint(folder) == before, "reading changed the archive folder"


def test_the_sdks_offline_validators_do_refuse_a_bad_message():
    """sdk_validate (run on every archive of the sample test) is not vacuous: the validators
    `comet upload` uses refuse a metric without a value or time, and an experiment.json without tags."""
    from jsonschema import ValidationError
    from comet_ml import schemas

    with pytest.raises(ValidationError):
        schemas.get_metric_msg_validator().validate({"metric": {"metricName": "x"}})
    with pytest.raises(ValidationError):
        schemas.get_experiment_file_validator().validate({"project_name": "p", "workspace": "w",
                                                          "start_time": 1, "stop_time": 2})


def test_a_comet_uri_without_a_project_or_with_a_secret_is_refused():
    for uri in ("comet://ws", "comet://key@ws/proj"):
        code, _, out = run_cli("copy", str(SAMPLE), uri, "--comet-offline-dir", "/tmp/unused-comet")
        assert code == 2, out


# -- the API source: comet://WORKSPACE[/PROJECT] through comet_ml.API against tests/comet_server.py --

def _api_experiments() -> dict:
    def exp(i: int) -> dict:
        key = f"{i:02d}" + "e" * 30
        return {"key": key, "name": f"exp {i}", "start": 1_700_000_000_000 + i, "end": 1_700_000_100_000 + i,
                "tags": ["a", f"t{i}"], "params": {"lr": "0.001", "layers": "3"}, "others": {"note": "x", "Name": f"exp {i}"},
                "metrics": [{"name": "loss", "value": 1.0 / (s + 1), "step": s, "epoch": s // 2,
                             "timestamp": 1_700_000_000_500 + s} for s in range(5)],
                "assets": [{"id": f"asset{i}", "name": "model.bin", "data": bytes([i]) * 10}]}
    return {"team": {"vision": [exp(i) for i in range(5)], "nlp": [exp(10)]}}


@pytest.fixture()
def comet_api(monkeypatch):
    from comet_server import API_KEY, CometServer

    server = CometServer(_api_experiments(), throttle_first=1).start()
    monkeypatch.setenv("COMET_API_KEY", API_KEY)
    monkeypatch.setenv("COMET_URL_OVERRIDE", f"{server.url}/clientlib/")
    monkeypatch.setenv("COMET_HTTP_SESSION_RETRY_TOTAL", "0")
    try:
        yield server
    finally:
        server.stop()


def test_api_source_reads_every_experiment_point_and_asset_through_the_sdk(comet_api, tmp_path):
    from comet_server import API_KEY

    code, report, out = run_cli("export", "comet://team", str(tmp_path / "export"))
    assert code == 0, out
    assert API_KEY not in out and API_KEY not in json.dumps(report)
    got = read_plain_export(tmp_path / "export")
    assert sorted(got) == sorted([("team/vision", f"{i:02d}" + "e" * 30) for i in range(5)] +
                                 [("team/nlp", "10" + "e" * 30)])
    assert comet_api.throttle_left == 0                    # the 429 was answered, retried, and passed
    table = got[("team/vision", "03" + "e" * 30)]
    rows = table.to_pylist()
    loss = sorted((int(r["step"]), r["float_value"], int(r["timestamp"].timestamp() * 1000))
                  for r in rows if r["attribute_path"] == "loss")
    assert loss == [(s, 1.0 / (s + 1), 1_700_000_000_500 + s) for s in range(5)]
    assert sorted((int(r["step"]), r["float_value"]) for r in rows if r["attribute_path"] == "comet/epoch/loss") == \
        [(s, float(s // 2)) for s in range(5)]
    singles = {r["attribute_path"]: r for r in rows if r["step"] is None}
    assert singles["parameters/lr"]["string_value"] == "0.001"
    assert singles["others/note"]["string_value"] == "x" and "others/Name" not in singles
    assert singles["sys/name"]["string_value"] == "exp 3"
    assert sorted(singles["sys/tags"]["string_set_value"]) == ["a", "t3"]
    files = [r for r in rows if r["attribute_type"] == "file"]
    assert len(files) == 1
    assert [p.read_bytes() for p in (tmp_path / "export" / "files").rglob("model.bin")].count(bytes([3]) * 10) == 1
    assert any("not read yet" in note for note in report["notes"])          # said, not silently left out
    vision = next(r for r in report["runs"] if r["run_id"].startswith("03"))
    assert vision["transformations"]["api_values_as_text"] >= 3
    assert vision["transformations"]["epoch_as_series"] == 5


def test_api_source_pages_through_a_project(comet_api, tmp_path):
    code, report, out = run_cli("export", "comet://team/vision", str(tmp_path / "export"), "--comet-page-size", "2")
    assert code == 0, out
    assert report["totals"]["runs"] == 5
    assert sorted(set(comet_api.pages)) == [1, 2, 3]


def test_api_source_through_the_fault_proxy_at_20_percent_reads_the_same_rows(comet_api, tmp_path):
    from fault_proxy import FaultProxy

    clean = tmp_path / "clean"
    assert run_cli("export", "comet://team/vision", str(clean))[0] == 0
    with FaultProxy(comet_api.url, rate=0.2, seed=7,
                    kinds=("429-retry-after", "500", "502", "503", "drop-before")) as proxy:
        import os

        os.environ["COMET_URL_OVERRIDE"] = f"{proxy.url}/clientlib/"      # monkeypatch restores it
        code, report, out = run_cli("export", "comet://team/vision", str(tmp_path / "faulty"))
    assert code == 0, out
    assert sum(proxy.injected.values()) > 0
    want, got = read_plain_export(clean), read_plain_export(tmp_path / "faulty")
    assert set(got) == set(want)
    for key in want:
        assert conformance.canonical_rows(got[key]) == conformance.canonical_rows(want[key])


def test_api_source_without_a_key_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    monkeypatch.setenv("COMET_CONFIG", str(tmp_path / "no.config"))
    code, _, out = run_cli("export", "comet://team", str(tmp_path / "export"))
    assert code == 2 and "COMET_API_KEY" in out, out


# -- conformance (trackport.testing.conformance) -------------------------------------------------

def _target(tmp_path: Path) -> conformance.Target:
    folder = tmp_path / "archives"
    return conformance.Target("comet://ws/proj", args=offline_args(folder), back=f"comet:{folder}")


def test_conformance_round_trip(tmp_path):
    conformance.round_trip(_target(tmp_path), tmp_path)


def test_conformance_files_and_bytes(tmp_path):
    conformance.files_and_bytes(_target(tmp_path), tmp_path)


def test_conformance_run_times(tmp_path):
    conformance.run_times(_target(tmp_path), tmp_path)


def test_conformance_sigkill_heals(tmp_path):
    conformance.sigkill_heals(_target(tmp_path), tmp_path)


# -- online: comet://WS/PROJECT --comet-mode online, the SDK's online Experiment against the stand-in --

ONLINE = ["--comet-mode", "online"]


@pytest.fixture()
def comet_online(monkeypatch):
    """An empty stand-in server the online SDK writes to and the API source reads from."""
    from comet_server import API_KEY, CometServer

    server = CometServer({}).start()
    monkeypatch.setenv("COMET_API_KEY", API_KEY)
    monkeypatch.setenv("COMET_URL_OVERRIDE", f"{server.url}/clientlib/")
    try:
        yield server
    finally:
        server.stop()


def _online_target() -> conformance.Target:
    return conformance.Target("comet://ws/proj", args=ONLINE, back="comet://ws/proj")


def _sdk_points(exp: dict) -> list[tuple]:
    """The metric points the server holds, without the SDK's own end-of-run "process duration"."""
    return [(m["name"], m["step"], m["timestamp"]) for m in exp["metrics"] if m["name"] != "process duration"]


def _one_experiment_per_run_no_point_twice(server, runs: int) -> list[dict]:
    exps = server.workspaces["ws"]["proj"]
    assert len(exps) == len({e["key"] for e in exps}) == runs
    for exp in exps:
        assert exp["others"]["trackport.mark"] == "complete"
        assert [a["name"] for a in exp["assets"]].count("trackport/manifest.json") == 1
        points = _sdk_points(exp)
        assert len(points) == len(set(points)), exp["key"]      # (name, step, timestamp): never twice
    return exps


def test_online_conformance_round_trip(comet_online, tmp_path):
    conformance.round_trip(_online_target(), tmp_path)
    _one_experiment_per_run_no_point_twice(comet_online, len(conformance.corpus(False)))


def test_online_conformance_sigkill_heals(comet_online, tmp_path):
    conformance.sigkill_heals(_online_target(), tmp_path)
    _one_experiment_per_run_no_point_twice(comet_online, len(conformance.corpus(True)))
    assert comet_online.deleted          # the killed run's partial experiment, deleted and written again


def test_online_sample_export_every_point_on_the_server_and_a_rerun_adds_nothing(comet_online, tmp_path):
    parts = [pq.read_table(p) for p in sorted((SAMPLE / "data").glob("*/*.parquet"))]
    code, planned, out = run_cli("plan", str(SAMPLE), "comet://ws/proj", *ONLINE)
    assert code == 0 and "(online)" in out, out
    assert not comet_online.writes                          # a plan creates nothing on the server
    code, report, out = run_cli("copy", str(SAMPLE), "comet://ws/proj", *ONLINE)
    assert code == 0, out
    assert report["totals"]["points"] == _points(parts) and not report["totals"]["drops"]
    exps = _one_experiment_per_run_no_point_twice(comet_online, report["totals"]["moved"])

    # every float point of the source reached the server with its step and original timestamp
    source = pa.concat_tables(parts)
    floats = source.filter(pc.equal(source.column("attribute_type"), "float_series"))
    want = sorted((r["run_id"], r["attribute_path"], r["step"], int(r["timestamp"].timestamp() * 1000))
                  for r in floats.select(["run_id", "attribute_path", "step", "timestamp"]).to_pylist())
    got = []
    for exp in exps:
        origin = json.loads(exp["others"]["trackport.origin"])
        manifest = json.loads(next(a["data"] for a in exp["assets"] if a["name"] == "trackport/manifest.json"))
        got += [(origin["run_id"], name, Decimal(step) / manifest["step_multiplier"], ts)
                for name, step, ts in _sdk_points(exp)]
    assert sorted(got) == want

    code, checked, out = run_cli("verify", str(SAMPLE), "comet://ws/proj", *ONLINE)
    assert code == 0 and checked["totals"]["verified"] == report["totals"]["moved"], out

    writes = len(comet_online.writes)
    code, again, out = run_cli("copy", str(SAMPLE), "comet://ws/proj", *ONLINE)
    assert code == 0 and again["totals"]["skipped"] == report["totals"]["moved"], out
    assert again["totals"]["points"] == 0 and len(comet_online.writes) == writes


def test_online_a_key_the_server_already_holds_is_refused_not_written_twice(comet_online):
    """The SDK answers an existing key by logging an error and going on disabled
    (experiment.py _start, ExperimentAlreadyUploaded): the sink deletes an incomplete experiment
    before writing again, and the client refuses loudly instead of sending nowhere."""
    from trackport.connectors.comet import client

    first = client.OnlineRun("ws", "proj", "f" * 32)
    first.metric("loss", 1.0, 0, 1_700_000_000_000)
    first.end()
    with pytest.raises(ConnectionError, match="could not create"):
        client.OnlineRun("ws", "proj", "f" * 32)
    other = client.OnlineRun("ws", "proj", "0" * 32)          # the one-experiment lock was released
    other.end()
    assert [e["key"] for e in comet_online.workspaces["ws"]["proj"]] == ["f" * 32, "0" * 32]
    assert _sdk_points(comet_online.experiment("f" * 32)) == [("loss", 0, 1_700_000_000_000)]
