"""The conformance kit every connector's own tests call (fstests-style).

A connector's test file describes each destination it offers as a `Target` and
calls the checks with it; nothing is listed anywhere else:

    from trackport.testing import conformance

    def test_conformance(tmp_path):
        conformance.round_trip(conformance.Target(f"demo:{tmp_path / 'dest'}"), tmp_path)

    def test_files_and_bytes(tmp_path):
        conformance.files_and_bytes(conformance.Target(f"demo:{tmp_path / 'dest'}"), tmp_path)

`round_trip`: every case of the canonical corpus goes from a neptune-exporter
export through the destination and back through its reading source
(`Target.back`), and must equal the input after only the destination's
declared transformations (`Target.expect`); `verify` agrees; a rerun moves
nothing and duplicates nothing.  `files_and_bytes`: the report counts every
file and byte the destination took.  `run_times`: a run created in 2019 reads back
created in 2019, not at the time of the copy (or the destination declares and counts
why it cannot keep that time).  Both drive the real `trackport` command
in-process.  See docs/connectors.md.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from trackport.core.schema import COLUMNS
from trackport.testing.corpus import CorpusRun, build_corpus, corpus_case, rows_table, series_table
from trackport.testing.exporter_layout import write_exporter_export

# The pipeline's own conversions, which every destination may report.
CORE_TRANSFORMATIONS = frozenset({"step_scaled", "step_floored"})


@dataclass
class Target:
    """How one destination takes part in the kit."""

    dest: str                                       # the destination URI
    args: list[str] = field(default_factory=list)   # extra CLI options for every command
    back: str | None = None                         # source URI reading the destination back (default: dest)
    # The input after the destination's declared transformations (default: unchanged).
    expect: Callable[[CorpusRun], pa.Table] | None = None
    verify_exit: int = 0                            # a lossy destination may make verify report declared differences


def run_cli(*args: str) -> tuple[int, dict, str]:
    """Run `trackport ARGS --json --no-progress` in-process; (exit code, report, output)."""
    from click.testing import CliRunner

    from trackport.cli import cli

    result = CliRunner().invoke(cli, [*args, "--json", "--no-progress"], catch_exceptions=False)
    report = {}
    out = result.stdout
    if out.strip().startswith("{"):
        report = json.loads(out)
    return result.exit_code, report, result.output


def _norm(value):
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return tuple(sorted((k, _norm(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_norm(v) for v in value)
    return value


def canonical_rows(table: pa.Table) -> list[tuple]:
    """Rows of the canonical columns, order-free and NaN-safe, for equality checks."""
    table = table.select(list(COLUMNS))
    rows = [tuple(_norm(row[c]) for c in COLUMNS) for row in table.to_pylist()]
    return sorted(rows, key=repr)


def read_plain_export(root: Path, extensions: bool = False) -> dict[tuple[str, str], pa.Table]:
    """Read an export knowing only neptune-exporter's schema and layout (no trackport code);
    `extensions`: also the entries of format extensions, one folder down (docs/format.md)."""
    runs: dict[str, list[Path]] = {}
    patterns = ["*/*_part_*.parquet"] + (["*/extensions/*_part_*.parquet"] if extensions else [])
    for part in sorted(p for pattern in patterns for p in (Path(root) / "data").glob(pattern)):
        stem = part.name.rsplit("_part_", 1)[0]
        runs.setdefault(f"{part.parent.relative_to(Path(root) / 'data').as_posix()}/{stem}", []).append(part)
    out = {}
    for key, parts in runs.items():
        parts.sort(key=lambda p: int(p.name.rsplit("_part_", 1)[1].split(".")[0]))
        table = pa.concat_tables([pq.read_table(p) for p in parts])
        if table.num_rows:
            ident = (table.column("project_id")[0].as_py(), table.column("run_id")[0].as_py())
            out[ident] = table
    return out


def declared_transformations(dest: str) -> frozenset[str]:
    """What the destination declares it may transform, plus the pipeline's own conversions."""
    from trackport.core.registry import open_sink

    sink = open_sink(dest, read_only=True)
    try:
        return CORE_TRANSFORMATIONS | frozenset(sink.capabilities.transformations)
    finally:
        sink.close()


