"""Operational end-to-end tests: metrics scrape, traces, logs and shutdown of a real server."""
