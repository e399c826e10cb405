"""`neptune2://WORKSPACE[/PROJECT]`: runs of a Neptune 2.x API through the `neptune` 1.x client.

The token comes only from NEPTUNE_API_TOKEN; the SDK is imported lazily by reader2.py.
"""

from __future__ import annotations

from typing import Any

from trackport.core.registry import ParsedUri

from . import mapping as am
from .base import NeptuneApiSource, api_token


def open_api2_source(parsed: ParsedUri, options: dict[str, Any]) -> NeptuneApiSource:
    from .reader2 import Api2Reader

    target = am.parse_target(parsed.scheme, parsed.rest)
    return NeptuneApiSource(target, Api2Reader(api_token(parsed.scheme), options), options)


__all__ = ["open_api2_source"]
