"""Connectors, one folder per scheme; see core/registry.py."""
