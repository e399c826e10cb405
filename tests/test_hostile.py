"""The hostile input corpus (trackport.testing.hostile), each case's defined outcome in one place.

One export holds every hostile case as its own run (or project) beside two good
runs; it goes through the real CLI into a parquet export and into the default
MLflow store (SQLite), and `verify` then proves the good runs.  For every case:
either the run fails with an error naming the run, the file and the fix while
every other run moves (exit code 1), or it moves with its declared
transformations counted.  A torn W&B log and a torn Neptune queue, written by
the real SDKs, move up to the tear with a warning in the run's report.
Nothing may be written outside the destination, and no traceback reaches the user.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from support import canonical_rows, read_plain_export, run_cli
from trackport.connectors.mlflow.mapping import TRANSFORMATIONS as MLFLOW_TRANSFORMATIONS
from trackport.connectors.parquet import layout
from trackport.testing import hostile as h

# What each failing case's error must say besides the run, the file and "Fix:".
FAILURE_WORDS = {
    "corrupt_part": ["_part_1.parquet", "damaged", "export the run again"],
    "truncated_part": ["_part_0.parquet", "damaged"],
    "step_as_string": ["column 'step'", "type string", "canonical column and attribute types"],
    "float_as_string": ["column 'float_value'", "type string"],
    "unknown_attribute_type": ["'quaternion'"],
    "rows_of_another_run": ["rows of another run: run_id 'GOOD-2'", "one run per part"],
    "null_attribute_path": ["1 row(s) with a null attribute_path"],
    "escape_dotdot": ["escapes the files root", "nothing of this run was written", "--allow-drops"],
    "escape_absolute": ["absolute", "--allow-drops"],
    "escape_symlink": ["outside the files root (through a symlink)", "--allow-drops"],
    "escape_symlink_in_file_set": ["'stolen.txt', a symlink that leads outside the files root"],
    "missing_file": ["file missing", "restore the file", "--allow-drops"],
    "zero_row_part": ["holds no rows"],
    "named_pipe": ["is a named pipe, not a regular file", "nothing of this run was written", "--allow-drops"],
    "files_folder_symlinked_out": ["leads outside the export root", "nothing is read through it"],
    "part_gap": ["_part_1 missing", "damaged", "export the run again"],
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> h.HostileExport:
    return h.write_hostile_export(tmp_path_factory.mktemp("hostile"))


def _report_id(case: h.HostileCase) -> str:
    """How the report names the case's run ("?<file stem>" when the run's own id is unreadable)."""
    return f"?{case.stem}" if case.identity_lost else case.run_id


def _by_id(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["project_id"], r["run_id"]): r for r in report["runs"]}


def _tree(folder: Path) -> dict[str, tuple]:
    """Every entry under `folder` with its kind, size and mtime: proof that nothing changed there."""
    out = {}
    for entry in sorted(folder.rglob("*")):
        st = entry.lstat()
        out[entry.relative_to(folder).as_posix()] = (entry.is_symlink(), entry.is_dir(), st.st_size, st.st_mtime_ns)
    return out


def _source_table(hostile: h.HostileExport, case: h.HostileCase) -> pa.Table:
    parts = sorted(layout.project_data_dir(hostile.root, case.project_id).glob(f"{case.stem}_part_*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts])


def _good_pattern(cases) -> str:
    return "^(" + "|".join(re.escape(c.run_id) for c in cases) + ")$"


def _assert_failures(hostile: h.HostileExport, runs: dict, extra: dict[str, list[str]] | None = None,
                     parquet: bool = False) -> None:
    words = {**FAILURE_WORDS, **(extra or {})}
    for case in hostile.by_outcome(h.FAILED, parquet=parquet):
        run = runs[(case.project_id, _report_id(case))]
        error = run["error"] or ""
        assert run["status"] == "failed", (case.case, run)
        assert f"run {case.project_id}/{_report_id(case)}" in error, (case.case, error)
        named = {"steps_collide_after_int": "metrics/loss"}.get(case.case) or (
            case.files[0] if case.files else f"{case.stem}_part_")
        assert f"file {named}" in error or named in error, (case.case, error)
        assert "Fix:" in error, (case.case, error)
        for word in words[case.case]:
            assert word in error, (case.case, word, error)
        assert "\n" not in error, (case.case, error)


def _assert_nothing_outside(hostile: h.HostileExport, before: dict, cwd: Path, allowed: set[str]) -> None:
    """The source side is untouched; the command wrote only `allowed` in its folder, none of
    it holds a byte of the file outside the export, and no escaping path landed anywhere."""
    assert _tree(hostile.root.parent) == before
    assert {p.name for p in cwd.iterdir()} <= allowed, sorted(p.name for p in cwd.iterdir())
    for f in (p for p in cwd.rglob("*") if p.is_file()):
        assert h.SECRET not in f.read_bytes(), f
    files_dir = layout.project_files_dir(cwd / "out", h.PROJECT)
    for case in hostile.cases.values():
        for rel in case.files:
            if rel.startswith("/") or ".." in rel.split("/"):
                # where the escaping path would land if a writer followed it
                assert not (files_dir / rel.lstrip("/")).exists(), rel


# ---------------------------------------------------------------------------
# into a parquet export


def test_export_fails_each_hostile_run_alone_and_moves_the_rest_unchanged(hostile, tmp_path):
    before = _tree(hostile.root.parent)
    out = tmp_path / "out"
    code, report, output = run_cli("export", str(hostile.root), str(out))
    assert code == 1 and report["exit_code"] == 1
    assert "Traceback" not in output
    runs = _by_id(report)
    cases = hostile.cases.values()
    assert len(runs) == sum(1 for c in cases if c.outcome != h.ABSENT)   # one report entry per run, no more
    _assert_failures(hostile, runs, parquet=True)
    assert not [r for r in runs if r[0] == h.EMPTY_PROJECT]               # an empty project lists no run

    exported = read_plain_export(out)
    for case in hostile.by_outcome(h.MOVED, h.TRANSFORMED, parquet=True):
        run = runs[(case.project_id, case.run_id)]
        assert run["status"] == "moved", (case.case, run)
        assert run["transformations"] == {} and run["drops"] == {}, (case.case, run)   # parquet is lossless
        got, want = exported[(case.project_id, case.run_id)], _source_table(hostile, case)
        if case.case == "wide_run":
            assert got.num_rows == want.num_rows == h.WIDE_ATTRIBUTES + 1
            assert got.column("attribute_path").to_pylist() == want.column("attribute_path").to_pylist()
        else:
            assert canonical_rows(got) == canonical_rows(want), case.case        # names, NaN, 1 MB, repeats
    odd = runs[(h.ODD_PROJECT, h.ODD_RUN)]
    assert odd["files"] == 1
    assert (layout.project_files_dir(out, h.ODD_PROJECT) / hostile.case("odd_names").files[0]).read_bytes() == b"odd file"
    _assert_nothing_outside(hostile, before, tmp_path, {"out", ".trackport"})

    # verify: every run that moved is proven, every failed one is reported missing
    code, report, output = run_cli("verify", str(hostile.root), str(out))
    assert "Traceback" not in output
    runs = _by_id(report)
    for case in hostile.by_outcome(h.MOVED, h.TRANSFORMED, parquet=True):
        assert runs[(case.project_id, case.run_id)]["status"] == "verified", case.case
    for case in hostile.by_outcome(h.FAILED, parquet=True):
        assert runs[(case.project_id, _report_id(case))]["status"] == "missing", case.case
    good = hostile.by_outcome(h.MOVED, h.TRANSFORMED, parquet=True)
    code, report, _ = run_cli("verify", str(hostile.root), str(out), "--run", _good_pattern(good))
    assert code == 0 and report["totals"]["verified"] == len(good), report

    # a rerun skips what moved and fails the same runs again, writing nothing new
    parts = _tree(out / "data")
    code, report, _ = run_cli("export", str(hostile.root), str(out))
    assert code == 1 and report["totals"]["skipped"] == len(good)
    assert _tree(out / "data") == parts


def test_allow_drops_moves_runs_without_their_bad_files_and_says_so(hostile, tmp_path):
    before = _tree(hostile.root.parent)
    out = tmp_path / "out"
    file_cases = [hostile.case(c) for c in ("escape_dotdot", "escape_absolute", "escape_symlink",
                                            "escape_symlink_in_file_set", "missing_file", "named_pipe",
                                            "files_folder_symlinked_out")]
    code, report, output = run_cli("export", str(hostile.root), str(out), "--allow-drops",
                                   "--run", _good_pattern(file_cases))
    assert code == 0 and "Traceback" not in output
    runs = _by_id(report)
    for case in file_cases:
        run = runs[(case.project_id, case.run_id)]
        assert run["status"] == "moved" and run["drops"] == {"missing_file": 1}, (case.case, run)
        assert any(case.files[0] in e for e in run["examples"]["missing_file"]), run
        paths = read_plain_export(out)[(case.project_id, case.run_id)].column("attribute_path").to_pylist()
        assert "files/thing" not in paths and "metrics/loss" in paths
    _assert_nothing_outside(hostile, before, tmp_path, {"out", ".trackport"})


# ---------------------------------------------------------------------------
# into the default MLflow store (SQLite): integer steps, key rules, length limits


def test_mlflow_store_gets_every_good_run_with_declared_transformations(hostile, tmp_path):
    before = _tree(hostile.root.parent)
    dest = f"mlflow:sqlite:///{tmp_path / 'mlflow.db'}"
    # The 100,000-attribute run goes to the parquet test only: MLflow's SQL store slows down as
    # a run's params grow (36,700 of them took 13 minutes here; docs/format.md).
    args = ("--step-multiplier", "1", "--run", "^(?!WIDE$)")
    code, report, output = run_cli("copy", str(hostile.root), dest, *args)
    assert code == 1 and "Traceback" not in output
    runs = _by_id(report)
    _assert_failures(hostile, runs, {"steps_collide_after_int": [
        "metrics/loss at destination step 1 from source steps 1, 1.25, 1.5", "nothing was written",
        "--step-multiplier"]})

    moved = [c for c in hostile.by_outcome(h.MOVED, h.TRANSFORMED) if c.case != "wide_run"]
    for case in moved:
        run = runs[(case.project_id, case.run_id)]
        assert run["status"] == "moved", (case.case, run)
        assert set(run["transformations"]) <= set(MLFLOW_TRANSFORMATIONS), run   # all declared
        assert run["drops"] == {}, run
    t = {c.case: runs[(c.project_id, c.run_id)]["transformations"] for c in moved}
    assert t["nan_inf"]["inf_to_float_max"] == 2
    assert t["one_megabyte_strings"]["param_to_artifact"] == 1
    assert t["one_megabyte_strings"]["series_to_artifact"] == 1
    assert t["step_floored"]["step_floored"] == 1
    assert t["duplicate_points_same_value"]["duplicate_point_in_manifest"] == 1
    assert "duplicate_point_in_manifest" not in t["duplicate_points_different_values"]
    assert t["odd_names"]["key_sanitized"] >= len(h.ODD_ATTRIBUTES)
    assert "step_floored" not in t["good_1"]
    # the store's own lock folder (core/claims.py) belongs to the destination too
    _assert_nothing_outside(hostile, before, tmp_path, {"mlflow.db", ".mlflow.db.trackport-locks", "mlartifacts",
                                                        "mlruns", ".trackport"})

    code, report, output = run_cli("verify", str(hostile.root), dest, *args)
    assert "Traceback" not in output
    runs = _by_id(report)
    exact = [c for c in moved if c.case != "step_floored"]
    for case in exact:
        assert runs[(case.project_id, case.run_id)]["status"] == "verified", (case.case, runs[(case.project_id, case.run_id)])
    # The floor the user asked for is a declared loss, and verify shows it.
    floored = runs[(h.PROJECT, "STEP-FLOOR")]
    assert floored["status"] == "different" and "metrics/loss" in floored["error"]
    code, report, _ = run_cli("verify", str(hostile.root), dest, "--run", _good_pattern(exact))
    assert code == 0 and report["totals"]["verified"] == len(exact), report


# ---------------------------------------------------------------------------
# tracker files torn by a crash, written by the real SDKs


def test_a_torn_wandb_log_and_a_torn_neptune_queue_move_up_to_the_tear_with_a_warning(tmp_path):
    wandb_log, queue = h.write_torn_tracker_files(tmp_path)
    sources = {
        "wandb": (f"wandb:{tmp_path / 'w'}", [], str(wandb_log)),
        "neptune": (f"neptune:{tmp_path / 'n' / '.neptune'}", ["--neptune-project", "hostile/torn"],
                    f"{queue.name}: torn last line"),
    }
    for kind, (src, args, warning) in sources.items():
        out = tmp_path / f"{kind}-out"
        code, report, output = run_cli("export", src, str(out), *args)
        assert code == 0 and "Traceback" not in output, output
        (run,) = report["runs"]
        assert run["status"] == "moved" and any(warning in w for w in run["warnings"]), run
        (table,) = read_plain_export(out).values()
        if kind == "wandb":
            loss = table.filter(pc.equal(table.column("attribute_path"), "loss"))
            steps = sorted(int(s) for s in loss.column("step").to_pylist())
            assert steps == list(h.TORN_WANDB_STEPS[:-1])          # the last point lay past the tear
        else:
            paths = table.column("attribute_path").to_pylist()
            assert "config/lr" in paths and "config/late" not in paths
            loss = table.filter(pc.equal(table.column("attribute_path"), "train/loss"))
            assert loss.column("float_value").to_pylist() == [0.5, 0.25]
        code, report, _ = run_cli("verify", src, str(out), *args)
        assert code == 0 and report["totals"]["verified"] == 1, report
        # and straight into the MLflow store: the same warning, the same points
        dest = f"mlflow:sqlite:///{tmp_path / 'mlflow.db'}"
        code, report, output = run_cli("copy", src, dest, *args)
        assert code == 0 and "Traceback" not in output, output
        (run,) = report["runs"]
        assert run["status"] == "moved" and any(warning in w for w in run["warnings"]), run
        code, report, _ = run_cli("verify", src, dest, *args)
        assert code == 0 and report["totals"]["verified"] == 1, report


def test_a_flipped_bit_in_a_part_trackport_wrote_fails_its_page_checksum(hostile, tmp_path):
    out = tmp_path / "out"
    code, _, _ = run_cli("export", str(hostile.root), str(out), "--run", "^GOOD-")
    assert code == 0
    part = layout.part_path(out, h.PROJECT, "GOOD-1", 0)
    chunk = next(c for c in (pq.ParquetFile(part).metadata.row_group(0).column(i) for i in range(14))
                 if c.path_in_schema == "float_value")
    data = bytearray(part.read_bytes())
    # one bit in the middle of the float column's dictionary page: a reader without the
    # checksum check reads a different number and never knows
    data[(chunk.dictionary_page_offset + chunk.data_page_offset) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    code, report, output = run_cli("export", str(out), str(tmp_path / "again"))
    assert code == 1 and "Traceback" not in output
    runs = _by_id(report)
    bad, fine = runs[(h.PROJECT, "GOOD-1")], runs[(h.PROJECT, "GOOD-2")]
    assert bad["status"] == "failed" and "CRC" in bad["error"] and part.name in bad["error"], bad
    assert fine["status"] == "moved"


def test_damaged_manifests_fail_one_run_or_the_command_clearly_and_a_damaged_mark_is_repaired(hostile, tmp_path):
    ours = tmp_path / "ours"
    assert run_cli("export", str(hostile.root), str(ours), "--run", "^GOOD-")[0] == 0
    manifest = layout.run_manifest_path(ours, h.PROJECT, "GOOD-1")
    manifest.write_text('{"project_id": "hostile/main", "run_')          # torn by a crash or a bad copy

    # as a source: that run fails naming its manifest, the other one moves
    code, report, output = run_cli("export", str(ours), str(tmp_path / "again"))
    assert code == 1 and "Traceback" not in output
    runs = _by_id(report)
    bad = runs[(h.PROJECT, "GOOD-1")]
    assert bad["status"] == "failed" and str(manifest) in bad["error"] and "Fix: export the run again" in bad["error"]
    assert runs[(h.PROJECT, "GOOD-2")]["status"] == "moved"

    # as a destination: the run counts as partial, and the next export repairs it
    code, report, output = run_cli("export", str(hostile.root), str(ours), "--run", "^GOOD-")
    assert code == 0 and "Traceback" not in output
    runs = _by_id(report)
    assert runs[(h.PROJECT, "GOOD-1")]["status"] == "repaired" and runs[(h.PROJECT, "GOOD-2")]["status"] == "skipped"
    assert run_cli("verify", str(hostile.root), str(ours), "--run", "^GOOD-")[0] == 0

    # a damaged export manifest stops the command before anything is read: a usage error
    (ours / layout.EXPORT_MANIFEST).write_text("{not json")
    code, _, output = run_cli("export", str(ours), str(tmp_path / "third"))
    assert code == 2 and "Traceback" not in output
    assert "trackport.json is damaged" in output and "Fix:" in output
    # ...and, as a destination, fails each run it would have to write, naming the file
    code, report, output = run_cli("export", str(hostile.root), str(ours), "--run", "^(GOOD-1|EMPTY)$")
    assert code == 1 and "Traceback" not in output
    runs = _by_id(report)
    assert runs[(h.PROJECT, "GOOD-1")]["status"] == "skipped"
    empty = runs[(h.PROJECT, "EMPTY")]
    assert empty["status"] == "failed" and "export manifest is damaged" in empty["error"], empty
    assert "run hostile/main/EMPTY" in empty["error"] and "trackport.json" in empty["error"]
