"""W&B artifacts as canonical runs (docs/wandb.md, "Artifacts").

Pure: names and shapes only, no wandb import.  Each artifact version a run logged is one
canonical run of the reserved project `wandb-artifacts/<entity>/<project>/<artifact name>`,
run id = the artifact's digest (W&B keeps one version per digest of a collection).  The
attributes below hold what the run's `artifact` record (offline) or the W&B API says of it;
its files are `file` attributes under `files/`, their bytes read from where the SDK staged
them (offline) or downloaded (API).  Every sink keeps such an entry as a run (docs/format.md).

Lineage: the producer is on the entry (`produced_by/*`); a consumer run carries
`wandb/used_artifacts` (string_set of the entries' `<project>/<run id>`, see `version_ref`);
the registry collections a version is linked into are on the entry (`links`, JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .mapping import Row, json_text, project_id

PROJECT_PREFIX = "wandb-artifacts/"

_P = "wandb/artifact/"
NAME = _P + "name"                          # string: the artifact (collection) name
TYPE = _P + "type"                          # string: model, dataset, ...
DIGEST = _P + "digest"                      # string: W&B's digest of the manifest (and the run id)
DIGEST_ALGORITHM = _P + "digest_algorithm"  # string, when the record names one
DESCRIPTION = _P + "description"            # string
METADATA = _P + "metadata"                  # string: the metadata as JSON text, as logged
ALIASES = _P + "aliases"                    # string_set: aliases as logged (the SDK adds "latest")
TAGS = _P + "tags"                          # string_set
TTL_SECONDS = _P + "ttl_seconds"            # int, when set
STORAGE_POLICY = _P + "storage_policy"      # string: the manifest's storage policy
MANIFEST = _P + "manifest"                  # string: JSON of every entry (path, digest, size, ref, extra)
PRODUCER_PROJECT = _P + "produced_by/project"   # the run that logged it, as this source lists it
PRODUCER_RUN = _P + "produced_by/run_id"
LINKS = _P + "links"                        # string: JSON [{"target": E/P/COLLECTION, "aliases": [...]}]
USED_ARTIFACTS = "wandb/used_artifacts"     # on a RUN: string_set of version_ref() of each version it used
REFERENCE_PREFIX = _P + "references/"       # string per reference entry: its URI (W&B keeps no bytes)
FILES = "files/"                            # the artifact's files: files/<path in the artifact>


@dataclass(frozen=True)
class Entry:
    """One manifest entry: a file staged by the SDK, or a reference to bytes elsewhere."""

    path: str
    digest: str
    size: int | None = None
    ref: str | None = None
    local_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Link:
    """A registry collection a version is linked into (`run.link_artifact`): its path
    `ENTITY/PROJECT/COLLECTION` (`model-registry`, `wandb-registry-<name>`) and the aliases
    the link carries there (not the `vN` W&B numbers it with in that collection)."""

    target: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Artifact:
    """What one `artifact` record of a run's log says of an artifact version."""

    entity: str
    project: str
    name: str
    type: str
    digest: str
    producer_project: str
    producer_run: str
    description: str = ""
    metadata: str = ""
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    ttl_seconds: int = 0
    digest_algorithm: str = ""
    storage_policy: str = ""
    entries: tuple[Entry, ...] = ()
    links: tuple[Link, ...] = ()

    @property
    def project_id(self) -> str:
        return project_of(self.entity, self.project, self.name)


def project_of(entity: str, project: str, name: str) -> str:
    return f"{PROJECT_PREFIX}{project_id(entity, project)}/{name}"


def is_artifact_project(project: str) -> bool:
    return project.startswith(PROJECT_PREFIX) and len(project) > len(PROJECT_PREFIX)


def version_ref(entity: str, project: str, name: str, digest: str) -> str:
    """The canonical `<project_id>/<run_id>` of a version's entry (what `used_artifacts` lists)."""
    return f"{project_of(entity, project, name)}/{digest}"


