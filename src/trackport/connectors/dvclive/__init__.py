"""DVCLive connector: `dvclive:DIR` as a source (the `dvclive/` folders DVCLive writes:
params.yaml, metrics.json, plots/metrics/*.tsv, plots/images, artifacts) and as a
destination (one DVCLive folder per run, written through the `dvclive` package).  See
docs/dvclive.md.  dvclive (and through it dvc) is imported only by client.py, inside
functions, so `import trackport` stays SDK-free.
"""

from __future__ import annotations

from pathlib import Path

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorOption, ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("dvclive",),
    summary="dvclive:DIR (DVCLive folders: params.yaml, metrics.json, plots/)",
    extra="dvclive",
    requires=("dvclive",),
    # client.py subclasses dvclive.Live, overriding private methods (_init_dvc, _init_test,
    # _init_studio) and filling Live._images: tested with this range only
    sdk_versions={"dvclive": ">=3.49.1,<3.50"},
    capabilities={"dvclive": "trackport.connectors.dvclive.mapping:CAPABILITIES"},
    options=(
        ConnectorOption("--dvclive-project",
                        "DVCLive source: project id of its runs (default: DIR's name; when DIR is "
                        "itself a DVCLive folder, the name of the folder holding it)."),
    ),
)


def _dir(parsed: ParsedUri) -> Path:
    return parsed.directory("dvclive:./dvclive or dvclive:./experiments")


def open_source(parsed: ParsedUri, options):
    from .source import DvcLiveSource

    root = _dir(parsed)
    if not root.is_dir():
        raise UsageError(f"dvclive: no folder at {root}; fix: point at a DVCLive folder "
                         f"(dvclive:./dvclive) or a folder holding several")
    return DvcLiveSource(root, f"dvclive:{root}", options)


def open_sink(parsed: ParsedUri, options, read_only: bool = False):
    from trackport.core.connector import check_output_folder

    from .sink import DvcLiveSink

    root = _dir(parsed)
    check_output_folder(root, f"dvclive:{root}", read_only, "dvclive:./dvclive-runs")
    return DvcLiveSink(root, f"dvclive:{root}", options, read_only=read_only)
