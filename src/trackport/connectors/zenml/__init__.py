"""ZenML connector: `zenml:MODEL`, a ZenML store reached through the real `zenml` package.

Each source run becomes one model version of the ZenML model MODEL (named from the run's
origin, so a rerun finds it), with the run's params, tags and a summary of every series as
the version's run metadata, and the run whole (every point of every series with its step and
timestamp, every file) as one artifact version linked to it.  Both directions: the source
reads back the model versions trackport wrote.  See docs/zenml.md.

The store is the one ZenML's own configuration names: --zenml-config-dir (ZENML_CONFIG_PATH)
points ZenML at another configuration folder, whose default local SQLite store is used
(`zenml login` is never needed, and the user's own configuration is left alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("zenml",),
    summary="zenml:MODEL or zenml:MODEL@DIR (a ZenML store; DIR / --zenml-config-dir: its config folder)",
    extra="zenml",
    requires=("zenml",),
    # client.py switches ZenML's configuration folder by resetting its singletons
    # (GlobalConfiguration._reset_instance, Client._reset_instance): private API.
    # pyproject's `zenml` extra pins the same range.
    sdk_versions={"zenml": ">=0.98.0,<0.99"},
    capabilities={"zenml": "trackport.connectors.zenml.mapping:CAPABILITIES"},
    options=(
        ConnectorOption("--zenml-config-dir", "ZenML: the configuration folder whose local store is used "
                        "(default: ZENML_CONFIG_PATH, else ZenML's own).", envvar=("ZENML_CONFIG_PATH",)),
    ),
)


def _split(parsed: ParsedUri) -> tuple[str | None, str | None]:
    """`zenml:MODEL` or `zenml:MODEL@DIR` (DIR starting with `/`, `.` or `~`)."""
    rest = parsed.rest.strip()
    if rest.startswith("//"):
        rest = rest[2:]
    model, at, folder = rest.rpartition("@")
    if at and folder.startswith(("/", ".", "~")):
        return model or None, folder
    return rest or None, None


def _config_dir(parsed: ParsedUri, options: Any) -> Path | None:
    given = _split(parsed)[1] or options.get("zenml_config_dir")
    return Path(given).expanduser().absolute() if given else None


def _shown(model: str | None, folder: Path | None) -> str:
    return f"zenml:{model or ''}" + (f"@{folder}" if folder else "")


def open_source(parsed: ParsedUri, options: Any):
    from .source import ZenmlSource

    model, folder = _split(parsed)[0], _config_dir(parsed, options)
    if folder is not None and not folder.is_dir():
        raise UsageError(f"no ZenML configuration folder at {folder}; fix: pass the folder a "
                         f"trackport copy wrote (--zenml-config-dir or zenml:MODEL@DIR)")
    return ZenmlSource(folder, model, _shown(model, None))


def open_sink(parsed: ParsedUri, options: Any, read_only: bool = False):
    from trackport.core.connector import check_output_folder

    from . import mapping as mp
    from .sink import ZenmlSink

    model, folder = _split(parsed)[0], _config_dir(parsed, options)
    if model is None:
        raise UsageError("a ZenML destination needs a model name: zenml:MODEL")
    problem = mp.check_model_name(model)
    if problem:
        raise UsageError(f"zenml:{model}: {problem}")
    if folder is not None:
        check_output_folder(folder, _shown(model, folder), read_only, "--zenml-config-dir ./zenml")
    return ZenmlSink(folder, model, _shown(model, None), read_only=read_only)
