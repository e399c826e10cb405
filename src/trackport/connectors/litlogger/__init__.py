"""LitLogger connector (Lightning AI experiments): `litlogger://TEAMSPACE` or `litlogger://OWNER/TEAMSPACE`.

A destination through the real litlogger package; as a source it reads back the experiments
trackport wrote (for `verify` and `export`).  Each source run becomes one experiment (a metrics
stream) of the teamspace, named after the run id plus a digest of its origin.  Credentials
come from LIGHTNING_USER_ID + LIGHTNING_API_KEY (or `lightning login`), the server from
LIGHTNING_CLOUD_URL (default https://lightning.ai).  No SDK is imported here; client.py is
the only module importing litlogger / lightning_sdk.  See docs/litlogger.md.
"""

from __future__ import annotations

from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("litlogger",),
    summary="litlogger://[OWNER/]TEAMSPACE (Lightning AI; LIGHTNING_USER_ID + LIGHTNING_API_KEY)",
    extra="litlogger",
    requires=("litlogger", "lightning_sdk"),
    # client.py uses litlogger.api.* (internal modules), litlogger.colors._create_colors and
    # lightning_sdk's generated REST models; pyproject's `litlogger` extra pins the same ranges.
    sdk_versions={"litlogger": ">=2026.8.28,<2026.9", "lightning-sdk": ">=2026.10.13,<2026.11"},
    capabilities={"litlogger": "trackport.connectors.litlogger.mapping:CAPABILITIES"},
    options=(
        ConnectorOption("--litlogger-batch-size", "LitLogger: metric points per append request "
                        "(default 1000, the SDK's own batch size).", "int"),
    ),
)


def teamspace_of(parsed: ParsedUri) -> str:
    """The teamspace as lightning_sdk's Teamspace takes it: 'TEAMSPACE' or 'OWNER/TEAMSPACE'."""
    rest = parsed.rest
    parts = [p for p in rest[2:].strip("/").split("/") if p] if rest.startswith("//") else []
    if not parts or len(parts) > 2 or any(c in rest for c in "@?#"):
        raise UsageError(f"bad LitLogger URI {parsed.display!r}: use litlogger://TEAMSPACE or "
                         "litlogger://OWNER/TEAMSPACE (credentials go in LIGHTNING_USER_ID and "
                         "LIGHTNING_API_KEY, the server in LIGHTNING_CLOUD_URL)")
    return "/".join(parts)


def _client(teamspace: str):
    from .client import LitLoggerClient

    return LitLoggerClient(teamspace)


def open_sink(parsed: ParsedUri, options: dict[str, Any], read_only: bool = False):
    from .sink import LitLoggerSink

    teamspace = teamspace_of(parsed)
    return LitLoggerSink(teamspace, options, _client(teamspace), read_only=read_only)


def open_source(parsed: ParsedUri, options: dict[str, Any]):
    from .source import LitLoggerSource

    teamspace = teamspace_of(parsed)
    return LitLoggerSource(_client(teamspace), f"litlogger://{teamspace}")


__all__ = ["open_sink", "open_source", "teamspace_of"]
