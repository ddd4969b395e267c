"""The fake Gemini API as a standalone process, serving every bench trajectory.

It is tests/fakes/gemini.py (the real wire format, so the real google-genai
SDK talks to it, on either side) with one fixed latency for every call and
the scripts of bench/trajectories.py. It prints one JSON line
``{"url": ...}`` once it listens, then serves until SIGTERM or SIGINT.

    .venv/bin/python -m bench.fake_gemini --latency 0.1

Control routes for the bench driver: ``GET /_bench/stats`` (requests by
kind, peak in flight, seconds spent handling model requests, the latency
sleep included), ``POST /_bench/reset`` and ``POST /_bench/latency?s=0.1``.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import trajectories
from tests.fakes.gemini import FakeGemini, Req

_N_CALLS = re.compile(r"\bn=(\d+)")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _all_text(req: Req) -> str:
    texts = []
    for entry in req.contents:
        if isinstance(entry, dict):
            for part in entry.get("parts") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return "\n".join(texts)


class BenchFake(FakeGemini):
    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency
        # Root turns are streamed by our service and not by rlms; a gap between
        # chunks would charge only one side.
        self.chunk_delay = 0.0
        self.kinds: dict[str, int] = {"root": 0, "child": 0, "sub": 0}
        self.handler_seconds = 0.0
        self.started_at = time.monotonic()
        # An empty marker matches every request: the turn below routes them all.
        self.script("", [self._turn])

    def _turn(self, req: Req) -> str:
        text = _all_text(req)
        name = trajectories.scenario_of(text)
        with self._lock:
            kind = "root" if name else "child" if req.system_instruction else "sub"
            self.kinds[kind] += 1
        if name is not None:
            found = _N_CALLS.search(text)
            n_calls = int(found.group(1)) if found else trajectories.PER_CALL_N
            return trajectories.root_turn(name, req.model_turns, n_calls)
        if req.system_instruction:
            turns = trajectories.CHILD
            return turns[min(req.model_turns, len(turns) - 1)]
        return f"ok:{req.last_user_text[:20]}"

    def _add_routes(self, app: web.Application) -> None:
        super()._add_routes(app)
        app.router.add_get("/_bench/stats", self._stats)
        app.router.add_post("/_bench/reset", self._reset)
        app.router.add_post("/_bench/latency", self._set_latency)
        app.middlewares.append(self._timing)

    @web.middleware
    async def _timing(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_bench/"):
            return await handler(request)
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            spent = time.perf_counter() - started
            with self._lock:
                self.handler_seconds += spent

    async def _stats(self, request: web.Request) -> web.Response:
        with self._lock:
            body: dict[str, Any] = {
                "requests": len(self.requests), "max_in_flight": self.max_in_flight,
                "kinds": dict(self.kinds), "handler_seconds": self.handler_seconds,
                "latency": self.latency,
            }
        return web.json_response(body)

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        with self._lock:
            self.kinds = dict.fromkeys(self.kinds, 0)
            self.handler_seconds = 0.0
        return web.json_response({"ok": True})

    async def _set_latency(self, request: web.Request) -> web.Response:
        try:
            latency = float(request.query["s"])
        except (KeyError, ValueError):
            return web.json_response({"error": "give ?s=<seconds>"}, status=400)
        if not 0 <= latency <= 60:
            return web.json_response({"error": "latency must be within 0..60 s"}, status=400)
        self.latency = latency
        return web.json_response({"latency": latency})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds every model call takes (root and sub alike)")
    args = parser.parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with BenchFake(args.latency) as fake:
        print(json.dumps({"url": fake.base_url}), flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
