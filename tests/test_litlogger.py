"""LitLogger connector (`litlogger://[OWNER/]TEAMSPACE`) through the real litlogger package.

The real litlogger / lightning_sdk request code talks to tests/litlogger_server.py, a local
stand-in of the Lightning AI endpoints it calls (LIGHTNING_CLOUD_URL points at it).  Every
assertion reads what that server stored: points with their steps and times, tags, artifacts
and their bytes, the phase and the completion tag.

litlogger needs Python >= 3.11.  On Python 3.10 the one test defined here runs this very file
with pytest in a venv built from pyenv's Python 3.11 with litlogger installed (cached under
~/.cache/trackport-tests, tests/cached_venv.py) and fails with its output unless every test
passes there.  Nothing is skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLE = REPO / "examples" / "sample-export"
IN_PROCESS = sys.version_info >= (3, 11)
VENV_PINS = ('litlogger>=2026.8.28,<2026.9', 'lightning-sdk>=2026.10.13,<2026.11', "pyarrow>=14",
             "numpy>=1.24", "click>=8.1", "rich>=13", "packaging>=23", "pytest>=8", "pytest-timeout>=2.3")


if not IN_PROCESS:

    def _python311() -> str:
        wanted = os.environ.get("TRACKPORT_LITLOGGER_PYTHON")
        pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
        candidates = [wanted] if wanted else []
        candidates += sorted((str(p / "bin" / "python") for p in pyenv.glob("3.11*")), reverse=True)
        candidates += [shutil.which("python3.11") or ""]
        for cand in candidates:
            if cand and Path(cand).exists():
                return cand
        pytest.fail(f"litlogger needs Python >= 3.11 and no Python 3.11 was found to test it with "
                    f"(looked in {pyenv} and the PATH); set TRACKPORT_LITLOGGER_PYTHON to a python3.11")

    def test_litlogger_suite_in_python311_venv():
        from cached_venv import cached_venv

        key = "litlogger-py311-" + re.sub(r"[^A-Za-z0-9.]+", "_", "-".join(VENV_PINS))[:80]
        python = cached_venv(key, _python311(), VENV_PINS, what="LitLogger (Python 3.11)", timeout=1800)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LIGHTNING_"))}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(HERE)])
        done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
                              cwd=REPO, capture_output=True, text=True, env=env, timeout=3000)
        tail = done.stdout[-6000:] + done.stderr[-2000:]
        assert done.returncode == 0, f"the LitLogger tests failed in the Python 3.11 venv ({python}):\n{tail}"
        assert re.search(r"\d+ passed", done.stdout), tail
        assert not re.search(r"\d+ (skipped|deselected|xfailed)", done.stdout), tail

else:
    import base64
    import json
    import math
    from datetime import timezone
    from decimal import Decimal

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from litlogger_server import ORG, PLANTED_KEY, TEAMSPACE, USER_ID, LitLoggerTestServer
    from support import run_cli
    from trackport.connectors.litlogger import mapping as mp
    from trackport.testing import conformance

    DEST = f"litlogger://{ORG}/{TEAMSPACE}"

    @pytest.fixture(scope="module")
    def server_session():
        server = LitLoggerTestServer().start()
        yield server
        server.stop()

    @pytest.fixture
    def server(server_session, monkeypatch, tmp_path):
        """The stand-in, emptied, with LIGHTNING_CLOUD_URL / _USER_ID / _API_KEY set to it and no
        credentials file of the user's read."""
        server_session.reset()
        for key, value in server_session.env().items():
            monkeypatch.setenv(key, value)
        for key in ("LIGHTNING_AUTH_TOKEN", "LIGHTNING_USERNAME", "LIGHTNING_ORG", "LIGHTNING_TEAMSPACE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("LIGHTNING_CREDENTIAL_PATH", str(tmp_path / "no-credentials.json"))
        yield server_session
        server_session.release()

    def _ms(ts) -> int | None:
        if ts is None:
            return None
        ts = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        return int(round(ts.timestamp() * 1000))

    def _stored_ms(text: str | None) -> int | None:
        from datetime import datetime

        return None if text is None else _ms(datetime.fromisoformat(text))

    def _sample_tables():
        return [pq.read_table(p) for p in sorted((SAMPLE / "data").glob("*/*.parquet"))]

    # -- conformance ---------------------------------------------------------------------

    def test_conformance_round_trip(server, tmp_path):
        conformance.round_trip(conformance.Target(DEST), tmp_path)
        assert not server.unknown, server.unknown

    def test_conformance_files_and_bytes(server, tmp_path):
        conformance.files_and_bytes(conformance.Target(DEST), tmp_path)

    def test_conformance_run_times(server, tmp_path):
        conformance.run_times(conformance.Target(DEST), tmp_path)

    def test_conformance_sigkill_heals(server, tmp_path):
        conformance.sigkill_heals(conformance.Target(DEST), tmp_path)
        # one experiment per origin, every one finished and marked
        names = [s.name for s in server.streams.values()]
        assert len(names) == len(set(names))
        assert all(s.phase in ("COMPLETED", "FAILED") and mp.TAG_COMPLETE in s.tag_map()
                   for s in server.streams.values())

    # -- the sample export -----------------------------------------------------------------

    def test_sample_export_every_point_stored_verified_and_rerun_idempotent(server, tmp_path):
        parts = _sample_tables()
        code, plan, out = run_cli("plan", str(SAMPLE), DEST)
        assert code == 0, out
        assert {m for m, _ in server.requests} == {"GET"}, "plan wrote to the service"
        assert server.streams == {}

        code, report, out = run_cli("copy", str(SAMPLE), DEST)
        assert code == 0, out
        assert report["totals"]["moved"] == 5 and not report["totals"]["drops"]
        assert report["totals"]["points"] == sum(
            t.filter(pc.is_valid(t.column("step"))).num_rows for t in parts) == 5330
        stored = server.by_name()
        assert len(stored) == 5
        # every float point in the experiment's stream, with its step and its own time
        import pyarrow as pa

        table = pa.concat_tables(parts, promote_options="permissive")
        accounted = 0   # every point of the export: a stream point, a manifest point, a series line, a file
        for run_id in sorted(set(table.column("run_id").to_pylist())):
            rows = table.filter(pc.equal(table.column("run_id"), run_id))
            (stream,) = [s for name, s in stored.items() if name.startswith(f"{run_id}-")]
            tags = stream.tag_map()
            assert tags[mp.TAG_ORIGIN].startswith("trackport-") and mp.TAG_COMPLETE in tags
            assert stream.phase in ("COMPLETED", "FAILED") and stream.persisted
            manifest = mp.Manifest.loads(server.blobs[f"experiments/{stream.name}/{mp.MANIFEST_PATH}"])
            m = manifest.multiplier   # IMG-3's steps are epochs (0.25, 0.5, ...): x100
            assert m == (100 if run_id == "IMG-3" else 1)
            metrics = rows.filter(pc.equal(rows.column("attribute_type"), "float_series"))
            want: dict[str, list] = {}
            for path, step, ts, value in zip(*(metrics.column(c).to_pylist() for c in
                                               ("attribute_path", "step", "timestamp", "float_value"))):
                if value is not None and math.isfinite(value):
                    want.setdefault(path, []).append((int(step * m), _ms(ts), value))
            got = {name: [(p["step"], _stored_ms(p["createdAt"]), p["value"]) for p in points]
                   for name, points in stream.metrics.items()}
            assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}, run_id
            # params are tags with exact text
            for row in rows.filter(pc.is_null(rows.column("step"))).to_pylist():
                typ = row["attribute_type"]
                if typ in ("file", "file_set", "artifact", "file_series") or row[
                        {"string_set": "string_set_value"}.get(typ, f"{typ}_value")] is None:
                    continue
                value = row[{"string_set": "string_set_value"}.get(typ, f"{typ}_value")]
                assert mp.param_value(typ, tags[row["attribute_path"]]) == (
                    value.replace(tzinfo=timezone.utc) if typ == "datetime" else value)
            assert mp.MANIFEST_PATH in {a["path"] for a in stream.artifacts}
            accounted += sum(map(len, stream.metrics.values())) + sum(map(len, manifest.special.values()))
            accounted += sum(server.blobs[f"experiments/{stream.name}/{remote}"].count(b"\n")
                             for remote in manifest.series_files.values())
            accounted += len({(f[0], f[2], f[3]) for f in manifest.files if f[2] is not None})
        assert accounted == report["totals"]["points"] == 5330
        sample_files = [p for p in (SAMPLE / "files").rglob("*") if p.is_file()]
        stored_files = {k: v for k, v in server.blobs.items() if "/files/" in k}
        assert len(stored_files) == len(sample_files) == report["totals"]["files"]
        assert sorted(stored_files.values()) == sorted(p.read_bytes() for p in sample_files)

        code, checked, out = run_cli("verify", str(SAMPLE), DEST)
        assert code == 0 and checked["totals"]["verified"] == 5, out

        before = len(server.requests)
        code, again, out = run_cli("copy", str(SAMPLE), DEST)
        assert code == 0 and again["totals"]["skipped"] == 5 and again["totals"]["points"] == 0, out
        assert [r for r in server.requests[before:] if r[0] != "GET"] == [], "a rerun wrote"
        assert len(server.streams) == 5

    def test_transient_errors_lose_and_duplicate_nothing(server):
        server.fail("PUT", "/v1/projects/proj-1/logger-metrics/", 503, times=1)
        server.fail("POST", "/v1/projects/proj-1/artifacts/blobs", 502, times=1)
        server.fail("GET", "/v1/metrics-streams", 429, times=1)
        code, report, out = run_cli("copy", str(SAMPLE), DEST, "--run", "LLM-1")
        assert code == 0, out
        assert len(server.injected) == 3
        (stream,) = server.streams.values()
        want = sum(t.filter(pc.and_(pc.equal(t.column("run_id"), "LLM-1"),
                                    pc.equal(t.column("attribute_type"), "float_series"))).num_rows
                   for t in _sample_tables())
        assert sum(map(len, stream.metrics.values())) == want > 0, "a point lost or sent twice"
        assert mp.TAG_COMPLETE in stream.tag_map()
        assert run_cli("verify", str(SAMPLE), DEST, "--run", "LLM-1")[0] == 0

    # -- identity, repair and refusal ---------------------------------------------------------

    def test_partial_experiment_is_started_again_not_duplicated(server, tmp_path):
        """A load killed after points went in (no completion tag) is deleted and redone under its name."""
        server.hold("PUT", "/v1/projects/proj-1/metrics-stream/", b"trackport:complete")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.Popen([sys.executable, "-m", "trackport", "copy", str(SAMPLE), DEST, "--run", "IMG-1",
                                 "--no-progress"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            assert server.held.wait(120), "the load never reached its completion mark"
        finally:
            import signal

            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            server.release(drop=True)   # the completion request dies with the client
        floats = sum(t.filter(pc.and_(pc.equal(t.column("run_id"), "IMG-1"),
                                      pc.equal(t.column("attribute_type"), "float_series"))).num_rows
                     for t in _sample_tables())
        (partial,) = server.streams.values()
        assert mp.TAG_COMPLETE not in partial.tag_map() and partial.phase == "RUNNING"
        assert sum(map(len, partial.metrics.values())) == floats == 1055
        code, report, out = run_cli("copy", str(SAMPLE), DEST, "--run", "IMG-1")
        assert code == 0, out
        assert report["runs"][0]["status"] == "repaired"
        (stream,) = server.streams.values()
        assert stream.id != partial.id and stream.name == partial.name
        assert mp.TAG_COMPLETE in stream.tag_map() and stream.phase == "COMPLETED"
        assert sum(map(len, stream.metrics.values())) == floats, "points sent twice"
        assert run_cli("verify", str(SAMPLE), DEST, "--run", "IMG-1")[0] == 0

    def test_a_foreign_experiment_with_the_same_name_is_not_touched(server, tmp_path):
        from trackport.connectors.litlogger.client import LitLoggerClient

        assert run_cli("copy", str(SAMPLE), DEST, "--run", "IMG-1")[0] == 0
        (name,) = server.by_name()
        server.reset()
        LitLoggerClient(f"{ORG}/{TEAMSPACE}").create_stream(name, {"owner": "someone"})
        code, report, out = run_cli("copy", str(SAMPLE), DEST, "--run", "IMG-1")
        assert code == 1
        assert "did not load" in report["runs"][0]["error"] and "Fix:" in report["runs"][0]["error"]
        (stream,) = server.streams.values()
        assert stream.tag_map() == {"owner": "someone"} and stream.metrics == {}

    def test_wrong_key_and_unknown_teamspace_are_clear_errors_without_the_key(server, monkeypatch):
        code, _, out = run_cli("copy", str(SAMPLE), f"litlogger://{ORG}/nowhere", "--run", "IMG-1")
        assert code != 0 and "nowhere" in out and "teamspace" in out
        monkeypatch.setenv("LIGHTNING_API_KEY", "ll_wrong_KEY_987654321")
        code, report, out = run_cli("copy", str(SAMPLE), DEST, "--run", "IMG-1")
        assert code != 0 and "LIGHTNING_API_KEY" in out, out[-3000:]
        assert "ll_wrong_KEY_987654321" not in out and server.streams == {}
        # the right key only ever travelled in the SDK's Basic Authorization header
        monkeypatch.setenv("LIGHTNING_API_KEY", PLANTED_KEY)
        assert run_cli("copy", str(SAMPLE), DEST, "--run", "IMG-1")[0] == 0
        assert f"Basic {base64.b64encode(f'{USER_ID}:{PLANTED_KEY}'.encode()).decode()}" in server.auth_seen
        assert all(PLANTED_KEY not in json.dumps(s.to_json()) for s in server.streams.values())

    def test_uri_forms():
        from trackport.connectors.litlogger import teamspace_of
        from trackport.core.errors import UsageError
        from trackport.core.registry import parse_uri

        assert teamspace_of(parse_uri("litlogger://research")) == "research"
        assert teamspace_of(parse_uri("litlogger://acme/research/")) == "acme/research"
        for bad in ("litlogger:research", "litlogger://", "litlogger://a/b/c", "litlogger://key@acme/r"):
            with pytest.raises(UsageError):
                teamspace_of(parse_uri(bad))

    def test_mapping_is_deterministic_and_exact():
        from datetime import datetime

        a = mp.external_id("parquet:/x", "ws/p", "RUN-1")
        assert a == mp.external_id("parquet:/x", "ws/p", "RUN-1") != mp.external_id("parquet:/x", "ws/p", "RUN-2")
        assert mp.experiment_name(a, "RUN/1 x").startswith("RUN-1-x-")
        for typ, value in (("float", 0.1 + 0.2), ("float", float("inf")), ("int", -7), ("bool", False),
                           ("string_set", ["b", "a"]), ("string", " x "),
                           ("datetime", datetime(2024, 5, 1, 1, 2, 3, 4000, tzinfo=timezone.utc))):
            assert mp.param_value(typ, mp.param_text(typ, value)) == value
        assert math.isnan(mp.param_value("float", mp.param_text("float", float("nan"))))
        assert mp.source_step(123456789000001, 10**6) == Decimal("123456789.000001")
        remote, renamed = mp.file_remote("a/../b", None, "x/y.txt", None)
        assert renamed and remote.startswith("files/_/") and remote.endswith("/y.txt") and ".." not in remote
        assert mp.file_remote("plots/roc", "1.5", "p/r/roc.png", None) == ("files/plots/roc/step=1.5/roc.png", False)
