"""Where a run's files, string/histogram series and long params go among MLflow artifacts.

Pure functions, no MLflow import; deterministic, so a resumed load places every artifact
where the first attempt did.
"""

from __future__ import annotations

import posixpath
from typing import Iterable

from trackport.core.steps import step_text

from .keys import BAD_KEY_CHAR, SUFFIX, KeyMap, short_hash

ARTIFACT_DIR = "trackport"
LONG_PARAM_PREFIX = "trackport-artifact:"


def long_param_artifact(key: str) -> str:
    return f"{ARTIFACT_DIR}/params/{key}.txt"


def long_param_pointer(artifact_path: str) -> str:
    return LONG_PARAM_PREFIX + artifact_path


def series_artifact(key: str) -> str:
    return f"series/{key}.jsonl"


def _artifact_name(name: str) -> str:
    """One artifact path part: a file's basename made safe."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    safe = BAD_KEY_CHAR.sub("_", name)
    if safe in ("", ".", ".."):
        safe = "_" + safe
    return safe


def file_artifact(key: str, source_path: str) -> tuple[str, bool]:
    """Artifact path of a single file: the key, plus the file's extension if the key has none."""
    last = key.rsplit("/", 1)[-1]
    if "." in last.strip("."):
        return key, False
    ext = posixpath.splitext(_artifact_name(source_path))[1]
    return (key + ext, True) if ext else (key, False)


def file_series_artifact(key: str, step_text_value: str | None, source_path: str) -> str:
    step = step_text_value if step_text_value is not None else "none"
    return f"{key}/step_{step}/{_artifact_name(source_path)}"


def file_in_dir_artifact(key: str, source_path: str) -> str:
    return f"{key}/{_artifact_name(source_path)}"


def file_artifacts(attribute_type: str, root: str, rows: Iterable[tuple[str | None, str]]) -> list[str]:
    """The artifact paths of one file attribute stored under `root`, per (step text, source path)."""
    out = []
    for step, source in rows:
        if attribute_type == "file_set":
            out.append(root)
        elif attribute_type == "file":
            out.append(file_artifact(root, source)[0])
        elif attribute_type == "file_series":
            out.append(file_series_artifact(root, step, source))
        else:  # artifact: a files_list.json
            out.append(file_in_dir_artifact(root, source))
    return out


def _suffixed_part(root: str, source: str, salt: str, first: bool) -> str:
    parts = root.split("/")
    i = 0 if first else len(parts) - 1
    parts[i] = parts[i] + SUFFIX + short_hash(source + salt)
    return "/".join(parts)


class ArtifactLayout:
    """Where each file attribute's artifacts go, decided before anything is written, so that no
    two attributes share an artifact path, no artifact lies inside or above another's (a file
    cannot be a folder; a file_set folder must hold its own files only), and nothing lands on a
    series artifact or in trackport's own `trackport/` folder.

    Series artifacts and trackport's folder are placed first; then file attributes whose
    artifacts keep their attribute path, then the rest, each in sorted order.  An attribute
    whose artifacts would collide gets `--<8 hex of its path>` on the last part of its root
    (before the extension the file keeps), or, when that does not free it (it lies inside
    a taken path), on the first part.
    """

    def __init__(self, series: Iterable[str] = ()):
        self._claims: dict[str, str] = {}            # artifact path -> attribute path ("" = trackport)
        self._dirs: dict[str, set[str]] = {}         # folder -> attributes with artifacts inside
        self.roots: dict[str, str] = {}              # file attribute -> artifact root
        self.renamed: dict[str, str] = {}            # file attribute -> root, when not its key
        self._claim([ARTIFACT_DIR], "")
        for path, key in series:
            self._claim([series_artifact(key)], path)

    def _conflicts(self, artifacts: list[str], owner: str) -> bool:
        for artifact in artifacts:
            other = self._claims.get(artifact)
            if other is not None and other != owner:
                return True
            if self._dirs.get(artifact, set()) - {owner}:
                return True
            parts = artifact.split("/")
            for i in range(1, len(parts)):
                other = self._claims.get("/".join(parts[:i]))
                if other is not None and other != owner:
                    return True
        return False

    def _claim(self, artifacts: list[str], owner: str) -> None:
        for artifact in artifacts:
            self._claims[artifact] = owner
            parts = artifact.split("/")
            for i in range(1, len(parts)):
                self._dirs.setdefault("/".join(parts[:i]), set()).add(owner)

    def place(self, path: str, attribute_type: str, key: str,
              rows: list[tuple[str | None, str]]) -> str:
        """The artifact root of file attribute `path` (MLflow key `key`) holding `rows`."""
        got = self.roots.get(path)
        if got is not None:
            return got
        artifacts = file_artifacts(attribute_type, key, rows)
        if len(set(artifacts)) < len(artifacts):
            raise ValueError(f"{attribute_type} {path!r} holds two files that both map to one "
                             f"artifact name ({sorted(a for a in artifacts if artifacts.count(a) > 1)[0]!r})")
        root = key
        n = 0
        while self._conflicts(artifacts, path):
            salt = str(n // 2) if n >= 2 else ""
            root = _suffixed_part(key, path, salt, first=n % 2 == 1)
            artifacts = file_artifacts(attribute_type, root, rows)
            n += 1
        self._claim(artifacts, path)
        self.roots[path] = root
        if root != key:
            self.renamed[path] = root
        return root

    def check(self, path: str, artifact: str) -> None:
        """An artifact written that the layout did not foresee: refuse any collision."""
        if self._conflicts([artifact], path):
            raise ValueError(f"artifact {artifact!r} of {path!r} collides with "
                             f"{self._claims.get(artifact) or 'another attribute'!r}")
        self._claim([artifact], path)

    @classmethod
    def of_scan(cls, keys: KeyMap, series: Iterable[str], files: Iterable[tuple]) -> "ArtifactLayout":
        """The layout of a whole run: `series` the paths of its string/histogram series,
        `files` the scan's (attribute, type, step, source path) rows."""
        layout = cls((p, keys.key(p)) for p in sorted(series))
        by_attr: dict[str, tuple[str, list]] = {}
        for attr, attribute_type, step, source in files:
            if not source:
                continue
            step_text_value = step_text(step)
            by_attr.setdefault(attr, (attribute_type, []))[1].append((step_text_value, source))

        def natural(attr: str) -> bool:   # stored under its own path, as it is
            attribute_type, rows = by_attr[attr]
            return keys.key(attr) == attr and (
                attribute_type != "file" or file_artifacts("file", attr, rows[:1]) == [attr])

        ordered = sorted(by_attr, key=lambda a: (not natural(a), a))
        for attr in ordered:
            attribute_type, rows = by_attr[attr]
            layout.place(attr, attribute_type, keys.key(attr), rows)
        return layout