def links_text(links: tuple[Link, ...]) -> str:
    return json.dumps([{"target": link.target, "aliases": sorted(link.aliases)}
                       for link in sorted(links, key=lambda link: link.target)],
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def links_of(text: Any) -> list[Link]:
    """The links of a LINKS value; [] for a value that is not that JSON list."""
    try:
        items = json.loads(text) if isinstance(text, str) and text else []
    except ValueError:
        return []
    return [Link(str(i["target"]), tuple(str(a) for a in i.get("aliases") or ()))
            for i in items if isinstance(i, dict) and i.get("target")] if isinstance(items, list) else []


def producer_project_of(project: str) -> str:
    """`ENTITY/PROJECT` of the project an artifact version's canonical project names."""
    return project[len(PROJECT_PREFIX):].rsplit("/", 1)[0]


@dataclass(frozen=True)
class Relog:
    """What the W&B sink logs to make an artifact version of a canonical entry again."""

    name: str
    type: str
    description: str | None
    metadata: dict[str, Any] | None
    aliases: list[str]                      # without "latest", which W&B sets itself
    references: dict[str, str]              # path in the artifact -> URI


# Types W&B keeps for what the SDK logs itself (a wandb.Table's run_table, a job, code):
# wandb.Artifact refuses them (wandb/sdk/artifacts/_validators.py, validate_artifact_type).
_RESERVED_TYPE_PREFIX = "wandb-"
_RESERVED_NAME_PREFIX_BY_TYPE = {"job": "", "run_table": "run-", "code": "source-"}


def reserved(kind: str, name: str) -> bool:
    prefix = _RESERVED_NAME_PREFIX_BY_TYPE.get(kind)
    return kind.startswith(_RESERVED_TYPE_PREFIX) or (prefix is not None and name.startswith(prefix))


def relog_of(values: dict[str, Any]) -> Relog | None:
    """From the entry's single values (path -> value); None when they name no artifact a
    user may log (no name or type, or a type W&B reserves)."""
    value = values.get
    name, kind = value(NAME), value(TYPE)
    if not name or not kind or reserved(str(kind), str(name)):
        return None
    metadata = None
    text = value(METADATA)
    if text:
        try:
            loaded = json.loads(text)
            metadata = loaded if isinstance(loaded, dict) else None
        except ValueError:
            metadata = None
    return Relog(name=str(name), type=str(kind), description=value(DESCRIPTION) or None, metadata=metadata,
                 aliases=sorted(a for a in (value(ALIASES) or []) if a != "latest"),
                 references={p[len(REFERENCE_PREFIX):]: str(v) for p, v in sorted(values.items())
                             if p.startswith(REFERENCE_PREFIX) and v})


def file_name(digest: str, path: str) -> str:
    """An artifact file as `file_value.path`: `<digest>/<path in the artifact>`."""
    return f"{digest}/{path}"


def manifest_text(entries: tuple[Entry, ...]) -> str:
    """The manifest without where this machine staged the bytes (sorted by path)."""
    out = []
    for e in sorted(entries, key=lambda e: e.path):
        item: dict[str, Any] = {"path": e.path, "digest": e.digest}
        if e.size is not None:
            item["size"] = e.size
        if e.ref:
            item["ref"] = e.ref
        if e.extra:
            item["extra"] = e.extra
        out.append(item)
    return json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def single_rows(art: Artifact) -> list[Row]:
    """Every single value of an artifact version (its files come from `file_rows`)."""
    rows = [Row("sys/name", "string", art.name), Row(NAME, "string", art.name),
            Row(TYPE, "string", art.type), Row(DIGEST, "string", art.digest),
            Row(ALIASES, "string_set", sorted(set(art.aliases))),
            Row(MANIFEST, "string", manifest_text(art.entries)),
            Row(PRODUCER_PROJECT, "string", art.producer_project),
            Row(PRODUCER_RUN, "string", art.producer_run)]
    optional = [(DESCRIPTION, "string", art.description), (METADATA, "string", art.metadata),
                (DIGEST_ALGORITHM, "string", art.digest_algorithm),
                (STORAGE_POLICY, "string", art.storage_policy)]
    rows += [Row(path, kind, value) for path, kind, value in optional if value]
    if art.tags:
        rows.append(Row(TAGS, "string_set", sorted(set(art.tags))))
    if art.ttl_seconds:
        rows.append(Row(TTL_SECONDS, "int", art.ttl_seconds))
    if art.links:
        rows.append(Row(LINKS, "string", links_text(art.links)))
    for e in art.entries:
        if e.ref:
            rows.append(Row(REFERENCE_PREFIX + e.path, "string", e.ref))
    return rows


def file_rows(art: Artifact) -> list[Row]:
    """One `file` row per staged entry: `files/<path>` -> `<digest>/<path>`."""
    return [Row(FILES + e.path, "file", {"path": file_name(art.digest, e.path)})
            for e in art.entries if not e.ref]


def entry_from_json(item: dict[str, Any]) -> Entry:
    """An entry of a manifest the SDK wrote to a file (one JSON object per line: the
    pydantic field names of ArtifactManifestEntry, camelCase in older SDKs)."""
    size = item.get("size")
    return Entry(path=str(item["path"]), digest=str(item.get("digest", "")),
                 size=int(size) if size is not None else None, ref=item.get("ref") or None,
                 local_path=item.get("local_path") or item.get("localPath") or None,
                 extra=dict(item.get("extra") or {}))


def metadata_text(text: str) -> str:
    """The record's metadata JSON, compact (W&B's NaN spelling kept); text as is if not JSON."""
    if not text:
        return ""
    try:
        return json_text(json.loads(text))
    except ValueError:
        return text
