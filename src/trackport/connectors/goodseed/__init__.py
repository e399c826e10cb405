"""GoodSeed connector: `goodseed:DIR`, both directions.

GoodSeed (https://pypi.org/project/goodseed/) keeps one SQLite file per run at
`<home>/projects/<project>/runs/<run_id>.sqlite`.  DIR is the GoodSeed home (the folder holding
`projects/`, `~/.goodseed` by default) or, as a source, the `projects/` folder itself (what
`goodseed serve DIR` takes).  See docs/goodseed.md.  goodseed is imported only by client.py,
inside functions, so `import trackport` stays SDK-free.
"""

from __future__ import annotations

from pathlib import Path

from trackport.core.errors import UsageError
from trackport.core.registry import ConnectorSpec, ParsedUri

SPEC = ConnectorSpec(
    schemes=("goodseed",),
    summary="goodseed:DIR (GoodSeed home: projects/<project>/runs/<run>.sqlite)",
    extra="goodseed",
    requires=("goodseed",),
    # client.py writes through goodseed.storage.LocalStorage (not in goodseed's __all__) and reads
    # the run file's tables directly: tested with this range only
    sdk_versions={"goodseed": ">=0.4.0,<0.5"},
    capabilities={"goodseed": "trackport.connectors.goodseed.mapping:CAPABILITIES"},
)


def _dir(parsed: ParsedUri) -> Path:
    rest = parsed.rest.strip()
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        raise UsageError("goodseed: needs a directory: goodseed:~/.goodseed or goodseed:./runs")
    return Path(rest).expanduser().absolute()


def open_source(parsed: ParsedUri, options):
    from .source import GoodSeedSource, projects_dir

    root = _dir(parsed)
    if not root.is_dir():
        raise UsageError(f"goodseed: no folder at {root}; fix: point at a GoodSeed home "
                         f"(goodseed:~/.goodseed) or its projects/ folder")
    return GoodSeedSource(projects_dir(root), f"goodseed:{root}", options)


def open_sink(parsed: ParsedUri, options, read_only: bool = False):
    from trackport.core.connector import check_output_folder

    from .sink import GoodSeedSink

    root = _dir(parsed)
    check_output_folder(root, f"goodseed:{root}", read_only, "goodseed:./goodseed-home")
    return GoodSeedSink(root, f"goodseed:{root}", options, read_only=read_only)
