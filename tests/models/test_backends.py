"""Both backends, through the real SDKs, against the fake servers."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from rlm_service.models import GenerateOptions, Message, ModelError
from tests.fakes import Fault, Reply
from tests.models._support import Harness

USER = [Message("user", "What is the answer?")]


class Retries:
    """Records on_retry calls with the time each sleep started."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float, str, float]] = []

    def __call__(self, attempt: int, delay: float, kind: str) -> None:
        self.calls.append((attempt, delay, kind, time.monotonic()))

    @property
    def kinds(self) -> list[str]:
        return [c[2] for c in self.calls]


async def test_plain_call_returns_text_and_usage(harness: Harness) -> None:
    fake = harness.fake
    fake.script("MARKER-1", ["The answer is 42."])
    fake.thinking_tokens = 7
    fake.cached_tokens = 3
    backend = harness.backend()
    messages = [Message("user", "MARKER-1 question")]

    reply = await backend.generate("model-a", messages,
                                   GenerateOptions(system_prompt="Be brief.", temperature=0.25))

    assert reply.text == "The answer is 42."
    assert reply.finish_reason == "STOP"
    assert reply.retries == 0
    prompt_chars = len("MARKER-1 question") + len("Be brief.")
    assert reply.usage.prompt_tokens == prompt_chars // 4
    assert reply.usage.output_tokens == len("The answer is 42.") // 4
    assert reply.usage.thinking_tokens == 7
    assert reply.usage.cached_tokens == 3
    [req] = fake.requests
    assert req.model == "model-a"
    assert req.system_instruction == "Be brief."
    assert req.last_user_text == "MARKER-1 question"
    assert req.generation_config.get("temperature") == 0.25
    assert not req.stream


async def test_missing_usage_counts_are_zero(harness: Harness) -> None:
    # The Gemini API leaves zero counts out of its JSON; they must read as 0.
    reply = await harness.backend().generate("m", USER, GenerateOptions())
    assert reply.usage.thinking_tokens == 0
    assert reply.usage.cached_tokens == 0


async def test_conversation_picks_turn_by_model_messages(harness: Harness) -> None:
    harness.fake.script("CONV", ["turn zero", lambda r: Reply(text=f"turn one after {r.last_user_text}")])
    backend = harness.backend()
    first = await backend.generate("m", [Message("user", "CONV start")], GenerateOptions())
    second = await backend.generate(
        "m", [Message("user", "CONV start"), Message("model", first.text), Message("user", "next")],
        GenerateOptions())
    assert first.text == "turn zero"
    assert second.text == "turn one after next"
    assert harness.fake.requests[-1].model_turns == 1


async def test_thinking_budget_reaches_gemini(harness: Harness) -> None:
    if harness.kind != "gemini":
        pytest.skip("thinking budget is a Gemini option")
    await harness.backend().generate("m", USER, GenerateOptions(thinking_budget=128))
    config = harness.fake.requests[-1].generation_config
    thinking = config.get("thinkingConfig") or config.get("thinking_config")
    assert thinking is not None
    assert 128 in thinking.values()


