"""ZenML connector: the real zenml package and a local ZenML store (SQLite), no login.

Every test points ZenML at a configuration folder of its own (--zenml-config-dir, which
sets ZENML_CONFIG_PATH and ZENML_LOCAL_STORES_PATH), so the user's ZenML configuration is
never read or touched.  What the sink wrote is checked through ZenML's own client API.

ZenML is not in trackport's `test` extra (its pins clash: tests/zenml_venv.py).  Where
zenml is not importable, the one test collected here builds ZenML's venv and runs this file
inside it, failing (never skipping) when any test there fails or is skipped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sample-export"
HAVE_ZENML = importlib.util.find_spec("zenml") is not None


if not HAVE_ZENML:

    def test_zenml_suite_runs_in_its_own_venv():
        from zenml_venv import zenml_python

        python = zenml_python()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "PYTHONHOME"))}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "tests")])
        done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                               str(Path(__file__))], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=1800)
        tail = done.stdout[-6000:] + done.stderr[-2000:]
        assert done.returncode == 0, tail
        assert " passed" in done.stdout and " skipped" not in done.stdout and " failed" not in done.stdout, tail

else:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import wandb_offline_support as wos
    from support import read_plain_export, run_cli
    from trackport.connectors.zenml import mapping as mp
    from trackport.testing import conformance

    @pytest.fixture(scope="module")
    def store(tmp_path_factory) -> Path:
        """One ZenML store for the module (creating and migrating one takes tens of seconds);
        each test writes into a model of its own."""
        return tmp_path_factory.mktemp("zenml-store")

    def _args(store: Path) -> list[str]:
        return ["--zenml-config-dir", str(store)]

    def _client(store: Path):
        from trackport.connectors.zenml import client

        return client.connect(store)

    # -- conformance ---------------------------------------------------------------------

    def test_conformance_round_trip(store, tmp_path):
        conformance.round_trip(conformance.Target("zenml:conf-rt", args=_args(store)), tmp_path)

    def test_conformance_run_times(store, tmp_path):
        conformance.run_times(conformance.Target("zenml:conf-times", args=_args(store)), tmp_path)

    def test_conformance_files_and_bytes(store, tmp_path):
        conformance.files_and_bytes(conformance.Target("zenml:conf-files", args=_args(store)), tmp_path)

    def test_conformance_sigkill_heals(store, tmp_path):
        conformance.sigkill_heals(conformance.Target("zenml:conf-kill", args=_args(store)), tmp_path)
        # the killed attempt's artifact versions are gone: one per run, the one its mark names
        c = _client(store)
        versions = c.list_model_versions(model="conf-kill", size=100, hydrate=True).items
        for version in versions:
            mark = version.run_metadata[mp.MARK_KEY]
            assert mark["complete"] is True
            name = mp.artifact_name("conf-kill", version.name)
            ids = [str(a.id) for a in c.list_artifact_versions(name=name, size=100).items]
            assert ids == [mark["artifact"]], (version.name, ids)

    # -- the shipped sample export ---------------------------------------------------------

    def test_sample_export_every_point_accounted_for(store):
        code, report, out = run_cli("copy", str(SAMPLE), "zenml:sample", *_args(store))
        assert code == 0, out
        points = 0
        for part in (SAMPLE / "data").rglob("*.parquet"):
            table = pq.read_table(part, columns=["step"])
            points += pc.sum(pc.is_valid(table.column("step"))).as_py() or 0
        assert report["totals"]["points"] == points > 0
        assert not report["totals"]["drops"]
        assert set(report["totals"]["transformations"]) <= set(mp.CAPABILITIES.transformations)
        code, verify, out = run_cli("verify", str(SAMPLE), "zenml:sample", *_args(store))
        assert code == 0, out
        assert verify["totals"]["verified"] == report["totals"]["runs"] == 5

        # what ZenML's own client shows: 5 model versions, each with its series summaries,
        # params, tags, and the linked artifact holding every point
        c = _client(store)
        versions = c.list_model_versions(model="sample", size=100, hydrate=True).items
        assert len(versions) == 5
        summarised = 0
        for version in versions:
            meta = version.run_metadata
            assert meta[mp.MARK_KEY]["complete"] is True
            origin = meta[mp.ORIGIN_KEY]
            assert version.name == mp.version_name_for(origin["uri"], origin["project_id"], origin["run_id"])
            series = {k: v for k, v in meta.items() if k.startswith(mp.SERIES_PREFIX)}
            summarised += sum(v["count"] for v in series.values())
            linked = [a.id for a in c.list_artifact_versions(model_version_id=version.id, size=50).items]
            assert [str(i) for i in linked] == [meta[mp.MARK_KEY]["artifact"]]
        assert summarised == points        # every point counted in ZenML's own metadata
        img = next(v for v in versions if v.run_metadata[mp.ORIGIN_KEY]["run_id"] == "IMG-1")
        rows = pq.read_table(next((SAMPLE / "data").rglob("IMG-1*_part_0.parquet"))).to_pylist()
        tags = next((r["string_set_value"] for r in rows if r["attribute_path"] == "sys/tags"), None)
        if tags:
            assert sorted(t.name for t in img.tags) == sorted(tags)
        params = {r["attribute_path"]: r for r in rows if r["step"] is None and r["attribute_type"] in ("float", "int", "string", "bool")}
        for path, row in params.items():
            value = next(row[c] for c in ("float_value", "int_value", "string_value", "bool_value") if row[c] is not None)
            assert img.run_metadata[path] == value, path

        code, report, out = run_cli("copy", str(SAMPLE), "zenml:sample", *_args(store))
        assert code == 0, out
        assert report["totals"]["skipped"] == 5 and report["totals"]["points"] == 0

    # -- W&B offline runs -> ZenML -----------------------------------------------------------

    def test_wandb_offline_runs_move_every_history_point_and_verify_clean(store, tmp_path):
        wos.make_runs(tmp_path / "runs")
        src = f"wandb:{tmp_path / 'runs'}"
        code, report, out = run_cli("copy", src, "zenml:wandb", *_args(store))
        assert code == 0, out
        assert report["totals"]["moved"] == wos.ENTRIES and not report["totals"]["drops"]
        code, export_report, out = run_cli("export", src, str(tmp_path / "export"))
        assert code == 0, out
        assert ({r["run_id"]: r["points"] for r in report["runs"]}
                == {r["run_id"]: r["points"] for r in export_report["runs"]})
        code, verify, out = run_cli("verify", src, "zenml:wandb", *_args(store))
        assert code == 0, out
        assert verify["totals"]["verified"] == wos.ENTRIES
        # read back from ZenML: every history point at its step and time
        code, _, out = run_cli("export", "zenml:wandb", str(tmp_path / "back"), *_args(store))
        assert code == 0, out
        back = read_plain_export(tmp_path / "back")
        rich = back[(f"{wos.ENTITY}/{wos.PROJECT}", wos.RICH_ID)]
        got = {(r["attribute_path"], int(r["step"]), int(r["timestamp"].timestamp() * 1000))
               for r in rich.to_pylist() if r["step"] is not None and r["attribute_type"] == "float_series"}
        for step, values, ts in wos.HISTORY:
            for key, value in values.items():
                if isinstance(value, float):
                    assert (key, step, round(ts * 1000)) in got, (key, step)
        code, report, out = run_cli("copy", src, "zenml:wandb", *_args(store))
        assert code == 0, out
        assert report["totals"]["skipped"] == wos.ENTRIES

    # -- ZenML as a source ----------------------------------------------------------------------

    def _fingerprint(root: Path) -> dict:
        out = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and ".trackport-claims" not in path.parts:
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        return out

    def test_reading_back_changes_nothing_and_copies_between_stores(store, tmp_path):
        code, _, out = run_cli("copy", str(SAMPLE), "zenml:readback", *_args(store), "--run", "IMG-1")
        assert code == 0, out
        before = _fingerprint(store)
        code, report, out = run_cli("export", "zenml:readback", str(tmp_path / "export"), *_args(store))
        assert code == 0, out
        assert report["totals"]["moved"] == 1
        assert _fingerprint(store) == before        # reading changed no byte and made no file
        # the export's runs keep the origin recorded in ZenML: loading it into the first model
        # finds the run already there
        # (the export records the ZenML artifact as the run's version, so the run is rewritten
        # in place, or skipped: never a second model version or a second artifact)
        code, report, out = run_cli("copy", str(tmp_path / "export"), "zenml:readback", *_args(store))
        assert code == 0, out
        assert [r["status"] for r in report["runs"]] in (["skipped"], ["repaired"]), report["runs"]
        c = _client(store)
        (version,) = c.list_model_versions(model="readback", size=100, hydrate=True).items
        name = mp.artifact_name("readback", version.name)
        assert [str(a.id) for a in c.list_artifact_versions(name=name, size=100).items] == [
            version.run_metadata[mp.MARK_KEY]["artifact"]]

    def test_a_model_version_trackport_did_not_write_is_left_out_and_noted(store, tmp_path):
        c = _client(store)
        c.create_model("foreign")
        c.create_model_version("foreign", name="hand-made")
        code, report, out = run_cli("export", "zenml:foreign", str(tmp_path / "e"), *_args(store))
        assert code == 0, out
        assert report["totals"]["runs"] == 0
        assert any("without a complete trackport mark" in n for n in report["notes"]), report["notes"]

    def test_mapping_names_are_deterministic_and_checked():
        a = mp.version_name_for("parquet:x", "p", "r")
        assert a == mp.version_name_for("parquet:x", "p", "r") != mp.version_name_for("parquet:x", "p", "r2")
        assert a.startswith("tp-") and len(a) == 27
        assert mp.check_model_name("") and mp.check_model_name("x" * 256) and mp.check_model_name("ok") is None
        assert mp.metadata_value("float", float("nan")) == "nan"
        assert mp.metadata_value("datetime", 1_714_521_600_123) == "2024-05-01T00:00:00.123Z"
        taken: set = set()
        assert mp.metadata_key("config/a:b", taken) == ("config/a_b", True)
        assert mp.metadata_key("config/a_b", taken) == ("attr/config/a_b", False)
        assert mp.metadata_key("series/x", taken) == ("attr/series/x", False)
        assert mp.metadata_key("series/x", taken, summary=True) == ("series/x", False)
        s = mp.SeriesSummary("float_series")
        for step, v in ((0, 3.0), (2, float("nan")), (1, 1.0)):
            s.add(step, v)
        assert s.as_metadata() == {"type": "float_series", "count": 3, "first_step": 0, "last_step": 2,
                                   "min": 1.0, "max": 3.0, "last": "nan"}
