"""The connector registry: built-ins found without a list, third parties through entry points,
`trackport connectors` and the help text built from the same specs (docs/connectors.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import trackport.connectors
from trackport.testing.corpus import build_corpus
from trackport.testing.exporter_layout import write_exporter_export

SRC = Path(trackport.__file__).resolve().parents[1]


def _trackport(*args: str, extra_path: Path | None = None, cwd: Path | None = None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (extra_path, SRC) if p)
    return subprocess.run([sys.executable, "-m", "trackport", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _builtin_packages() -> set[str]:
    root = Path(trackport.connectors.__file__).parent
    return {p.parent.name for p in root.glob("*/__init__.py") if not p.parent.name.startswith("_")}


def _extra_excludes_this_python(extra: str) -> bool:
    """Every requirement of `extra` carries a marker this interpreter fails (aim: < 3.13,
    litlogger: >= 3.11): the test deps install nothing for it here."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest itself depends on tomli there
        import tomli as tomllib
    from packaging.requirements import Requirement

    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as fh:
        lines = tomllib.load(fh)["project"]["optional-dependencies"].get(extra, [])
    requirements = [Requirement(line) for line in lines]
    return bool(requirements) and all(r.marker is not None and not r.marker.evaluate() for r in requirements)


def _extras_installed_by_test() -> set[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest itself depends on tomli there
        import tomli as tomllib
    from packaging.requirements import Requirement

    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]
    lines = extras["all"] + extras["test"]
    return {extra for line in lines for extra in Requirement(line).extras}


def test_connectors_json_lists_every_builtin_with_its_schemes_options_and_capabilities():
    result = _trackport("connectors", "--json")
    assert result.returncode == 0, result.stderr
    listed = {c["name"]: c for c in json.loads(result.stdout)["connectors"]}
    assert set(listed) >= _builtin_packages() >= {"parquet", "mlflow", "wandb", "neptune", "pluto", "tensorboard"}
    schemes = {s for c in listed.values() for s in c["schemes"]}
    assert {"parquet", "mlflow", "wandb", "neptune", "neptune2", "neptune3", "pluto", "tensorboard"} <= schemes
    for name in _builtin_packages():
        spec = __import__(f"trackport.connectors.{name}", fromlist=["SPEC"]).SPEC
        item = listed[name]
        assert item["schemes"] == list(spec.schemes)
        assert [o["flag"] for o in item["options"]] == [o.flag for o in spec.options]
        if spec.extra is not None and _extra_excludes_this_python(spec.extra):
            # aim has no wheels for 3.13, litlogger needs 3.11: their extras carry markers
            assert not item["installed"] and f"trackport[{spec.extra}]" in item["install"]
        elif spec.extra is None or spec.extra in _extras_installed_by_test():
            assert item["installed"] and item["install"] is None      # the test deps install these
        else:                               # zenml: tested in a venv of its own (tests/zenml_venv.py)
            assert item["install"] == f"pip install 'trackport[{spec.extra}]'"
        for scheme, caps in item["capabilities"].items():
            assert "error" not in caps, (name, scheme, caps)
    assert "--wandb-dir" in {o["flag"] for o in listed["wandb"]["options"]}
    assert {o["flag"]: o["envvar"] for o in listed["pluto"]["options"]}["--pluto-flush-every"] == [
        "NEPTUNE_EXPORTER_PLUTO_FLUSH_EVERY"]
    assert "string_set_sorted" in listed["neptune"]["capabilities"]["neptune3"]["transformations"]


DEMO = '''
"""A third-party connector: `demo:DIR`, an export written through trackport's parquet classes."""
from pathlib import Path

from trackport.core.registry import ConnectorOption, ConnectorSpec

SPEC = ConnectorSpec(
    schemes=("demo",),
    summary="demo:DIR (a third-party test connector)",
    options=(ConnectorOption("--demo-note", "A demo option.", envvar=("DEMO_NOTE",)),),
)


def open_source(parsed, options):
    from trackport.connectors.parquet.source import ParquetSource

    return ParquetSource(Path(parsed.rest).resolve(), options)


def open_sink(parsed, options, read_only=False):
    from trackport.connectors.parquet.sink import ParquetSink

    return ParquetSink(Path(parsed.rest).resolve(), options, read_only=read_only)
'''

NEEDY = '''
from trackport.core.registry import ConnectorSpec

SPEC = ConnectorSpec(schemes=("needy",), summary="needy://X (needs an SDK that is not installed)",
                     destination=False, extra="needy", requires=("needy_sdk_not_installed",))


def open_source(parsed, options):
    raise AssertionError("never opened: its SDK is missing")
'''


