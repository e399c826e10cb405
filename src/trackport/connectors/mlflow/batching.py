"""MLflow log_batch requests: their limits, the size of what goes in them, and the batch a
run writer holds until the next entities would not fit.

Pure, no MLflow import (the held entities are whatever the caller gives).
"""

from __future__ import annotations

import json
from typing import Iterable

MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ENTITIES_PER_BATCH = 1000
# The REST API refuses requests over 1 MB; stay well under it (JSON escaping included).
MAX_BATCH_BYTES = 800_000



def json_size(text: str) -> int:
    """Upper bound of a string's size inside a JSON request body."""
    if text.isascii():
        return len(text) + 2 + text.count('"') + text.count("\\") + 5 * sum(1 for c in text if c < " ")
    return len(json.dumps(text))


def entry_size(key: str, value: str) -> int:
    """Upper bound of one param or tag inside a log_batch request body."""
    return json_size(key) + json_size(value) + 24


def batches(items: list, sizes: list[int], max_count: int, max_bytes: int = MAX_BATCH_BYTES):
    """Consecutive slices of `items` with at most `max_count` items and about `max_bytes` bytes."""
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_count or total + size > max_bytes):
            yield items[start:i]
            start, total = i, 0
        total += size
    if start < len(items):
        yield items[start:]



class HeldBatch:
    """The params and metrics a run writer holds for its next log_batch request, so that small
    runs need one request in all.

    Contract: `fits(metrics, params, tags, size)` says whether what is held plus that many more
    entities of `size` bytes (as `entry_size` / `json_size` count them) is still one valid
    request (MLflow's count limits and MAX_BATCH_BYTES); `add` holds entities without checking
    (the caller sends what is held first when they would not fit); `take` hands over everything
    held as (metrics, params) and leaves the batch empty.  The entities are the caller's own
    objects, in the order added.  One writer thread uses a batch (no lock).
    """

    def __init__(self) -> None:
        self.metrics: list = []
        self.params: list = []
        self.size = 0

    def __bool__(self) -> bool:
        return bool(self.metrics or self.params)

    def fits(self, metrics: int = 0, params: int = 0, tags: int = 0, size: int = 0) -> bool:
        metrics += len(self.metrics)
        params += len(self.params)
        return (metrics <= MAX_METRICS_PER_BATCH and params <= MAX_PARAMS_TAGS_PER_BATCH
                and tags <= MAX_PARAMS_TAGS_PER_BATCH
                and metrics + params + tags <= MAX_ENTITIES_PER_BATCH
                and self.size + size <= MAX_BATCH_BYTES)

    def add(self, metrics: Iterable = (), params: Iterable = (), size: int = 0) -> None:
        self.metrics.extend(metrics)
        self.params.extend(params)
        self.size += size

    def take(self) -> tuple[list, list]:
        metrics, params = self.metrics, self.params
        self.metrics, self.params, self.size = [], [], 0
        return metrics, params
