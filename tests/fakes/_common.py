"""Machinery shared by the fake model servers.

Each fake is a real aiohttp server on 127.0.0.1 running in its own thread and
event loop, so the code under test talks to it over real sockets with the real
SDKs, from whatever event loop the test uses.
"""

from __future__ import annotations

import asyncio
import enum
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web


class Fault(enum.Enum):
    RATE_LIMIT_429 = "rate_limit_429"
    SERVER_ERROR_500 = "server_error_500"
    UNAVAILABLE_503 = "unavailable_503"
    GATEWAY_TIMEOUT_504 = "gateway_timeout_504"
    BAD_REQUEST_400 = "bad_request_400"
    UNAUTHORIZED_401 = "unauthorized_401"
    FORBIDDEN_403 = "forbidden_403"
    NOT_FOUND_404 = "not_found_404"
    HANG = "hang"
    DROP_CONNECTION = "drop_connection"
    MALFORMED_JSON = "malformed_json"
    SAFETY = "safety"
    RECITATION = "recitation"
    MAX_TOKENS = "max_tokens"
    EMPTY_CANDIDATES = "empty_candidates"
    PROMPT_BLOCKED = "prompt_blocked"
    # Chaos modes (tests/models/test_chaos.py):
    DROP_MID_STREAM = "drop_mid_stream"  # some of the reply, then the connection drops
    HTML_ERROR = "html_error"  # a proxy's HTML error page (param ``status``, default 500)
    HUGE_REPLY = "huge_reply"  # a well-formed reply of ``size`` characters (default 50 MB)


# What a crashed proxy in front of a model server might send: HTML, a traceback and a
# credential, none of which may reach a client.
HTML_ERROR_PAGE = (
    "<!DOCTYPE html><html><head><title>500 Internal Server Error</title></head><body>"
    "<h1>Internal Server Error</h1><pre>Traceback (most recent call last):\n"
    '  File "/srv/proxy.py", line 12, in handle\n'
    "    upstream(token='proxy-secret-7f3a')\nRuntimeError: upstream died</pre></body></html>"
)
HUGE_REPLY_CHARS = 50 * 1024 * 1024
DROP_AFTER_FIRST_EVENT = web.RequestKey("drop_after_first_event", bool)


def huge_reply(params: Mapping[str, Any]) -> Reply:
    size = int(params.get("size", HUGE_REPLY_CHARS))
    return Reply(text=str(params.get("fill", "x")) * size)


@dataclass(frozen=True)
class Req:
    """One request as the fake saw it (wire JSON kept raw)."""

    model: str
    contents: list[Any]
    system_instruction: str | None
    last_user_text: str
    first_user_text: str
    generation_config: dict[str, Any]
    headers: dict[str, str]
    stream: bool
    model_turns: int
    prompt_chars: int
    at: float = field(default_factory=time.monotonic)
    body: dict[str, Any] = field(default_factory=dict, repr=False)
    path: str = ""


@dataclass(frozen=True)
class Reply:
    """A scripted turn with more control than a plain string."""

    text: str = ""
    finish_reason: str | None = None  # None -> the wire's normal stop value
    thoughts_tokens: int | None = None  # None -> the server's ``thinking_tokens``
    cached_tokens: int | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    thought: str | None = None  # Gemini: a thought-summary part sent before the answer


Turn = str | Reply | Callable[[Req], "str | Reply"]


@dataclass
class _QueuedFault:
    fault: Fault
    remaining: int
    model: str | None
    params: dict[str, Any]


@dataclass(frozen=True)
class FaultHit:
    fault: Fault
    params: Mapping[str, Any]


