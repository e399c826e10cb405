"""Connectors that use an SDK's private API refuse, when they open, an SDK outside the versions
tested, with a UsageError naming the SDK, its installed version, the tested range and the fix;
the ranges in the specs are the ones pyproject's extras pin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import trackport
from trackport.core.errors import MissingExtraError, UsageError
from trackport.core.registry import check_sdk_version, specs

try:
    import tomllib
except ImportError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

SRC = Path(trackport.__file__).resolve().parents[1]
ROOT = SRC.parent


def test_an_sdk_outside_the_tested_range_is_refused_with_version_range_and_fix():
    installed = version("pytest")                    # a real distribution, really installed
    with pytest.raises(UsageError) as refused:
        check_sdk_version("pytest", "<1", "pip install 'trackport[test]'")
    message = str(refused.value)
    assert f"pytest {installed} is installed" in message
    assert "tested only with pytest <1" in message
    assert "Fix: pip install 'trackport[test]'" in message
    assert check_sdk_version("pytest", f"=={installed}", "unused") == installed


def test_an_sdk_that_is_not_installed_is_refused_with_the_fix():
    with pytest.raises(MissingExtraError, match=r"no-such-sdk-for-trackport is not installed.*"
                                                r"Fix: pip install 'trackport\[x\]'"):
        check_sdk_version("no-such-sdk-for-trackport", ">=1", "pip install 'trackport[x]'")


def _raw_extras() -> dict[str, list[str]]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["optional-dependencies"]


def _extras() -> dict[str, dict[str, SpecifierSet]]:
    extras = _raw_extras()
    out: dict[str, dict[str, SpecifierSet]] = {}
    for extra, lines in extras.items():
        for line in lines:
            req = Requirement(line)
            out.setdefault(extra, {})[req.name.lower()] = req.specifier
    return out


def test_each_connector_checks_the_ranges_its_extra_pins_and_the_installed_sdks_are_in_them():
    extras = _extras()
    declared = [spec for spec in specs() if spec.sdk_versions]
    assert {spec.extra for spec in declared} >= {"mlflow", "wandb", "neptune", "pluto", "tensorboard"}
    raw = _raw_extras()
    installed_by_test = {extra for line in raw["all"] + raw["test"] for extra in Requirement(line).extras}
    for spec in declared:
        pinned = extras[spec.extra]
        for distribution, tested in spec.sdk_versions.items():
            assert pinned.get(distribution.lower()) == SpecifierSet(tested), (spec.extra, distribution)
            if any(r.name.lower() == distribution.lower() and r.marker is not None and not r.marker.evaluate()
                   for r in map(Requirement, raw[spec.extra])):
                # not for this Python (aim: < 3.13, litlogger: >= 3.11): its test file checks it
                # in a venv of a Python it supports
                continue
            if spec.extra not in installed_by_test:
                continue    # zenml: kept out of `all` and `test` for its pins, tested in a venv of its own
            # the test deps install these extras: what is installed is what is tested
            assert check_sdk_version(distribution, tested, "unused") == version(distribution)


DATED = '''
from pathlib import Path

from trackport.core.registry import ConnectorSpec

SPEC = ConnectorSpec(schemes=("dated",), summary="dated:DIR (relies on pytest < 1)", extra="dated",
                     sdk_versions={"pytest": "<1"})


def open_source(parsed, options):
    raise AssertionError("never opened: its SDK is outside the tested range")


def open_sink(parsed, options, read_only=False):
    raise AssertionError("never opened: its SDK is outside the tested range")
'''


def test_opening_a_connector_checks_its_sdk_versions_but_help_and_listing_do_not(tmp_path):
    site = tmp_path / "site"
    (site / "trackport_dated").mkdir(parents=True)
    (site / "trackport_dated" / "__init__.py").write_text(textwrap.dedent(DATED))
    info = site / "trackport_dated-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: trackport-dated\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[trackport.connectors]\ndated = trackport_dated\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(SRC)]))

    def trackport_cli(*args):
        return subprocess.run([sys.executable, "-m", "trackport", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)

    assert trackport_cli("--help").returncode == 0
    listed = trackport_cli("connectors", "--json")
    assert listed.returncode == 0, listed.stderr
    dated = {c["name"]: c for c in json.loads(listed.stdout)["connectors"]}["trackport_dated"]
    assert dated["sdk_versions"] == {"pytest": {"tested": "<1", "installed": version("pytest")}}
    export = ROOT / "examples" / "sample-export"
    for args in (("copy", f"dated:{tmp_path / 'in'}", f"parquet:{tmp_path / 'out'}"),
                 ("copy", str(export), f"dated:{tmp_path / 'out'}")):
        refused = trackport_cli(*args)
        assert refused.returncode == 2, refused.stderr
        assert f"pytest {version('pytest')} is installed" in refused.stderr
        assert "tested only with pytest <1" in refused.stderr
        assert "Fix: pip install 'trackport-dated'" in refused.stderr
    assert not (tmp_path / "out").exists()
