"""Recursion, fan-out, budget and cancellation tests; shared helpers below."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from rlm_service.server import Server


@asynccontextmanager
async def open_stub(server: Server) -> AsyncIterator[rlm_pb2_grpc.RLMServiceStub]:
    """A client for a server started with custom settings (``start_server(...)``)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield rlm_pb2_grpc.RLMServiceStub(channel)