async def test_streaming_delivers_deltas(harness: Harness) -> None:
    text = "Streaming answers arrive in several pieces."
    harness.fake.script("STREAM", [text])
    deltas: list[str] = []
    reply = await harness.backend().generate(
        "m", [Message("user", "STREAM please")], GenerateOptions(), on_delta=deltas.append)
    assert reply.text == text
    assert "".join(deltas) == text
    assert len(deltas) >= 2
    assert reply.usage.output_tokens == len(text) // 4
    assert reply.usage.prompt_tokens == len("STREAM please") // 4
    assert harness.fake.requests[-1].stream


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(("fault", "kind"), [
    (Fault.RATE_LIMIT_429, "rate_limited"),
    (Fault.SERVER_ERROR_500, "unavailable"),
    (Fault.UNAVAILABLE_503, "unavailable"),
    (Fault.GATEWAY_TIMEOUT_504, "unavailable"),
    (Fault.DROP_CONNECTION, "unavailable"),
    (Fault.MALFORMED_JSON, "malformed"),
])
async def test_transient_faults_are_retried_with_backoff(harness: Harness, fault: Fault, kind: str,
                                                         stream: bool) -> None:
    harness.fake.inject(fault, count=2)
    retries = Retries()
    deltas: list[str] = []
    reply = await harness.backend().generate(
        "m", USER, GenerateOptions(), on_retry=retries,
        on_delta=deltas.append if stream else None)

    assert reply.text.startswith("sub<")
    assert reply.retries == 2
    assert len(harness.fake.requests) == 3
    assert all(r.stream is stream for r in harness.fake.requests)
    if stream:
        # Text of a failed attempt may have streamed too; the last attempt's is the reply.
        assert "".join(deltas).endswith(reply.text)
    assert retries.kinds == [kind, kind]
    # Full jitter: retry n sleeps somewhere in [0, base * 2**(n-1)] (base 0.02 s here).
    for n, delay, _, _ in retries.calls:
        assert 0.0 <= delay <= 0.02 * 2 ** (n - 1)
    # Each retry request starts no earlier than its announced delay.
    stamps = [r.at for r in harness.fake.requests]
    for (_, delay, _, slept_at), next_at in zip(retries.calls, stamps[1:], strict=True):
        assert next_at - slept_at >= delay - 0.005


async def test_server_retry_delay_is_honoured(harness: Harness) -> None:
    harness.fake.inject(Fault.RATE_LIMIT_429, retry_delay=0.3)
    retries = Retries()
    reply = await harness.backend().generate("m", USER, GenerateOptions(), on_retry=retries)
    assert reply.retries == 1
    [(attempt, delay, kind, _)] = retries.calls
    assert (attempt, kind) == (1, "rate_limited")
    assert delay == pytest.approx(0.3)
    first, second = harness.fake.requests
    assert second.at - first.at >= 0.3


@pytest.mark.parametrize("header", ["retry-after", "retry-after-ms"])
async def test_openai_retry_after_headers(harness: Harness, header: str) -> None:
    if harness.kind != "openai":
        pytest.skip("Retry-After headers are the OpenAI convention")
    # retry-after carries whole seconds (0.4 rounds up to 1); retry-after-ms is exact.
    harness.fake.inject(Fault.RATE_LIMIT_429, retry_delay=0.4, retry_header=header)
    retries = Retries()
    await harness.backend().generate("m", USER, GenerateOptions(), on_retry=retries)
    expected = 1.0 if header == "retry-after" else 0.4
    assert retries.calls[0][1] == pytest.approx(expected)


async def test_retries_stop_at_the_limit(harness: Harness) -> None:
    harness.fake.inject(Fault.SERVER_ERROR_500, count=100)
    retries = Retries()
    with pytest.raises(ModelError) as info:
        await harness.backend(model_max_retries=2).generate("m", USER, GenerateOptions(),
                                                            on_retry=retries)
    err = info.value
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.kind == "unavailable"
    assert err.retries == 2
    assert len(harness.fake.requests) == 3
    assert len(retries.calls) == 2
    assert "unavailable" in err.message and "gave up after 2 retries" in err.message


async def test_rate_limit_exhausted_maps_to_resource_exhausted(harness: Harness) -> None:
    harness.fake.inject(Fault.RATE_LIMIT_429, count=100)
    with pytest.raises(ModelError) as info:
        await harness.backend(model_max_retries=1).generate("m", USER, GenerateOptions())
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.kind == "rate_limited"
    assert len(harness.fake.requests) == 2


async def test_backoff_is_capped(harness: Harness) -> None:
    harness.fake.inject(Fault.UNAVAILABLE_503, count=4)
    retries = Retries()
    await harness.backend(model_retry_base_seconds=0.05, model_retry_max_seconds=0.06).generate(
        "m", USER, GenerateOptions(), on_retry=retries)
    assert len(retries.calls) == 4
    assert all(delay <= 0.06 for _, delay, _, _ in retries.calls)


