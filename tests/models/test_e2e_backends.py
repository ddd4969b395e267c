"""Backends through the whole server: faults, mixed backends, streamed root text."""

from __future__ import annotations

import pytest

from tests.conftest import StartServer, collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini, Fault
from tests.fakes.openai import FakeOpenAI


async def _stub(server):  # type: ignore[no-untyped-def]
    import grpc

    from rlm_service._gen.rlm.v1 import rlm_pb2_grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return channel, rlm_pb2_grpc.RLMServiceStub(channel)


async def test_root_on_openai_sub_on_gemini(start_server: StartServer,
                                            fake_gemini: FakeGemini) -> None:
    with FakeOpenAI() as fake_openai:
        fake_openai.script("MARK-MIX", [
            repl("parts = llm_query_batched(['alpha', 'beta'])\nprint(parts)"),
            "FINAL_VAR(parts)",
        ])
        fake_gemini.sub_answer = lambda p: f"gemini says {p}"
        server = await start_server(
            rlm_backend="openai", rlm_sub_backend="gemini",
            openai_base_url=fake_openai.base_url + "/v1", openai_api_key="sk-test",
            openai_model_name="oa-root")
        channel, stub = await _stub(server)
        async with channel:
            events = await collect(stub, "MARK-MIX go", "c")
        assert final_of(events).answer == "['gemini says alpha', 'gemini says beta']"
        assert len(fake_openai.calls_for("oa-root")) == 2
        assert len(fake_gemini.calls_for("fake-sub")) == 2
        usage = {(u.model, u.depth) for u in final_of(events).usage}
        assert usage == {("oa-root", 0), ("fake-sub", 1)}


async def test_root_429_is_retried_and_the_run_succeeds(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.inject(Fault.RATE_LIMIT_429, count=2, model="fake-root", retry_delay=0.05)
    fake_gemini.script("MARK-429", [repl("FINAL('ok after retries')")])
    events = await collect(stub, "MARK-429 go", "c")
    assert final_of(events).answer == "ok after retries"
    retries = [n for n in of_kind(events, "notice") if n.kind == "model_retry"]
    assert len(retries) == 2 and "rate_limited" in retries[0].message
    assert len(fake_gemini.calls_for("fake-root")) == 3


@pytest.mark.parametrize("fault,needle", [
    (Fault.SAFETY, "safety"),
    (Fault.MAX_TOKENS, "MAX_TOKENS"),
    (Fault.PROMPT_BLOCKED, "block"),
])
async def test_sub_call_refusal_becomes_a_message_to_the_model(
        stub, fake_gemini: FakeGemini, fault: Fault, needle: str) -> None:
    fake_gemini.inject(fault, count=1, model="fake-sub")
    fake_gemini.script(f"MARK-{fault.name}", [
        repl("r = llm_query_batched(['one', 'two'])\nprint(r)"),
        "FINAL_VAR(r)",
    ])
    events = await collect(stub, f"MARK-{fault.name} go", "c")
    answer = final_of(events).answer
    subs = of_kind(events, "sub_call_finished")
    failed = [s for s in subs if s.error]
    assert len(failed) == 1 and needle.lower() in failed[0].error_message.lower()
    assert "Error:" in answer and ("sub<3>:two" in answer or "sub<3>:one" in answer)
    assert "Traceback" not in answer


async def test_root_safety_block_is_a_clean_error_event(stub, fake_gemini: FakeGemini) -> None:
    import grpc

    from rlm_client import make_request

    fake_gemini.inject(Fault.SAFETY, count=1, model="fake-root")
    events = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for e in stub.StreamCompletion(make_request("MARK-RSAFE", "c")):
            events.append(e)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert events[-1].HasField("error") and "safety" in events[-1].error.message.lower()


async def test_root_text_streams_as_deltas(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-DELTA", [repl("FINAL('streamed')")])
    events = await collect(stub, "MARK-DELTA go", "c", stream_root_text=True)
    deltas = of_kind(events, "root_text_delta")
    turn = of_kind(events, "root_turn")[0]
    assert len(deltas) >= 2 and "".join(d.text for d in deltas) == turn.text
    assert final_of(events).answer == "streamed"


async def test_oversized_sub_prompt_is_refused_before_sending(
        start_server: StartServer, fake_gemini: FakeGemini) -> None:
    server = await start_server(model_input_limits_json={"fake-sub": 1000})
    fake_gemini.script("MARK-HUGE", [repl("r = llm_query('x' * 20000)\nprint(r)"), "FINAL_VAR(r)"])
    channel, stub = await _stub(server)
    async with channel:
        events = await collect(stub, "MARK-HUGE go", "c")
    assert "too large" in final_of(events).answer and "Split" in final_of(events).answer
    assert not fake_gemini.calls_for("fake-sub")


async def test_history_is_trimmed_under_the_root_limit(
        start_server: StartServer, fake_gemini: FakeGemini) -> None:
    server = await start_server(model_input_limits_json={"fake-root": 6000}, max_output_chars=8000)
    fake_gemini.script("MARK-TRIM", [
        repl("print('y' * 7000)"), repl("print('z' * 7000)"), repl("print('w' * 7000)"),
        "FINAL(done)",
    ])
    channel, stub = await _stub(server)
    async with channel:
        events = await collect(stub, "MARK-TRIM go", "c")
    assert final_of(events).answer == "done"
    assert any(n.kind == "history_trimmed" for n in of_kind(events, "notice"))
    last = fake_gemini.calls_for("fake-root")[-1]
    assert "MARK-TRIM" in last.first_user_text
    assert last.prompt_chars < 6000 * 4


