"""DVCLive <-> canonical mapping: pure functions, no SDK, no I/O.

A DVCLive folder (what `dvclive.Live(dir=...)` writes; https://dvc.org/doc/dvclive/how-it-works):

  params.yaml                    log_param(s): nested YAML        <-> single values
  metrics.json                   the latest value of each metric (and `step`)
  plots/metrics/<name>.tsv       log_metric: columns timestamp, step, <basename of name>;
                                 a name with `/` is a sub-folder  <-> float_series / string_series
  plots/images/<name>            log_image (`<name>/<step>.png` is DVC's image slider) <-> file_series
  plots/custom, plots/sklearn    log_plot / log_sklearn_plot JSON  -> file
  artifacts/                     log_artifact(copy=True)           <-> file / file_set / artifact
  dvc.yaml, report.html/md       derived from the above (not read)

What DVCLive has no place for is kept beside it by the sink, in files a DVC user does not
trip over (DVC reads only what dvc.yaml lists): `trackport-origin.json` (written first: whose
run this folder is), `trackport-data/` (histograms) and `trackport-run.json` (the completion
mark, written last, with the exact types and values the source reads back).
"""

from __future__ import annotations

import json
import math
import re
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from trackport.core.capabilities import Capabilities
from trackport.core.layout import safe

MARKER = "trackport-run.json"          # completion mark + exact manifest, written last
ORIGIN_FILE = "trackport-origin.json"  # written first: whose run this folder is
DATA_DIR = "trackport-data"            # what DVCLive has no file for (histograms)
MARKER_VERSION = 1
ORIGIN_URI = "dvclive"                 # a DVCLive folder has no id: origin = (dvclive, project, run)

PARAMS_FILE = "params.yaml"
METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
METRICS_DIR = "plots/metrics"
IMAGES_DIR = "plots/images"
ARTIFACTS_DIR = "artifacts"
# written by DVCLive itself from the files above; never read as data
DERIVED_FILES = frozenset({"dvc.yaml", "report.html", "report.md", ".gitignore"})
# a folder holding any of these is a DVCLive folder (Live.make_summary always writes metrics.json)
RUN_MARKERS = (METRICS_FILE, METRICS_DIR, MARKER, ORIGIN_FILE)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")   # dvclive/plots/image.py Image.suffixes

CAPABILITIES = Capabilities(
    integer_steps=False,             # the TSV step column holds decimal text exactly
    keeps_timestamps=True,
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    null_point_drops={"string_series": "null_value", "histogram_series": "null_value"},
    transformations={
        "params_as_yaml_text": "datetime params are written to params.yaml as ISO-8601 text and string "
                               f"sets as sorted YAML lists; their exact types live in {MARKER} and read "
                               "back unchanged",
        "sys_in_mark": f"run metadata (sys/*) has no place in DVCLive: it is kept in {MARKER} only (not "
                       "in params.yaml, so `dvc exp show` is not cluttered) and read back unchanged",
        "histogram_beside": f"DVCLive has no histograms: histogram series are written to "
                            f"{DATA_DIR}/histograms/<name>.jsonl (one JSON line per point) and read back",
        "file_as_artifact": "files other than PNG/JPEG/GIF image series (single files, file sets, "
                            "artifacts, other file series) are copied under artifacts/<attribute>/",
        "key_sanitized": "an attribute path that is not a portable file name (empty or `..` segments, "
                         "control or Windows-reserved characters, segments over 200 bytes) names its "
                         "TSV / image folder safe(path); the exact path is kept in the mark",
        "key_flattened": "a params.yaml / metrics.json key that would be both a value and a section "
                         "(`a` and `a/b`) is written as one flat key `a/b` at the level of the clash",
    },
)

# What the source transforms when reading a DVCLive folder it did not write.
SOURCE_CAPABILITIES = Capabilities(
    replayable=True,
    transformations={
        "yaml_value_as_json": "a params.yaml / metrics.json value with no canonical type (a list, null, "
                              "an empty mapping) is read as a string holding its JSON",
    },
)

_BAD_SEGMENT = re.compile(r'[\x00-\x1f\x7f\\:*?"<>|]')


def portable_name(path: str) -> bool:
    """Whether `path` can name a file below plots/ as is on every OS DVC runs on."""
    segments = path.split("/")
    return all(s and s not in (".", "..") and not _BAD_SEGMENT.search(s) and not s.endswith((" ", "."))
               and len(s.encode("utf-8")) <= 200 for s in segments)


def file_name(path: str) -> tuple[str, bool]:
    """(the relative name used on disk for attribute `path`, whether it was sanitized)."""
    if portable_name(path):
        return path, False
    return safe(path), True


