"""The benchmark command keeps working (its numbers are not checked here: they are ratios for docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


def test_bench_command_writes_results_and_table(tmp_path):
    out, md = tmp_path / "results.json", tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\nintro\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\n## Notes\nkept\n")
    subprocess.run([sys.executable, str(BENCH), "--scale", "smoke", "--cases", "standard",
                    "--paths", "sqlite,parquet,inspect", "--out", str(out), "--markdown", str(md),
                    "--startup-repeats", "1"],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    got = {(m["case"], m["path"]) for m in result["measures"]}
    assert got == {(c, p) for c in ("standard",) for p in ("sqlite", "parquet", "inspect")}
    sqlite = next(m for m in result["measures"] if m["path"] == "sqlite" and m["case"] == "standard")
    assert sqlite["points"] == 20 * 5 * 10 and sqlite["reference_rate"] > 0 and sqlite["ratio"] > 0
    assert all(m["peak_rss_mb"] > 10 for m in result["measures"])
    text = md.read_text()
    assert "intro" in text and "## Notes\nkept" in text and "old" not in text
    assert "| standard | sqlite | 1,000 |" in text
    # start-up is measured as users see it and with other packages' site hooks skipped
    for key in ("cli_start_s", "python_start_s", "cli_start_no_hooks_s", "python_start_no_hooks_s"):
        assert result[key] > 0, key
    assert 0 < result["cli_own_import_s"] < result["cli_start_no_hooks_s"]
    assert result["floor_pyarrow_mb"] > result["floor_interpreter_mb"] > 0
    assert "with those hooks skipped" in text and "Memory floor" in text
