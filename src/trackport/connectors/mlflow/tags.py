"""MLflow tags of a run: trackport's own, MLflow's system tags, and the tags a run's single
values become; how trackport's runs are found by their tags.

Pure functions, no MLflow import.  Tag values are at most 8,000 characters (MLflow cuts
longer ones silently).
"""

from __future__ import annotations

import hashlib
from typing import Any

from .keys import FOREIGN_TAG_PREFIX, sanitize_key, with_suffix
from .values import param_text

MAX_TAG_LENGTH = 8000
MAX_RUN_NAME_LENGTH = 250

# Tags trackport writes on every run it creates.
TAG_ORIGIN_URI = "trackport.origin.uri"
TAG_ORIGIN_PROJECT = "trackport.origin.project"
TAG_ORIGIN_RUN = "trackport.origin.run_id"
TAG_MULTIPLIER = "trackport.step_multiplier"
TAG_COMPLETE = "trackport.complete"
TAG_SOURCE_VERSION = "trackport.source_version"   # the source's run_version when completed
TAG_FORK_PARENT = "trackport.fork.parent_run_id"
TAG_FORK_STEP = "trackport.fork.step"
# The manifest (manifest.py) itself, when its JSON fits one tag value; else the artifact
# trackport/attributes.json holds it and this tag is absent.
TAG_MANIFEST = "trackport.attributes"
TRACKPORT_TAG_PREFIX = "trackport."
# One tag per origin whose *key* names the origin (value "1"): MLflow's `tags` table is keyed
# by (key, run_uuid), so the look for one origin's runs by this key reads only that origin's
# rows, where a look by TAG_ORIGIN_RUN's value reads that key's row of every run in the store
# (mlflow/store/tracking/dbmodels/models.py SqlTag; no index on `value`).
TAG_ORIGIN_KEY_PREFIX = "trackport.origin.key."
ORIGIN_KEY_VALUE = "1"

# MLflow system tags mapped to run fields.
TAG_RUN_NAME = "mlflow.runName"
TAG_NOTE = "mlflow.note.content"
TAG_PARENT = "mlflow.parentRunId"
TAG_USER = "mlflow.user"   # MLflow's create_run takes the run's user_id from this tag
RESERVED_TAGS = frozenset({TAG_RUN_NAME, TAG_NOTE, TAG_PARENT})


def origin_key_tag(origin_uri: str, project_id: str, run_id: str) -> str:
    """The key of a run's TAG_ORIGIN_KEY_PREFIX tag (an MLflow tag key takes at most 250
    characters, so the origin goes in as a digest)."""
    digest = hashlib.sha256("\n".join((origin_uri, project_id, run_id)).encode("utf-8")).hexdigest()
    return f"{TAG_ORIGIN_KEY_PREFIX}{digest[:40]}"


def clip_tag(value: str) -> tuple[str, bool]:
    if len(value) <= MAX_TAG_LENGTH:
        return value, False
    return value[:MAX_TAG_LENGTH], True


def tag_plan(values: dict[str, tuple[str, Any]], param_text_of=param_text
             ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """MLflow tags for a run's single values; (tags, transformations: kind -> examples).

    - each `sys/tags` element -> tag `<sanitised element>` = "";
    - `sys/description` -> `mlflow.note.content`;
    - string `mlflow/tags/<k>` -> tag `<k>` (MLflow key/value tags, round trip);
    - `sys/forking/parent` / `sys/forking/step` -> trackport.fork.* tags.
    Keys that would land on a reserved tag (mlflow.runName, mlflow.note.content,
    mlflow.parentRunId, trackport.*) get a `_` prefix; keys already used get `--<hash>`.
    """
    tags: dict[str, str] = {}
    hits: dict[str, list[str]] = {}

    def hit(kind: str, example: str) -> None:
        hits.setdefault(kind, []).append(example)

    def place(source: str, value: str) -> None:
        key = sanitize_key(source)
        if key != source:
            hit("key_sanitized", source)
        wanted = key
        if key in RESERVED_TAGS or key.startswith(TRACKPORT_TAG_PREFIX):
            key = sanitize_key("_" + key)
        n = 0
        candidate = key
        while candidate in tags:
            candidate = with_suffix(key, source, str(n) if n else "")
            n += 1
        if candidate != wanted:
            hit("key_collision_renamed", source)
        value, cut = clip_tag(value)
        if cut:
            hit("tag_truncated", source)
        tags[candidate] = value

    description = values.get("sys/description")
    if description is not None and description[1] is not None:
        note, cut = clip_tag(str(description[1]))
        if cut:
            hit("tag_truncated", "sys/description")
        tags[TAG_NOTE] = note
    parent = values.get("sys/forking/parent")
    if parent is not None and parent[1] not in (None, ""):
        tags[TAG_FORK_PARENT] = clip_tag(str(parent[1]))[0]
        fork_step = values.get("sys/forking/step")
        if fork_step is not None and fork_step[1] is not None:
            tags[TAG_FORK_STEP] = param_text_of(fork_step[0], fork_step[1])
    kv = sorted((p[len(FOREIGN_TAG_PREFIX):], v) for p, (t, v) in values.items()
                if p.startswith(FOREIGN_TAG_PREFIX) and t == "string" and v is not None)
    for name, value in kv:
        if name:
            place(name, str(value))
    elements = values.get("sys/tags")
    if elements is not None and elements[1]:
        for element in sorted(set(str(e) for e in elements[1] if e is not None and str(e) != "")):
            place(element, "")
    return tags, hits


def experiment_name(template: str | None, project_id: str) -> str:
    template = template or "{project}"
    try:
        return template.format(project=project_id)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad experiment name template {template!r}: {exc}") from None


def search_value(text: str) -> str | None:
    """`text` quoted for an MLflow search filter, or None when it cannot be quoted safely."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return None

