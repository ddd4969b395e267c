"""A stub on a server of the in-process fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from rlm_service.server import Server


@asynccontextmanager
async def stub_for(server: Server) -> AsyncIterator[rlm_pb2_grpc.RLMServiceStub]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}",
        options=[("grpc.max_send_message_length", 512 << 20),
                 ("grpc.max_receive_message_length", 512 << 20)],
    ) as channel:
        yield rlm_pb2_grpc.RLMServiceStub(channel)
