"""CPU per model call of the Gemini backend's request paths.

N plain calls, C at a time, against the fake Gemini API in its own process with
a fixed latency; reports the benchmark process's CPU time per call
(``time.process_time``), which is what bounds how many sub-calls one event loop
can keep in flight. Variants:

* ``backend``: ``GeminiBackend`` as the service runs it (aiohttp transport,
  REST JSON through the SDK's API client);
* ``backend-typed``: the same backend with the fast path off (the SDK's typed
  ``generate_content`` over aiohttp, which streamed calls use);
* ``sdk-httpx``: what the backend did before: the typed call (same contents
  and config objects) over an httpx client with a pool of C connections.

    .venv/bin/python -m bench.gemini_backend_bench [--n 400] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from bench.fanout_bench import FakeProcess, machine
from rlm_service.config import Settings
from rlm_service.models import GenerateOptions, Message
from rlm_service.models.gemini import GeminiBackend

Call = Callable[[int], Awaitable[object]]


async def measure(label: str, call: Call, n: int, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> object:
        async with gate:
            return await call(i)

    await asyncio.gather(*(one(i) for i in range(concurrency)))  # connections, imports
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{label:14s} {n} calls in {wall:.3f} s, CPU {cpu:.3f} s = {cpu / n * 1000:.2f} ms/call")


async def main_async(args: argparse.Namespace, base_url: str) -> None:
    import httpx2
    from google import genai
    from google.genai import types

    settings = Settings(_env_file=None, gemini_api_key="bench-key-0123456789",
                        gemini_base_url=base_url, max_concurrent_model_calls=args.concurrency)
    for label, typed_only in (("backend", False), ("backend-typed", True)):
        backend = GeminiBackend(settings, typed_only=typed_only)

        async def via_backend(i: int, backend: GeminiBackend = backend) -> object:
            return await backend.generate("fake-sub", [Message("user", f"item {i}")],
                                          GenerateOptions())

        await measure(label, via_backend, args.n, args.concurrency)
        await backend.aclose()

    http = httpx2.AsyncClient(limits=httpx2.Limits(max_connections=args.concurrency,
                                                   max_keepalive_connections=args.concurrency))
    client = genai.Client(api_key="bench-key-0123456789", http_options=types.HttpOptions(
        base_url=base_url, httpx_async_client=http,
        retry_options=types.HttpRetryOptions(attempts=1)))

    async def via_sdk(i: int) -> object:
        return await client.aio.models.generate_content(
            model="fake-sub", contents=[types.Content(role="user", parts=[types.Part(text=f"item {i}")])],
            config=types.GenerateContentConfig())

    await measure("sdk-httpx", via_sdk, args.n, args.concurrency)
    await client.aio.aclose()
    await http.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1)
    args = parser.parse_args()
    print(machine())
    fake = FakeProcess(args.latency, args.latency, 1)
    try:
        asyncio.run(main_async(args, fake.base_url))
    finally:
        fake.close()


if __name__ == "__main__":
    main()
