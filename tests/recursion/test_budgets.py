"""Every budget stops a run at its limit with a forced, partial final answer."""

from __future__ import annotations

import asyncio
import time

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2
from tests.conftest import collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini
from tests.recursion import open_stub

# Turn 1 records a partial answer; turn 2 would go on forever.
SET_PARTIAL = repl("answer['content'] = 'partial so far'")


def total_tokens(usage: rlm_pb2.Usage) -> int:
    return usage.prompt_tokens + usage.output_tokens + usage.thinking_tokens


def assert_stopped(events: list[rlm_pb2.CompletionEvent],
                   reason: rlm_pb2.StopReason.ValueType) -> rlm_pb2.FinalAnswer:
    final = final_of(events)
    assert final.stop_reason == reason, final
    assert final.forced and final.answer == "partial so far"
    assert final.iterations == 2
    # The usage so far is reported, per model and depth and in total.
    assert final.total_usage.calls == sum(u.usage.calls for u in final.usage) > 0
    return final


async def test_max_llm_calls_is_never_exceeded(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.model_latency["fake-sub"] = 0.05
    fake_gemini.script("MARK-CALLS", [SET_PARTIAL, repl(
        "while True:\n    llm_query_batched(['more'] * 8)")])
    events = await collect(stub, "MARK-CALLS go", "ctx", max_llm_calls=12)
    final = assert_stopped(events, rlm_pb2.STOP_REASON_MAX_LLM_CALLS)
    # The cap is checked before a call starts: the fake never sees call 13. The
    # calls in flight at the stop are cut off but still counted, also one whose
    # request had not left the process yet (the count errs on the budget's side).
    assert final.total_usage.calls == 12
    assert 10 <= len(fake_gemini.requests) <= 12
    assert len(fake_gemini.calls_for("fake-root")) == 2
    assert await fake_gemini.wait_idle(1.0)


async def test_max_total_tokens_counts_thinking(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.thinking_tokens = 4000
    fake_gemini.script("MARK-TOKENS", [SET_PARTIAL, repl(
        "for i in range(40):\n    llm_query(f'tiny {i}')\nFINAL('not stopped')")])
    limit = 20_000
    events = await collect(stub, "MARK-TOKENS go", "ctx", max_total_tokens=limit)
    final = assert_stopped(events, rlm_pb2.STOP_REASON_MAX_TOTAL_TOKENS)
    usage = final.total_usage
    assert usage.thinking_tokens == 4000 * usage.calls
    # Without thinking tokens the run would be far below the limit.
    assert usage.prompt_tokens + usage.output_tokens < limit // 4
    # Sub-calls run one at a time here, so the overshoot is at most the last call.
    assert limit <= total_tokens(usage) < limit + 4000 + 200
    assert len(fake_gemini.requests) == usage.calls


async def test_max_cost_usd_with_a_priced_model(stub, fake_gemini: FakeGemini) -> None:
    # gemini-2.5-flash bills output and thinking at $2.50 per 1M tokens: $0.25 per call here.
    fake_gemini.thinking_tokens = 100_000
    fake_gemini.script("MARK-COST", [SET_PARTIAL, repl(
        "for i in range(40):\n    llm_query(f'tiny {i}')\nFINAL('not stopped')")])
    events = await collect(stub, "MARK-COST go", "ctx", max_cost_usd=1.0,
                           sub_model="gemini-2.5-flash")
    final = assert_stopped(events, rlm_pb2.STOP_REASON_MAX_COST)
    usage = {(u.model, u.depth): u.usage for u in final.usage}
    sub = usage[("gemini-2.5-flash", 1)]
    assert sub.calls == 4 and usage[("fake-root", 0)].cost_usd == 0
    assert 1.0 <= final.total_usage.cost_usd < 1.0 + 0.26
    finished = of_kind(events, "sub_call_finished")
    assert finished[0].usage.cost_usd > 0.25
    assert finished[-1].run_usage.cost_usd >= 1.0


async def test_timeout_stops_a_busy_block(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SLOW", [SET_PARTIAL, repl(
        "import time\nwhile True:\n    time.sleep(0.05)")])
    started = time.monotonic()
    events = await collect(stub, "MARK-SLOW go", "ctx", timeout_seconds=1.5)
    elapsed = time.monotonic() - started
    final = assert_stopped(events, rlm_pb2.STOP_REASON_TIMEOUT)
    # It stops a little (10%, at most 0.5 s) early, so the answer is sent in time.
    assert 1.3 <= final.duration_seconds <= 1.5 and elapsed < 2.0
    assert final.total_usage.calls == 2


async def test_grpc_deadline_sooner_than_timeout_seconds(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-DEADLINE", [SET_PARTIAL, repl(
        "import time\nwhile True:\n    time.sleep(0.05)")])
    started = time.monotonic()
    call = stub.StreamCompletion(make_request("MARK-DEADLINE go", "ctx", timeout_seconds=60),
                                 timeout=2.0)
    events = [e async for e in call]
    elapsed = time.monotonic() - started
    final = assert_stopped(events, rlm_pb2.STOP_REASON_TIMEOUT)
    # The deadline became the run's limit, and the run stopped early enough for
    # its final answer to reach the client before the deadline cut the stream.
    # (gRPC rounds the deadline it sends up a little: 2.0 s can arrive as 2.009 s.)
    assert events[0].run_started.limits.timeout_seconds < 2.05
    assert final.duration_seconds < 2.0 and elapsed < 2.0


