"""The REPL starts, and loads the context, while the first root call is in flight."""

from __future__ import annotations

import time

import grpc

from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from tests.conftest import StartServer, collect, final_of, repl
from tests.fakes.gemini import FakeGemini, Req

LATENCY = 0.6


async def test_the_first_root_call_does_not_wait_for_the_repl(
        start_server: StartServer, fake_gemini: FakeGemini) -> None:
    # No pre-started REPL and a context that takes a while to load: a REPL that is
    # ready only after a few hundred milliseconds.
    server = await start_server(sandbox_pool_size=0)
    assert server.port
    context = "0123456789abcdef" * (4 << 20)  # 64 MiB
    first_call: list[float] = []

    def first(req: Req) -> str:
        first_call.append(req.at)  # when the call arrived, before the fake's latency
        return repl("print(len(context))")

    fake_gemini.script("MARK-OVERLAP", [first, "FINAL(done)"])
    fake_gemini.model_latency["fake-root"] = LATENCY
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}",
            options=[("grpc.max_send_message_length", 256 << 20)]) as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        started = time.monotonic()
        events = await collect(stub, "MARK-OVERLAP go", context)
        done = time.monotonic()
    assert final_of(events).answer == "done"
    block = next(e.code_block for e in events if e.HasField("code_block"))
    assert block.stdout.strip() == str(len(context))
    # The first call reached the model long before a REPL could be started and
    # loaded; without the overlap it would come only after the load.
    run_started = events[0].time.ToNanoseconds() / 1e9 - (time.time() - time.monotonic())
    to_first_call = first_call[0] - run_started
    assert to_first_call < 0.15, f"first root call after {to_first_call:.2f} s"
    # And the run took about two model calls, not two calls plus the REPL's start.
    root_turns = [e.root_turn for e in events if e.HasField("root_turn")]
    assert len(root_turns) == 2
    assert done - started >= 2 * LATENCY
