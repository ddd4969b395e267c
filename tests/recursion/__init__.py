"""Recursion, fan-out, budget and cancellation tests."""

from __future__ import annotations

from tests.support.servers import open_stub

__all__ = ["open_stub"]
