"""The release, as pyproject.toml declares it (kept equal by tests/test_core.py)."""

__version__ = "0.1.0"
