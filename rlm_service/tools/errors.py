"""The failures of operator tools."""

from __future__ import annotations


class ToolConfigError(ValueError):
    """The operator's tool settings are wrong; the server refuses to start."""


class ToolCallFailed(Exception):
    """One tool call was refused or failed; the message is what the model's code sees."""