@pytest.mark.parametrize(("fault", "code", "kind"), [
    (Fault.BAD_REQUEST_400, grpc.StatusCode.INVALID_ARGUMENT, "bad_request"),
    (Fault.UNAUTHORIZED_401, grpc.StatusCode.PERMISSION_DENIED, "permission_denied"),
    (Fault.FORBIDDEN_403, grpc.StatusCode.PERMISSION_DENIED, "permission_denied"),
    (Fault.NOT_FOUND_404, grpc.StatusCode.NOT_FOUND, "not_found"),
])
async def test_client_errors_are_not_retried(harness: Harness, fault: Fault,
                                             code: grpc.StatusCode, kind: str) -> None:
    harness.fake.inject(fault, count=5)
    retries = Retries()
    with pytest.raises(ModelError) as info:
        await harness.backend().generate("m", USER, GenerateOptions(), on_retry=retries)
    assert info.value.code == code
    assert info.value.kind == kind
    assert info.value.retries == 0
    assert len(harness.fake.requests) == 1
    assert retries.calls == []


@pytest.mark.parametrize("fault", [Fault.FORBIDDEN_403, Fault.UNAUTHORIZED_401,
                                   Fault.BAD_REQUEST_400])
async def test_api_key_never_appears_in_errors(harness: Harness, fault: Fault) -> None:
    harness.fake.inject(fault, echo_key=True)
    with pytest.raises(ModelError) as info:
        await harness.backend().generate("m", USER, GenerateOptions())
    sent = harness.fake.requests[0].headers
    assert harness.key in (sent.get("x-goog-api-key", "") + sent.get("Authorization", ""))
    err = info.value
    for text in (err.message, str(err), repr(err), repr(err.args)):
        assert harness.key not in text
    assert "[redacted]" in err.message
    assert err.__cause__ is None and err.__suppress_context__


async def test_prompt_too_large(harness: Harness) -> None:
    if harness.kind == "gemini":
        harness.fake.inject(Fault.BAD_REQUEST_400, message=(
            "The input token count (1200000) exceeds the maximum number of tokens allowed "
            "(1048576)."))
    else:
        harness.fake.inject(Fault.BAD_REQUEST_400, code="context_length_exceeded", message=(
            "This model's maximum context length is 128000 tokens."))
    with pytest.raises(ModelError) as info:
        await harness.backend().generate("m", USER, GenerateOptions())
    assert info.value.kind == "prompt_too_large"
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_hang_is_cut_by_the_per_call_timeout_and_retried(harness: Harness,
                                                              stream: bool) -> None:
    harness.fake.inject(Fault.HANG)
    retries = Retries()
    started = time.monotonic()
    reply = await harness.backend(model_timeout_seconds=0.3).generate(
        "m", USER, GenerateOptions(), on_retry=retries,
        on_delta=(lambda _: None) if stream else None)
    elapsed = time.monotonic() - started
    assert reply.retries == 1
    assert retries.kinds == ["timeout"]
    assert 0.3 <= elapsed < 1.5
    assert len(harness.fake.requests) == 2
    # The abandoned attempt's connection was closed, so the server stopped handling it.
    assert await harness.fake.wait_idle(2.0)


async def test_hang_every_time_ends_in_deadline_exceeded(harness: Harness) -> None:
    harness.fake.inject(Fault.HANG, count=10)
    # Long enough for the retry to reach the fake on a loaded machine before it times out.
    with pytest.raises(ModelError) as info:
        await harness.backend(model_timeout_seconds=0.8, model_max_retries=1).generate(
            "m", USER, GenerateOptions())
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.kind == "timeout"
    assert "0.8 s" in info.value.message
    assert len(harness.fake.requests) == 2
    assert await harness.fake.wait_idle(2.0)


