"""The only module importing `goodseed`; every import is inside a function.

The sink writes a run through `goodseed.storage.LocalStorage`, the class `goodseed.Run` itself
writes with (goodseed/run.py `_init_new_run`): it creates the run file with GoodSeed's own schema
and WAL settings and takes points with an explicit step and timestamp, which `Run.log_metrics`
does not (it stamps `now`, in whole seconds).
"""

from __future__ import annotations

from pathlib import Path


def goodseed_version() -> str:
    import goodseed

    return getattr(goodseed, "__version__", "?")


def open_storage(db_path: Path):
    """A GoodSeed run file (created with GoodSeed's schema when missing)."""
    from goodseed.storage import LocalStorage

    return LocalStorage(db_path)


def projects_dir(home: Path) -> Path:
    """`<home>/projects`, as goodseed.config.get_projects_dir lays it out."""
    from goodseed.config import get_projects_dir

    return get_projects_dir(home)