def tokens_for(chars: int) -> int:
    return max(1, chars // 4)


def chunk_text(text: str, parts: int = 3) -> list[str]:
    """Split into a few pieces so streaming tests see several deltas."""
    if not text:
        return [""]
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\r\n\r\n".encode()


class FakeServer:
    """Base class: lifecycle, scripting, stats, latency and the fault queue.

    Subclasses add the routes and turn wire JSON into a ``Req`` and a reply
    back into wire JSON.
    """

    # A HANG must outlast every client timeout used in tests, yet stop() cancels it.
    HANG_SECONDS = 3600.0

    def __init__(self) -> None:
        self.latency: float = 0.0
        self.model_latency: dict[str, float] = {}
        self.thinking_tokens: int = 0
        self.cached_tokens: int = 0
        # Gap between streamed chunks; raise it to cancel or time out mid-stream.
        self.chunk_delay: float = 0.005
        self.sub_answer: Callable[[str], str] = _default_sub_answer
        self._scripts: dict[str, list[Turn]] = {}
        self._faults: deque[_QueuedFault] = deque()
        self._lock = threading.Lock()
        self.requests: list[Req] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.disconnects = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._handler_tasks: set[asyncio.Task[Any]] = set()
        self._port = 0

    # -- lifecycle -------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if not self._port:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> Self:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait()
        asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        return self

    async def _serve(self) -> None:
        app = web.Application(client_max_size=512 * 1024 * 1024)
        self._add_routes(app)
        # Without handler_cancellation aiohttp keeps running a handler whose
        # client went away, and in-flight counts would never drop.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5,
                               access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        self._runner = runner

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            # Closing a loop that is still running would hide why it did not stop.
            assert not thread.is_alive(), f"{type(self).__name__} did not stop within 10 s"
            loop.close()
            self._loop = None
            self._thread = None

    async def _shutdown(self) -> None:
        for task in list(self._handler_tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting and faults ---------------------------------------------------

    def script(self, marker: str, turns: list[Turn]) -> None:
        if not turns:
            raise ValueError("a script needs at least one turn")
        with self._lock:
            self._scripts[marker] = list(turns)

    def inject(self, fault: Fault, count: int = 1, model: str | None = None,
               **params: Any) -> None:
        with self._lock:
            self._faults.append(_QueuedFault(fault, count, model, params))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_stats(self) -> None:
        with self._lock:
            self.requests = []
            self.max_in_flight = self.in_flight
            self.disconnects = 0

    def calls_for(self, model: str) -> list[Req]:
        with self._lock:
            return [r for r in self.requests if r.model == model]

    async def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once no request is being handled (server side).

        Async so the caller's loop keeps running while it waits: a client
        transport closes its socket from that loop after a cancellation."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.in_flight == 0:
                return True
            await asyncio.sleep(0.01)
        return self.in_flight == 0

    # -- helpers for subclasses -------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _take_fault(self, model: str) -> FaultHit | None:
        with self._lock:
            for queued in self._faults:
                if queued.model is None or queued.model == model:
                    queued.remaining -= 1
                    if queued.remaining <= 0:
                        self._faults.remove(queued)
                    return FaultHit(queued.fault, dict(queued.params))
        return None

    def _reply_for(self, req: Req) -> Reply:
        with self._lock:
            turns = next((t for m, t in self._scripts.items() if m in req.first_user_text),
                         None)
        if turns is None:
            return Reply(text=self.sub_answer(req.last_user_text))
        turn = turns[min(req.model_turns, len(turns) - 1)]
        if callable(turn):
            turn = turn(req)
        return Reply(text=turn) if isinstance(turn, str) else turn

    def _delay_for(self, model: str) -> float:
        return self.model_latency.get(model, self.latency)

    async def _tracked(self, req: Req, request: web.Request,
                       handle: Callable[[], Any]) -> web.StreamResponse:
        """Run one handler with stats, latency and disconnect accounting."""
        task = asyncio.current_task()
        assert task is not None
        with self._lock:
            self.requests.append(req)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._handler_tasks.add(task)
        try:
            delay = self._delay_for(req.model)
            if delay > 0:
                await asyncio.sleep(delay)
            result: web.StreamResponse = await handle()
            return result
        except _DroppedError:
            raise
        except asyncio.CancelledError:
            with self._lock:
                self.disconnects += 1
            raise
        finally:
            self._handler_tasks.discard(task)
            with self._lock:
                self.in_flight -= 1

    async def _hang(self) -> None:
        await asyncio.sleep(self.HANG_SECONDS)

    async def _transport_fault(self, hit: FaultHit | None, req: Req,
                               request: web.Request) -> web.StreamResponse | None:
        """Faults that look the same whatever the API: hang, drop, garbage."""
        if hit is None:
            return None
        if hit.fault is Fault.HANG:
            await self._hang()
        if hit.fault is Fault.DROP_CONNECTION:
            return self._drop(request)
        if hit.fault is Fault.MALFORMED_JSON:
            return await self._malformed(request, stream=req.stream, body=hit.params.get("body"))
        if hit.fault is Fault.HTML_ERROR:
            return web.Response(status=int(hit.params.get("status", 500)), text=HTML_ERROR_PAGE,
                                content_type="text/html")
        if hit.fault is Fault.DROP_MID_STREAM:
            if req.stream:
                # The real reply starts; _send_sse drops the connection after its first event.
                request[DROP_AFTER_FIRST_EVENT] = True
                return None
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                           "Content-Length": "100000"})
            await resp.prepare(request)
            await resp.write(b'{"candidates": [{"content": {"parts": [{"text": "partial')
            await asyncio.sleep(0.01)
            return self._drop(request)
        return None

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        # Closing the transport without writing anything is what a crashed
        # proxy or a reset looks like to the client.
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise _DroppedError

    # Cut off mid-object: the shape a truncated or garbled upstream body has.
    MALFORMED_BODY = b'{"candidates": [{"content": {"par'
    MALFORMED_SSE = b'data: {"candidates": [{"content": {"parts": [{"te\r\n\r\n'

    async def _malformed(self, request: web.Request, *, stream: bool,
                         body: bytes | None = None) -> web.StreamResponse:
        """``body`` (plain replies only) replaces the truncated default, e.g.
        with valid JSON of the wrong shape."""
        if stream:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(self.MALFORMED_SSE)
            await resp.write_eof()
            return resp
        return web.Response(status=200, body=body or self.MALFORMED_BODY,
                            content_type="application/json")

    async def _send_sse(self, request: web.Request, events: list[bytes]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for i, event in enumerate(events):
            if i and self.chunk_delay > 0:
                # A gap makes the chunks arrive as separate reads.
                await asyncio.sleep(self.chunk_delay)
            if i and request.get(DROP_AFTER_FIRST_EVENT):
                return self._drop(request)
            await resp.write(event)
        await resp.write_eof()
        return resp


class _DroppedError(asyncio.CancelledError):
    """Raised after aborting the socket: aiohttp then ends the handler quietly."""


def _default_sub_answer(prompt: str) -> str:
    return f"sub<{len(prompt)}>:{prompt[:30]}"


def json_response(obj: Any, status: int = 200,
                  headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(obj), content_type="application/json",
                        headers=headers)


async def read_json(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    try:
        data = json.loads(body or b"{}")
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}

