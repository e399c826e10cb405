"""`parquet:DIR` — a canonical export in neptune-exporter's layout (see layout.py); also
`parquet:s3://BUCKET/PREFIX` and other fsspec URLs (objects.py, imported only for a URL)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...core.errors import UsageError
from ...core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("parquet",),
    summary="parquet:DIR (or a bare directory), parquet:s3://BUCKET/PREFIX: a canonical / neptune-exporter export",
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


_URL_RE = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://")


def _object_url(parsed: ParsedUri) -> str | None:
    """The URL of an export on object storage (`parquet:s3://BUCKET/PREFIX`, gs://, az://...),
    None for a local folder.  Credentials come from the store's own settings, never the URI:
    userinfo or a query is a UsageError that does not show them."""
    text = parsed.rest.strip()
    match = _URL_RE.match(text)
    if not match or match["scheme"].lower() == "file":
        return None
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise UsageError(f"{parsed.display!r}: credentials do not go in the URI; the store's own settings give "
                         f"them (S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE; docs/object-storage.md)")
    if parts.query or parts.fragment:
        # (the query is not shown: it may hold a signature or token redact() does not know)
        shown = f"parquet:{parts.scheme}://{parts.netloc}{parts.path}"
        raise UsageError(f"{shown!r} (its query left out here): an object store URL takes no query or "
                         f"fragment; settings and credentials come from the store's own environment "
                         f"variables and files (docs/object-storage.md)")
    return text


def _store(parsed: ParsedUri):
    """The object store a `parquet:URL` names, or None for a local folder."""
    url = _object_url(parsed)
    if url is None:
        return None
    from .objects import open_store

    return open_store(url, parsed.display)


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    store = _store(parsed)
    if store is not None:
        from .objects import ObjectParquetSource

        return ObjectParquetSource(store, options)
    from .source import ParquetSource

    return ParquetSource(_root(parsed), options)


def inspect(parsed: ParsedUri, options: dict[str, Any], select):
    """`trackport inspect DIR`: the export summarised from its parquet footers (summary.py)."""
    from .summary import inspection

    store = _store(parsed)
    if store is not None:
        from .objects import ObjectParquetSource

        return inspection(None, options, select, ObjectParquetSource(store, {"check": bool(options.get("check"))}))
    return inspection(_root(parsed), options, select)


def open_sink(parsed: ParsedUri, options: dict[str, Any], read_only: bool = False):
    store = _store(parsed)
    if store is not None:
        from .objects import ObjectParquetSink

        return ObjectParquetSink(store, options, read_only=read_only)
    from .sink import ParquetSink

    return ParquetSink(_root(parsed), options, read_only=read_only)
