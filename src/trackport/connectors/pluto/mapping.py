"""Canonical rows <-> Pluto: pure functions, no SDK, no I/O.

Everything here is deterministic, so a resumed load computes exactly the
external id, config, tags, file names and manifest the first attempt used.

Pluto facts this module encodes (pluto-ml 0.0.29, checked on this machine;
docs/pluto.md):
- metric steps are non-negative integers; the ingest rejects a whole NDJSON
  batch on one bad line (pluto/api.py `make_compat_num_v1` sends `int(step)`);
- `log()` drops bools and strings over 200 characters (op.py
  `_process_log_item_sync`, `STRING_SERIES_MAX_LEN`), so trackport never
  routes those through string-series data;
- histograms are stored as uniform bins `{freq, bins: {min, max, num}}`
  (pluto/data.py `Histogram.to_data`);
- JSON has no NaN/inf: non-finite values cannot travel in a config or a
  metric line and are kept in the run's trackport manifest instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterable

from trackport.core.capabilities import Capabilities
from trackport.core.schema import STEP_SCALE, ms_from_datetime

# Tags trackport puts on every run it creates.
TAG_ORIGIN_PREFIX = "trackport:"          # + external id: how find_run locates the run (list filter)
TAG_COMPLETE = "trackport:complete"       # the completion mark, written last
TAG_VERSION = "trackport:version:"        # + the source's run_version, set with the mark
# Files trackport adds to a run (log names), read back by the source.
MANIFEST_LOG = "trackport/manifest"
MANIFEST_FILE = "manifest.json"
SERIES_LOG_PREFIX = "trackport/series/"
RESERVED_LOG = "trackport"                # trackport's own log names: no user file goes there
MANIFEST_FORMAT = "trackport.pluto.manifest"
MANIFEST_VERSION = 1

STRING_SERIES_MAX_LEN = 200               # pluto/op.py STRING_SERIES_MAX_LEN
CONSOLE_STREAMS = {"monitoring/stdout": "INFO", "monitoring/stderr": "ERROR"}

TRANSFORMATIONS: dict[str, str] = {
    "datetime_to_iso": "datetime param stored in the Pluto config as ISO 8601 text "
    "(read back as datetime through the trackport manifest)",
    "string_set_to_list": "string_set param stored in the Pluto config as a JSON list (order kept)",
    "nonfinite_in_manifest": "NaN/+-inf metric point or param (JSON cannot carry it) kept in "
    "trackport/manifest; the config holds the text 'NaN'/'inf'/'-inf' and the metric point is not sent",
    "file_log_renamed": "file attribute at or under trackport/ (trackport's own log names: the "
    "manifest, series files) logged as trackport--<8 hex of its path>/...; the manifest keeps "
    "the original path, read back exactly",
    "series_file": "string/histogram series also stored whole as a JSON-lines file "
    "(log name trackport/series/<path>), the exact copy read back",
    "long_string_not_charted": "string series value over 200 characters (Pluto drops those "
    "from string-series data) kept only in the series file",
    "histogram_nonuniform": "histogram with non-uniform edges sent to Pluto as uniform bins "
    "over the same range; exact edges and counts kept in the series file",
    "timestamp_filled": "series point without a timestamp sent with the run's creation time",
    "step_scaled": "decimal step multiplied by the run's step multiplier to an integer Pluto step "
    "(divided back exactly when read; multiplier in the manifest)",
    "step_floored": "step left with a fraction by a user-set multiplier, floored",
}

CAPABILITIES = Capabilities(
    integer_steps=True,
    keeps_timestamps=True,
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    replayable=False,
    transformations=dict(TRANSFORMATIONS),
)


def external_id(uri: str, project_id: str, run_id: str) -> str:
    """Deterministic Pluto externalId of a source run (same origin -> same id)."""
    digest = hashlib.blake2b(f"{uri}\n{project_id}\n{run_id}".encode(), digest_size=12).hexdigest()
    return f"trackport-{digest}"


def origin_tag(ext_id: str) -> str:
    return TAG_ORIGIN_PREFIX + ext_id


def source_tracker(uri: str) -> str:
    """`import:<tracker>`: the source URI's scheme; a parquet export is neptune-exporter's format."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else "parquet"
    return "neptune" if scheme == "parquet" else scheme


