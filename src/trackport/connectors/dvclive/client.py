"""The only module that imports the `dvclive` package (and, through it, dvc).

Quirks this module works around (dvclive 3.x, read in its source):

- `Live()` looks for a DVC repository from the *current directory* and, inside a Git
  repository without one, runs `dvc init` there (dvclive/dvc.py `get_dvc_repo`); it may
  also post to DVC Studio when a Studio token is configured (dvclive/studio.py).  trackport
  writes files only, into the destination: `open_live` opens Live with its repository
  discovery and Studio posting turned off (so `save_dvc_exp` and `log_artifact`'s DVC
  caching are off too; https://dvc.org/doc/dvclive/live/log_artifact needs a repo).
- `Live.log_metric(timestamp=True)` stamps the time of the call, `int(time.time() * 1000)`
  (dvclive/plots/metric.py `Metric.dump`); it takes no timestamp of a point.  So the rows of
  `plots/metrics/<name>.tsv` are written by `TsvWriter` exactly as `Metric.dump` writes
  them (csv, tab-delimited, os.linesep, header timestamp/step/<basename>) with each point's
  own timestamp and step.
- `Live.log_image` re-encodes the image through PIL; image bytes are copied as they are
  into the path log_image would use and registered with Live so dvc.yaml lists them.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Any

_LIVE_CLASS = None


def dvclive_version() -> str:
    try:
        from importlib.metadata import version

        return version("dvclive")
    except Exception:          # noqa: BLE001
        return "unknown"


def _live_class():
    global _LIVE_CLASS
    if _LIVE_CLASS is None:
        import logging

        from dvclive import Live

        class FilesOnlyLive(Live):
            """Live writing its folder only: no DVC repo looked for or created, no Studio posts."""

            def _init_dvc(self):                 # noqa: D401
                self._dvc_file = self._init_dvc_file()

            def _init_test(self):                # DVCLIVE_TEST would move the folder to a temp dir
                self._dvc_file = self._init_dvc_file()

            def _init_studio(self):
                self._studio_events_to_skip.update({"start", "data", "done"})

        logging.getLogger("dvclive").setLevel(logging.ERROR)
        _LIVE_CLASS = FilesOnlyLive
    return _LIVE_CLASS


def open_live(run_dir: Path):
    """A `Live` writing `run_dir` (params.yaml, metrics.json, dvc.yaml inside it)."""
    return _live_class()(dir=str(run_dir), resume=False, report=None, save_dvc_exp=False,
                         dvcyaml=str(run_dir / "dvc.yaml"), monitor_system=False)


def finish_live(live, params: dict, summary: dict, images: list[str], step: Any) -> None:
    """Params, the summary of latest values and dvc.yaml, by DVCLive's own writers."""
    from dvclive.plots import Image

    if params:
        live.log_params(params)                  # params.yaml (ruamel, DVCLive's dumper)
    if step is not None:
        live.step = step                         # metrics.json "step": the last step logged
    live.summary = summary                       # Live.summary: documented as editable
    for name in images:                          # what log_image would have registered
        live._images[name] = Image(name, live.plots_dir)     # noqa: SLF001
    live.make_summary()
    live.make_dvcyaml()


class TsvWriter:
    """Appends rows to `plots/metrics/<name>.tsv` exactly as dvclive's `Metric.dump` does."""

    def __init__(self, path: Path, column: str):
        self.path = path
        self.column = column

    def append(self, rows) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        count = 0
        with open(self.path, "a", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", lineterminator=os.linesep)
            if not existed:
                writer.writerow(["timestamp", "step", self.column])
            for row in rows:
                writer.writerow(row)
                count += 1
        return count


def read_tsv(path: Path):
    """(header, rows, torn) of a DVCLive TSV; a last line without its line end (a training still
    writing) is left out and reported as torn."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    torn = bool(text) and not text.endswith(("\n", "\r"))
    if torn:
        cut = max(text.rfind("\n"), text.rfind("\r"))
        text = text[: cut + 1] if cut >= 0 else ""
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    if not rows:
        return [], [], torn
    return rows[0], rows[1:], torn


def load_yaml(path: Path):
    """params.yaml as DVC reads it (ruamel.yaml, safe loader: YAML 1.2 types)."""
    from ruamel.yaml import YAML

    with open(path, encoding="utf-8") as fh:
        return YAML(typ="safe").load(fh)
