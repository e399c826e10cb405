"""`trackport report` / `verify --html`: the page is self-contained, opens in a real headless
Chromium (Debian's, through tests/viewers.py) without a console or page error, draws every
series of the runs it opens, and shows a changed point as a difference.  Screenshots go to
the test artefacts (.artifacts/report-*.png)."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import trackport
from support import run_cli
from trackport.core import fidelity
from viewers import browser_page, screenshot

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "examples" / "sample-export"


def _open(page_file: Path, name: str) -> tuple[dict[str, str], str]:
    """The page opened in headless Chromium: <body>'s data attributes once its script ran,
    and the DOM then; a screenshot in the test artefacts; no console or page error."""
    with browser_page() as page:
        page.goto(page_file.as_uri())
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=30_000)
        body = page.evaluate("Object.assign({}, document.body.dataset)")
        dom = page.content()
        assert screenshot(page, name).stat().st_size > 10_000
        assert page.errors == [], page.errors
    return body, dom


@pytest.fixture(scope="module")
def copied(tmp_path_factory) -> tuple[Path, str, Path]:
    work = tmp_path_factory.mktemp("report")
    dest = f"mlflow:sqlite:///{work / 'mlflow.db'}"
    code, _, out = run_cli("copy", str(SAMPLE), dest, "--state-dir", str(work / ".trackport"),
                           "--report", str(work / "copy.json"))
    assert code == 0, out
    return work, dest, work / "copy.json"


def test_report_of_a_clean_copy_opens_in_chromium_and_draws_every_series(copied):
    work, dest, copy_json = copied
    page = work / "clean.html"
    code, report, out = run_cli("report", str(SAMPLE), dest, "--html", str(page), "--copy-report", str(copy_json))
    assert code == 0, out
    assert report["totals"]["verified"] == 5
    text = page.read_text()
    # self-contained: nothing fetched when it is viewed
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text) and "<link" not in text
    assert "moved" in text and "step_scaled" in text          # the copy's counts and transformations
    body, _ = _open(page, "report-clean")
    assert body["errors"] == "0" and body["ready"] == "1"
    # a small report opens every run: all 12 float series of the 5 runs drawn
    assert body["drawn"] == "12", body


def test_a_changed_point_is_drawn_as_a_difference_and_verify_html_exits_1(copied, tmp_path):
    work, _, _ = copied
    db = tmp_path / "changed.db"
    shutil.copy(work / "mlflow.db", db)
    with sqlite3.connect(db) as con:
        changed = con.execute("UPDATE metrics SET value = value + 5 WHERE key = 'train/loss' AND step = "
                              "(SELECT MIN(step) FROM metrics WHERE key = 'train/loss')").rowcount
    assert changed >= 1
    page = tmp_path / "changed.html"
    code, report, out = run_cli("verify", str(SAMPLE), f"mlflow:sqlite:///{db}", "--html", str(page))
    assert code == 1 and report["totals"].get("different", 0) >= 1, out
    body, dom = _open(page, "report-changed")
    assert body["errors"] == "0"
    assert report["totals"]["different"] == changed           # one changed point per run
    # every differing run opened and drawn, each changed series flagged, and only those
    assert int(body["drawn"]) == dom.count('<div class="chart') > changed
    assert dom.count('class="chart differs"') == changed
    assert "train/loss  (differs)" in dom


def test_python_api_report_and_a_bad_html_path():
    with pytest.raises(trackport.UsageError, match="--html"):
        trackport.report(str(SAMPLE), "parquet:/nonexistent-dest", html="/nonexistent-folder/r.html")


def test_a_spike_survives_the_reduction_and_the_page_stays_bounded():
    steps = np.arange(100_000, dtype=np.float64)
    values = np.zeros(100_000)
    values[77_777] = 1000.0            # one spike among 100,000 points
    drawing = fidelity.draw_series("loss", (steps, values), (steps, values), bins=50)
    raw = np.frombuffer(__import__("base64").b64decode(drawing.source), dtype="<u2").reshape(3, 50)
    assert drawing.value_hi == 1000.0 and raw[1].max() == 65534    # the max band reaches the spike
    assert raw[2].max() < 65534 // 100                              # though the mean hides it
    assert drawing.source == drawing.destination
    # 1,000 runs x 100 series: a bounded number of bins per series
    drawings = fidelity.Drawings()
    drawings.total_runs = 1000
    assert drawings.bins_for(100) == 20
    drawings.total_runs = 100_000
    assert drawings.bins_for(100) == fidelity.MIN_BINS
    drawings.total_runs = 5
    assert drawings.bins_for(4) == fidelity.MAX_BINS
