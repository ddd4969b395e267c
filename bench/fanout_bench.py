"""Sub-call fan-out benchmark: how close a wide llm_query_batched gets to the ideal.

The real server (sandbox, callback socket, google-genai SDK) runs against the
fake Gemini API with fixed latencies. One run has three root turns; the middle
one fans out N llm_query calls through llm_query_batched. With root latency L,
sub-call latency S and C calls at once (batch_concurrency and
max_concurrent_model_calls), the ideal wall time is

    3 * L + ceil(N / C) * S

and the figure reported is measured / ideal (median over the repetitions).
The fake runs in its own process by default, as a remote API would; with
--fake-in-process its CPU use competes with the server's.

    .venv/bin/python -m bench.fanout_bench [--reps 5] [--n 200] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from typing import Any

import grpc

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from rlm_service.server import Server

MARK = "MARK-BENCH"


def turns(n: int) -> list[str]:
    return [
        "```repl\nprint(len(context))\n```",
        f"```repl\nout = llm_query_batched([f'item {{i}}' for i in range({n})])\n"
        "bad = [o for o in out if o.startswith('Error')]\nprint(len(out), len(bad))\n```",
        "FINAL(done)",
    ]


def _fake_main(conn: Any, root_latency: float, sub_latency: float, n: int) -> None:
    from tests.fakes.gemini import FakeGemini

    with FakeGemini() as fake:
        fake.model_latency = {"fake-root": root_latency, "fake-sub": sub_latency}
        fake.script(MARK, turns(n))  # type: ignore[arg-type]
        conn.send(fake.base_url)
        while True:
            msg = conn.recv()
            if msg == "stats":
                conn.send((len(fake.requests), fake.max_in_flight))
                fake.reset_stats()
            else:
                return


class FakeProcess:
    def __init__(self, root_latency: float, sub_latency: float, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_fake_main, args=(child, root_latency, sub_latency, n),
                                daemon=True)
        self.proc.start()
        self.base_url: str = self.conn.recv()

    def stats(self) -> tuple[int, int]:
        self.conn.send("stats")
        stats: tuple[int, int] = self.conn.recv()
        return stats

    def close(self) -> None:
        self.conn.send("stop")
        self.proc.join(5)


class FakeInProcess:
    def __init__(self, root_latency: float, sub_latency: float, n: int) -> None:
        from tests.fakes.gemini import FakeGemini

        self.fake = FakeGemini().start()
        self.fake.model_latency = {"fake-root": root_latency, "fake-sub": sub_latency}
        self.fake.script(MARK, turns(n))  # type: ignore[arg-type]
        self.base_url = self.fake.base_url

    def stats(self) -> tuple[int, int]:
        stats = (len(self.fake.requests), self.fake.max_in_flight)
        self.fake.reset_stats()
        return stats

    def close(self) -> None:
        self.fake.stop()


async def one_run(stub: rlm_pb2_grpc.RLMServiceAsyncStub, n: int) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    events = [e async for e in stub.StreamCompletion(make_request(f"{MARK} go", "ctx"))]
    elapsed = time.perf_counter() - started
    final = events[-1]
    assert final.HasField("final_answer"), final
    blocks = [e.code_block for e in events if e.HasField("code_block")]
    assert blocks[1].stdout.strip() == f"{n} 0", blocks[1]
    return elapsed, events


def phases(events: list[Any]) -> str:
    turns_ = [e.root_turn for e in events if e.HasField("root_turn")]
    blocks = [e.code_block for e in events if e.HasField("code_block")]
    root = sum(t.latency_seconds for t in turns_)
    code = sum(b.duration_seconds for b in blocks)
    return f"root turns {root:.3f} s, blocks {code:.3f} s (fan-out block {blocks[1].duration_seconds:.3f} s)"


async def main_async(args: argparse.Namespace) -> float:
    from tests.conftest import make_settings

    fake_cls = FakeInProcess if args.fake_in_process else FakeProcess
    fake = fake_cls(args.root_latency, args.sub_latency, args.n)
    # make_settings only needs .base_url from the fake.
    settings = make_settings(fake, batch_concurrency=args.concurrency,  # type: ignore[arg-type]
                             max_concurrent_model_calls=args.concurrency,
                             sandbox_pool_size=2, log_level="WARNING")
    server = Server(settings)
    await server.start()
    ideal = 3 * args.root_latency + math.ceil(args.n / args.concurrency) * args.sub_latency
    times: list[float] = []
    profiler = cProfile.Profile() if args.profile else None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = rlm_pb2_grpc.RLMServiceStub(channel)
            await one_run(stub, args.n)  # warm-up: imports, connections, JIT-free caches
            fake.stats()
            for rep in range(args.reps):
                if profiler:
                    profiler.enable()
                cpu = time.process_time()
                elapsed, events = await one_run(stub, args.n)
                cpu = time.process_time() - cpu
                if profiler:
                    profiler.disable()
                requests, peak = fake.stats()
                times.append(elapsed)
                print(f"rep {rep + 1}: {elapsed:.3f} s, ratio {elapsed / ideal:.3f}; "
                      f"{requests} model requests, peak {peak} in flight; server+client CPU "
                      f"{cpu:.3f} s ({cpu / requests * 1000:.2f} ms per request); {phases(events)}")
                await asyncio.sleep(0.3)  # let the pool refill its REPL
    finally:
        await server.stop(grace=0)
        fake.close()
    if profiler:
        profiler.dump_stats(args.profile)
        print(f"profile written to {args.profile}")
    median = statistics.median(times)
    ratio: float = median / ideal
    print(f"N={args.n} C={args.concurrency} L={args.root_latency} S={args.sub_latency}: "
          f"ideal {ideal:.3f} s, median {median:.3f} s (min {min(times):.3f}, "
          f"max {max(times):.3f}), ratio {ratio:.3f} (target <= 1.15)")
    return ratio


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=200, help="llm_query calls in the batch")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--root-latency", type=float, default=0.1)
    parser.add_argument("--sub-latency", type=float, default=0.1)
    parser.add_argument("--fake-in-process", action="store_true")
    parser.add_argument("--profile", help="write a cProfile of the measured runs here")
    args = parser.parse_args()
    print(machine())
    ratio: float = asyncio.run(main_async(args))
    sys.exit(0 if ratio <= 1.15 else 1)


if __name__ == "__main__":
    main()
