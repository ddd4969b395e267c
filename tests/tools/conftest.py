"""A tools module on disk, a small HTTP endpoint on 127.0.0.1 and its tools file."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

TOOLS_SOURCE = '''\
"""Operator tools for the tests."""
import os


def shout(text: str, times: int = 1) -> str:
    """Upper-cases TEXT, TIMES times over."""
    return " ".join([text.upper()] * times)


def whoami() -> dict:
    """Facts about the process the tool runs in."""
    return {"uid": os.getuid(), "file": __file__}


def scribble() -> str:
    """Tries to change this tool's own file."""
    try:
        with open(__file__, "a") as f:
            f.write("# changed by the model\\n")
    except OSError as exc:
        return f"refused: {type(exc).__name__}"
    return "wrote"


def _hidden() -> None:
    """Private: never listed."""


def undocumented():
    return 1
'''
SLOW_SECONDS = 3.0
MAX_BYTES = 20_000


@pytest.fixture
def tools_module(world_tmp: Path) -> Path:
    path = world_tmp / "optools.py"
    path.write_text(TOOLS_SOURCE)
    os.chmod(path, 0o644)
    return path


@dataclass
class Endpoint:
    port: int
    hits: Counter[str] = field(default_factory=Counter)
    bodies: list[Any] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    """/echo (JSON), /text, /slow, /big, /redirect (to /echo), on a free port."""
    app = web.Application()
    ep = Endpoint(0)

    async def echo(request: web.Request) -> web.Response:
        ep.hits[request.path] += 1
        body = await request.json()
        ep.bodies.append(body)
        ep.headers.append(dict(request.headers))
        return web.json_response({"got": body})

    async def text(request: web.Request) -> web.Response:
        ep.hits[request.path] += 1
        return web.Response(text="plain words")

    async def slow(request: web.Request) -> web.Response:
        ep.hits[request.path] += 1
        await asyncio.sleep(SLOW_SECONDS)
        return web.json_response({"late": True})

    async def big(request: web.Request) -> web.Response:
        ep.hits[request.path] += 1
        return web.Response(text="x" * (MAX_BYTES * 5))

    async def redirect(request: web.Request) -> web.Response:
        ep.hits[request.path] += 1
        raise web.HTTPFound("/echo")

    for path, handler in (("/echo", echo), ("/text", text), ("/slow", slow), ("/big", big),
                          ("/redirect", redirect)):
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ep.port = runner.addresses[0][1]
    try:
        yield ep
    finally:
        await runner.cleanup()


ECHO_SCHEMA = {
    "type": "object",
    "properties": {"msg": {"type": "string"}, "n": {"type": "integer", "minimum": 0}},
    "required": ["msg"],
    "additionalProperties": False,
}


def http_tools(endpoint: Endpoint) -> list[dict[str, Any]]:
    return [
        {"name": "echo", "description": "Echoes its arguments back.",
         "url": endpoint.url("/echo"), "parameters": ECHO_SCHEMA,
         "headers": {"X-Tool-Key": "operator-secret"}},
        {"name": "words", "description": "Some plain text.", "url": endpoint.url("/text")},
        {"name": "slow", "description": "Answers late.", "url": endpoint.url("/slow"),
         "timeout_seconds": 0.5},
        {"name": "big", "description": "Answers too much.", "url": endpoint.url("/big")},
        {"name": "bounce", "description": "Redirects.", "url": endpoint.url("/redirect")},
    ]


@pytest.fixture
def tools_file(world_tmp: Path, endpoint: Endpoint) -> Path:
    path = world_tmp / "http_tools.json"
    path.write_text(json.dumps({"tools": http_tools(endpoint)}))
    return path
