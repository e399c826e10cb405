"""Every copied point visible in the destination's own viewer.

The sample export of the README is copied into each destination that has a viewer
running here, and read back through the path that viewer's UI uses:
- TensorBoard: its HTTP data API, with the default (Rust data server) loader and with
  `--load_fast=false`; every run, scalar tag and point, histogram and image.
- MLflow: the endpoints its UI calls (run page data, chart history), every point.
- One screenshot per viewer in headless Chromium, saved under `.artifacts/`; each
  fails on a console error or an empty chart area.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from support import read_plain_export, run_cli
from trackport.connectors.parquet.layout import project_files_dir
from tensorboard_server import get_json, wait_for
from viewers import browser_page, coloured_pixels, screenshot, tensorboard

SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample-export"


@pytest.fixture(scope="module")
def sample() -> dict[tuple[str, str], dict]:
    """Per (project, run): its name, float series, histogram series and image files."""
    runs = {}
    for ident, table in read_plain_export(SAMPLE).items():
        rows = table.to_pylist()
        one = {"name": None, "series": {}, "histograms": {}, "images": {}}
        for row in rows:
            kind, path = row["attribute_type"], row["attribute_path"]
            if path == "sys/name":
                one["name"] = row["string_value"]
            elif kind == "float_series":
                one["series"].setdefault(path, []).append((row["step"], row["float_value"], row["timestamp"]))
            elif kind == "histogram_series":
                one["histograms"].setdefault(path, []).append((row["step"], row["histogram_value"]))
            elif kind == "file_series":
                data = (project_files_dir(SAMPLE, ident[0]) / row["file_value"]["path"]).read_bytes()
                if data.startswith(b"\x89PNG"):
                    one["images"].setdefault(path, {})[row["step"]] = data
        for points in one["series"].values():
            points.sort(key=lambda p: p[0])
        runs[ident] = one
    assert sum(len(r["series"]) for r in runs.values()) > 10 and any(r["images"] for r in runs.values())
    return runs


def _tag_sets(tags: dict) -> dict[str, set]:
    return {run: set(by_tag) for run, by_tag in tags.items()}


def _scaled(step: Decimal, multiplier: int) -> int:
    value = step * multiplier
    assert value == value.to_integral_value()
    return int(value)


def _same_float32(got: float, want: float) -> bool:
    return bool(np.float32(got) == np.float32(want) or (np.isnan(got) and np.isnan(want)))


# -- TensorBoard ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tensorboard_copy(tmp_path_factory) -> Path:
    logdir = tmp_path_factory.mktemp("viewer-tb") / "tb"
    code, report, out = run_cli("copy", str(SAMPLE), f"tensorboard:{logdir}")
    assert code == 0, out
    return logdir


def _tensorboard_runs(logdir: Path) -> dict[str, tuple[tuple[str, str], int]]:
    """TensorBoard run name -> ((project, run) of its origin, step multiplier)."""
    runs = {}
    for mark in logdir.rglob("trackport-run.json"):
        meta = json.loads(mark.read_text())
        origin = meta["origin"]
        runs[mark.parent.relative_to(logdir).as_posix()] = ((origin["project_id"], origin["run_id"]),
                                                             meta.get("multiplier") or 1)
    return runs


@pytest.mark.parametrize("load_fast", [True, False], ids=["default-loader", "python-loader"])
def test_tensorboard_shows_every_point(sample, tensorboard_copy, tmp_path, load_fast):
    runs = _tensorboard_runs(tensorboard_copy)
    assert len(runs) == len(sample)
    want_tags = {name: set(sample[ident]["series"]) for name, (ident, _) in runs.items()}
    with tensorboard(tensorboard_copy, load_fast, tmp_path / "tb-home") as base:
        # The data server loads in the background: wait until every run's tags are there.
        wait_for(lambda: _tag_sets(get_json(base, "/data/plugin/scalars/tags")) == want_tags, timeout=90)
        tags = get_json(base, "/data/plugin/scalars/tags")
        assert _tag_sets(tags) == want_tags, \
            "TensorBoard lists other scalar tags than the source's float series (none, or drawn twice)"
        points = 0
        for name, ((project, run_id), multiplier) in runs.items():
            for tag, want in sample[(project, run_id)]["series"].items():
                got = get_json(base, "/data/plugin/scalars/scalars", run=name, tag=tag)
                assert len(got) == len(want), f"{name} {tag}: {len(got)} of {len(want)} points shown"
                got.sort(key=lambda p: p[1])
                for (wall, step, value), (w_step, w_value, w_ts) in zip(got, want):
                    assert step == _scaled(w_step, multiplier), (name, tag, step, w_step)
                    assert _same_float32(value, w_value), (name, tag, step, value, w_value)
                    if w_ts is not None:
                        assert abs(wall - w_ts.timestamp()) < 1e-3, (name, tag, step, wall, w_ts)
                points += len(got)
        assert points == sum(len(p) for r in sample.values() for p in r["series"].values())

        hist_tags = get_json(base, "/data/plugin/histograms/tags")
        image_tags = get_json(base, "/data/plugin/images/tags")
        for name, ((project, run_id), multiplier) in runs.items():
            want = sample[(project, run_id)]
            assert set(hist_tags.get(name, {})) == set(want["histograms"]), name
            for tag, rows in want["histograms"].items():
                got = get_json(base, "/data/plugin/histograms/histograms", run=name, tag=tag)
                assert sorted(p[1] for p in got) == sorted(_scaled(s, multiplier) for s, _ in rows)
                by_step = {p[1]: sum(b[2] for b in p[2]) for p in got}
                for step, histogram in rows:
                    assert by_step[_scaled(step, multiplier)] == pytest.approx(sum(histogram["values"]))
            assert set(image_tags.get(name, {})) == set(want["images"]), name
            for tag, images in want["images"].items():
                got = get_json(base, "/data/plugin/images/images", run=name, tag=tag, sample="0")
                assert sorted(p["step"] for p in got) == sorted(_scaled(s, multiplier) for s in images)
                by_step = {p["step"]: p["query"] for p in got}
                for step, data in images.items():
                    with urllib.request.urlopen(f"{base}/data/plugin/images/individualImage?"
                                                f"{by_step[_scaled(step, multiplier)]}", timeout=30) as answer:
                        assert answer.read() == data, (name, tag, step)


def test_tensorboard_screenshot_has_scalar_cards(sample, tensorboard_copy, tmp_path):
    with tensorboard(tensorboard_copy, True, tmp_path / "tb-home") as base:
        wait_for(lambda: len(get_json(base, "/data/plugin/scalars/tags")) == len(sample), timeout=90)
        with browser_page() as page:
            page.goto(f"{base}/#timeseries", wait_until="load", timeout=120_000)
            chart = page.locator("scalar-card-component line-chart")
            drawn = wait_for(lambda: coloured_pixels(chart) > 50, timeout=90) and coloured_pixels(chart)
            shot = screenshot(page, "tensorboard-time-series")
            assert not page.errors, page.errors
    assert drawn > 50, f"no scalar card, or one with an empty chart area, in TensorBoard's time series (see {shot})"


# -- MLflow -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_copy(mlflow_server, sample) -> dict[tuple[str, str], dict]:
    """The sample copied into the MLflow server: per (project, run) its run info and experiment."""
    template = f"viewers-{uuid.uuid4().hex[:8]}-{{project}}"
    code, report, out = run_cli("copy", str(SAMPLE), f"mlflow+{mlflow_server}", "--mlflow-experiment", template)
    assert code == 0, out
    found = {}
    for project in {p for p, _ in sample}:
        experiment = get_json(mlflow_server, "/ajax-api/2.0/mlflow/experiments/get-by-name",
                              experiment_name=template.format(project=project))["experiment"]
        runs = _post(mlflow_server, "/ajax-api/2.0/mlflow/runs/search",
                     {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
        for run in runs:
            tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
            found[(project, tags["trackport.origin.run_id"])] = {
                "experiment_id": experiment["experiment_id"], "run_id": run["info"]["run_id"],
                "multiplier": int(tags.get("trackport.step_multiplier", "1"))}
    assert set(found) == set(sample)
    return found


def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_mlflow_ui_endpoints_serve_every_point(mlflow_server, sample, mlflow_copy):
    points = 0
    for ident, want in sample.items():
        run = mlflow_copy[ident]
        # The run page's data.
        page = get_json(mlflow_server, "/ajax-api/2.0/mlflow/runs/get", run_id=run["run_id"])["run"]
        assert page["info"]["run_name"] == want["name"]
        assert {m["key"] for m in page["data"].get("metrics", [])} == {_mlflow_key(k) for k in want["series"]}
        # The chart's history, as the UI asks for it (one metric of one run per call).
        for path, series in want["series"].items():
            key = _mlflow_key(path)
            got = get_json(mlflow_server, "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
                           run_ids=run["run_id"], metric_key=key, max_results="2500")["metrics"]
            assert len(got) == len(series), f"{ident} {key}: chart shows {len(got)} of {len(series)} points"
            got.sort(key=lambda m: int(m.get("step", 0)))
            for shown, (step, value, ts) in zip(got, series):
                assert int(shown.get("step", 0)) == _scaled(step, run["multiplier"])
                assert _same_value(shown["value"], value), (ident, key, step)
                if ts is not None:
                    assert int(shown["timestamp"]) == int(ts.timestamp() * 1000)
            points += len(got)
    assert points == sum(len(p) for r in sample.values() for p in r["series"].values())


def _mlflow_key(path: str) -> str:
    """Where MLflow shows a canonical series: system metrics under its own `system/` prefix
    (docs/mlflow.md), the rest at their path."""
    return "system/" + path[len("monitoring/"):] if path.startswith("monitoring/") else path


def _same_value(shown, value: float) -> bool:
    # MLflow's JSON carries NaN and infinities as strings.
    return float(shown) == value or (np.isnan(float(shown)) and np.isnan(value))


# MLflow's UI asks the auth plugin who the user is; a server without auth answers 404.
_MLFLOW_OWN_PROBES = ("/ajax-api/2.0/mlflow/users/current",)


def test_mlflow_run_page_screenshot_has_a_chart(mlflow_server, sample, mlflow_copy):
    ident = next(i for i, r in sorted(sample.items()) if r["series"])
    run = mlflow_copy[ident]
    failed_requests: list[str] = []
    with browser_page() as page:
        page.on("response", lambda r: failed_requests.append(f"{r.status} {r.url}") if r.status >= 400
                and not any(p in r.url for p in _MLFLOW_OWN_PROBES) else None)
        page.goto(f"{mlflow_server}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}/model-metrics",
                  wait_until="load", timeout=120_000)
        chart = page.locator(".js-plotly-plot")
        drawn = wait_for(lambda: coloured_pixels(chart) > 50, timeout=90) and coloured_pixels(chart)
        shot = screenshot(page, "mlflow-run-page")
        errors = [e for e in page.errors if not _only_own_probe(e, failed_requests)]
    assert not failed_requests, failed_requests
    assert not errors, errors
    assert drawn > 50, f"the run page draws no metric chart, or an empty one (see {shot})"


def _only_own_probe(error: str, failed_requests: list[str]) -> bool:
    """A 'Failed to load resource: 404' console line that belongs to MLflow's own auth probe
    (the browser does not say which URL; every other failed request is listed separately)."""
    return "Failed to load resource" in error and "404" in error and not failed_requests
