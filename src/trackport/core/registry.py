"""Scheme -> connector, found at run time (fsspec-style); core knows no scheme.

Each built-in connector is a package `trackport/connectors/<name>/` whose SDK-free
`__init__` declares `SPEC = ConnectorSpec(...)`; third-party packages add theirs through
the entry-point group `trackport.connectors` (docs/connectors.md).  Discovery imports only
those `__init__` modules; a connector imports its SDK inside `open_source` / `open_sink`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pkgutil
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

from .errors import MissingExtraError, UsageError


@dataclass(frozen=True)
class ConnectorOption:
    """A command-line option that belongs to one connector.

    The CLI adds it to every moving command, the Python API takes it as a keyword argument;
    its value, checked against `kind` and `choices`, reaches the connector as
    `options.get(name)` (core/options.py; the name is the flag without dashes, `-` -> `_`).
    `envvar` lets a tracker's existing settings carry over.
    """

    flag: str
    help: str
    kind: str = "str"                 # "str", "int" (>= 1), "count" (>= 0), "float" or "flag"
    choices: tuple[str, ...] = ()
    envvar: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class ConnectorSpec:
    """What a connector declares about itself, in its SDK-free package `__init__` as `SPEC`.

    `schemes`: the URI schemes it serves (`mlflow` serves `mlflow:` and `mlflow+http://`).
    `source` / `destination`: the directions it supports (it then defines `open_source` /
    `open_sink` in the same module).  `extra`: the pip extra that installs its SDK, and
    `requires`: the importable names that extra provides (checked before opening).
    `summary`: one line of URI forms, shown by `trackport --help` and `trackport connectors`.
    `options`: its command-line options.  `capabilities`: scheme -> `"module:ATTR"` naming the
    destination's `Capabilities`, loaded only by `trackport connectors` (the sink's own
    `capabilities` are what the pipeline uses).  `bare_paths`: a URI without a scheme is an
    existing path of this connector (parquet exports).  `sdk_versions`: distribution -> the
    PEP 440 range of it that is tested (">=3.17.2,<3.18"), for each SDK whose private API the
    connector uses; checked when the connector opens (`check_sdk_version`), and its extra pins
    the same range.  `inspect`: the module also defines
    `inspect(parsed, options, select) -> Inspection` (core/connector.py), what `trackport
    inspect LOCATION` shows.  `extension_projects`: prefixes of the project ids under which its
    source puts what is not a training run (registry entries, artifact versions; a documented
    extension of the format, docs/format.md): a parquet export keeps their parts where
    neptune-exporter's readers do not look.  `module` is filled in by discovery: the module that
    defines the spec and the `open_*` functions.
    """

    schemes: tuple[str, ...]
    summary: str
    source: bool = True
    destination: bool = True
    extra: str | None = None
    requires: tuple[str, ...] = ()
    options: tuple[ConnectorOption, ...] = ()
    capabilities: Mapping[str, str] = field(default_factory=dict)
    bare_paths: bool = False
    sdk_versions: Mapping[str, str] = field(default_factory=dict)
    inspect: bool = False
    extension_projects: tuple[str, ...] = ()
    module: str = ""
    distribution: str | None = None    # the installed distribution providing a third-party connector

    @property
    def scheme(self) -> str:
        return self.schemes[0]

    def missing(self) -> list[str]:
        """Importable names this connector needs that are not installed."""
        return [name for name in self.requires if not _importable(name)]

    def install_hint(self) -> str | None:
        if not self.extra:
            return None
        if self.distribution:
            return f"pip install '{self.distribution}'"
        return f"pip install 'trackport[{self.extra}]'"


ENTRY_POINT_GROUP = "trackport.connectors"
_BUILTIN_PACKAGE = "trackport.connectors"
_lock = threading.Lock()
_discovered: list[ConnectorSpec] | None = None
_problems: list[str] = []


def _spec_of(loaded: Any, where: str, distribution: str | None = None) -> ConnectorSpec | None:
    """The spec a connector module declares as SPEC (or an entry point's spec object itself)."""
    if isinstance(loaded, ConnectorSpec):
        spec, name = loaded, loaded.module
    else:
        spec, name = getattr(loaded, "SPEC", None), getattr(loaded, "__name__", "")
    if not isinstance(spec, ConnectorSpec) or not spec.schemes:
        _problems.append(f"{where}: declares no ConnectorSpec named SPEC")
        return None
    if not name:
        _problems.append(f"{where}: its ConnectorSpec names no module")
        return None
    return dataclasses.replace(spec, module=spec.module or name, distribution=spec.distribution or distribution)


def _builtins() -> list[ConnectorSpec]:
    package = importlib.import_module(_BUILTIN_PACKAGE)
    specs = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.ispkg or info.name.startswith("_"):
            continue
        name = f"{_BUILTIN_PACKAGE}.{info.name}"
        spec = _spec_of(importlib.import_module(name), name)
        if spec is not None:
            specs.append(spec)
    return specs


def _third_party() -> list[ConnectorSpec]:
    from importlib.metadata import entry_points

    try:
        found = entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # pragma: no cover - Python < 3.10 spelling
        found = entry_points().get(ENTRY_POINT_GROUP, [])
    specs = []
    for ep in sorted(found, key=lambda e: e.name):
        if ep.value.split(":")[0].startswith(_BUILTIN_PACKAGE + "."):
            continue   # a built-in declared as an entry point too: found above
        distribution = getattr(getattr(ep, "dist", None), "name", None)
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plug-in never takes trackport down
            _problems.append(f"entry point {ep.name} = {ep.value}: {type(exc).__name__}: {exc}")
            continue
        spec = _spec_of(loaded, f"entry point {ep.name} = {ep.value}", distribution)
        if spec is not None:
            specs.append(spec)
    return specs


def specs() -> list[ConnectorSpec]:
    """Every installed connector: the built-in packages, then the `trackport.connectors`
    entry points; a scheme already taken is left to its first owner (and noted in problems())."""
    global _discovered
    with _lock:
        if _discovered is None:
            found, taken = [], set()
            for spec in [*_builtins(), *_third_party()]:
                clash = taken.intersection(spec.schemes)
                if clash:
                    _problems.append(f"{spec.module}: scheme(s) {', '.join(sorted(clash))} already taken")
                    continue
                taken.update(spec.schemes)
                found.append(spec)
            _discovered = found
        return list(_discovered)


def problems() -> list[str]:
    """Connectors that could not be loaded, and why."""
    specs()
    return list(_problems)


def reset() -> None:
    """Forget what was discovered (tests that install a connector while running)."""
    global _discovered
    with _lock:
        _discovered = None
        _problems.clear()


def connectors() -> dict[str, ConnectorSpec]:
    """scheme -> spec, for every scheme of every installed connector."""
    return {scheme: spec for spec in specs() for scheme in spec.schemes}


def is_extension_project(project_id: str) -> bool:
    """Whether `project_id` holds entries of a format extension (ConnectorSpec.extension_projects)."""
    return any(project_id.startswith(prefix) and len(project_id) > len(prefix)
               for spec in specs() for prefix in spec.extension_projects)


def connector_options() -> list[ConnectorOption]:
    """Every connector's own options, each once, in discovery order."""
    seen: dict[str, ConnectorOption] = {}
    for spec in specs():
        for option in spec.options:
            seen.setdefault(option.name, option)
    return list(seen.values())


def load_capabilities(spec: ConnectorSpec) -> dict[str, Any]:
    """scheme -> the destination's declared `Capabilities` (or the error loading them)."""
    out: dict[str, Any] = {}
    for scheme, ref in spec.capabilities.items():
        module_name, _, attr = ref.partition(":")
        try:
            value: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                value = getattr(value, part)
        except Exception as exc:
            value = exc
        out[scheme] = value
    return out


def describe(spec: ConnectorSpec) -> dict[str, Any]:
    """What `trackport connectors --json` says about one connector."""
    from .capabilities import Capabilities

    missing = spec.missing()
    capabilities = {}
    for scheme, caps in load_capabilities(spec).items():
        if isinstance(caps, Capabilities):
            capabilities[scheme] = {**{f.name: getattr(caps, f.name) for f in dataclasses.fields(caps)
                                       if f.name != "transformations"},
                                    "transformations": dict(caps.transformations)}
        else:
            capabilities[scheme] = {"error": f"{type(caps).__name__}: {caps}"}
    return {
        "name": spec.module.rsplit(".", 1)[-1],
        "module": spec.module,
        "distribution": spec.distribution,
        "schemes": list(spec.schemes),
        "source": spec.source,
        "destination": spec.destination,
        "summary": spec.summary,
        "extra": spec.extra,
        "installed": not missing,
        "missing": missing,
        "install": spec.install_hint() if missing else None,
        "inspect": spec.inspect,
        "sdk_versions": {name: {"tested": tested, "installed": _installed_version(name)}
                         for name, tested in spec.sdk_versions.items()},
        "options": [{"flag": o.flag, "name": o.name, "kind": o.kind, "choices": list(o.choices),
                     "envvar": list(o.envvar), "help": o.help} for o in spec.options],
        "capabilities": capabilities,
    }


@dataclass(frozen=True)
class ParsedUri:
    scheme: str
    rest: str          # what follows `scheme:` (or the transport URL for `scheme+http://`)
    original: str

    @property
    def display(self) -> str:
        return redact(self.original)

    def directory(self, example: str) -> Path:
        """The local folder a `scheme:DIR` URI names.  DIR may also be written `//DIR` (so
        `scheme:///abs/dir` works) or as a `file://` URL; `~` is expanded and a relative DIR is
        taken from the current directory.  Nothing is normalised (`..` and symlinks stay): a
        connector that needs one spelling per folder resolves or normpaths the result, and
        keeps doing so, since its URIs name the runs it wrote.  An empty DIR is a UsageError
        showing `example` (e.g. "tensorboard:./lightning_logs")."""
        text = self.rest.strip()
        for prefix in ("file://", "//"):
            if text.startswith(prefix):
                text = text[len(prefix):]
                break
        if not text:
            raise UsageError(f"{self.scheme}: needs a directory: {example}")
        url = _URL_RE.match(text)
        if url:   # s3://, gs://, http://...: never a local folder named after the URL
            raise UsageError(f"{redact(self.original)!r}: {url['scheme']}:// is not a local folder, and "
                             f"{self.scheme}: reads and writes local folders only (object storage is not "
                             f"supported yet). Fix: name a local directory, e.g. {example}")
        path = Path(text).expanduser()
        return path if path.is_absolute() else Path.cwd() / path


_URL_RE = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://")
_SCHEME_RE = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9]*)(?P<plus>\+[a-zA-Z]+)?:(?P<rest>.*)$", re.S)