@functools.lru_cache(maxsize=2)
def corpus(big: bool = True) -> tuple[CorpusRun, ...]:
    """The canonical corpus, built once per process."""
    return tuple(build_corpus(big=big))


def round_trip(target: Target, tmp_path: Path, big: bool = True) -> None:
    """corpus -> destination -> read back: equal after the declared transformations; verify
    agrees; a rerun skips every run.  `big=False` leaves out the corpus's long runs (for
    destinations where 100,000 points take long, e.g. a tracking server over REST)."""
    runs = corpus(big)
    tmp_path = Path(tmp_path)
    src = tmp_path / "src-export"
    write_exporter_export(src, list(runs), part_rows=30_000)
    t = target

    code, report, out = run_cli("copy", str(src), t.dest, *t.args)
    assert code == 0, out
    assert report["totals"]["moved"] == len(runs)
    assert not report["totals"]["drops"]
    reported = set(report["totals"]["transformations"])
    undeclared = reported - declared_transformations(t.dest)
    assert not undeclared, f"{t.dest}: transformations not in the connector's capabilities: {undeclared}"

    code, report, out = run_cli("verify", str(src), t.dest, *t.args)
    assert code == t.verify_exit, out
    if t.verify_exit == 0:
        assert report["totals"]["verified"] == len(runs)

    back = tmp_path / "back"
    code, report, out = run_cli("export", t.back or t.dest, str(back), *t.args)
    assert code == 0, out
    tables = read_plain_export(back)
    for run in runs:
        got = tables.get((run.project_id, run.run_id))
        assert got is not None, f"{run.case} did not come back"
        expected = t.expect(run) if t.expect else run.table
        assert canonical_rows(got) == canonical_rows(expected), f"{t.dest}: {run.case} differs ({reported})"

    # a rerun moves nothing and duplicates nothing
    code, report, out = run_cli("copy", str(src), t.dest, *t.args)
    assert code == 0, out
    assert report["totals"]["skipped"] == len(runs)
    assert run_cli("verify", str(src), t.dest, *t.args)[0] == t.verify_exit


def files_and_bytes(target: Target, tmp_path: Path) -> None:
    """A run with files: the report counts every file and byte the destination took."""
    tmp_path = Path(tmp_path)
    files = corpus_case(list(corpus(False)), "files")
    export = tmp_path / "files-export"
    write_exporter_export(export, [files])
    on_disk = [p for p in (export / "files").rglob("*") if p.is_file()]
    code, report, out = run_cli("copy", str(export), target.dest, *target.args)
    assert code == 0, out
    (run,) = report["runs"]
    assert run["status"] == "moved"
    assert (run["files"], run["bytes"]) == (len(on_disk), sum(p.stat().st_size for p in on_disk))
    assert report["totals"]["files"] == run["files"] and report["totals"]["bytes"] == run["bytes"]


_KILLER = """
import os, signal, sys
import trackport

seen = 0
def kill_at(event, at=int(sys.argv[3])):
    global seen
    if event.kind == "points":
        seen += 1
        if seen == at:   # rows of a run handed to the destination, the run not yet committed
            os.kill(os.getpid(), signal.SIGKILL)

options = dict(zip(sys.argv[4::2], sys.argv[5::2]))
flags = {k: (v == "1") for k, v in options.items() if k.startswith("flag:")}
options = {k: v for k, v in options.items() if not k.startswith("flag:")}
options.update({k[5:]: v for k, v in flags.items()})
trackport.copy(sys.argv[1], sys.argv[2], workers=1, state_dir=None, progress=kill_at, **options)
sys.exit(3)   # not killed: the check is wrong
"""


def _api_options(args: list[str]) -> list[str]:
    """A Target's CLI options as (name, value) argument pairs for the Python API."""
    from trackport.core.registry import connector_options

    kinds = {o.flag: o for o in connector_options()}
    out, i = [], 0
    while i < len(args):
        option = kinds.get(args[i])
        if option is None:
            raise AssertionError(f"sigkill_heals takes connector options only, not {args[i]!r}")
        if option.kind == "flag":
            out += [f"flag:{option.name}", "1"]
            i += 1
        else:
            out += [option.name, args[i + 1]]
            i += 2
    return out


