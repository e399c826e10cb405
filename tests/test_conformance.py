"""The conformance suite every connector passes (DESIGN.md section 5).

The corpus goes from a neptune-exporter export through each destination and
back through the matching source; the result must equal the input after only
the destination's declared transformations.  A rerun creates no duplicates.
Adding a connector = adding one entry to TARGETS.
"""

from __future__ import annotations

import pytest

from support import canonical_rows, read_plain_export, run_cli
from trackport.testing.corpus import build_corpus
from trackport.testing.exporter_layout import write_exporter_export


def _parquet(tmp_path, request):
    return f"parquet:{tmp_path / 'dest-export'}"


def _mlflow_sqlite(tmp_path, request):
    return f"mlflow:sqlite:///{tmp_path / 'dest.db'}"


def _mlflow_server(tmp_path, request):
    server = request.getfixturevalue("mlflow_server")
    # one server for the session: a per-test experiment keeps tests apart
    return f"mlflow+{server}", ["--mlflow-experiment", f"{tmp_path.name}-{{project}}"]


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
    made = TARGETS[target](tmp_path, request)
    dest, extra = (made, []) if isinstance(made, str) else made
    src = tmp_path / "src-export"
    write_exporter_export(src, corpus, part_rows=30_000)

    code, report, out = run_cli("copy", str(src), dest, *extra)
    assert code == 0, out
    assert report["totals"]["moved"] == len(corpus)
    assert not report["totals"]["drops"]
    declared = set(report["totals"]["transformations"])

    code, report, out = run_cli("verify", str(src), dest, *extra)
    assert code == 0, out
    assert report["totals"]["verified"] == len(corpus)

    back = tmp_path / "back"
    code, report, out = run_cli("export", dest, str(back), *extra)
    assert code == 0, out
    tables = read_plain_export(back)
    for run in corpus:
        got = tables.get((run.project_id, run.run_id))
        assert got is not None, f"{run.case} did not come back"
        assert canonical_rows(got) == canonical_rows(run.table), f"{target}: {run.case} differs ({declared})"

    # a rerun moves nothing and duplicates nothing
    code, report, out = run_cli("copy", str(src), dest, *extra)
    assert code == 0, out
    assert report["totals"]["skipped"] == len(corpus)
    assert run_cli("verify", str(src), dest, *extra)[0] == 0
