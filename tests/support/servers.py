"""The one in-process server fixture: the real server on free ports, stopped in a
``finally`` whatever happens (a start that fails half way stops itself)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import pytest

from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from rlm_service.server import Server
from tests.fakes.gemini import FakeGemini
from tests.support.procs import trees
from tests.support.settings import make_settings

StartServer = Callable[..., Awaitable[Server]]

_CHANNEL_OPTIONS = [("grpc.max_send_message_length", 512 << 20),
                    ("grpc.max_receive_message_length", 512 << 20)]


@asynccontextmanager
async def running_server(fake: FakeGemini, **overrides: Any) -> AsyncIterator[Server]:
    """A started server talking to ``fake``; stopped (grace 0) on the way out."""
    server = Server(make_settings(fake, **overrides))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0)


@asynccontextmanager
async def open_stub(server: Server) -> AsyncIterator[rlm_pb2_grpc.RLMServiceStub]:
    """A client on its own channel to ``server``."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}",
                                         options=_CHANNEL_OPTIONS) as channel:
        yield rlm_pb2_grpc.RLMServiceStub(channel)


def busy_repl_pids(server: Server) -> set[int]:
    """Host pids of the REPLs that runs are using right now, with their children."""
    return trees(server.repl_pids("busy"))


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
async def start_server(fake_gemini: FakeGemini) -> AsyncIterator[StartServer]:
    """``await start_server(**settings_overrides)``: as many servers as a test wants,
    every one stopped at teardown, even if a later one failed to start."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Server:
            return await stack.enter_async_context(running_server(fake_gemini, **overrides))

        yield start


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


@pytest.fixture
async def stub(server: Server) -> AsyncIterator[rlm_pb2_grpc.RLMServiceStub]:
    async with open_stub(server) as s:
        yield s