async def test_deadline_caps_retries(harness: Harness) -> None:
    harness.fake.inject(Fault.SERVER_ERROR_500, count=1000)
    # Built before the clock starts: the first client of a process is slow to
    # construct (lazy SDK imports), which would eat the whole half second.
    backend = harness.backend(model_retry_base_seconds=0.1, model_retry_max_seconds=0.1,
                              model_max_retries=1000)
    deadline = time.monotonic() + 0.5
    with pytest.raises(ModelError) as info:
        await backend.generate("m", USER, GenerateOptions(), deadline=deadline)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.kind == "timeout"
    assert time.monotonic() <= deadline + 0.1
    # An attempt started just before the deadline reaches the fake's thread a moment
    # later; 50 ms of slack is well under the 100 ms retry delay a late retry would show.
    assert all(r.at < deadline + 0.05 for r in harness.fake.requests)
    assert len(harness.fake.requests) >= 2


async def test_server_delay_past_the_deadline_fails_without_sleeping(harness: Harness) -> None:
    harness.fake.inject(Fault.RATE_LIMIT_429, retry_delay=30)
    retries = Retries()
    started = time.monotonic()
    with pytest.raises(ModelError) as info:
        await harness.backend().generate("m", USER, GenerateOptions(), on_retry=retries,
                                         deadline=started + 2.0)
    assert time.monotonic() - started < 1.0
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "rate limited" in info.value.message and "deadline" in info.value.message
    assert retries.calls == []


async def test_deadline_cuts_a_slow_attempt(harness: Harness) -> None:
    harness.fake.latency = 5.0
    started = time.monotonic()
    with pytest.raises(ModelError) as info:
        await harness.backend().generate("m", USER, GenerateOptions(),
                                         deadline=started + 0.3)
    assert 0.25 <= time.monotonic() - started < 1.0
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(harness.fake.requests) == 1
    assert await harness.fake.wait_idle(2.0)


