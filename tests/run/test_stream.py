"""The edge: domain events become numbered CompletionEvents; failures keep their status."""

from __future__ import annotations

import asyncio

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.run.types import ErrorKind
from rlm_service.streaming import RequestStream
from tests.run.conftest import ROOT, SUB, Harness, block


async def events_of(harness: Harness, stream: RequestStream) -> list[rlm_pb2.CompletionEvent]:
    async with stream as events:
        return [e async for e in events]


async def test_events_are_numbered_and_end_with_the_answer(harness: Harness) -> None:
    harness.model.root.extend([block("print(llm_query('hi'))"), "FINAL(bye)"])
    stream = RequestStream(harness.engine(), harness.settings, asyncio.Semaphore(1),
                           harness.spec(max_llm_calls=9))
    events = await events_of(harness, stream)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(e.time.seconds > 0 for e in events)
    assert [e.WhichOneof("event") for e in events] == [
        "run_started", "root_turn", "sub_call_started", "sub_call_finished", "code_block",
        "root_turn", "final_answer"]
    started = events[0].run_started
    assert (started.root_model, started.sub_model, started.limits.max_llm_calls) == (ROOT, SUB, 9)
    assert list(started.sandbox_layers) == ["memory"]
    finished = events[3].sub_call_finished
    assert finished.kind == rlm_pb2.SUB_CALL_KIND_LLM and finished.usage.calls == 1
    assert finished.run_usage.calls == 2
    final = events[-1].final_answer
    assert final.answer == "bye" and final.stop_reason == rlm_pb2.STOP_REASON_ANSWERED
    assert {(u.model, u.depth) for u in final.usage} == {(ROOT, 0), (SUB, 1)}
    assert final.total_usage.calls == 3 and final.total_usage.cost_usd > 0
    assert stream.failure is None


async def test_a_failure_is_the_last_event_and_kept_for_the_face(harness: Harness) -> None:
    harness.pool.fail_next_acquire = True
    stream = RequestStream(harness.engine(), harness.settings, asyncio.Semaphore(1),
                           harness.spec())
    events = await events_of(harness, stream)
    assert events[-1].error.code == "UNAVAILABLE"
    assert "REPL could not be started" in events[-1].error.message
    assert stream.failure is not None and stream.failure.kind is ErrorKind.SANDBOX_UNAVAILABLE


async def test_closing_the_stream_early_cancels_the_request(harness: Harness) -> None:
    harness.model.delay = 0.2
    harness.model.root.extend([block("x = 1")] * 5)
    engine = harness.engine()
    stream = RequestStream(engine, harness.settings, asyncio.Semaphore(1), harness.spec())
    async with stream as events:
        async for event in events:
            if event.HasField("root_turn"):
                break
    assert not engine.active
    assert harness.pool.live == 0


async def test_an_observer_sees_every_event(harness: Harness) -> None:
    harness.model.root.append("FINAL(seen)")
    seen: list[int] = []
    stream = RequestStream(harness.engine(), harness.settings, asyncio.Semaphore(1),
                           harness.spec(), observe=lambda e: seen.append(e.seq))
    events = await events_of(harness, stream)
    assert seen == [e.seq for e in events] and len(seen) >= 3