def run_name(values: dict[str, tuple[str, Any]], run_id: str) -> str:
    got = values.get("sys/name")
    name = got[1] if got else None
    return str(name) if name not in (None, "") else run_id


def run_tags(values: dict[str, tuple[str, Any]], uri: str, project_id: str, ext_id: str) -> list[str]:
    """`import:<tracker>`, `import_project:<project>`, the source tags, the origin tag; sorted, unique."""
    tags = {f"import:{source_tracker(uri)}", f"import_project:{project_id}", origin_tag(ext_id)}
    for key in ("sys/tags", "sys/group_tags"):
        got = values.get(key)
        if got and got[0] == "string_set" and got[1]:
            tags.update(str(t) for t in got[1])
    return sorted(tags)


def ms(value: Any) -> int | None:
    """Epoch milliseconds of a datetime (naive = UTC) or pass-through int."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        return ms_from_datetime(value)
    return None


def iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def float_text(value: float) -> str | None:
    """'NaN', 'inf', '-inf' for non-finite floats; None for finite ones."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return None


@dataclass
class ConfigPlan:
    config: dict[str, Any] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    counts: dict[str, list[str]] = field(default_factory=dict)   # transformation -> example paths

    def hit(self, kind: str, path: str) -> None:
        self.counts.setdefault(kind, []).append(path)


def config_plan(values: dict[str, tuple[str, Any]]) -> ConfigPlan:
    """Params (single values) -> a flat Pluto config {attribute path: JSON value}, types kept apart."""
    plan = ConfigPlan()
    for path in sorted(values):
        typ, value = values[path]
        plan.types[path] = typ
        if value is None:
            plan.config[path] = None
        elif typ == "datetime":
            plan.config[path] = iso(value)
            plan.hit("datetime_to_iso", path)
        elif typ == "string_set":
            plan.config[path] = [str(v) for v in value]
            plan.hit("string_set_to_list", path)
        elif typ == "float":
            text = float_text(float(value))
            if text is not None:
                plan.config[path] = text
                plan.hit("nonfinite_in_manifest", path)
            else:
                plan.config[path] = float(value)
        elif typ == "int":
            plan.config[path] = int(value)
        elif typ == "bool":
            plan.config[path] = bool(value)
        else:
            plan.config[path] = str(value)
    return plan


def config_value(typ: str, value: Any) -> Any:
    """A config value read back, as the canonical python value of `typ`."""
    if value is None:
        return None
    if typ == "datetime":
        return from_iso(value)
    if typ == "string_set":
        return list(value)
    if typ == "float":
        if isinstance(value, str):
            return {"NaN": math.nan, "inf": math.inf, "-inf": -math.inf}[value]
        return float(value)
    if typ == "int":
        return int(value)
    if typ == "bool":
        return bool(value)
    return str(value)


# -- histograms ------------------------------------------------------------------

def is_uniform(edges: list[float]) -> bool:
    if len(edges) < 2:
        return False
    width = edges[1] - edges[0]
    if not width > 0:
        return False
    tolerance = abs(width) * 1e-9
    return all(abs((edges[i + 1] - edges[i]) - width) <= tolerance for i in range(len(edges) - 1))


def histogram_data(hist: dict) -> tuple[dict, bool]:
    """Pluto's HISTOGRAM data dict for a canonical histogram; (data, exactly representable)."""
    edges = [float(e) for e in (hist.get("edges") or [])]
    values = [float(v) for v in (hist.get("values") or [])]
    uniform = is_uniform(edges) and len(values) == len(edges) - 1
    freq = [int(v) if float(v).is_integer() else v for v in values] or [0]
    data = {
        "freq": freq,
        "maxFreq": max(freq),
        "bins": {
            "min": min(edges) if edges else 0.0,
            "max": max(edges) if edges else 1.0,
            "num": max(1, len(edges) - 1),
        },
        "shape": "uniform",
        "type": "Histogram",
        "v": 1,
    }
    return data, uniform


# -- steps -------------------------------------------------------------------------

_DENOM = 10**STEP_SCALE


