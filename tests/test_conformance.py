"""The conformance suite every connector passes (DESIGN.md section 5).

The corpus goes from a neptune-exporter export through each destination and
back through the matching source; the result must equal the input after only
the destination's declared transformations.  A rerun creates no duplicates.
Adding a connector = adding one entry to TARGETS: a function
`(tmp_path, request) -> Target` (it may live in the connector's test module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pytest

from support import canonical_rows, read_plain_export, run_cli
from trackport.core.registry import open_sink
from trackport.testing.corpus import CorpusRun, build_corpus
from trackport.testing.exporter_layout import write_exporter_export


@dataclass
class Target:
    """How one destination takes part in the suite."""

    dest: str                                   # the destination URI
    args: list[str] = field(default_factory=list)  # extra CLI options for every command
    back: str | None = None                     # source URI that reads the destination back (default: dest)
    # The input after the destination's declared transformations (default: unchanged).
    expect: Callable[[CorpusRun], pa.Table] | None = None
    verify_exit: int = 0                        # a lossy destination may make verify report declared differences


def _parquet(tmp_path, request):
    return Target(f"parquet:{tmp_path / 'dest-export'}")


def _mlflow_sqlite(tmp_path, request):
    return Target(f"mlflow:sqlite:///{tmp_path / 'dest.db'}")


def _mlflow_server(tmp_path, request):
    server = request.getfixturevalue("mlflow_server")
    # one server for the session: a per-test experiment keeps tests apart
    return Target(f"mlflow+{server}", ["--mlflow-experiment", f"{tmp_path.name}-{{project}}"])


# The pipeline's own conversions, which every destination may report.
CORE_TRANSFORMATIONS = frozenset({"step_scaled", "step_floored"})


def declared_transformations(dest: str) -> frozenset[str]:
    sink = open_sink(dest, {"read_only": True})
    try:
        return CORE_TRANSFORMATIONS | frozenset(sink.capabilities.transformations)
    finally:
        sink.close()


TARGETS = {
    "parquet": _parquet,
    "mlflow-sqlite": _mlflow_sqlite,
    "mlflow-server": _mlflow_server,
}


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(big=True)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_round_trips(target, tmp_path, request, corpus):
    t: Target = TARGETS[target](tmp_path, request)
    src = tmp_path / "src-export"
    write_exporter_export(src, corpus, part_rows=30_000)

    code, report, out = run_cli("copy", str(src), t.dest, *t.args)
    assert code == 0, out
    assert report["totals"]["moved"] == len(corpus)
    assert not report["totals"]["drops"]
    reported = set(report["totals"]["transformations"])
    undeclared = reported - declared_transformations(t.dest)
    assert not undeclared, f"{target}: transformations not in the connector's capabilities: {undeclared}"

    code, report, out = run_cli("verify", str(src), t.dest, *t.args)
    assert code == t.verify_exit, out
    if t.verify_exit == 0:
        assert report["totals"]["verified"] == len(corpus)

    back = tmp_path / "back"
    code, report, out = run_cli("export", t.back or t.dest, str(back), *t.args)
    assert code == 0, out
    tables = read_plain_export(back)
    for run in corpus:
        got = tables.get((run.project_id, run.run_id))
        assert got is not None, f"{run.case} did not come back"
        expected = t.expect(run) if t.expect else run.table
        assert canonical_rows(got) == canonical_rows(expected), f"{target}: {run.case} differs ({reported})"

    # a rerun moves nothing and duplicates nothing
    code, report, out = run_cli("copy", str(src), t.dest, *t.args)
    assert code == 0, out
    assert report["totals"]["skipped"] == len(corpus)
    assert run_cli("verify", str(src), t.dest, *t.args)[0] == t.verify_exit
