"""DVCLive connector: real DVCLive folders written by the real `dvclive` package, read back and moved.

Oracles independent of trackport: dvclive's own TSV parser (`dvclive.utils.parse_tsv`) for
what a folder holds, and DVC itself (`dvc plots show` / `dvc params show` / `dvc metrics
show --json` in a Git + DVC repository) for what the sink wrote.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import wandb_offline_support as wos
from support import copy_verify_rerun, read_plain_export, run_cli, runs_by_id
from trackport.core.layout import safe
from trackport.testing import conformance

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sample-export"
NATIVE_STEPS = [0, 1, 2, 10, 25]          # next_step for the first three, then Live.step jumps


def write_native(folder: Path) -> None:
    """A training as a DVC user logs it, through the real dvclive API (no DVC repo: run from a
    folder outside any Git repository, see the `native` fixture)."""
    from dvclive import Live

    with Live(dir=str(folder), save_dvc_exp=False, dvcyaml=str(folder / "dvc.yaml")) as live:
        live.log_params({"lr": 0.001, "epochs": 25, "amp": True, "optimizer": {"name": "adam", "betas": [0.9, 0.999]},
                         "note": None})
        for i, step in enumerate(NATIVE_STEPS):
            if i >= 3:
                live.step = step                  # non-contiguous steps
            live.log_metric("train/loss", 1.0 / (step + 1), timestamp=True)
            live.log_metric("acc", step / 100.0 if step != 2 else float("nan"), timestamp=True)
            live.log_metric("phase", "warmup" if step < 10 else "main", timestamp=True)
            image = np.full((4, 6, 3), step, dtype=np.uint8)
            live.log_image(f"samples/{step}.png", image)
            if i < 2:
                live.next_step()
        live.log_metric("best_epoch", "epoch 10", plot=False)     # a string summary only
        live.log_metric("final/f1", 0.875, plot=False)
        live.log_image("confusion.png", np.zeros((3, 3, 3), dtype=np.uint8))
        live.log_plot("pr", [{"r": 0.1, "p": 0.9}, {"r": 0.5, "p": 0.7}], x="r", y="p")


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    cwd = os.getcwd()
    os.chdir(root)                # Live() looks for a DVC / Git repo from the current directory
    try:
        write_native(root / "exp1" / "dvclive")
        write_native(root / "exp2" / "dvclive")
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="module")
def offline_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb-runs")
    wos.make_runs(root)
    return root


def fingerprint(root: Path) -> dict[str, tuple]:
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = ("dir", st.st_mtime_ns)
        else:
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _series(table: pa.Table, path: str) -> list[tuple]:
    rows = table.filter(pc.equal(table.column("attribute_path"), path)).to_pylist()
    out = []
    for r in rows:
        value = r["float_value"] if r["attribute_type"] == "float_series" else r["string_value"]
        ms = None if r["timestamp"] is None else round(r["timestamp"].timestamp() * 1000)
        out.append((r["attribute_type"], int(r["step"]), ms, value))
    return sorted(out, key=lambda t: t[1])


def _singles(table: pa.Table) -> dict[str, tuple]:
    out = {}
    for r in table.filter(pc.is_null(table.column("step"))).to_pylist():
        col = {"int": "int_value", "float": "float_value", "string": "string_value", "bool": "bool_value",
               "datetime": "datetime_value", "string_set": "string_set_value", "file": "file_value",
               "file_set": "file_value"}[r["attribute_type"]]
        out[r["attribute_path"]] = (r["attribute_type"], r[col])
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _equal(got: list[tuple], expected: list[tuple]) -> bool:
    return len(got) == len(expected) and all(
        len(g) == len(e) and all(_same(a, b) for a, b in zip(g, e)) for g, e in zip(got, expected))


def _points(tables) -> int:
    return sum(t.filter(pc.is_valid(t.column("step"))).num_rows for t in tables)


# -- the source: folders DVCLive wrote -----------------------------------------------------------

def test_source_reads_every_point_param_image_and_summary_dvclive_wrote(native, tmp_path):
    from dvclive.utils import parse_tsv

    before = fingerprint(native)
    code, report, out = run_cli("export", f"dvclive:{native}", str(tmp_path / "export"))
    assert code == 0, out
    tables = read_plain_export(tmp_path / "export")
    assert set(tables) == {(native.name, "exp1/dvclive"), (native.name, "exp2/dvclive")}
    run = tables[(native.name, "exp1/dvclive")]
    folder = native / "exp1" / "dvclive"

    # every TSV row, with its step and timestamp, as dvclive's own parser reads the file
    for name, kind in (("train/loss", "float_series"), ("acc", "float_series"), ("phase", "string_series")):
        rows = parse_tsv(folder / "plots" / "metrics" / f"{name}.tsv")
        leaf = name.rsplit("/", 1)[-1]
        expected = [(kind, int(r["step"]), int(r["timestamp"]),
                     float(r[leaf]) if kind == "float_series" else r[leaf]) for r in rows]
        got = _series(run, name)
        assert [s for _, s, _, _ in got] == NATIVE_STEPS
        assert len(got) == len(expected) and all(
            g[:3] == e[:3] and _same(g[3], e[3]) for g, e in zip(got, expected)), (name, got, expected)

    singles = _singles(run)
    assert singles["params/lr"] == ("float", 0.001)
    assert singles["params/epochs"] == ("int", 25)
    assert singles["params/amp"] == ("bool", True)
    assert singles["params/optimizer/name"] == ("string", "adam")
    assert singles["params/optimizer/betas"] == ("string", "[0.9, 0.999]")     # a YAML list: its JSON
    assert singles["params/note"] == ("string", "null")
    assert singles["best_epoch"] == ("string", "epoch 10")                    # summary-only values
    assert singles["final/f1"] == ("float", 0.875)
    # DVCLive's own step counter, as Live.end() left it in metrics.json
    assert singles["dvclive/step"] == ("int", json.loads((folder / "metrics.json").read_text())["step"])
    assert "train/loss" not in singles and "acc" not in singles                # latest points, not copies
    assert singles["images/confusion.png"][0] == "file"
    assert singles["plots/custom/pr.json"][0] == "file"
    (moved,) = [r for r in report["runs"] if r["run_id"] == "exp1/dvclive"]
    assert moved["transformations"]["yaml_value_as_json"] == 2

    # images: the slider folder is a file series by step, the bytes as DVCLive wrote them
    images = run.filter(pc.equal(run.column("attribute_type"), "file_series")).to_pylist()
    assert sorted(int(r["step"]) for r in images) == NATIVE_STEPS
    files_root = tmp_path / "export" / "files" / safe(native.name)
    for r in images:
        written = folder / "plots" / "images" / "samples" / f"{int(r['step'])}.png"
        assert (files_root / r["file_value"]["path"]).read_bytes() == written.read_bytes()

    assert fingerprint(native) == before, "reading changed the DVCLive folders"


def test_one_folder_and_a_folder_of_experiments_are_sources(native, tmp_path):
    code, report, out = run_cli("export", f"dvclive:{native / 'exp2' / 'dvclive'}", str(tmp_path / "one"),
                                "--dvclive-project", "mine")
    assert code == 0, out
    assert set(read_plain_export(tmp_path / "one")) == {("mine", "dvclive")}
    code, report, out = run_cli("plan", f"dvclive:{native}", f"dvclive:{tmp_path / 'dest'}")
    assert code == 0 and report["totals"]["runs"] == 2, out
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def test_a_torn_last_line_is_left_out_and_reported(native, tmp_path):
    import shutil

    folder = tmp_path / "torn" / "dvclive"
    shutil.copytree(native / "exp1" / "dvclive", folder)
    with open(folder / "plots" / "metrics" / "acc.tsv", "a", encoding="utf-8") as fh:
        fh.write("1714521600000\t26")                           # a training still writing
    code, report, out = run_cli("export", f"dvclive:{folder}", str(tmp_path / "export"))
    assert code == 0, out
    (run,) = report["runs"]
    assert any("acc.tsv" in w and "line end" in w for w in run["warnings"]), run
    (table,) = read_plain_export(tmp_path / "export").values()
    assert [s for _, s, _, _ in _series(table, "acc")] == NATIVE_STEPS


# -- the sink: written through dvclive, read by DVC --------------------------------------------------

def test_wandb_offline_runs_move_every_history_point_and_verify_clean(offline_root, tmp_path):
    code, exported, out = run_cli("export", f"wandb:{offline_root}", str(tmp_path / "wandb-export"))
    assert code == 0, out
    source = read_plain_export(tmp_path / "wandb-export")

    dest = f"dvclive:{tmp_path / 'out'}"
    code, report, out = run_cli("copy", f"wandb:{offline_root}", dest)
    assert code == 0, out
    assert report["totals"]["moved"] == wos.ENTRIES and not report["totals"]["drops"]
    assert report["totals"]["points"] == _points(source.values()) == exported["totals"]["points"]

    # the history as DVCLive's TSV: every step and timestamp (ms), nan / inf as DVCLive writes them
    folder = tmp_path / "out" / safe(f"{wos.ENTITY}/{wos.PROJECT}") / safe(wos.RICH_ID)
    from dvclive.utils import parse_tsv

    rows = parse_tsv(folder / "plots" / "metrics" / "loss.tsv")
    expected = [(step, round(ts * 1000), values["loss"]) for step, values, ts in wos.HISTORY if "loss" in values]
    assert _equal([(int(r["step"]), int(r["timestamp"]), float(r["loss"])) for r in rows], expected)
    assert {r["loss"] for r in rows} >= {"nan", "inf"}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["loss"] == 0.5 and metrics["step"] == wos.MEDIA_STEP

    code, checked, out = run_cli("verify", f"wandb:{offline_root}", dest)
    assert code == 0 and checked["totals"]["verified"] == wos.ENTRIES, out

    back = tmp_path / "back"
    assert run_cli("export", dest, str(back))[0] == 0
    for key, table in read_plain_export(back).items():
        assert conformance.canonical_rows(table) == conformance.canonical_rows(source[key])

    code, again, out = run_cli("copy", f"wandb:{offline_root}", dest)
    assert code == 0 and again["totals"]["skipped"] == wos.ENTRIES and again["totals"]["points"] == 0, out


def test_sample_export_moves_every_point_and_verifies(tmp_path):
    parts = [pq.read_table(p) for p in sorted((SAMPLE / "data").glob("*/*.parquet"))]
    dest = f"dvclive:{tmp_path / 'out'}"
    code, report, out = run_cli("copy", str(SAMPLE), dest)
    assert code == 0, out
    assert report["totals"]["points"] == _points(parts)
    assert not report["totals"]["drops"]
    code, checked, out = run_cli("verify", str(SAMPLE), dest)
    assert code == 0 and checked["totals"]["verified"] == report["totals"]["moved"], out


def test_partial_runs_are_repaired_without_duplicate_rows(offline_root, tmp_path):
    dest = tmp_path / "out"
    assert run_cli("copy", f"wandb:{offline_root}", f"dvclive:{dest}")[0] == 0
    folder = dest / safe(f"{wos.ENTITY}/{wos.PROJECT}") / safe(wos.RICH_ID)
    tsv = folder / "plots" / "metrics" / "loss.tsv"
    good = tsv.read_bytes()
    (folder / "trackport-run.json").unlink()                          # as a crash before the mark
    with open(tsv, "ab") as fh:
        fh.write(good.split(b"\n", 1)[1])                             # rows a killed copy left
    code, report, out = run_cli("copy", f"wandb:{offline_root}", f"dvclive:{dest}")
    assert code == 0, out
    assert runs_by_id(report)[wos.RICH_ID]["status"] == "repaired"
    assert runs_by_id(report)[wos.SPARSE_ID]["status"] == "skipped"
    assert tsv.read_bytes() == good
    code, checked, out = run_cli("verify", f"wandb:{offline_root}", f"dvclive:{dest}")
    assert code == 0, out


def test_a_folder_trackport_did_not_write_is_never_overwritten(offline_root, tmp_path):
    dest = tmp_path / "out"
    folder = dest / safe(f"{wos.ENTITY}/{wos.PROJECT}") / safe(wos.RICH_ID)
    folder.mkdir(parents=True)
    (folder / "mine.txt").write_text("keep")
    code, report, out = run_cli("copy", f"wandb:{offline_root}", f"dvclive:{dest}")
    assert code == 1, out
    assert "not written by trackport" in runs_by_id(report)[wos.RICH_ID]["error"]
    assert (folder / "mine.txt").read_text() == "keep"


def _git_dvc_repo(path: Path) -> dict:
    path.mkdir(parents=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "init"], cwd=path, check=True, env=env)
    return env


def test_dvc_reads_the_copy_and_no_dvc_repo_is_created(offline_root, tmp_path):
    """DVC itself shows the copied plots, params and metrics; a copy run from inside a Git
    repository without DVC leaves it without `.dvc` (Live() alone would `dvc init` it)."""
    repo = tmp_path / "repo"
    env = _git_dvc_repo(repo)
    code, report, out = _cli_in(repo, "copy", f"wandb:{offline_root}", "dvclive:runs")
    assert code == 0, out
    assert not (repo / ".dvc").exists(), "the copy created a DVC repository"

    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env)

    def dvc(*args):
        done = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    rel = f"runs/{safe(f'{wos.ENTITY}/{wos.PROJECT}')}/{safe(wos.RICH_ID)}"
    plots = dvc("plots", "show")["data"]
    (loss,) = [v for k, v in plots.items() if k == f"{rel}/plots/metrics/loss.tsv"]
    points = loss[0]["content"]["data"]["values"]
    expected = [(step, values["loss"]) for step, values, _ in wos.HISTORY if "loss" in values]
    assert _equal([(int(p["step"]), float(p["loss"])) for p in points], expected)
    assert any(k.startswith(f"{rel}/plots/images/") for k in plots), sorted(plots)

    params = dvc("params", "diff", "--all")[f"{rel}/params.yaml"]       # vs the empty commit: all new
    assert params["config.optimizer.lr"]["new"] == wos.CONFIG["optimizer"]["lr"]
    assert params["config.epochs"]["new"] == 10 and params["config.flag"]["new"] is True
    metrics = dvc("metrics", "show")[""]["data"][f"{rel}/metrics.json"]["data"]
    assert metrics["loss"] == 0.5 and metrics["step"] == wos.MEDIA_STEP


def _cli_in(cwd: Path, *args: str):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return run_cli(*args)
    finally:
        os.chdir(old)


def test_dvclive_to_dvclive_keeps_the_native_run(native, tmp_path):
    copy_verify_rerun(f"dvclive:{native}", f"dvclive:{tmp_path / 'copy'}", runs=2)


# -- conformance (trackport.testing.conformance) -------------------------------------------------

def test_conformance_round_trip(tmp_path):
    conformance.round_trip(conformance.Target(f"dvclive:{tmp_path / 'dest'}"), tmp_path)


def test_conformance_run_times(tmp_path):
    conformance.run_times(conformance.Target(f"dvclive:{tmp_path / 'dest'}"), tmp_path)


def test_conformance_files_and_bytes(tmp_path):
    conformance.files_and_bytes(conformance.Target(f"dvclive:{tmp_path / 'dest'}"), tmp_path)


def test_conformance_sigkill_heals(tmp_path):
    conformance.sigkill_heals(conformance.Target(f"dvclive:{tmp_path / 'dest'}"), tmp_path)
