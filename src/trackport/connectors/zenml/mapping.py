"""ZenML <-> canonical mapping: pure functions, no SDK, no I/O.

A source run becomes one model version (https://docs.zenml.io/concepts/models) of the model
the URI names:

  model version name   "tp-" + 24 hex of blake2b(origin): deterministic, a rerun finds it
  model version tags   sys/tags (ZenML tags: https://docs.zenml.io/concepts/tags)
  run metadata         params and sys/* values (`config/lr` -> 0.1), one summary per series
                       under `series/<path>` (count, first/last step, min/max/last for
                       float series), `trackport/origin`, and `trackport/mark`, written last
  artifact version     `trackport_run.<version name>`: a folder (ZenML's PathMaterializer
                       stores it as data.tar.gz) holding rows.arrow, the run's canonical rows
                       (every point with its step and timestamp, every value, exactly), files/
                       (the run's files) and run.json (origin and source version)

Run metadata is latest-wins per key (https://docs.zenml.io/concepts/metadata), so the mark is
logged `{"complete": false}` when a run starts and `{"complete": true, ...}` at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from trackport.core.capabilities import Capabilities

MARK_KEY = "trackport/mark"
CREATION_TIME = "sys/creation_time"
ORIGIN_KEY = "trackport/origin"
SERIES_PREFIX = "series/"
ARTIFACT_PREFIX = "trackport_run."
ROWS_FILE = "rows.arrow"
FILES_DIR = "files"
MANIFEST_FILE = "run.json"
FORMAT_VERSION = 1
# ZenML limits entity names (zenml/constants.py STR_FIELD_MAX_LENGTH) and tag names.
MAX_NAME = 255
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

CAPABILITIES = Capabilities(
    integer_steps=False,              # the artifact keeps decimal(18,6) steps as they are
    keeps_timestamps=True,
    files=True,
    histograms=True,
    forks=True,
    resumable=True,
    transformations={
        "series_in_run_artifact": "ZenML has no per-point metric store: every point of every series "
                                  "(step, timestamp, value) is kept in the run's artifact "
                                  "(rows.arrow) and each series gets a summary in the model "
                                  "version's run metadata (count, first/last step; min/max/last for "
                                  "float series); read back unchanged",
        "metadata_key_colon": "ZenML refuses `:` in run metadata keys: the model version's metadata shows "
                              "such a param or series under its path with `_` for `:`; the artifact keeps "
                              "the exact path; read back unchanged",
        "file_in_run_artifact": "files are kept inside the run's artifact (files/), not as artifacts "
                                "of their own; read back unchanged",
        "creation_time_at_copy": "ZenML dates a model version itself when the copy creates it "
                                 "(ModelVersionRequest has no creation time; the store sets `created` "
                                 "to utc_now): sys/creation_time is kept in the run metadata and the "
                                 "run's artifact, and read back unchanged",
    },
)


def version_name_for(origin_uri: str, project_id: str, run_id: str) -> str:
    text = json.dumps([origin_uri, project_id, run_id], ensure_ascii=False)
    return "tp-" + hashlib.blake2b(text.encode("utf-8"), digest_size=12).hexdigest()


def artifact_name(model: str, version_name: str) -> str:
    """The artifact holding one run; artifact names are project-wide in ZenML, so the model
    name is part of it."""
    return f"{ARTIFACT_PREFIX}{model}.{version_name}"


def check_model_name(name: str) -> str | None:
    """Why `name` cannot be a ZenML model name (None: it can)."""
    if not name.strip():
        return "the model name is empty"
    if len(name) > MAX_NAME:
        return f"the model name has {len(name)} characters; ZenML takes at most {MAX_NAME}"
    if re.search(r"[\x00-\x1f]", name):
        return "the model name holds control characters"
    return None


def origin_dict(uri: str, project_id: str, run_id: str) -> dict:
    return {"uri": uri, "project_id": project_id, "run_id": run_id}


def iso_from_ms(ms: int) -> str:
    dt = _EPOCH + timedelta(milliseconds=int(ms))
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def ms_of(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return int(value)


def metadata_value(kind: str, value: Any) -> Any:
    """A canonical single value as ZenML run metadata (display only: the artifact is exact).
    Non-finite floats become text, datetimes ISO text, string sets lists."""
    if value is None:
        return None
    if kind == "float":
        return value if math.isfinite(value) else repr(value)
    if kind == "datetime":
        return iso_from_ms(ms_of(value))
    if kind == "string_set":
        return sorted(value)
    return value


def _step(value: Any) -> Any:
    if value is None:
        return None
    as_float = float(value)
    return int(as_float) if as_float.is_integer() else as_float


class SeriesSummary:
    """What one series shows in the model version's metadata."""

    def __init__(self, kind: str):
        self.kind, self.count = kind, 0
        self.first_step = self.last_step = None
        self.min = self.max = self.last = None

    def add(self, step: Any, value: Any) -> None:
        self.count += 1
        if step is not None:
            if self.first_step is None or step < self.first_step:
                self.first_step = step
            if self.last_step is None or step >= self.last_step:
                self.last_step = step
                if self.kind == "float_series":
                    self.last = value
        if self.kind == "float_series" and value is not None and math.isfinite(value):
            self.min = value if self.min is None else min(self.min, value)
            self.max = value if self.max is None else max(self.max, value)

    def as_metadata(self) -> dict:
        out: dict[str, Any] = {"type": self.kind, "count": self.count,
                               "first_step": _step(self.first_step), "last_step": _step(self.last_step)}
        if self.kind == "float_series":
            last = self.last
            out.update({"min": self.min, "max": self.max,
                        "last": last if last is None or math.isfinite(last) else repr(last)})
        return out


def metadata_key(path: str, taken: set[str], summary: bool = False) -> tuple[str, bool]:
    """The metadata key showing a param or series summary, and whether it differs from the
    path beyond the `attr/` prefix: ZenML refuses `:` in metadata keys
    (zenml/models/v2/core/run_metadata.py RunMetadataRequest.validate_values_keys), so each
    becomes `_`; a key trackport reserves, or one another path already took, goes under `attr/`."""
    key = path.replace(":", "_")
    reserved = ("trackport/", "attr/") + (() if summary else (SERIES_PREFIX,))
    if key.startswith(reserved) or key in taken:
        key = "attr/" + key
    while key in taken:
        key = "attr/" + key
    taken.add(key)
    return key, ":" in path


def valid_tag(tag: str) -> bool:
    return bool(tag.strip()) and len(tag) <= MAX_NAME
