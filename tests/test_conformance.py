"""The conformance suite every connector passes (DESIGN.md section 5).

The corpus goes from a neptune-exporter export through each destination and
back through the matching source; the result must equal the input after only
the destination's declared transformations.  A rerun creates no duplicates.
Adding a connector = adding one entry to TARGETS: a function
`(tmp_path, request) -> support.Target` (it may live in the connector's test support module).
"""

from __future__ import annotations

import pytest

import neptune_support
import wandb_offline_support
from support import Target, canonical_rows, read_plain_export, run_cli
from trackport.core.registry import open_sink
from trackport.testing.corpus import build_corpus
from trackport.testing.exporter_layout import write_exporter_export


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


def _tensorboard(tmp_path, request):
    # exact round trip: what TensorBoard cannot hold natively is kept in the run's mark
    return Target(f"tensorboard:{tmp_path / 'dest-logdir'}")


def _pluto(tmp_path, request):
    return request.getfixturevalue("pluto_server").conformance_target(tmp_path)


TARGETS = {
    "parquet": _parquet,
    "mlflow-sqlite": _mlflow_sqlite,
    "mlflow-bulk": lambda tmp_path, request: Target(f"mlflow:sqlite:///{tmp_path / 'dest.db'}", ["--mlflow-bulk"]),
    "mlflow-server": _mlflow_server,
    "tensorboard": _tensorboard,
    "pluto": _pluto,
    "wandb-offline": lambda tmp_path, request: wandb_offline_support.conformance_target(tmp_path),
    "neptune2-offline": lambda tmp_path, request: neptune_support.conformance_target(tmp_path, "2"),
    "neptune3-offline": lambda tmp_path, request: neptune_support.conformance_target(tmp_path, "3"),
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