def sigkill_heals(target: Target, tmp_path: Path, kill_at_batch: int = 3) -> None:
    """A copy SIGKILLed while a run is half written (after its `kill_at_batch`-th batch reached
    the destination, before the run's completion mark) is healed by running it again: every
    run complete, verify clean, no run duplicated."""
    import os
    import subprocess
    import sys

    runs = corpus(True)
    tmp_path = Path(tmp_path)
    src = tmp_path / "kill-export"
    write_exporter_export(src, list(runs), part_rows=5_000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.run([sys.executable, "-c", _KILLER, str(src), target.dest, str(kill_at_batch),
                            *_api_options(target.args)], capture_output=True, timeout=900, env=env)
    assert child.returncode == -9, (f"{target.dest}: the copy was not killed mid-run "
                                    f"(exit {child.returncode}): {child.stderr.decode()[-2000:]}")
    code, report, out = run_cli("copy", str(src), target.dest, *target.args)
    assert code == 0, out
    statuses = {r["status"] for r in report["runs"]}
    assert statuses <= {"moved", "repaired", "skipped"}, statuses
    assert "repaired" in statuses or "skipped" in statuses, f"{target.dest}: nothing of the killed copy was found"
    code, report, out = run_cli("verify", str(src), target.dest, *target.args)
    assert code == target.verify_exit, out
    if target.verify_exit == 0:
        assert report["totals"]["verified"] == len(runs)
    assert not any(r.get("details", {}).get("duplicates") for r in report["runs"]), out


# 2019-03-04T05:06:07.891Z: a start no copy made today can show by accident.
OLD_CREATED_MS = 1_551_675_967_891


def run_times(target: Target, tmp_path: Path) -> None:
    """A run created in 2019 shows its 2019 start in the destination, not the copy's time.

    Read back through `Target.back`; a destination that cannot keep a run's start time
    passes only if the copy's report counted, under a kind its capabilities declare, a
    transformation or drop whose example names `sys/creation_time`."""
    import time
    from datetime import datetime, timezone

    tmp_path = Path(tmp_path)
    project, run_id = "trackport-tests/times", "run-2019"
    t0 = OLD_CREATED_MS
    table = pa.concat_tables([
        rows_table(project, run_id, [
            {"path": "sys/name", "type": "string", "value": "old run"},
            {"path": "sys/creation_time", "type": "datetime", "value": t0},
            {"path": "sys/modification_time", "type": "datetime", "value": t0 + 90_000},
        ]),
        series_table(project, run_id, "metrics/loss", "float_series", [0.5, 0.25, 0.125],
                     None, [t0 + 1_000, t0 + 2_000, t0 + 3_000]),
    ])
    src = tmp_path / "times-export"
    write_exporter_export(src, [CorpusRun(project, run_id, table, case="run_times")])
    copied_at = time.time() * 1000
    code, report, out = run_cli("copy", str(src), target.dest, *target.args)
    assert code == 0, out
    (run,) = report["runs"]
    back = tmp_path / "times-back"
    code, _, out = run_cli("export", target.back or target.dest, str(back), *target.args)
    assert code == 0, out
    got = read_plain_export(back).get((project, run_id))
    assert got is not None, f"{target.dest}: the run did not come back"
    created = [r["datetime_value"] for r in got.to_pylist()
               if r["attribute_path"] == "sys/creation_time" and r["step"] is None]
    want = datetime.fromtimestamp(t0 / 1000, timezone.utc)
    if created == [want]:
        return
    shown = created[0].isoformat() if created else "nothing"
    copy_time = bool(created) and created[0].timestamp() * 1000 >= copied_at - 60_000
    declared = declared_transformations(target.dest)
    accounted = sorted(kind for kind in (*run["transformations"], *run["drops"])
                       if "sys/creation_time" in " ".join(run["examples"].get(kind, []))
                       and (kind in declared or kind in run["drops"]))
    assert accounted, (f"{target.dest}: a run created {want.isoformat()} reads back created {shown}"
                       + (" (the time of the copy)" if copy_time else "")
                       + "; keep the start time, or declare and count why it cannot be kept")
