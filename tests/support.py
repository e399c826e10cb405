"""Shared test helpers: run the real CLI, compare canonical tables.

The generic ones live in the public kit, `trackport.testing.conformance`; they are
re-exported here for the suite's existing imports.
"""

from __future__ import annotations

from trackport.testing.conformance import (  # noqa: F401  (re-exported)
    Target,
    canonical_rows,
    read_plain_export,
    run_cli,
)


def runs_by_id(report: dict) -> dict[str, dict]:
    return {r["run_id"]: r for r in report.get("runs", [])}
