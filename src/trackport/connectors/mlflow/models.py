"""MLflow 3 logged models as canonical runs (docs/mlflow.md, "Logged models (MLflow 3)").

Pure: names and shapes only, no MLflow import.  Each logged model (LoggedModel, `m-...`) is
one canonical run in the reserved project `mlflow-models/<experiment name>`, run id = its
model id; the attributes below hold what MLflow keeps of it, and its files are `file`
attributes under `files/`.  The MLflow sink turns such a run back into a logged model; every
other sink keeps it as a run (docs/format.md).
"""

from __future__ import annotations

import json
import math
from typing import Any

PROJECT_PREFIX = "mlflow-models/"

_P = "mlflow/logged_model/"
NAME = _P + "name"                          # string: the model's name
MODEL_TYPE = _P + "model_type"              # string: the user's model type, when set
STATUS = _P + "status"                      # string: READY, FAILED, PENDING, UNSPECIFIED
STATUS_MESSAGE = _P + "status_message"      # string, when set
TAG_PREFIX = _P + "tags/"                   # string per model tag
PARAM_PREFIX = _P + "params/"               # string per model param
SOURCE_RUN_PROJECT = _P + "source_run/project"   # the run that logged it, as the source names it
SOURCE_RUN_ID = _P + "source_run/run_id"
METRICS = _P + "metrics"                    # string: JSON list of the model's metric points
FILES = "files/"                            # the model's files: files/<relative path>

# On a logged model trackport wrote: what MLflow sets itself (times, a status it cannot be
# given), as the source had it, in one JSON tag read back instead of MLflow's own values.
TAG_MODEL = "trackport.logged_model"

STATUSES = ("READY", "FAILED", "PENDING", "UNSPECIFIED")
FINAL_STATUSES = ("READY", "FAILED")        # what finalize_logged_model can set


def is_models_project(project_id: str) -> bool:
    return project_id.startswith(PROJECT_PREFIX) and len(project_id) > len(PROJECT_PREFIX)


def project_of(experiment_name: str) -> str:
    return PROJECT_PREFIX + experiment_name


def experiment_of(project_id: str) -> str:
    return project_id[len(PROJECT_PREFIX):]


def file_name(model_id: str, rel: str) -> str:
    """A model's file as `file_value.path`: unique within its project."""
    return f"{model_id}/{rel}"


def file_rel(model_id: str, path: str) -> str:
    prefix = f"{model_id}/"
    return path[len(prefix):] if path.startswith(prefix) else path


def model_uri_id(source: str | None) -> str | None:
    """The model id of a `models:/<model id>` URI (not `models:/<name>/<version>`), else None."""
    if not source or not source.startswith("models:/"):
        return None
    rest = source[len("models:/"):].strip("/")
    return rest if rest and "/" not in rest and "@" not in rest else None


def _number(value: float) -> Any:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _float(value: Any) -> float:
    if isinstance(value, str):
        return float({"Infinity": "inf", "-Infinity": "-inf"}.get(value, value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metric value {value!r} is not a number")
    return float(value)


def metrics_json(points: list[dict]) -> str | None:
    """The model's metric points (dicts of key, value, step, timestamp, run_project, run_id,
    dataset_name, dataset_digest) as one JSON text in a stable order; None when there are none."""
    if not points:
        return None
    out = []
    for p in points:
        out.append({"key": p["key"], "value": _number(float(p["value"])), "step": int(p["step"]),
                    "timestamp": int(p["timestamp"]), "run_project": p.get("run_project"),
                    "run_id": p.get("run_id"), "dataset_name": p.get("dataset_name"),
                    "dataset_digest": p.get("dataset_digest")})
    out.sort(key=lambda p: (p["key"], p["step"], p["timestamp"], str(p["run_project"]), str(p["run_id"]),
                            str(p["value"])))
    return json.dumps(out, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def metrics_from_json(text: Any) -> list[dict]:
    """The points `metrics_json` wrote; ValueError naming what is wrong."""
    if text is None:
        return []
    points = json.loads(text) if isinstance(text, str) else None
    if not isinstance(points, list):
        raise ValueError(f"{METRICS} is not a JSON list")
    out = []
    for p in points:
        if not isinstance(p, dict) or not isinstance(p.get("key"), str) \
                or not isinstance(p.get("step"), int) or not isinstance(p.get("timestamp"), int):
            raise ValueError(f"{METRICS}: a point is not {{key, value, step, timestamp, ...}}: {p!r}")
        if (p.get("dataset_name") is None) != (p.get("dataset_digest") is None):
            raise ValueError(f"{METRICS}: a point has a dataset name without a digest or the other "
                             f"way round: {p!r}")
        out.append({**p, "value": _float(p.get("value"))})
    return out


def model_tag(created: int | None, updated: int | None, status: str | None, model_id: str) -> str:
    return json.dumps({"creation_timestamp": created, "last_updated_timestamp": updated,
                       "status": status, "model_id": model_id}, sort_keys=True)


def read_model_tag(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        got = json.loads(text)
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


def tag_filter(key: str, value: str) -> str:
    """search_logged_models filter on one tag (quotes escaped as MLflow's parser wants)."""
    return f"tags.`{key}` = '" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
