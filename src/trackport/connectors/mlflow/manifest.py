"""trackport's run manifest stored in MLflow (`trackport/attributes.json`): how each
canonical attribute of a run was stored, so that it reads back exactly.

Pure data classes and JSON, no MLflow import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MANIFEST_PATH = "trackport/attributes.json"
MANIFEST_FORMAT = "trackport.mlflow.attributes"
MANIFEST_VERSION = 1



@dataclass
class AttributeEntry:
    """How one canonical attribute was stored in an MLflow run."""

    path: str
    type: str
    kind: str                      # param | metric | series | file | run
    key: str                       # param/metric key; artifact root of a file attribute
    artifact: str | None = None    # series jsonl, long param text
    transformations: dict[str, int] = field(default_factory=dict)
    null: bool = False             # a param whose value was null
    inf: bool = False              # a metric with +-inf points
    float_max: bool = False        # ...that also holds genuine +-float max values
    fixes: list[list] = field(default_factory=list)  # [MLflow step, ts ms, "inf"|"-inf"|"-0.0"]
    repeats: list[list] = field(default_factory=list)  # [MLflow step, ts ms, value bits]: one extra copy each
    null_timestamps: bool = False  # a metric with filled timestamps
    null_steps: bool = False
    files: list[list] = field(default_factory=list)  # [step text|None, ts ms|None, source path, artifact]
    value: str | None = None       # kind "run": the exact value as `param_text` writes it

    def count(self, kind: str, n: int = 1) -> None:
        self.transformations[kind] = self.transformations.get(kind, 0) + n

    def to_json(self) -> dict:
        out: dict[str, Any] = {"type": self.type, "kind": self.kind, "key": self.key}
        if self.artifact:
            out["artifact"] = self.artifact
        if self.transformations:
            out["transformations"] = dict(sorted(self.transformations.items()))
        for name in ("null", "inf", "float_max", "null_timestamps", "null_steps"):
            if getattr(self, name):
                out[name] = True
        if self.fixes:
            out["fixes"] = self.fixes
        if self.repeats:
            out["repeats"] = self.repeats
        if self.files:
            out["files"] = self.files
        if self.value is not None:
            out["value"] = self.value
        return out

    @classmethod
    def from_json(cls, path: str, data: dict) -> "AttributeEntry":
        return cls(
            path=path,
            type=data["type"],
            kind=data["kind"],
            key=data.get("key", path),
            artifact=data.get("artifact"),
            transformations=dict(data.get("transformations", {})),
            null=bool(data.get("null")),
            inf=bool(data.get("inf")),
            float_max=bool(data.get("float_max")),
            fixes=[list(f) for f in data.get("fixes", [])],
            repeats=[list(r) for r in data.get("repeats", [])],
            null_timestamps=bool(data.get("null_timestamps")),
            null_steps=bool(data.get("null_steps")),
            files=[list(f) for f in data.get("files", [])],
            value=data.get("value"),
        )


@dataclass
class Manifest:
    """`trackport/attributes.json`: what a run's MLflow entities mean canonically."""

    origin_uri: str = ""
    project_id: str = ""
    run_id: str = ""
    step_multiplier: int = 1
    attributes: dict[str, AttributeEntry] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    def entry(self, path: str, attribute_type: str, kind: str, key: str) -> AttributeEntry:
        got = self.attributes.get(path)
        if got is None:
            got = self.attributes[path] = AttributeEntry(path, attribute_type, kind, key)
        return got

    def to_json(self) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "origin": {"uri": self.origin_uri, "project_id": self.project_id, "run_id": self.run_id},
            "step_multiplier": self.step_multiplier,
            "attributes": {p: e.to_json() for p, e in self.attributes.items()},
            "tags": sorted(self.tags),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a trackport MLflow manifest (format {data.get('format')!r})")
        if int(data.get("version", 0)) > MANIFEST_VERSION:
            raise ValueError(f"manifest version {data.get('version')} is newer than this trackport")
        origin = data.get("origin") or {}
        return cls(
            origin_uri=origin.get("uri", ""),
            project_id=origin.get("project_id", ""),
            run_id=origin.get("run_id", ""),
            step_multiplier=int(data.get("step_multiplier", 1)),
            attributes={p: AttributeEntry.from_json(p, e) for p, e in data.get("attributes", {}).items()},
            tags=list(data.get("tags", [])),
        )

    @classmethod
    def loads(cls, text: str) -> "Manifest":
        return cls.from_json(json.loads(text))

    # What the run's MLflow entities are accounted for by this manifest.
    def param_keys(self) -> set[str]:
        # a "run" entry with a key: a param an older trackport wrote for it (runs it resumed)
        return {e.key for e in self.attributes.values() if e.kind == "param" or (e.kind == "run" and e.key)}

    def metric_keys(self) -> set[str]:
        return {e.key for e in self.attributes.values() if e.kind == "metric"}

    def artifact_paths(self) -> set[str]:
        out = set()
        for e in self.attributes.values():
            if e.artifact:
                out.add(e.artifact)
            for f in e.files:
                out.add(f[3])
        return out

    def file_map(self) -> dict[str, str]:
        """Source file path -> artifact path (what the run's FileAccess resolves)."""
        out = {}
        for e in self.attributes.values():
            for f in e.files:
                out.setdefault(f[2], f[3])
        return out