# -- steps and timestamps ---------------------------------------------------------------

_MICRO = 10**6


def step_text(micro: int | None) -> str:
    """Millionths -> the shortest exact decimal text (`5`, `0.5`, `-1.000001`); None -> ``."""
    if micro is None:
        return ""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(int(micro)), _MICRO)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")


def parse_step(text: str) -> int | None:
    """A TSV step cell -> millionths (exact); `` -> None.  ValueError when not a number of at most
    six decimals."""
    text = text.strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"step {text!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"step {text!r} is not a finite number")
    micro = value * _MICRO
    if micro != micro.to_integral_value():
        raise ValueError(f"step {text!r} has more than six decimals")
    return int(micro)


def parse_timestamp(text: str) -> int | None:
    """A TSV timestamp cell (ms since the epoch, as DVCLive writes `int(time.time() * 1000)`)."""
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        return int(Decimal(text))       # a float ms value from another writer: ValueError if not numeric


def float_text(value: float | None) -> str:
    """A float cell: Python's shortest exact repr (`nan`, `inf`, `-0.0`, `5e-324`); None -> ``."""
    return "" if value is None else repr(float(value))


def parse_float(text: str) -> float | None:
    text = text.strip()
    return None if not text else float(text)


# -- nested keys (params.yaml, metrics.json) -------------------------------------------

def nest(items: list[tuple[str, Any]]) -> tuple[dict, list[str]]:
    """`a/b/c` paths -> nested mappings, as DVCLive's own summary (funcy.set_in on the split
    name).  A path that would make one key both a value and a section is put in as one flat key
    (its remaining segments joined by `/`) at the level of the clash; `flatten` gives every
    path back either way.  Returns (nested, paths flattened)."""
    out: dict = {}
    flattened = []
    for path, value in sorted(items, key=lambda kv: (kv[0].count("/"), kv[0])):
        parts = path.split("/")
        node = out
        for i, key in enumerate(parts[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                node["/".join(parts[i:])] = value
                flattened.append(path)
                break
            node = child
        else:
            leaf = parts[-1]
            if leaf in node:
                # a section of that name exists (deeper paths came later? no: shorter first) or a
                # flat key made above: keep both
                node[path] = value
                flattened.append(path)
            else:
                node[leaf] = value
    return out, flattened


def flatten(mapping: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings -> (`a/b`, leaf) pairs; an empty mapping is a leaf."""
    out = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.extend(flatten(value, path + "/"))
        else:
            out.append((path, value))
    return out


# -- values -------------------------------------------------------------------------------

def ms_of(value: Any) -> int | None:
    """A datetime (aware or naive UTC) or ms -> ms since the epoch."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(value, date):
        return ms_of(datetime(value.year, value.month, value.day, tzinfo=timezone.utc))
    raise TypeError(f"not a time: {value!r}")


def datetime_of(ms: int) -> datetime:
    seconds, millis = divmod(int(ms), 1000)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=millis * 1000)


def yaml_param(attribute_type: str, value: Any) -> tuple[Any, bool]:
    """A canonical single value -> (what params.yaml holds, whether that is a transformation)."""
    if attribute_type == "datetime":
        return datetime_of(ms_of(value)).isoformat(timespec="milliseconds"), True
    if attribute_type == "string_set":
        return sorted(value or []), True
    return value, False


def mark_value(attribute_type: str, value: Any) -> Any:
    """A canonical single value -> JSON for the mark (exact)."""
    if value is None:
        return None
    if attribute_type == "datetime":
        return ms_of(value)
    if attribute_type == "float" and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if attribute_type == "string_set":
        return list(value)
    return value


def value_of_mark(attribute_type: str, value: Any) -> Any:
    if value is None:
        return None
    if attribute_type == "datetime":
        return datetime_of(value)
    if attribute_type == "float":
        return float(value)
    return value


def native_value(value: Any) -> tuple[str, Any, bool]:
    """A value of a params.yaml / metrics.json DVCLive did not get from trackport ->
    (canonical type, value, transformed).  YAML / JSON types map to their canonical twins."""
    if isinstance(value, bool):
        return "bool", value, False
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return "int", value, False
        return "string", str(value), True
    if isinstance(value, float):
        return "float", value, False
    if isinstance(value, str):
        return "string", value, False
    if isinstance(value, (datetime, date)):
        return "datetime", datetime_of(ms_of(value)), False
    return "string", json.dumps(value, ensure_ascii=False, default=str), True


def image_suffix(head: bytes) -> str | None:
    """The suffix DVC shows an image file by, from its first bytes; None: not an image."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    return None
