"""ClearML offline sessions <-> canonical rows: pure functions, no SDK, no I/O.

A ClearML offline session (what `Task.set_offline(True)` + `Task.init` leaves in
`<cache>/offline/<task id>/`, zipped to `<task id>.zip` by `Task.close()`) holds
- `task.json`: the task as `Task.export_task()` gives it: name, project_name,
  tags, comment, hyperparams {section: {name: {value, type, ...}}},
  configuration, execution.artifacts [{key, uri, ...}], script, ...;
- `metrics.jsonl`: one JSON list of events per line, each with `type`
  (`training_stats_scalar`, `plot`, `training_debug_image`, ...), `metric`
  (the title), `variant` (the series), `iter`, `timestamp` (ms) and its value;
- `log.jsonl`: the console, lists of {timestamp, level, msg};
- `data/`: artifacts and debug samples.

Canonical -> ClearML (sink; the SDK calls themselves are in client.py):

  float_series `a/b/c`      -> scalar events, title `a/b`, series `c` (no `/`: title = series = path)
  histogram_series          -> plot events: a plotly bar chart (x = left edges, width = bin widths);
                               the exact edges and type are kept in the trace's `meta`
  string_series             -> console lines (stderr as level `error`), exact copy in the record
  file_series               -> debug samples (Logger.report_media)
  file / artifact / file_set-> artifacts (a folder becomes ClearML's zip archive)
  single values             -> hyperparameters, section = first path component
  sys/name, sys/tags, sys/description -> task name, tags, comment

Everything ClearML cannot hold exactly is kept in the trackport record, a JSON
artifact named `trackport-record` (RECORD_ARTIFACT) that the source reads back.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from trackport.core.capabilities import Capabilities
from trackport.core.schema import ms_from_datetime

RECORD_ARTIFACT = "trackport-record"
RECORD_VERSION = 1
MARK_SECTION = "trackport"          # hyperparameter section: origin, version, multiplier, complete
USER_MARK_SECTION = "_trackport"    # where a source's own `trackport/...` params go instead
GENERAL_SECTION = "General"         # ClearML's section for a parameter without one
STAGING = ".trackport"              # PATH/.trackport/: runs being written (never a session)

NATIVE_SYS = ("sys/name", "sys/tags", "sys/description")
CREATION_TIME = "sys/creation_time"

SCALAR = "training_stats_scalar"
PLOT = "plot"
DEBUG_IMAGE = "training_debug_image"
STDERR_LEVELS = frozenset({"warning", "warn", "error", "critical", "fatal"})

CAPABILITIES = Capabilities(
    integer_steps=True,
    keeps_timestamps=True,
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    null_point_drops={"float_series": "null_value", "histogram_series": "null_value"},
    transformations={
        "creation_time_at_copy": "ClearML dates a task when its offline session is imported "
                                 "(Task.import_offline_session -> Task.create, then tasks.edit, whose "
                                 "fields have no created/started): the task shows the import's time; "
                                 "sys/creation_time is kept as a hyperparameter and in the trackport "
                                 "record, and read back unchanged",
        "params_as_hyperparameters": "single values become ClearML hyperparameters (text) in a section named by "
                                     "their first path component (`config/lr` -> section `config`, name `lr`; "
                                     "no `/`: section `General`); sys/name, sys/tags and sys/description become "
                                     "the task's name, tags and comment; exact types and values are kept in the "
                                     "`trackport-record` artifact and read back unchanged",
        "nonfinite_scalar_in_record": "ClearML's SDK reports a NaN or +-inf scalar as 0.0 "
                                      "(Logger.set_reporting_nan_value / set_reporting_inf_value); the exact "
                                      "value is kept in the trackport record and read back",
        "string_series_as_console": "string series are shown in the task's console (which has no steps nor "
                                    "series names, joins lines logged within a second and skips empty ones); "
                                    "every point is kept exactly in the trackport record and read back from it",
        "debug_sample_time_in_record": "file series become debug samples, which ClearML stamps with the time "
                                       "they were written; the point's time, step and path are in the "
                                       "trackport record",
        "file_set_as_archive": "a file_set (a folder) becomes one zip artifact, as ClearML stores folders; "
                               "read back as the folder",
        "histogram_as_plot": "histograms become ClearML bar plots (x = left bin edges, widths from the edges); "
                             "the exact edges and type are kept in the plot trace's `meta`",
    },
)


# -- identity -------------------------------------------------------------------------

def origin_key(uri: str, project_id: str, run_id: str) -> str:
    """A short, filesystem-safe name for one origin (the staging folder of its run)."""
    text = json.dumps([uri, project_id, run_id], ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def mark_params(origin: dict, version: str | None, multiplier: int) -> dict[str, str]:
    """The `trackport` hyperparameter section written when the task starts (the completion
    flag `trackport/complete` is set last, just before the task is closed)."""
    return {
        f"{MARK_SECTION}/origin_uri": origin["uri"],
        f"{MARK_SECTION}/origin_project": origin["project_id"],
        f"{MARK_SECTION}/origin_run": origin["run_id"],
        f"{MARK_SECTION}/source_version": version or "",
        f"{MARK_SECTION}/step_multiplier": str(multiplier),
        f"{MARK_SECTION}/complete": "false",
    }


def read_mark(task: dict) -> dict | None:
    """The trackport mark of a session's task.json, None for a session trackport did not write."""
    section = (task.get("hyperparams") or {}).get(MARK_SECTION) or {}

    def value(name: str) -> str | None:
        item = section.get(name)
        return item.get("value") if isinstance(item, dict) else None

    uri, project, run = value("origin_uri"), value("origin_project"), value("origin_run")
    if uri is None or project is None or run is None:
        return None
    try:
        multiplier = int(value("step_multiplier") or 1)
    except ValueError:
        multiplier = 1
    return {"origin": {"uri": uri, "project_id": project, "run_id": run},
            "version": value("source_version") or None,
            "multiplier": max(multiplier, 1),
            "complete": value("complete") == "true"}


