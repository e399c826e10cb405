"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from mlflow_server import mlflow_server, mlflow_sqlite_uri  # noqa: F401  (real MLflow fixtures)
from pluto_server import pluto_server, pluto_server_session  # noqa: F401  (local Pluto server)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own folder: the default destination and ledger land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _secrets_of_this_test_only(monkeypatch):
    """A command remembers the secrets it met for the rest of its process; the suite runs
    many commands in one process, so each test starts with none remembered (a password
    planted by one test would otherwise be scrubbed from another test's file names)."""
    from trackport.core import logs

    monkeypatch.setattr(logs, "_remembered", set())
    logs.forget_cached_secrets()
    yield
    logs.forget_cached_secrets()
