"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from mlflow_server import mlflow_server, mlflow_sqlite_uri  # noqa: F401  (real MLflow fixtures)
from pluto_server import pluto_server, pluto_server_session  # noqa: F401  (local Pluto server)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Every test runs in its own folder: the default destination and ledger land there."""
    monkeypatch.chdir(tmp_path)
