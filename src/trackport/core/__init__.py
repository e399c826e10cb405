"""The spine: canonical format, pipeline, state, registry."""