def source_step(dest_step: int, multiplier: int) -> Decimal:
    """The canonical decimal step of an integer Pluto step (exact)."""
    return (Decimal(int(dest_step)) / Decimal(multiplier)).quantize(Decimal(1).scaleb(-STEP_SCALE))


def decimal_step(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


# -- files -------------------------------------------------------------------------

def file_name(attribute_type: str, source_path: str, member: str | None = None) -> str:
    """Pluto fileName of a source file: its base name (file_set members: their path inside the set)."""
    if member is not None:
        return member
    name = posixpath.basename(source_path.rstrip("/")) or "file"
    return name


def file_type(name: str) -> str:
    ext = posixpath.splitext(name)[1]
    return ext[1:].lower() if ext else "bin"


def file_log(path: str) -> tuple[str, bool]:
    """The log name of a file attribute, and whether it had to leave trackport's own names."""
    if path == RESERVED_LOG or path.startswith(RESERVED_LOG + "/"):
        digest = hashlib.blake2b(path.encode(), digest_size=4).hexdigest()
        return f"{RESERVED_LOG}--{digest}{path[len(RESERVED_LOG):]}", True
    return path, False


def series_log(path: str) -> str:
    return SERIES_LOG_PREFIX + path


def series_file_name(path: str) -> str:
    return hashlib.blake2b(path.encode(), digest_size=8).hexdigest() + ".jsonl"


def generation_name(name: str, generation: int) -> str:
    """The name of a manifest or series file as the `generation`-th refresh of a grown run
    writes it (0: the first copy).  Pluto keeps every file uploaded, so a refresh writes
    new names and its manifest, the highest generation, names the series files to read."""
    if not generation:
        return name
    stem, _, ext = name.rpartition(".")
    return f"{stem}.g{generation}.{ext}"


def generation_of(name: str, base: str) -> int | None:
    """The generation of file `name` written as `base` (None: not one of them)."""
    if name == base:
        return 0
    stem, _, ext = base.rpartition(".")
    found = re.fullmatch(re.escape(stem) + r"\.g(\d+)\." + re.escape(ext), name or "")
    return int(found[1]) if found else None


def latest_manifest(files: list[dict]) -> tuple[int, dict] | None:
    """(generation, listing entry) of the newest manifest among a run's manifest files."""
    found = [(generation_of(f.get("fileName"), MANIFEST_FILE), f) for f in files]
    found = [(g, f) for g, f in found if g is not None]
    return max(found, key=lambda gf: gf[0]) if found else None


# -- the manifest --------------------------------------------------------------------

@dataclass
class Manifest:
    """What Pluto cannot give back by itself; uploaded as trackport/manifest before the mark."""

    origin_uri: str
    project_id: str
    run_id: str
    external_id: str
    multiplier: int = 1
    types: dict[str, str] = field(default_factory=dict)
    series: dict[str, dict] = field(default_factory=dict)   # float series: {count, min, max} (dest steps)
    series_files: dict[str, str] = field(default_factory=dict)  # string/histogram path -> file name
    files: list[list] = field(default_factory=list)   # [attr, type, step text, source path, log name, file name, dest step]
    nonfinite: dict[str, list[list]] = field(default_factory=dict)   # path -> [[dest step, ms, text]]

    def to_json(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "origin": {"uri": self.origin_uri, "project_id": self.project_id, "run_id": self.run_id},
            "external_id": self.external_id,
            "step_multiplier": self.multiplier,
            "types": self.types,
            "series": self.series,
            "series_files": self.series_files,
            "files": self.files,
            "nonfinite": self.nonfinite,
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def loads(cls, data: bytes) -> "Manifest":
        doc = json.loads(data)
        if doc.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a trackport Pluto manifest")
        origin = doc["origin"]
        return cls(origin["uri"], origin["project_id"], origin["run_id"], doc["external_id"],
                   int(doc["step_multiplier"]), doc.get("types", {}), doc.get("series", {}),
                   doc.get("series_files", {}), doc.get("files", []), doc.get("nonfinite", {}))


def chunks(items: list, size: int) -> Iterable[list]:
    size = max(1, size)
    for i in range(0, len(items), size):
        yield items[i:i + size]
