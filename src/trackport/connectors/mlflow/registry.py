"""MLflow model registry entries as canonical runs (docs/mlflow.md, "Model registry").

Pure: names and shapes only, no MLflow import.  Each registered model version is one
canonical run in the reserved project `mlflow-registry/<model name>`, run id = its version
number; the attributes below hold what MLflow keeps of it, and its files are `file`
attributes under `files/`.  The MLflow sink turns such a run back into a registered model
version; every other sink keeps it as a run (docs/format.md).
"""

from __future__ import annotations

import json
from typing import Any

PROJECT_PREFIX = "mlflow-registry/"

_P = "mlflow/registry/"
MODEL = _P + "model"                       # string: the registered model's name
VERSION = _P + "version"                   # int: the version number in the source
TAG_PREFIX = _P + "tags/"                  # string per model version tag
ALIASES = _P + "aliases"                   # string_set: the model's aliases naming this version
STAGE = _P + "stage"                       # string: legacy stage (Staging, Production, Archived)
SOURCE = _P + "source"                     # string: the artifact URI the version was made from
RUN_LINK = _P + "run_link"                 # string: the version's run link, when set
SOURCE_RUN_PROJECT = _P + "source_run/project"   # the source run, as the source names it
SOURCE_RUN_ID = _P + "source_run/run_id"
SOURCE_MODEL_PROJECT = _P + "source_model/project"   # the MLflow 3 logged model of a version made
SOURCE_MODEL_ID = _P + "source_model/run_id"         # from `models:/<model id>`, as the source lists it
MODEL_DESCRIPTION = _P + "model/description"     # the registered model's own description
MODEL_TAG_PREFIX = _P + "model/tags/"            # and tags (on every version's run)
FILES = "files/"                                 # the version's files: files/<relative path>

# On a model version trackport wrote: what MLflow sets itself (source URI, times), as the
# source had it, in one JSON tag read back instead of MLflow's own values.
TAG_REGISTRY = "trackport.registry"


def is_registry_project(project_id: str) -> bool:
    return project_id.startswith(PROJECT_PREFIX) and len(project_id) > len(PROJECT_PREFIX)


def project_of(model_name: str) -> str:
    return PROJECT_PREFIX + model_name


def model_of(project_id: str) -> str:
    return project_id[len(PROJECT_PREFIX):]


def file_name(version: str, rel: str) -> str:
    """A version's file as `file_value.path`: unique within the model's project."""
    return f"v{version}/{rel}"


def file_rel(version: str, path: str) -> str:
    prefix = f"v{version}/"
    return path[len(prefix):] if path.startswith(prefix) else path


def registry_tag(source: str | None, created: int | None, updated: int | None, version: str,
                 user_id: str | None = None) -> str:
    return json.dumps({"source": source, "creation_timestamp": created, "last_updated_timestamp": updated,
                       "version": version, "user_id": user_id}, sort_keys=True)


def read_registry_tag(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        got = json.loads(text)
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


def model_filter(name: str) -> str:
    """search_model_versions filter for one model (quotes escaped as MLflow's parser wants)."""
    return "name = '" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
