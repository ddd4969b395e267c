"""Chaos for the model backends: a hang, a connection dropped mid-reply, malformed JSON,
a 500 with an HTML body and a 50 MB reply, through the real SDKs against the fakes and
through the real server. Each ends in a retry that succeeds or a clean error: a status
that says what happened, with no HTML, traceback or credential in what a client sees."""

from __future__ import annotations

import time

import grpc
import pytest

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from rlm_service.models import GenerateOptions, Message, ModelError
from rlm_service.server import Server
from tests.conftest import API_KEY, final_of, repl
from tests.fakes import Fault
from tests.fakes._common import HUGE_REPLY_CHARS
from tests.fakes.gemini import FakeGemini
from tests.models._support import Harness

USER = [Message("user", "What is the answer?")]
LEAKS = ("<html", "<!DOCTYPE", "Traceback", "proxy-secret", "/srv/proxy.py")
STREAM_IDS = ["unary", "stream"]


def assert_clean(message: str, key: str) -> None:
    for needle in (*LEAKS, key):
        assert needle not in message, (needle, message)
    assert len(message) < 1000, message


async def generate(harness: Harness, stream: bool, **overrides: object) -> object:
    backend = harness.backend(**{"model_timeout_seconds": 1.0, **overrides})
    return await backend.generate("m", USER, GenerateOptions(),
                                  on_delta=(lambda _: None) if stream else None)


# (fault, params) -> every variant retries it and then answers.
TRANSIENT = {
    "hang": (Fault.HANG, {}),
    "drop mid-reply": (Fault.DROP_MID_STREAM, {}),
    "malformed JSON": (Fault.MALFORMED_JSON, {}),
    "500 with an HTML body": (Fault.HTML_ERROR, {}),
    "502 with an HTML body": (Fault.HTML_ERROR, {"status": 502}),
}


@pytest.mark.parametrize("name", list(TRANSIENT))
@pytest.mark.parametrize("stream", [False, True], ids=STREAM_IDS)
async def test_one_fault_is_retried_and_the_call_answers(harness: Harness, name: str,
                                                         stream: bool) -> None:
    fault, params = TRANSIENT[name]
    harness.fake.script("MARK", ["fine after all"])
    harness.fake.inject(fault, **params)
    backend = harness.backend(model_timeout_seconds=1.0)
    reply = await backend.generate("m", [Message("user", "MARK")], GenerateOptions(),
                                   on_delta=(lambda _: None) if stream else None)
    assert reply.text == "fine after all"
    # Usually one retry; a pooled connection the drop left half-closed can cost another.
    assert 1 <= reply.retries <= 2
    assert len(harness.fake.requests) == reply.retries + 1
    assert await harness.fake.wait_idle(2.0)


@pytest.mark.parametrize(("name", "codes"), [
    ("hang", {grpc.StatusCode.DEADLINE_EXCEEDED}),
    ("drop mid-reply", {grpc.StatusCode.UNAVAILABLE}),
    ("malformed JSON", {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL}),
    ("500 with an HTML body", {grpc.StatusCode.UNAVAILABLE}),
])
@pytest.mark.parametrize("stream", [False, True], ids=STREAM_IDS)
async def test_a_fault_every_time_is_a_clean_error(harness: Harness, name: str,
                                                   codes: set[grpc.StatusCode],
                                                   stream: bool) -> None:
    fault, params = TRANSIENT[name]
    harness.fake.inject(fault, count=100, **params)
    started = time.monotonic()
    with pytest.raises(ModelError) as info:
        await generate(harness, stream, model_timeout_seconds=0.3, model_max_retries=2)
    assert info.value.code in codes, (info.value.code, info.value.message)
    # Retried, and given up on (a slow hang may leave no time for the last attempt).
    assert 2 <= len(harness.fake.requests) <= 3
    assert time.monotonic() - started < 5
    assert_clean(info.value.message, harness.key)
    assert await harness.fake.wait_idle(2.0)


