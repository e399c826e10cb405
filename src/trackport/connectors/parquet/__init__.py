"""`parquet:DIR` — a canonical export in neptune-exporter's layout (see layout.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("parquet",),
    summary="parquet:DIR (or a bare directory): a canonical / neptune-exporter export",
    extra=None,
    requires=(),
    capabilities={"parquet": "trackport.connectors.parquet.sink:ParquetSink.capabilities"},
    bare_paths=True,
    inspect=True,
    options=(
        ConnectorOption("--part-size", "Parquet part size in bytes (default 50 MB).", "int"),
        ConnectorOption("--check", "Parquet exports read: also compare each run's parts with "
                        "the checksum in its run manifest (reads them once more; verify "
                        "always does; row counts are always compared).", "flag"),
    ),
)


def _root(parsed: ParsedUri) -> Path:
    return parsed.directory("parquet:./export (or a bare ./export)").resolve()


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    from .source import ParquetSource

    return ParquetSource(_root(parsed), options)


def inspect(parsed: ParsedUri, options: dict[str, Any], select):
    """`trackport inspect DIR`: the export summarised from its parquet footers (summary.py)."""
    from .summary import inspection

    return inspection(_root(parsed), options, select)


def open_sink(parsed: ParsedUri, options: dict[str, Any], read_only: bool = False):
    from .sink import ParquetSink

    return ParquetSink(_root(parsed), options, read_only=read_only)
