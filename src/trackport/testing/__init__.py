"""Test helpers shipped with trackport: the canonical conformance corpus and a
writer that lays runs out exactly as neptune-exporter does.

Nothing here imports a tracker SDK; only pyarrow and numpy.
"""

from __future__ import annotations

from .compare import same_value, table_differences
from .corpus import CASES, CORPUS_PROJECT, CorpusRun, build_corpus, corpus_case
from .exporter_layout import write_exporter_export

__all__ = [
    "CASES",
    "CORPUS_PROJECT",
    "CorpusRun",
    "build_corpus",
    "corpus_case",
    "same_value",
    "table_differences",
    "write_exporter_export",
]
