"""Connectors, one package per tracker: `<name>/__init__.py` declares `SPEC` (SDK-free) and
defines `open_source` / `open_sink`.  core/registry.py finds every package here without a list;
docs/connectors.md says how to write one.
"""
