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


def copy_verify_rerun(src: str, *dest: str, runs: int) -> dict:
    """`copy` moves `runs` runs, `verify` finds them all, a second `copy` skips them all;
    returns the first copy's report."""
    code, report, out = run_cli("copy", src, *dest)
    assert code == 0 and report["totals"]["moved"] == runs, out
    code, checked, out = run_cli("verify", src, *dest)
    assert code == 0 and checked["totals"]["verified"] == runs, out
    code, again, out = run_cli("copy", src, *dest)
    assert code == 0 and again["totals"]["skipped"] == runs and again["totals"]["points"] == 0, out
    return report
