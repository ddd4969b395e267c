"""Shared fixtures: a fake Gemini API and the real server on free ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from rlm_service.config import Settings
from rlm_service.server import Server
from tests.fakes.gemini import FakeGemini

ROOT_MODEL = "fake-root"
SUB_MODEL = "fake-sub"
API_KEY = "test-key-must-never-leak-4b1d"


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


def make_settings(fake: FakeGemini, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "port": 0, "host": "127.0.0.1", "metrics_port": 0,
        "http_port": 0, "http_host": "127.0.0.1",
        "gemini_api_key": API_KEY, "gemini_base_url": fake.base_url,
        "gemini_model_name": ROOT_MODEL, "gemini_sub_model_name": SUB_MODEL,
        "sandbox_pool_size": 1, "model_retry_base_seconds": 0.01,
        "model_retry_max_seconds": 0.05, "shutdown_grace_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(fake_gemini: FakeGemini) -> AsyncIterator[StartServer]:
    started: list[Server] = []

    async def start(**overrides: Any) -> Server:
        server = Server(make_settings(fake_gemini, **overrides))
        started.append(server)
        await server.start()
        return server

    yield start
    for server in started:
        await server.stop(grace=0)


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    return await start_server()


@pytest.fixture
async def stub(server: Server) -> AsyncIterator[rlm_pb2_grpc.RLMServiceStub]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{server.port}",
        options=[("grpc.max_send_message_length", 512 << 20),
                 ("grpc.max_receive_message_length", 512 << 20)],
    ) as channel:
        yield rlm_pb2_grpc.RLMServiceStub(channel)


async def collect(stub: rlm_pb2_grpc.RLMServiceStub, prompt: str, context: Any = None,
                  **fields: Any) -> list[rlm_pb2.CompletionEvent]:
    return [e async for e in stub.StreamCompletion(make_request(prompt, context, **fields))]


def final_of(events: list[rlm_pb2.CompletionEvent]) -> rlm_pb2.FinalAnswer:
    assert events[-1].HasField("final_answer"), events[-1]
    return events[-1].final_answer


def of_kind(events: list[rlm_pb2.CompletionEvent], kind: str) -> list[Any]:
    return [getattr(e, kind) for e in events if e.WhichOneof("event") == kind]


def sandbox_pids() -> set[int]:
    """Host pids of every sandboxed REPL (bwrap and its children) on this machine."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"rlm_service.repl_guest" in cmd:
            pids.add(int(entry))
    return pids


def process_tree(root: int) -> set[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            tree.add(pid)
            todo.extend(children.get(pid, []))
    return tree


def busy_repl_pids(server: Server) -> set[int]:
    """Host pids of the REPLs that runs are using right now, with their children."""
    pool = server._pool
    assert pool is not None
    idle = set(map(id, pool._idle))
    pids: set[int] = set()
    for repl in pool._live:
        if id(repl) not in idle:
            pids |= process_tree(repl.proc.pid)
    return pids


def repl(code: str) -> str:
    return f"Let me run this.\n```repl\n{code}\n```"
