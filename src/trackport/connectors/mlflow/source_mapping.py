"""MLflow -> canonical for what MLflow keeps beside params, metrics and tags: pure
functions, no MLflow import (the entities are read by attribute).

- experiment tags -> string `mlflow/experiment/tags/<key>` on every run of the experiment;
- dataset inputs (`run.inputs.dataset_inputs`, MLflow >= 2.4) -> one string
  `mlflow/inputs/datasets`: a JSON list, per input, of the dataset's name, digest,
  source type, source, schema and profile, and the input's tags (e.g. `mlflow.data.context`);
- a file store run folder missing `metrics/`, `params/`, `tags/` or `artifacts/` is read
  as having them empty (git keeps no empty folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

EXPERIMENT_TAG_PREFIX = "mlflow/experiment/tags/"
DATASETS_PATH = "mlflow/inputs/datasets"
RUN_FOLDERS = ("metrics", "params", "tags", "artifacts")


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def dataset_inputs_json(inputs: Iterable[Any]) -> str | None:
    """The run's dataset inputs as one JSON text (None when it has none), in MLflow's order."""
    out = []
    for item in inputs:
        ds = item.dataset
        out.append({
            "name": ds.name, "digest": ds.digest, "source_type": ds.source_type, "source": ds.source,
            "schema": getattr(ds, "schema", None), "profile": getattr(ds, "profile", None),
            "tags": {t.key: t.value for t in (item.tags or [])},
        })
    return _dump(out) if out else None


_DATASET_TEXT = ("name", "digest", "source_type", "source")


def dataset_inputs_from_json(text: Any) -> list[dict] | None:
    """The inputs `dataset_inputs_json` wrote, back as dicts; None when `text` is not such a
    list (name, digest, source type and source as text; schema and profile text or null;
    tags a text -> text mapping)."""
    try:
        inputs = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    if not isinstance(inputs, list):
        return None
    for d in inputs:
        if not isinstance(d, dict) or not all(isinstance(d.get(k), str) for k in _DATASET_TEXT):
            return None
        if any(d.get(k) is not None and not isinstance(d[k], str) for k in ("schema", "profile")):
            return None
        tags = d.get("tags") or {}
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            return None
    return inputs


def missing_run_folders(root: Path, experiment_id: str, run_id: str) -> list[str]:
    """The standard folders a file store run lacks (its folder in the experiment or in .trash)."""
    for base in (root / str(experiment_id), root / ".trash" / str(experiment_id)):
        run_dir = base / run_id
        if (run_dir / "meta.yaml").is_file():
            return [name for name in RUN_FOLDERS if not (run_dir / name).is_dir()]
    return []
