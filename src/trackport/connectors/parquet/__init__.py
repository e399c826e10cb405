"""`parquet:DIR` — a canonical export in neptune-exporter's layout (see core/layout.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.registry import ParsedUri


def _root(parsed: ParsedUri) -> Path:
    return Path(parsed.rest).expanduser().resolve()


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    from .source import ParquetSource

    return ParquetSource(_root(parsed), options)


def open_sink(parsed: ParsedUri, options: dict[str, Any]):
    from .sink import ParquetSink

    return ParquetSink(_root(parsed), options)
