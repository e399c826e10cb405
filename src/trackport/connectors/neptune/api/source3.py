"""`neptune3://WORKSPACE[/PROJECT]`: runs of a Neptune 3.x API through neptune-query.

The token comes only from NEPTUNE_API_TOKEN; the SDK is imported lazily by reader3.py.
"""

from __future__ import annotations

from typing import Any

from trackport.core.registry import ParsedUri

from . import mapping as am
from .base import NeptuneApiSource, api_token


def open_api3_source(parsed: ParsedUri, options: dict[str, Any]) -> NeptuneApiSource:
    from .reader3 import Api3Reader

    target = am.parse_target(parsed.scheme, parsed.rest)
    return NeptuneApiSource(target, Api3Reader(api_token(parsed.scheme), options), options)


__all__ = ["open_api3_source"]
