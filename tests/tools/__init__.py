"""Operator tools: the sandbox tools module, host-side HTTP tools, per-depth tool sets."""
