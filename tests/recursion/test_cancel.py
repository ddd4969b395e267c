"""Client cancellation during a fan-out, and heartbeats during a long block."""

from __future__ import annotations

import time

from rlm_client import make_request
from tests.conftest import busy_repl_pids, collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini
from tests.recursion import open_stub
from tests.support.procs import is_alive as alive
from tests.support.procs import settled as wait_for


async def test_cancel_during_batch_stops_calls_and_repl(start_server,
                                                        fake_gemini: FakeGemini) -> None:
    server = await start_server(batch_concurrency=32)
    fake_gemini.model_latency["fake-sub"] = 30.0
    fake_gemini.script("MARK-CANCEL-BATCH", [repl(
        "out = llm_query_batched([f'slow {i}' for i in range(30)])\nFINAL('not reached')")])
    async with open_stub(server) as stub:
        call = stub.StreamCompletion(make_request("MARK-CANCEL-BATCH go", "ctx"))
        started = 0
        async for event in call:
            if event.HasField("sub_call_started"):
                started += 1
                if started == 30:
                    break
        assert await wait_for(lambda: fake_gemini.in_flight == 30, 5.0), fake_gemini.in_flight
        running = busy_repl_pids(server)
        assert running
        call.cancel()
        t0 = time.monotonic()
        # Every model request is dropped (the fake sees the disconnects) ...
        assert await wait_for(lambda: fake_gemini.in_flight == 0, 1.0), fake_gemini.in_flight
        # ... and the run's REPL, with everything it started, is gone.
        assert await wait_for(lambda: not [p for p in running if alive(p)],
                              1.0 - (time.monotonic() - t0)), [p for p in running if alive(p)]
    assert fake_gemini.disconnects == 30
    engine = server.engine
    assert engine is not None
    assert await wait_for(lambda: not engine.active, 1.0)


async def test_heartbeats_during_a_long_block(start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server(heartbeat_seconds=0.3)
    fake_gemini.script("MARK-BEAT", [repl("import time\ntime.sleep(1.2)\nFINAL('awake')")])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-BEAT go", "ctx")
    assert final_of(events).answer == "awake"
    beats = of_kind(events, "heartbeat")
    assert len(beats) >= 2
    elapsed = [b.elapsed_seconds for b in beats]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0.25
    # They come while the block runs: between the root turn and the code block.
    kinds = [e.WhichOneof("event") for e in events]
    first_beat = kinds.index("heartbeat")
    assert kinds.index("root_turn") < first_beat < kinds.index("code_block")