# -- names ----------------------------------------------------------------------------

def title_series(path: str) -> tuple[str, str]:
    """`train/loss` -> ("train", "loss"); `loss` -> ("loss", "loss") (ClearML's own habit)."""
    title, sep, series = path.rpartition("/")
    if not sep or not title or not series:
        return path, path
    return title, series


class Names:
    """(title, series) per attribute path, unique within one run and one kind of event."""

    def __init__(self) -> None:
        self.by_path: dict[str, tuple[str, str]] = {}
        self.taken: set[tuple[str, str]] = set()

    def get(self, path: str) -> tuple[str, str]:
        got = self.by_path.get(path)
        if got is None:
            title, series = title_series(path)
            got, n = (title, series), 1
            while got in self.taken:
                n += 1
                got = (title, f"{series} ({n})")
            self.by_path[path] = got
            self.taken.add(got)
        return got


def param_name(path: str) -> str:
    """`config/optimizer/lr` -> `config/optimizer/lr` (section `config`); `lr` -> `General/lr`."""
    section, sep, name = path.partition("/")
    if not sep or not section or not name:
        return f"{GENERAL_SECTION}/{path}"
    if section == MARK_SECTION:
        return f"{USER_MARK_SECTION}/{name}"
    return path


def datetime_from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms // 1000, tz=timezone.utc).replace(microsecond=(ms % 1000) * 1000)


def param_text(attribute_type: str, value: Any) -> str:
    """How a single value is shown as a ClearML hyperparameter (text)."""
    if value is None:
        return ""
    if attribute_type == "bool":
        return "true" if value else "false"
    if attribute_type == "float":
        return repr(float(value))
    if attribute_type == "datetime":
        ms = ms_from_datetime(value)
        return datetime_from_ms(ms).isoformat().replace("+00:00", "Z")
    if attribute_type == "string_set":
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)


def param_to_json(attribute_type: str, value: Any) -> Any:
    """A single value -> exact JSON for the record."""
    if value is None:
        return None
    if attribute_type == "datetime":
        return ms_from_datetime(value)
    if attribute_type == "float":
        return float_to_json(value)
    if attribute_type == "string_set":
        return list(value)
    return value


def param_from_json(attribute_type: str, value: Any) -> Any:
    if value is None:
        return None
    if attribute_type == "datetime":
        return datetime_from_ms(int(value))
    if attribute_type == "float":
        return float_from_json(value)
    return value


def float_to_json(value: float) -> Any:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def float_from_json(value: Any) -> float:
    return float(value)     # float("NaN"), float("Infinity") included


# -- steps ----------------------------------------------------------------------------

def step_from_iter(iteration: int, multiplier: int) -> Decimal:
    return (Decimal(int(iteration)) / Decimal(multiplier)).quantize(Decimal("0.000001"))


# -- histograms -----------------------------------------------------------------------

def histogram_plot(title: str, series: str, path: str, hist: dict) -> str:
    """A canonical histogram -> the plotly JSON of a ClearML plot event: one bar per bucket,
    x = its left edge, width = right - left, exact edges and type in the trace's `meta`."""
    edges = [float(e) for e in (hist.get("edges") or [])]
    values = [float(v) for v in (hist.get("values") or [])]
    lefts = edges[:-1] if len(edges) == len(values) + 1 else list(range(len(values)))
    widths = ([edges[i + 1] - edges[i] for i in range(len(values))]
              if len(edges) == len(values) + 1 else None)
    trace = {"type": "bar", "name": series, "x": [_finite_or_none(x) for x in lefts],
             "y": [_finite_or_none(v) for v in values], "offset": 0,
             "meta": {"trackport": {"path": path, "type": hist.get("type"),
                                    "edges": [float_to_json(e) for e in edges],
                                    "values": [float_to_json(v) for v in values]}}}
    if widths is not None:
        trace["width"] = [_finite_or_none(w) for w in widths]
    plot = {"data": [trace], "layout": {"title": title, "bargap": 0, "barmode": "overlay",
                                        "xaxis": {"title": "value"}, "yaxis": {"title": "count"}}}
    return json.dumps(plot, ensure_ascii=False, allow_nan=False)


def _finite_or_none(x: float):
    return x if isinstance(x, int) or math.isfinite(x) else None


def histogram_from_plot(plot_str: str) -> tuple[str, dict] | None:
    """(path, canonical histogram) of a plot trackport wrote; None for any other plot."""
    try:
        plot = json.loads(plot_str)
        meta = plot["data"][0]["meta"]["trackport"]
        return meta["path"], {"type": meta.get("type"),
                              "edges": [float_from_json(e) for e in meta["edges"]],
                              "values": [float_from_json(v) for v in meta["values"]]}
    except (ValueError, KeyError, IndexError, TypeError):
        return None


# -- console --------------------------------------------------------------------------

def console_level(path: str) -> str:
    return "error" if path == "monitoring/stderr" else "info"


def console_path(level: str | None) -> str:
    """A foreign session's console line -> monitoring/stdout or monitoring/stderr."""
    return "monitoring/stderr" if str(level or "").lower() in STDERR_LEVELS else "monitoring/stdout"


# -- foreign sessions -----------------------------------------------------------------

def scalar_path(metric: str, variant: str) -> str:
    """A foreign scalar -> its attribute path: `title/series`."""
    return f"{metric}/{variant}"


def hyperparam_path(section: str, name: str) -> str:
    return name if section == GENERAL_SECTION else f"{section}/{name}"