def _install_plugin(root: Path) -> Path:
    """A distribution installed the way pip lays one out: its modules and a .dist-info with
    entry points in the `trackport.connectors` group."""
    site = root / "site"
    (site / "trackport_demo").mkdir(parents=True)
    (site / "trackport_demo" / "__init__.py").write_text(textwrap.dedent(DEMO))
    (site / "trackport_demo" / "needy.py").write_text(textwrap.dedent(NEEDY))
    info = site / "trackport_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trackport-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[trackport.connectors]\ndemo = trackport_demo\nneedy = trackport_demo.needy\n"
        "arrowdir = trackport.testing.example_connector\n")
    return site


def test_a_third_party_connector_from_an_entry_point_is_listed_in_help_and_copies(tmp_path):
    site = _install_plugin(tmp_path)
    result = _trackport("connectors", "--json", extra_path=site)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    listed = {c["name"]: c for c in data["connectors"]}
    assert data["problems"] == []
    demo = listed["trackport_demo"]
    assert demo["schemes"] == ["demo"] and demo["distribution"] == "trackport-demo" and demo["installed"]
    assert demo["options"][0]["flag"] == "--demo-note" and demo["options"][0]["envvar"] == ["DEMO_NOTE"]
    needy = listed["needy"]
    assert (needy["installed"], needy["source"], needy["destination"]) == (False, True, False)
    assert needy["missing"] == ["needy_sdk_not_installed"] and needy["install"] == "pip install 'trackport-demo'"
    assert _builtin_packages() <= set(listed)                        # the built-ins are still there

    for command in ("--help", "copy --help"):
        shown = _trackport(*command.split(), extra_path=site)
        assert shown.returncode == 0, shown.stderr
        assert "demo:DIR (a third-party test connector)" in shown.stdout
    assert "--demo-note" in _trackport("copy", "--help", extra_path=site).stdout

    corpus = [r for r in build_corpus(big=False) if r.case in ("scalars", "files")]
    write_exporter_export(tmp_path / "src", corpus)
    copied = _trackport("copy", str(tmp_path / "src"), f"demo:{tmp_path / 'out'}", "--json", "--no-progress",
                        "--demo-note", "x", extra_path=site, cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert json.loads(copied.stdout)["totals"]["moved"] == len(corpus)
    verified = _trackport("verify", str(tmp_path / "src"), f"demo:{tmp_path / 'out'}", "--json", "--no-progress",
                          extra_path=site, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["totals"]["verified"] == len(corpus)
    refused = _trackport("copy", "needy://x", f"parquet:{tmp_path / 'o2'}", extra_path=site, cwd=tmp_path)
    assert refused.returncode == 2 and "pip install 'trackport-demo'" in refused.stderr


def test_help_lists_the_uri_forms_of_every_connector():
    from click.testing import CliRunner

    from trackport.cli import cli
    from trackport.core.registry import specs

    for command in (["--help"], ["copy", "--help"], ["plan", "--help"], ["verify", "--help"]):
        out = CliRunner().invoke(cli, command).output
        for spec in specs():
            assert spec.summary in out, (command, spec.summary)


# -- the example connector of docs/connectors.md, registered the same way, through the kit ---------
@pytest.fixture
def plugin_installed(tmp_path, monkeypatch):
    """The plug-in distribution on sys.path of this process; the registry forgets it afterwards."""
    import importlib

    from trackport.core import registry

    monkeypatch.syspath_prepend(str(_install_plugin(tmp_path / "plugin")))
    importlib.invalidate_caches()
    registry.reset()
    yield
    registry.reset()      # sys.path is restored by monkeypatch; the next discovery will not see it


def test_the_example_connector_passes_the_conformance_kit(tmp_path, plugin_installed):
    from trackport.core.registry import connectors
    from trackport.testing import conformance

    assert connectors()["arrowdir"].module == "trackport.testing.example_connector"
    conformance.round_trip(conformance.Target(f"arrowdir:{tmp_path / 'dest'}"), tmp_path)
    conformance.files_and_bytes(conformance.Target(f"arrowdir:{tmp_path / 'dest-files'}"), tmp_path)
    conformance.run_times(conformance.Target(f"arrowdir:{tmp_path / 'dest-times'}"), tmp_path)


def test_plan_and_verify_open_the_destination_read_only(tmp_path, plugin_installed):
    from trackport.testing import conformance

    corpus = [r for r in build_corpus(big=False) if r.case == "scalars"]
    write_exporter_export(tmp_path / "src", corpus)
    dest = tmp_path / "never-created"
    for command in ("plan", "verify"):
        conformance.run_cli(command, str(tmp_path / "src"), f"arrowdir:{dest}")
        assert not dest.exists(), command
