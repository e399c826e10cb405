"""The layering of docs/architecture.md, checked by import-linter: core imports no connector and no
tracker SDK, connectors never import the command, the command names no connector, and nothing
but tests imports the public test kit (contracts: `[tool.importlinter]` in pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` of the interpreter running the tests, on the package under `root/src`, with
    the contracts of `root/pyproject.toml`."""
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [
        sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                              "sys.exit(lint_imports_command())"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("PYTHONSAFEPATH", None)
    return subprocess.run([*command, "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def _package_seen_from(root: Path) -> Path:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    out = subprocess.run([sys.executable, "-c", "import trackport; print(trackport.__file__)"], cwd=root,
                         env=env, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip()).resolve().parent


def test_the_import_contracts_hold():
    # The contracts are about this checkout's code, not some other installed copy of it.
    assert _package_seen_from(ROOT) == ROOT / "src" / "trackport"
    result = _lint_imports(ROOT)
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"
    assert "0 broken" in result.stdout, result.stdout


def test_a_core_module_importing_a_connector_breaks_the_layers(tmp_path):
    # The same contracts on a copy of the package whose core imports a connector module that
    # exists only in the copy: lint-imports must fail and name the import.
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "trackport", tmp_path / "src" / "trackport",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "src" / "trackport" / "connectors" / "parquet" / "layering_probe.py").write_text("PROBE = 1\n")
    model = tmp_path / "src" / "trackport" / "core" / "model.py"
    model.write_text(model.read_text() + "\nfrom trackport.connectors.parquet.layering_probe import PROBE  # noqa\n")
    assert _package_seen_from(tmp_path) == tmp_path / "src" / "trackport"
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "trackport.core is not allowed to import trackport.connectors" in result.stdout, result.stdout
    assert "trackport.core.model -> trackport.connectors.parquet.layering_probe" in result.stdout, result.stdout
