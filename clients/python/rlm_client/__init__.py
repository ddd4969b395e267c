"""Python client for rlm-service: ``RLMClient``, ``AsyncRLMClient`` and the ``rlm`` command."""

from __future__ import annotations

from rlm_client.client import AsyncRLMClient, RLMClient, make_request

__all__ = ["AsyncRLMClient", "RLMClient", "make_request"]
