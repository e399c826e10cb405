"""Canonical rows <-> Aim's shapes: pure functions, no SDK, no I/O (docs/aim.md).

Aim facts encoded here (aim 3.29, read in its source and checked on this machine):
- a run's hash is any string naming its folder `.aim/meta/chunks/<hash>`; `Run(run_hash=...)`
  opens only an existing one (aim/sdk/base_run.py), so the sink creates the run's container
  under a hash derived from the origin first, then opens it (client.py);
- steps are integers (a sequence is keyed by its step: tracking a step twice replaces it);
- every point holds a wall time, float seconds, settable only through the tracker's
  internal `_track(value, track_time, ...)`: the public `Run.track` stamps the current time
  (aim/sdk/tracker.py); None is stored as is;
- params are one nested tree (`run[...] = {...}`); a dict key '' is not kept (the tree
  stores a hash in its place), so a path with an empty segment cannot be a nested param;
- `Distribution(hist=..., bin_range=(lo, hi))` holds evenly spaced bins over a range,
  1 to 512 of them (aim/sdk/objects/distribution.py);
- `Image` re-encodes what it is given (PIL `save`); the sink keeps the original bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from trackport.core.steps import step_text  # noqa: F401  (the sink uses mp.step_text)
from trackport.core.capabilities import Capabilities

MARK_KEY = "__trackport"                  # the run's trackport record (a top-level param)
FORMAT = "trackport.aim"
EPOCH_PREFIX = "aim/epoch/"               # source: a metric's epochs, as their own series
ARTIFACT_PREFIX = "aim/artifacts/"        # source: an Aim artifact of a run trackport did not write
SYSTEM_PREFIX = "__system__"              # Aim's system metrics (aim/ext/resource/tracker.py)
MAX_BINS = 512
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")

TRANSFORMATIONS: dict[str, str] = {
    "step_scaled": "decimal step multiplied by the run's step multiplier to an integer Aim step "
    "(divided back exactly when read; the multiplier is in the run's __trackport record)",
    "step_floored": "step left with a fraction by a user-set multiplier, floored",
    "datetime_to_iso": "datetime param stored in Aim's params as ISO 8601 text (read back as "
    "datetime through the __trackport record)",
    "string_set_to_list": "string_set param stored in Aim's params as a list (read back as a "
    "string_set through the __trackport record)",
    "param_in_record": "param whose path has an empty segment, or is both a value and the prefix "
    "of another param, kept only in the run's __trackport record (Aim's nested params cannot "
    "hold it); read back exactly",
    "histogram_binned": "histogram whose edges are not evenly spaced (or with a type other than "
    "COUNTING, more than 512 bins, or no bins) shown in Aim as evenly spaced bins over the same "
    "range; its exact type, edges and counts are kept in the Distribution's `trackport` field "
    "and read back",
    "file_as_artifact": "file, file_set, artifact and non-image file_series stored as Aim "
    "artifacts under REPO/aim-artifacts/<run hash>/ (bytes unchanged)",
}

CAPABILITIES = Capabilities(
    integer_steps=True,
    keeps_timestamps=True,
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    replayable=False,
    null_point_drops={"float_series": "null_point", "string_series": "null_point",
                      "histogram_series": "null_point", "file_series": "null_point"},
    transformations=dict(TRANSFORMATIONS),
)

# What the source may report on runs trackport did not write (Source.account).
SOURCE_TRANSFORMATIONS: dict[str, str] = {
    "context_in_path": "a sequence tracked with a non-empty Aim context named "
    "`<name>/<key>=<value>,...` (keys sorted)",
    "epoch_series": "a metric's epochs moved as the float series aim/epoch/<metric>",
    "system_metric": "Aim system metric __system__<x> moved as monitoring/<x>",
    "list_param_to_json": "param holding a list, moved as its JSON text",
    "null_param": "param holding None, moved as a string param without a value",
    "terminal_logs": "Aim's captured terminal output (sequence `logs`) moved as monitoring/stdout",
}
# What the source cannot move (counted as drops: the command fails unless --allow-drops).
SOURCE_DROPS: dict[str, str] = {
    "unsupported_sequence": "points of a Figure, LogRecord or other sequence type trackport does not read",
    "remote_artifact": "an artifact whose URI is not a local file:// path (S3, ...)",
}


def run_hash(uri: str, project_id: str, run_id: str) -> str:
    """The Aim run hash of an origin: 24 hex characters, like the ones Aim makes."""
    return hashlib.blake2b(f"{uri}\n{project_id}\n{run_id}".encode(), digest_size=12).hexdigest()


# -- params ------------------------------------------------------------------------


def param_value(typ: str, value: Any) -> tuple[Any, str | None]:
    """(what Aim's params tree holds, the transformation applied or None)."""
    if value is None:
        return None, None
    if typ == "datetime":
        return iso(value), "datetime_to_iso"
    if typ == "string_set":
        return [str(v) for v in value], "string_set_to_list"
    if typ == "float":
        return float(value), None
    if typ == "int":
        return int(value), None
    if typ == "bool":
        return bool(value), None
    return str(value), None


def canonical_param(typ: str, value: Any) -> Any:
    """A param read back from Aim, as the canonical python value of `typ`."""
    if value is None:
        return None
    if typ == "datetime":
        return from_iso(value)
    if typ == "string_set":
        return [str(v) for v in value]
    if typ == "float":
        return float(value)
    if typ == "int":
        return int(value)
    if typ == "bool":
        return bool(value)
    return str(value)


def nest_params(values: dict[str, Any]) -> tuple[dict, dict[str, Any]]:
    """Flat {attribute path: Aim value} -> (nested tree, {path: value} that cannot nest)."""
    tree: dict = {}
    flat: dict[str, Any] = {}
    paths = sorted(values)
    prefixes = {p[:i] for p in paths for i, ch in enumerate(p) if ch == "/"}
    for path in paths:
        parts = path.split("/")
        if "" in parts or path in prefixes:
            flat[path] = values[path]
            continue
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = values[path]
    return tree, flat


def unfold(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested params tree -> [(path joined with '/', leaf value)]; lists are leaves."""
    out: list[tuple[str, Any]] = []
    if isinstance(tree, dict):
        for key in sorted(tree, key=str):
            out += unfold(tree[key], f"{prefix}/{key}" if prefix else str(key))
    elif prefix:
        out.append((prefix, tree))
    return out


def native_param(value: Any) -> tuple[str, Any, str | None]:
    """A param of a run trackport did not write: (type, value, source transformation)."""
    if value is None:
        return "string", None, "null_param"
    if isinstance(value, bool):
        return "bool", value, None
    if isinstance(value, int):
        return "int", value, None
    if isinstance(value, float):
        return "float", value, None
    if isinstance(value, str):
        return "string", value, None
    if isinstance(value, (list, tuple)):
        return "string", json.dumps(list(value), default=str, ensure_ascii=False), "list_param_to_json"
    return "string", str(value), None


# -- sequences -----------------------------------------------------------------------


def context_path(name: str, context: dict) -> str:
    if not context:
        return name
    items = ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
                     for k, v in sorted(context.items(), key=lambda kv: str(kv[0])))
    return f"{name}/{items}"


def system_path(name: str) -> str | None:
    if name.startswith(SYSTEM_PREFIX):
        return "monitoring/" + name[len(SYSTEM_PREFIX):]
    return None


def seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000.0


def millis(sec: Any) -> int | None:
    if sec is None:
        return None
    value = float(sec)
    return None if math.isnan(value) else int(round(value * 1000.0))


def histogram_plan(hist: dict) -> tuple[list[float], float, float, bool]:
    """(bin counts, range start, range end, exact) of a canonical histogram as a Distribution."""
    edges = [float(e) for e in (hist.get("edges") or [])]
    values = [float(v) for v in (hist.get("values") or [])]
    if not values or len(edges) != len(values) + 1 or len(values) > MAX_BINS \
            or not all(math.isfinite(e) for e in edges) or not all(math.isfinite(v) for v in values):
        counts = values[:MAX_BINS] or [0.0]
        finite = [e for e in edges if math.isfinite(e)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        return counts, lo, hi, False
    lo, hi = edges[0], edges[-1]
    even = linspace(lo, hi, len(values)) == edges
    return values, lo, hi, even and hist.get("type") == "COUNTING"


def linspace(lo: float, hi: float, bins: int) -> list[float]:
    """The edges Aim gives `bins` bins over [lo, hi] (numpy.linspace, as Distribution does)."""
    import numpy as np

    return [float(x) for x in np.linspace(lo, hi, num=bins + 1)]


def is_image(head: bytes) -> bool:
    return any(head.startswith(m) for m in IMAGE_MAGIC)


# -- steps and times -------------------------------------------------------------------


def source_step(dest_step: int, multiplier: int) -> Decimal:
    return (Decimal(int(dest_step)) / Decimal(multiplier)).quantize(Decimal("0.000001"))


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def iso(value: Any) -> str:
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value / 1000.0, tz=timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def artifact_name(attribute_path: str, member: str | None = None, step: str | None = None,
                  base: str | None = None) -> str:
    """A relative artifact name for a file attribute: its path's segments kept where they are
    plain, each other segment (empty, '.', '..', a leading '/') replaced by its safe() form."""
    from trackport.core.layout import safe

    parts = [p if p not in ("", ".", "..") else safe(p) for p in attribute_path.split("/")]
    if step is not None:
        parts.append(f"step={step}")
    if base is not None:
        parts.append(base if base not in ("", ".", "..") else safe(base))
    if member is not None:
        parts += [p if p not in ("", ".", "..") else safe(p) for p in member.split("/")]
    return "/".join(parts)