@pytest.mark.parametrize("stream", [False, True], ids=STREAM_IDS)
async def test_a_50_mb_reply_arrives_whole(harness: Harness, stream: bool) -> None:
    harness.fake.inject(Fault.HUGE_REPLY)
    deltas: list[int] = []
    started = time.monotonic()
    reply = await harness.backend(model_timeout_seconds=60).generate(
        "m", USER, GenerateOptions(), on_delta=(lambda d: deltas.append(len(d))) if stream
        else None)
    assert len(reply.text) == HUGE_REPLY_CHARS and reply.text.count("x") == HUGE_REPLY_CHARS
    if stream:
        assert sum(deltas) == HUGE_REPLY_CHARS
    assert time.monotonic() - started < 60


# -- through the real server: what a client sees --------------------------------


async def _complete_error(server: Server, prompt: str) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await rlm_pb2_grpc.RLMServiceStub(channel).Complete(
                make_request(prompt, "ctx"), timeout=30)
    return info.value


@pytest.mark.parametrize(("fault", "code"), [
    (Fault.HTML_ERROR, grpc.StatusCode.UNAVAILABLE),
    (Fault.DROP_MID_STREAM, grpc.StatusCode.UNAVAILABLE),
    (Fault.MALFORMED_JSON, grpc.StatusCode.UNAVAILABLE),
    (Fault.HANG, grpc.StatusCode.DEADLINE_EXCEEDED),
])
async def test_root_model_chaos_reaches_the_client_as_a_clean_status(
        start_server, fake_gemini: FakeGemini, fault: Fault, code: grpc.StatusCode,
        caplog: pytest.LogCaptureFixture) -> None:
    server = await start_server(model_max_retries=1, model_timeout_seconds=0.5)
    fake_gemini.inject(fault, count=100)
    error = await _complete_error(server, "MARK-CHAOS")
    assert error.code() == code, error.details()
    assert_clean(error.details() or "", API_KEY)
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the service's logs"
    # After the storm the same server answers.
    fake_gemini.clear_faults()
    fake_gemini.script("MARK-CALM", [repl("FINAL('calm')")])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        events = [e async for e in rlm_pb2_grpc.RLMServiceStub(channel).StreamCompletion(
            make_request("MARK-CALM", "ctx"))]
    assert final_of(events).answer == "calm"


async def test_sub_model_chaos_becomes_an_error_string_for_the_model(
        start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server(model_max_retries=1, model_timeout_seconds=0.5)
    fake_gemini.inject(Fault.HTML_ERROR, count=100, model="fake-sub")
    fake_gemini.script("MARK-SUB-CHAOS", [repl("FINAL(llm_query('hello'))")])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        events = [e async for e in rlm_pb2_grpc.RLMServiceStub(channel).StreamCompletion(
            make_request("MARK-SUB-CHAOS", "ctx"))]
    answer = final_of(events).answer
    assert answer.startswith("Error:"), answer
    assert_clean(answer, API_KEY)
    finished = [e.sub_call_finished for e in events if e.HasField("sub_call_finished")]
    assert finished and finished[0].error
    assert_clean(finished[0].error_message, API_KEY)


async def test_a_50_mb_root_reply_ends_cleanly(start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server()
    fake_gemini.inject(Fault.HUGE_REPLY, size=HUGE_REPLY_CHARS, fill="y", model="fake-root")
    fake_gemini.script("MARK-HUGE", ["ignored", repl("FINAL('after the flood')")])
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{server.port}",
            options=[("grpc.max_receive_message_length", 512 << 20)]) as channel:
        try:
            events = [e async for e in rlm_pb2_grpc.RLMServiceStub(channel).StreamCompletion(
                make_request("MARK-HUGE", "ctx"), timeout=120)]
        except grpc.aio.AioRpcError as exc:
            assert exc.code() not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), exc
            assert_clean(exc.details() or "", API_KEY)
            return
    final = final_of(events)
    assert final.answer == "after the flood" or final.forced, final