async def test_passed_deadline_sends_nothing(harness: Harness) -> None:
    with pytest.raises(ModelError) as info:
        await harness.backend().generate("m", USER, GenerateOptions(),
                                         deadline=time.monotonic() - 1)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert harness.fake.requests == []


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_cancellation_ends_the_call_at_the_server(harness: Harness, stream: bool) -> None:
    fake = harness.fake
    if stream:
        fake.chunk_delay = 5.0  # cancel between streamed chunks
    else:
        fake.latency = 5.0
    deltas: list[str] = []
    task = asyncio.create_task(harness.backend().generate(
        "m", USER, GenerateOptions(), on_delta=deltas.append if stream else None))
    for _ in range(200):
        if fake.in_flight and (deltas or not stream):
            break
        await asyncio.sleep(0.01)
    assert fake.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait_idle(2.0)
    assert fake.disconnects == 1


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
@pytest.mark.parametrize(("fault", "kind"), [
    (Fault.SAFETY, "safety"),
    (Fault.RECITATION, "safety"),
    (Fault.PROMPT_BLOCKED, "blocked"),
])
async def test_refusals_fail_without_retry(harness: Harness, fault: Fault, kind: str,
                                           stream: bool) -> None:
    harness.fake.inject(fault, count=5)
    with pytest.raises(ModelError) as info:
        await harness.backend().generate("m", USER, GenerateOptions(),
                                         on_delta=(lambda _: None) if stream else None)
    err = info.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.kind == kind
    assert err.retries == 0
    assert len(harness.fake.requests) == 1
    if fault is Fault.SAFETY:
        assert "stopped for safety reasons" in err.message
    if fault is Fault.PROMPT_BLOCKED:
        assert "blocked" in err.message


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_max_tokens_reports_usage(harness: Harness, stream: bool) -> None:
    harness.fake.inject(Fault.MAX_TOKENS, text="A partial answer that got cut")
    with pytest.raises(ModelError) as info:
        await harness.backend().generate("m", USER, GenerateOptions(),
                                         on_delta=(lambda _: None) if stream else None)
    err = info.value
    assert err.kind == "max_tokens"
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.usage.output_tokens == len("A partial answer that got cut") // 4
    assert err.usage.prompt_tokens == len(USER[0].text) // 4
    assert "output token limit" in err.message
    assert len(harness.fake.requests) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_empty_answer_is_retried_twice_then_fails(harness: Harness, stream: bool) -> None:
    harness.fake.inject(Fault.EMPTY_CANDIDATES, count=10)
    retries = Retries()
    with pytest.raises(ModelError) as info:
        await harness.backend().generate("m", USER, GenerateOptions(), on_retry=retries,
                                         on_delta=(lambda _: None) if stream else None)
    err = info.value
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert err.kind == "empty"
    assert err.retries == 2
    assert retries.kinds == ["empty", "empty"]
    assert len(harness.fake.requests) == 3
    # Every empty attempt was billed for its prompt.
    assert err.usage.prompt_tokens == 3 * (len(USER[0].text) // 4)


async def test_empty_answer_then_success_adds_up_usage(harness: Harness) -> None:
    variant = "empty_parts" if harness.kind == "gemini" else "null_content"
    harness.fake.inject(Fault.EMPTY_CANDIDATES, variant=variant)
    reply = await harness.backend().generate("m", USER, GenerateOptions())
    assert reply.retries == 1
    assert reply.usage.prompt_tokens == 2 * (len(USER[0].text) // 4)


async def test_concurrent_calls_are_limited(harness: Harness) -> None:
    harness.fake.latency = 0.2
    backend = harness.backend(max_concurrent_model_calls=2)
    replies = await asyncio.gather(*[
        backend.generate("m", [Message("user", f"q{i}")], GenerateOptions()) for i in range(5)])
    assert [r.text for r in replies] == [f"sub<2>:q{i}" for i in range(5)]
    assert harness.fake.max_in_flight == 2


async def test_faults_can_target_one_model(harness: Harness) -> None:
    harness.fake.inject(Fault.BAD_REQUEST_400, model="bad-model")
    backend = harness.backend()
    ok = await backend.generate("good-model", USER, GenerateOptions())
    assert ok.text
    with pytest.raises(ModelError):
        await backend.generate("bad-model", USER, GenerateOptions())
    assert [r.model for r in harness.fake.requests] == ["good-model", "bad-model"]
    assert len(harness.fake.calls_for("good-model")) == 1


async def test_waiting_for_a_call_slot_does_not_count_as_a_timeout(harness: Harness) -> None:
    # Each call takes 0.25 s of a 0.4 s per-call timeout; the third waits 0.5 s
    # for a slot and must still get its full timeout once it runs.
    harness.fake.latency = 0.25
    backend = harness.backend(max_concurrent_model_calls=1, model_timeout_seconds=0.4)
    replies = await asyncio.gather(*[
        backend.generate("m", [Message("user", f"q{i}")], GenerateOptions()) for i in range(3)])
    assert [r.retries for r in replies] == [0, 0, 0]
    assert harness.fake.max_in_flight == 1


async def test_deadline_bounds_the_wait_for_a_call_slot(harness: Harness) -> None:
    harness.fake.latency = 1.0
    backend = harness.backend(max_concurrent_model_calls=1)
    first = asyncio.create_task(backend.generate("m", USER, GenerateOptions()))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(ModelError) as info:
        await backend.generate("m", USER, GenerateOptions(), deadline=started + 0.2)
    assert time.monotonic() - started < 0.6
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "too many model calls" in info.value.message
    assert (await first).text
    assert len(harness.fake.requests) == 1


async def test_on_attempt_fires_once_per_request_sent(harness: Harness) -> None:
    harness.fake.inject(Fault.SERVER_ERROR_500, count=2)
    attempts: list[int] = []
    reply = await harness.backend().generate(
        "m", USER, GenerateOptions(), on_attempt=lambda: attempts.append(len(harness.fake.requests)))
    assert reply.retries == 2
    # Each call comes just before its request reaches the fake.
    assert attempts == [0, 1, 2] and len(harness.fake.requests) == 3
