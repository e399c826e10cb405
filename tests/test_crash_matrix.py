"""The crash matrix (issue 7, item 2): SIGKILL trackport at many moments, rerun, prove the copy exact.

Every case starts the real CLI in its own process group, kills it with SIGKILL
at one precise moment, reruns the same command in-process and then checks:

- `trackport verify SRC DST` is clean (exit 0, every run verified);
- every source run is in the destination exactly once (MLflow: by the origin
  tags; parquet: one manifest, contiguous parts, no temporary files, seen once
  by a reader of neptune-exporter's layout);
- every point and every file exactly once: the destination equals a clean,
  never-interrupted copy (MLflow: points per metric history, artifact paths and
  sizes, params; parquet: the rows as a multiset and the file bytes).

Moments, each a seeded choice N among the candidates a clean reference run of
the same command showed (printed as the plan, so a failure can be replayed
with TRACKPORT_CRASH_SEED):

- through the fault proxy in front of a real `mlflow server` (load, copy from a
  parquet export and from TensorBoard, export from MLflow): the N-th request of
  a kind (run creation, metric batch, artifact upload, terminate, completion
  mark, run search between runs, metric-history read), either LOST (dropped
  before the server saw it) or APPLIED (the server did it, the answer is lost);
- inside an export to parquet (no network): the N-th call or return of a sink
  method or Python audit event (a batch written mid-part, a new part opened,
  a file copied, a part renamed, the run manifest created or renamed, the
  export manifest written, a run committed).

A case whose moment never comes (the process ends by itself) fails.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from crash_support import (APPLIED, CRASH_PROJECT, LOST, MLFLOW_CASES, ProxyKill, child_command, crash_runs,
                           leftovers, mlflow_census, write_tensorboard_logdir)
from fault_proxy import FaultProxy
from support import canonical_rows, read_plain_export, run_cli
from trackport.connectors.parquet import layout
from trackport.testing.corpus import CORPUS_PROJECT
from trackport.testing.exporter_layout import write_exporter_export

SEED = int(os.environ.get("TRACKPORT_CRASH_SEED", "20261123"))
PART_SIZE = "30000"          # bytes: the long run spans several parquet parts
KILL_TIMEOUT_S = 300


@dataclass
class World:
    """What every case shares: one source export, one proxy, clean references."""

    root: Path
    runs: list                           # the parquet export cases move these
    src: Path
    mlflow_src: Path                     # the MLflow cases move a smaller export (each run costs requests)
    mlflow_runs: int
    tensorboard: Path
    server: str
    proxy: FaultProxy
    killer: ProxyKill
    kinds: dict[str, Counter]            # command -> requests per kind in a clean run
    census: dict[str, dict]              # command -> clean MLflow census by origin
    moments: dict[str, int]              # parquet export: occurrences per moment in a clean run
    mlflow_export: Path                  # a clean export of the reference experiment


def _experiments(template: str, projects) -> list[str]:
    return [template.format(project=p) for p in projects]


def _census(server: str, template: str, projects) -> dict:
    out = {}
    for name in _experiments(template, projects):
        out.update(mlflow_census(server, name))
    return out


EXPORT_MOMENTS = {
    "mid-part": "call:ParquetRunWriter.write",
    "new-part": "call:ParquetRunWriter._open_part",
    "file-copy": "audit:shutil.copyfile:files",
    "part-rename": "audit:os.rename:.parquet.tmp",
    "manifest-create": "audit:open:.run.json.",
    "manifest-rename": "audit:os.rename:.run.json.",
    "export-manifest": "audit:open:.trackport.json.",
    "after-commit": "return:ParquetRunWriter.commit",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, mlflow_server):
    root = tmp_path_factory.mktemp("crash")
    runs = crash_runs()
    src = root / "source-export"
    write_exporter_export(src, runs, part_rows=500)
    mlflow_src = root / "mlflow-source-export"
    mlflow_runs = [r for r in runs if r.case in MLFLOW_CASES]
    write_exporter_export(mlflow_src, mlflow_runs, part_rows=500)
    tensorboard = root / "tb"
    write_tensorboard_logdir(tensorboard)
    killer = ProxyKill()
    proxy = FaultProxy(mlflow_server, rate=1.0, kinds=("drop-before",), target=killer.target,
                       on_request=killer.on_request).start()
    try:
        kinds, census = {}, {}
        projects = (CORPUS_PROJECT, CRASH_PROJECT)
        for command, source, template, prj in (
            ("load", str(mlflow_src), "crash-ref-{project}", projects),
            ("copy-tb", f"tensorboard:{tensorboard}", "crash-tbref-{project}", ("tb",)),
        ):
            killer.record()
            code, _, out = run_cli(*_move_args(command, source, f"mlflow+{proxy.url}", template,
                                               root / f"state-{command}"))
            assert code == 0, out
            kinds[command] = Counter(killer.kinds)
            census[command] = _census(mlflow_server, template, prj)
        for same in ("copy", "load-parallel"):   # the same requests, the same result
            kinds[same], census[same] = kinds["load"], census["load"]

        mlflow_export = root / "mlflow-export"
        killer.record()
        code, _, out = run_cli(*_export_mlflow_args(proxy.url, mlflow_export, root / "state-export"))
        assert code == 0, out
        kinds["export-mlflow"] = Counter(killer.kinds)
        killer.disarm()

        counts_file = root / "moments.json"
        result = subprocess.run(
            child_command([f"count={counts_file}", *EXPORT_MOMENTS.values()],
                          _parquet_export_args(src, root / "reference-export", root / "state-ref")),
            capture_output=True, text=True, timeout=KILL_TIMEOUT_S)
        assert result.returncode == 0, result.stderr[-3000:]
        moments = json.loads(counts_file.read_text())
        yield World(root, runs, src, mlflow_src, len(mlflow_runs), tensorboard, mlflow_server, proxy,
                    killer, kinds, census, moments, mlflow_export)
    finally:
        proxy.stop()


def _move_args(command: str, source: str, dest: str, template: str, state: Path) -> list[str]:
    verb = "copy" if command.startswith("copy") else "load"
    workers = "3" if command.endswith("-parallel") else "1"
    return [verb, source, dest, "--mlflow-experiment", template, "--workers", workers,
            "--state-dir", str(state)]


def _export_mlflow_args(proxy_url: str, out: Path, state: Path) -> list[str]:
    return ["export", f"mlflow+{proxy_url}", str(out), "--project", f"crash-ref-{CRASH_PROJECT}",
            "--project", f"crash-ref-{CORPUS_PROJECT}", "--workers", "1", "--state-dir", str(state)]


def _parquet_export_args(src: Path, out: Path, state: Path) -> list[str]:
    return ["export", str(src), str(out), "--workers", "1", "--part-size", PART_SIZE,
            "--state-dir", str(state)]


def _pick(case: str, candidates: int, low: int = 1) -> int:
    assert candidates >= low, f"{case}: the reference run shows only {candidates} candidate moments"
    return random.Random(f"{SEED}:{case}").randint(low, candidates)


def _run_killed(cmd: list[str], case_dir: Path, arm=None) -> None:
    """Run `cmd` in its own process group until it dies; it must die of SIGKILL.
    `arm(pid)` is called once the process exists (to arm a ProxyKill on it)."""
    out, err = case_dir / "stdout.txt", case_dir / "stderr.txt"
    # What a killed process leaves in its temporary folder stays inside the case folder.
    tmp = case_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp)}
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, start_new_session=True, cwd=case_dir, env=env)
    if arm is not None:
        arm(proc.pid)
    try:
        proc.wait(timeout=KILL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("the process neither finished nor was killed in time")
    assert proc.returncode == -signal.SIGKILL, (
        f"the kill moment never came: the process ended by itself with {proc.returncode}\n"
        + err.read_text(errors="replace")[-3000:])


# -- MLflow through the proxy -----------------------------------------------------------------

# (case, command, request kind, mode, lowest N)
PROXY_CASES = [
    ("load-create-applied", "load", "create", APPLIED, 1),
    ("load-metrics-lost", "load", "metrics", LOST, 1),
    ("load-upload-lost", "load", "upload", LOST, 1),
    ("load-terminate-applied", "load", "terminate", APPLIED, 1),
    ("load-complete-lost", "load", "complete", LOST, 1),
    ("load-complete-applied", "load", "complete", APPLIED, 1),
    ("load-between-runs", "load", "search", LOST, 2),
    ("load-parallel-metrics-lost", "load-parallel", "metrics", LOST, 1),
    ("copy-params-applied", "copy", "params", APPLIED, 1),
    ("copy-tb-metrics-lost", "copy-tb", "metrics", LOST, 1),
    ("export-mlflow-history-lost", "export-mlflow", "history", LOST, 1),
]


def _kill_through_proxy(killer: ProxyKill, args: list[str], case_dir: Path, kind: str, n: int,
                        mode: str) -> None:
    try:
        _run_killed([sys.executable, "-m", "trackport", *args, "--no-progress"], case_dir,
                    arm=lambda pid: killer.arm(pid, kind, n, mode))
    finally:
        killer.reaped.set()
        killer.disarm()
    assert killer.fired.is_set()


def _check_mlflow(world: World, command: str, template: str, projects) -> None:
    want = world.census[command]
    got = _census(world.server, template, projects)
    assert sorted(got) == sorted(want), "source runs missing or extra in the destination"
    for origin, copies in got.items():
        assert len(copies) == 1, f"{origin}: {len(copies)} MLflow runs for one source run"
        run, ref = copies[0], want[origin][0]
        assert run.complete, f"{origin}: not marked complete"
        assert run.metric_points == ref.metric_points, f"{origin}: metric points differ from a clean copy"
        assert run.artifacts.keys() == ref.artifacts.keys(), f"{origin}: artifacts differ from a clean copy"
        for path, size in ref.artifacts.items():
            if not path.startswith("trackport/"):
                assert run.artifacts[path] == size, f"{origin}: artifact {path} differs"
        assert run.params == ref.params, f"{origin}: params differ from a clean copy"


@pytest.mark.parametrize("case, command, kind, mode, low", PROXY_CASES, ids=[c[0] for c in PROXY_CASES])
def test_killed_at_a_request_and_rerun(world, tmp_path, case, command, kind, mode, low):
    n = _pick(case, world.kinds[command][kind], low)
    print(f"crash plan (seed {SEED}): {case}: SIGKILL at {kind} request #{n} of "
          f"{world.kinds[command][kind]}, request {mode}")
    index = [c[0] for c in PROXY_CASES].index(case)
    template = f"crash{index}-{{project}}"
    state = tmp_path / "state"
    dest = f"mlflow+{world.proxy.url}"
    if command == "export-mlflow":
        out = tmp_path / "export"
        args = _export_mlflow_args(world.proxy.url, out, state)
    else:
        source = f"tensorboard:{world.tensorboard}" if command == "copy-tb" else str(world.mlflow_src)
        args = _move_args(command, source, dest, template, state)

    _kill_through_proxy(world.killer, args, tmp_path, kind, n, mode)

    code, report, output = run_cli(*args)
    assert code == 0, output
    if command == "export-mlflow":
        code, report, output = run_cli("verify", f"mlflow+{world.proxy.url}", str(out),
                                       "--project", f"crash-ref-{CRASH_PROJECT}",
                                       "--project", f"crash-ref-{CORPUS_PROJECT}")
        assert code == 0, output
        assert report["totals"]["verified"] == world.mlflow_runs
        _check_parquet_against(out, world.mlflow_export)
        return
    code, report, output = run_cli("verify", args[1], dest, "--mlflow-experiment", template)
    assert code == 0, output
    assert report["totals"]["verified"] == report["totals"]["runs"] == len(world.census[command])
    projects = ("tb",) if command == "copy-tb" else (CORPUS_PROJECT, CRASH_PROJECT)
    _check_mlflow(world, command, template, projects)


# -- a parquet export, killed from inside -----------------------------------------------------


def _check_parquet_export(out: Path) -> dict:
    """One complete, clean copy of each run in an export; returns its runs as a plain reader sees them."""
    assert leftovers(out) == [], "temporary files left in the export"
    plain = read_plain_export(out)
    for project_dir in (out / "data").iterdir():
        stems = Counter()
        for part in project_dir.glob("*_part_*.parquet"):
            match = layout.PART_RE.match(part.name)
            stems[match["stem"]] += 1
        manifests = {p.name[: -len(layout.RUN_MANIFEST_SUFFIX)]: p
                     for p in project_dir.glob("*" + layout.RUN_MANIFEST_SUFFIX)}
        assert sorted(stems) == sorted(manifests), f"{project_dir.name}: runs without manifest or parts"
        for stem, manifest_path in manifests.items():
            manifest = layout.read_json(manifest_path)
            on_disk = sorted(p.name for p in project_dir.glob(f"{stem}_part_*"))
            assert sorted(manifest["parts"]) == on_disk, f"{stem}: parts on disk differ from its manifest"
            assert on_disk == sorted(f"{stem}_part_{i}.parquet" for i in range(len(on_disk)))
    return plain


def _files_of(root: Path) -> dict[str, bytes]:
    files = root / "files"
    return {str(p.relative_to(files)): p.read_bytes() for p in files.rglob("*") if p.is_file()} \
        if files.exists() else {}


def _check_parquet_against(out: Path, reference: Path) -> None:
    got, want = _check_parquet_export(out), read_plain_export(reference)
    assert sorted(got) == sorted(want)
    for key, table in want.items():
        assert canonical_rows(got[key]) == canonical_rows(table), f"{key}: rows differ from a clean export"
    assert _files_of(out) == _files_of(reference)


# (case, moment, lowest N)
EXPORT_CASES = [
    ("export-mid-part", "mid-part", 1),
    ("export-mid-part-late", "mid-part", 10),
    ("export-new-part", "new-part", 2),
    ("export-file-copy", "file-copy", 1),
    ("export-part-rename", "part-rename", 1),
    ("export-manifest-create", "manifest-create", 1),
    ("export-manifest-rename", "manifest-rename", 1),
    ("export-export-manifest", "export-manifest", 1),
    ("export-after-commit", "after-commit", 1),
]


@pytest.mark.parametrize("case, moment, low", EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES])
def test_export_killed_from_inside_and_rerun(world, tmp_path, case, moment, low):
    spec = EXPORT_MOMENTS[moment]
    n = _pick(case, world.moments[spec], low)
    print(f"crash plan (seed {SEED}): {case}: SIGKILL at {spec} #{n} of {world.moments[spec]}")
    out = tmp_path / "export"
    args = _parquet_export_args(world.src, out, tmp_path / "state")
    _run_killed(child_command([f"{spec}:{n}"], [*args, "--no-progress"]), tmp_path)

    code, report, output = run_cli(*args)
    assert code == 0, output
    code, report, output = run_cli("verify", str(world.src), str(out))
    assert code == 0, output
    assert report["totals"]["verified"] == len(world.runs)
    plain = _check_parquet_export(out)
    assert sorted(plain) == sorted((r.project_id, r.run_id) for r in world.runs)
    for run in world.runs:
        assert canonical_rows(plain[(run.project_id, run.run_id)]) == canonical_rows(run.table), \
            f"{run.run_id}: rows differ from the source"
    want_files = {f"{layout.safe(r.project_id)}/{path}": data for r in world.runs for path, data in r.files.items()}
    assert _files_of(out) == want_files


def test_a_killed_rerun_is_repaired_too(world, tmp_path):
    """Killed mid-series, then the rerun killed at one of its own completion marks: the
    third run still ends in an exact copy (a repair of a repair)."""
    case, template = "load-twice", "crash-twice-{project}"
    dest = f"mlflow+{world.proxy.url}"
    args = _move_args("load", str(world.mlflow_src), dest, template, tmp_path / "state")
    projects = (CORPUS_PROJECT, CRASH_PROJECT)
    n1 = _pick(f"{case}/1", world.kinds["load"]["metrics"])
    first = tmp_path / "first"
    first.mkdir()
    _kill_through_proxy(world.killer, args, first, "metrics", n1, LOST)
    done = sum(c.complete for copies in _census(world.server, template, projects).values() for c in copies)
    pending = len(world.census["load"]) - done    # completion marks the rerun will write
    n2 = _pick(f"{case}/2", pending)
    mode = random.Random(f"{SEED}:{case}/mode").choice([LOST, APPLIED])
    print(f"crash plan (seed {SEED}): {case}: SIGKILL at metrics request #{n1} (lost), then the rerun "
          f"at completion mark #{n2} of {pending} ({mode})")
    second = tmp_path / "second"
    second.mkdir()
    _kill_through_proxy(world.killer, args, second, "complete", n2, mode)

    code, report, output = run_cli(*args)
    assert code == 0, output
    code, report, output = run_cli("verify", str(world.mlflow_src), dest, "--mlflow-experiment", template)
    assert code == 0, output
    assert report["totals"]["verified"] == len(world.census["load"])
    _check_mlflow(world, "load", template, projects)
