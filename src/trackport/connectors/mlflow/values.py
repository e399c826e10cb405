"""Texts of canonical single values, times and steps as MLflow holds them, and back.

Pure functions, no MLflow import: a param is text (`param_text` / `param_value` round
trip exactly), MLflow times are epoch milliseconds, MLflow steps are integers and
canonical steps decimal(18,6) (`STEP_SCALE`).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from trackport.core.schema import STEP_SCALE, ms_from_datetime

MAX_PARAM_LENGTH = 6000   # longer values are cut silently by MLflow: the sink stores them as artifacts

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DENOM = 10**STEP_SCALE


def datetime_from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=int(ms))


def iso_from_ms(ms: int) -> str:
    dt = datetime_from_ms(ms)
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}.{dt.microsecond // 1000:03d}Z")


_ISO_RE = re.compile(
    r"^(?P<y>-?\d{4,})-(?P<mo>\d\d)-(?P<d>\d\d)[T ](?P<h>\d\d):(?P<mi>\d\d):(?P<s>\d\d)"
    r"(?:\.(?P<f>\d{1,9}))?(?P<tz>Z|[+-]\d\d:?\d\d)?$"
)


def ms_from_iso(text: str) -> int:
    m = _ISO_RE.match(text.strip())
    if not m:
        raise ValueError(f"not an ISO 8601 time: {text!r}")
    dt = datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"]),
                  tzinfo=timezone.utc)
    ms = ms_from_datetime(dt)
    frac = (m["f"] or "0")[:3].ljust(3, "0")
    ms += int(frac)
    tz = m["tz"]
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        ms -= sign * (int(digits[:2]) * 60 + int(digits[2:])) * 60_000
    return ms


def param_text(attribute_type: str, value: Any) -> str:
    """The text of a single value as an MLflow param (exact, and parsed back by `param_value`)."""
    if attribute_type == "int":
        return str(int(value))
    if attribute_type == "float":
        return repr(float(value))
    if attribute_type == "bool":
        return "True" if value else "False"
    if attribute_type == "datetime":
        return iso_from_ms(ms_from_datetime(value))
    if attribute_type == "string_set":
        return json.dumps(list(value), ensure_ascii=False)
    return str(value)


def param_value(attribute_type: str, text: str) -> Any:
    """Inverse of `param_text`."""
    if attribute_type == "int":
        return int(text)
    if attribute_type == "float":
        return float(text)
    if attribute_type == "bool":
        if text in ("True", "true", "1"):
            return True
        if text in ("False", "false", "0"):
            return False
        raise ValueError(f"not a bool: {text!r}")
    if attribute_type == "datetime":
        return datetime_from_ms(ms_from_iso(text))
    if attribute_type == "string_set":
        got = json.loads(text)
        if not isinstance(got, list):
            raise ValueError(f"not a JSON array: {text[:80]!r}")
        return [str(x) for x in got]
    return text


def step_texts(steps: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """`step_text` for a whole decimal column (nulls stay None)."""
    text = pc.cast(steps, pa.string())
    text = pc.replace_substring_regex(text, r"(\.\d*[1-9])0+$", r"\1")
    text = pc.replace_substring_regex(text, r"\.0+$", "")
    return text.to_pylist()


def unscaled_from_text(text: str) -> int:
    """Millionths of a decimal step text; exact (raises on more than 6 decimals)."""
    text = text.strip()
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    whole, _, frac = body.partition(".")
    if len(frac) > STEP_SCALE or not (whole or frac) or not (whole + frac).isdigit():
        raise ValueError(f"not a decimal(18,6) step: {text!r}")
    return sign * (int(whole or "0") * _DENOM + int(frac.ljust(STEP_SCALE, "0") or "0"))