async def test_overshoot_is_at_most_the_calls_in_flight(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.thinking_tokens = 4000
    fake_gemini.model_latency["fake-sub"] = 0.05
    fake_gemini.script("MARK-WIDE", [SET_PARTIAL, repl(
        "while True:\n    llm_query_batched([f'tiny {i}' for i in range(10)])")])
    limit = 30_000
    events = await collect(stub, "MARK-WIDE go", "ctx", max_total_tokens=limit)
    final = assert_stopped(events, rlm_pb2.STOP_REASON_MAX_TOTAL_TOKENS)
    per_call = 4000 + 100
    # Calls still in flight at the stop (at most a batch) are cut off, not waited for.
    assert limit <= total_tokens(final.total_usage) < limit + 10 * per_call
    # Counted: every call that reached the fake, and at most the batch cut off
    # on its way out.
    assert len(fake_gemini.requests) <= final.total_usage.calls <= len(fake_gemini.requests) + 10
    assert await fake_gemini.wait_idle(1.0)


async def test_budget_hit_inside_a_child_run_stops_the_request(stub,
                                                               fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-DEEP", [SET_PARTIAL, repl(
        "r = rlm_query('MARK-GREEDY work', context='child ctx')\nFINAL('root done: ' + r)")])
    fake_gemini.script("MARK-GREEDY", [repl(
        "while True:\n    llm_query('more please')")])
    events = await collect(stub, "MARK-DEEP go", "ctx", max_depth=2, max_llm_calls=8)
    final = assert_stopped(events, rlm_pb2.STOP_REASON_MAX_LLM_CALLS)
    assert len(fake_gemini.requests) == 8 == final.total_usage.calls
    depths = {u.depth for u in final.usage}
    assert depths == {0, 1, 2}
    # The child run was cut off too: no final answer came back from it.
    assert not any(f.depth == 1 and not f.error for f in of_kind(events, "sub_call_finished"))


async def test_partial_answer_set_inside_the_stopped_block_is_kept(stub,
                                                                   fake_gemini: FakeGemini) -> None:
    # The answer changes mid-block and the block never ends: only the guest's
    # pushes can carry it out before the budget stop kills the block.
    fake_gemini.script("MARK-MIDBLOCK", [repl(
        "import time\n"
        "for step in range(3):\n"
        "    answer['content'] = f'step {step} of 3'\n"
        "    time.sleep(0.3)\n"
        "answer.update(content='all steps done')\n"
        "while True:\n"
        "    time.sleep(0.05)")])
    events = await collect(stub, "MARK-MIDBLOCK go", "ctx", timeout_seconds=2.5)
    final = final_of(events)
    assert final.stop_reason == rlm_pb2.STOP_REASON_TIMEOUT, final
    assert final.forced and final.answer == "all steps done"
    assert final.iterations == 1


async def test_answer_from_the_call_that_crossed_the_limit_is_kept(stub,
                                                                   fake_gemini: FakeGemini) -> None:
    # The first root turn alone uses more than 10 tokens, and it answers.
    fake_gemini.script("MARK-LASTCALL", ["FINAL(forty-two)"])
    events = await collect(stub, "MARK-LASTCALL go", "ctx", max_total_tokens=10)
    final = final_of(events)
    assert final.answer == "forty-two" and not final.forced
    assert final.stop_reason == rlm_pb2.STOP_REASON_ANSWERED
    assert total_tokens(final.total_usage) > 10


async def test_time_spent_waiting_for_a_run_slot_counts(start_server,
                                                        fake_gemini: FakeGemini) -> None:
    server = await start_server(max_concurrent_runs=1, heartbeat_seconds=0.3)
    fake_gemini.script("MARK-HOG", [repl("import time\ntime.sleep(1.5)\nFINAL('hog done')")])
    fake_gemini.script("MARK-QUEUED", [SET_PARTIAL, repl("import time\ntime.sleep(30)")])
    async with open_stub(server) as stub:
        hog = asyncio.create_task(collect(stub, "MARK-HOG go", "ctx"))
        await asyncio.sleep(0.3)  # the hog holds the only slot
        started = time.monotonic()
        call = stub.StreamCompletion(make_request("MARK-QUEUED go", "ctx"), timeout=3.0)
        events = [e async for e in call]
        elapsed = time.monotonic() - started
        assert final_of(await hog).answer == "hog done"
    # The queued run ended by its own clock, from arrival, with a final answer
    # before the client's deadline, and the stream stayed alive while it waited.
    final = final_of(events)
    assert final.stop_reason == rlm_pb2.STOP_REASON_TIMEOUT
    assert final.answer == "partial so far"
    assert elapsed < 3.0
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.index("heartbeat") < kinds.index("run_started")
