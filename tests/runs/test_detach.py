"""Runs that outlive their connection: detach, reattach, cancel by id, grace expiry,
and a caller without the run token refused. Real server, real sandbox, fake Gemini."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from tests.conftest import busy_repl_pids, repl
from tests.fakes.gemini import FakeGemini
from tests.recursion import open_stub
from tests.support.procs import is_alive as alive
from tests.support.procs import settled as wait_for

SLOW_STEPS = [
    repl("import time\ntime.sleep(0.4)\nstep = 1\nprint('one')"),
    repl("time.sleep(0.4)\nstep += 1\nprint('two')"),
    repl("time.sleep(0.4)\nFINAL(f'done after {step} steps')"),
]


async def _until(call: object, kind: str) -> list[rlm_pb2.CompletionEvent]:
    """Events of ``call`` up to and including the first of ``kind``."""
    seen = []
    async for event in call:  # type: ignore[attr-defined]
        seen.append(event)
        if event.WhichOneof("event") == kind:
            return seen
    raise AssertionError(f"the stream ended before a {kind} event")


def _started(events: list[rlm_pb2.CompletionEvent]) -> rlm_pb2.RunStarted:
    return next(e.run_started for e in events
                if e.HasField("run_started") and e.run_started.depth == 0)


async def _watch_all(stub: rlm_pb2_grpc.RLMServiceStub, run_id: str, token: str,
                     after: int) -> list[rlm_pb2.CompletionEvent]:
    return [e async for e in stub.WatchRun(
        rlm_pb2.WatchRunRequest(run_id=run_id, run_token=token, after_seq=after))]


async def test_detach_then_reattach_misses_and_repeats_nothing(
        start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-DETACH", list(SLOW_STEPS))
    async with open_stub(server) as stub:
        call = stub.StreamCompletion(make_request("MARK-DETACH go", "ctx",
                                                  detach_grace_seconds=20))
        first = await _until(call, "root_turn")
        started = _started(first)
        assert len(started.run_token) >= 32
        call.cancel()
        ref = rlm_pb2.RunRef(run_id=started.request_id, run_token=started.run_token)
        await asyncio.sleep(0.2)
        info = await stub.GetRun(ref)
        assert info.state == rlm_pb2.RUN_STATE_DETACHED, info
        assert info.watchers == 0 and 0 < info.grace_left_seconds <= 20
        # The run went on without a client: it is still spending.
        assert info.usage.calls >= 1
        rest = await _watch_all(stub, started.request_id, started.run_token, first[-1].seq)
    events = first + rest
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].final_answer.answer == "done after 2 steps"
    assert [e.code_block.stdout for e in events if e.HasField("code_block")] == [
        "one\n", "two\n", ""]


async def test_two_watchers_and_a_full_replay(start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-TWO", list(SLOW_STEPS))
    async with open_stub(server) as stub:
        call = stub.StreamCompletion(make_request("MARK-TWO go", "ctx",
                                                  detach_grace_seconds=20))
        first = await _until(call, "run_started")
        started = _started(first)
        watched, original = await asyncio.gather(
            _watch_all(stub, started.request_id, started.run_token, 0),
            _rest(call))
        assert [e.seq for e in watched] == [e.seq for e in first + original]
        assert watched[-1].final_answer.answer == "done after 2 steps"
        # Finished runs with a grace stay inspectable, and replayable, for a while.
        info = await stub.GetRun(rlm_pb2.RunRef(run_id=started.request_id,
                                                run_token=started.run_token))
        assert info.state == rlm_pb2.RUN_STATE_ANSWERED
        assert info.usage.calls == 3 and info.last_seq == watched[-1].seq
        again = await _watch_all(stub, started.request_id, started.run_token, 0)
        assert [e.seq for e in again] == [e.seq for e in watched]


async def _rest(call: object) -> list[rlm_pb2.CompletionEvent]:
    return [e async for e in call]  # type: ignore[attr-defined]


async def test_cancel_by_id_stops_the_run_and_its_repl(start_server,
                                                       fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-CANCELID", [repl("import time\ntime.sleep(60)\nFINAL('no')")])
    async with open_stub(server) as stub:
        call = stub.StreamCompletion(make_request("MARK-CANCELID go", "ctx",
                                                  detach_grace_seconds=20))
        first = await _until(call, "root_turn")
        started = _started(first)
        running = busy_repl_pids(server)
        assert running
        info = await stub.CancelRun(rlm_pb2.RunRef(run_id=started.request_id,
                                                   run_token=started.run_token))
        assert info.state == rlm_pb2.RUN_STATE_CANCELLED
        # The attached stream gets the ending, then the CANCELLED status.
        rest: list[rlm_pb2.CompletionEvent] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for event in call:
                rest.append(event)
        assert err.value.code() == grpc.StatusCode.CANCELLED
        assert "CancelRun" in (err.value.details() or "")
        assert rest[-1].error.code == "CANCELLED"
        assert [e.seq for e in first + rest] == list(range(1, len(first) + len(rest) + 1))
        assert await wait_for(lambda: not [p for p in running if alive(p)], 3.0)
        engine = server.engine
        assert engine is not None and await wait_for(lambda: not engine.active, 1.0)


async def test_grace_expiry_kills_the_run_and_its_repl(start_server,
                                                       fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-EXPIRE", [repl("import time\ntime.sleep(60)\nFINAL('no')")])
    async with open_stub(server) as stub:
        call = stub.StreamCompletion(make_request("MARK-EXPIRE go", "ctx",
                                                  detach_grace_seconds=0.5))
        first = await _until(call, "root_turn")
        started = _started(first)
        running = busy_repl_pids(server)
        assert running
        call.cancel()
        ref = rlm_pb2.RunRef(run_id=started.request_id, run_token=started.run_token)
        assert (await stub.GetRun(ref)).state == rlm_pb2.RUN_STATE_DETACHED
        # Still alive inside the grace ...
        await asyncio.sleep(0.2)
        assert [p for p in running if alive(p)]
        # ... and gone after it.
        assert await wait_for(lambda: not [p for p in running if alive(p)], 3.0)
        engine = server.engine
        assert engine is not None and await wait_for(lambda: not engine.active, 1.0)
        assert (await stub.GetRun(ref)).state == rlm_pb2.RUN_STATE_CANCELLED
        events: list[rlm_pb2.CompletionEvent] = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for event in stub.WatchRun(rlm_pb2.WatchRunRequest(
                    run_id=started.request_id, run_token=started.run_token,
                    after_seq=first[-1].seq)):
                events.append(event)
        assert err.value.code() == grpc.StatusCode.CANCELLED
        assert events[-1].error.code == "CANCELLED"
        assert "detach_grace_seconds" in events[-1].error.message


async def test_no_grace_keeps_cancel_on_disconnect(start_server,
                                                   fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-NOGRACE", [repl("import time\ntime.sleep(60)\nFINAL('no')")])
    async with open_stub(server) as stub:
        call = stub.StreamCompletion(make_request("MARK-NOGRACE go", "ctx"))
        started = _started(await _until(call, "root_turn"))
        running = busy_repl_pids(server)
        call.cancel()
        # Within a few seconds even on a busy machine (three test workers on two cores).
        assert await wait_for(lambda: not [p for p in running if alive(p)], 5.0)
        # Without a grace nothing is kept once the run has wound down.
        code = None
        for _ in range(100):
            try:
                await stub.GetRun(rlm_pb2.RunRef(run_id=started.request_id,
                                                 run_token=started.run_token))
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                break
            await asyncio.sleep(0.02)
        assert code == grpc.StatusCode.NOT_FOUND


async def test_another_caller_is_refused(start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.script("MARK-OTHER", list(SLOW_STEPS))
    async with open_stub(server) as stub:
        call = stub.StreamCompletion(make_request("MARK-OTHER go", "ctx",
                                                  detach_grace_seconds=20))
        started = _started(await _until(call, "run_started"))
        wrong = rlm_pb2.RunRef(run_id=started.request_id, run_token="guess-" + "x" * 26)
        for rpc in (stub.GetRun, stub.CancelRun):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await rpc(wrong)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _watch_all(stub, started.request_id, "", 0)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetRun(rlm_pb2.RunRef(run_id="0" * 32, run_token=started.run_token))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # The refused cancel did nothing: the run ends with its answer.
        rest = await _rest(call)
        assert rest[-1].final_answer.answer == "done after 2 steps"


async def test_replay_past_the_buffer_is_out_of_range(start_server,
                                                      fake_gemini: FakeGemini) -> None:
    server = await start_server(run_replay_events=10, heartbeat_seconds=0.02)
    fake_gemini.script("MARK-GONE", [repl("import time\ntime.sleep(0.6)\nFINAL('ok')")])
    async with open_stub(server) as stub:
        call = stub.StreamCompletion(make_request("MARK-GONE go", "ctx",
                                                  detach_grace_seconds=20))
        first = await _until(call, "run_started")
        started = _started(first)
        events = first + await _rest(call)
        assert len(events) > 10  # heartbeats during the block
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _watch_all(stub, started.request_id, started.run_token, 1)
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        tail = await _watch_all(stub, started.request_id, started.run_token,
                                events[-10].seq - 1)
        assert [e.seq for e in tail] == [e.seq for e in events[-10:]]


async def test_grace_over_the_cap_is_invalid(start_server) -> None:
    server = await start_server(max_detach_grace_seconds=30)
    async with open_stub(server) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Complete(make_request("q", "ctx", detach_grace_seconds=31))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "detach_grace_seconds" in (err.value.details() or "")