def parse_uri(text: str) -> ParsedUri:
    if not text:
        raise UsageError("empty URI")
    known = connectors()
    match = _SCHEME_RE.match(text)
    if match and not (len(match["scheme"]) == 1 and os.name == "nt"):
        scheme = match["scheme"].lower()
        if scheme in known:
            rest = match["rest"]
            if match["plus"]:
                rest = f"{match['plus'][1:].lower()}:{rest}"
            return ParsedUri(scheme, rest, text)
        if not os.path.exists(text):
            listed = " | ".join(s.summary for s in specs())
            raise UsageError(f"unknown scheme {scheme!r} in {redact(text)!r}; `trackport connectors` lists "
                             f"the installed ones: {listed}")
    # A bare path belongs to the connector that takes bare paths (parquet exports).
    owner = next((s for s in specs() if s.bare_paths), None)
    if owner is None:
        raise UsageError(f"{redact(text)!r} has no scheme; write SCHEME:PATH (`trackport connectors` lists them)")
    return ParsedUri(owner.scheme, text, text)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # e.g. sys.modules[name] is None: import blocked
        return False


def _installed_version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def check_sdk_version(distribution: str, tested: str, fix: str) -> str:
    """The installed version of `distribution` (an SDK whose private API a connector uses) when it
    lies in `tested`, a PEP 440 range such as ">=3.17.2,<3.18"; else a UsageError naming the SDK,
    the installed version, the tested range and `fix` (the pip line that installs a tested one).
    For connectors to call when they open, never at import or --help (the registry does it for
    every `ConnectorSpec.sdk_versions`)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    installed = _installed_version(distribution)
    if installed is None:
        raise MissingExtraError(f"{distribution} is not installed; trackport is tested with {distribution} {tested}. "
                         f"Fix: {fix}")
    try:
        within = SpecifierSet(tested).contains(Version(installed), prereleases=True)
    except InvalidVersion:
        within = False
    if not within:
        raise UsageError(f"{distribution} {installed} is installed, but trackport relies on {distribution}'s "
                         f"private API and is tested only with {distribution} {tested}. Fix: {fix} "
                         f"(it installs a tested version)")
    return installed


def connector(scheme: str):
    """The module of `scheme`'s connector, about to be opened: its SDK installed (`requires`), in
    the versions tested (`sdk_versions`)."""
    spec = connectors().get(scheme)
    if spec is None:
        raise UsageError(f"unknown scheme {scheme!r}; known: {', '.join(sorted(connectors()))}")
    missing = spec.missing()
    if missing:
        raise MissingExtraError(
            f"the {scheme} connector needs {', '.join(missing)}, which is not installed; "
            f"fix: {spec.install_hint()}"
        )
    for distribution, tested in spec.sdk_versions.items():
        check_sdk_version(distribution, tested, spec.install_hint() or f"pip install '{distribution}{tested}'")
    return importlib.import_module(spec.module)


def open_source(uri: str, options: "Options | Mapping[str, Any] | None" = None):
    """The source `uri`; `options` are checked (core/options.py) before the connector sees them."""
    from .options import Options

    options = Options.of(options)
    parsed = parse_uri(uri)
    spec = connectors()[parsed.scheme]
    if not spec.source:
        raise UsageError(f"{parsed.scheme} can only be a destination")
    return connector(parsed.scheme).open_source(parsed, options)


def inspect_location(uri: str, options: "Options | Mapping[str, Any] | None" = None, select=None):
    """`trackport inspect`: the `Inspection` of `uri` by the connector owning it (a bare path:
    the connector that takes bare paths), when its spec offers one."""
    from .model import Selection
    from .options import Options

    parsed = parse_uri(uri)
    spec = connectors()[parsed.scheme]
    if not spec.inspect:
        able = [s.summary for s in specs() if s.inspect]
        raise UsageError(f"the {parsed.scheme} connector has no summary for inspect; inspect reads "
                         f"{' | '.join(able) or 'nothing installed'}")
    return connector(parsed.scheme).inspect(parsed, Options.of(options), select or Selection())


def open_sink(uri: str, options: "Options | Mapping[str, Any] | None" = None, *, read_only: bool = False):
    """The destination `uri`.  `read_only` (plan, verify): the connector creates nothing, writes
    nothing and refuses `begin_run`; it may only look (`find_run`, `as_source`, `capabilities`)."""
    from .options import Options

    options = Options.of(options)
    parsed = parse_uri(uri)
    spec = connectors()[parsed.scheme]
    if not spec.destination:
        raise UsageError(f"{parsed.scheme} can only be a source")
    sink = connector(parsed.scheme).open_sink(parsed, options, read_only=read_only)
    if read_only and not getattr(sink, "read_only", False):
        raise UsageError(f"the {parsed.scheme} connector ({spec.module}) ignored read_only=True; "
                         f"it must keep `read_only` on its Sink (docs/connectors.md)")
    return sink


_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|api[_-]?key|key|password|secret|access_token)=)[^&#]*")


def _remember_userinfo(password: str | None) -> None:
    """A URI's password is scrubbed from logs and reports from now on (raw and decoded)."""
    from urllib.parse import unquote

    from .logs import remember_secret

    if password:
        remember_secret(password)
        remember_secret(unquote(password))


def redact(text: str) -> str:
    """Drop userinfo and secret-looking query values from anything URL-shaped."""
    text = _SECRET_QUERY.sub(r"\1***", text)
    head, sep, tail = text.partition("://")
    if not sep:
        return text
    try:
        parts = urlsplit("x://" + tail)
    except ValueError:
        return text
    if parts.username is None and parts.password is None:
        return text
    _remember_userinfo(parts.password)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return head + "://" + urlunsplit(("x", host, parts.path, parts.query, parts.fragment))[len("x://"):]
