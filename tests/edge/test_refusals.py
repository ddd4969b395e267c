"""Any request gets a clean answer: refusals are INVALID_ARGUMENT (HTTP 400) naming the
field, come before run_started, and never log an ERROR or a traceback."""

from __future__ import annotations

import logging

import aiohttp
import grpc
import pytest
from google.protobuf import struct_pb2

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.server import Server
from tests.conftest import collect, final_of, repl
from tests.edge._support import COMPLETE, STREAM, call_raw, noisy_records
from tests.fakes.gemini import FakeGemini


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_list_bytes(levels: int) -> bytes:
    """A CompletionRequest whose context is [[[...]]] ``levels`` deep, built by hand
    because protobuf itself refuses to serialize past its recursion limit."""
    value = _field(3, b"x")  # Value.string_value
    for _ in range(levels):
        value = _field(6, _field(1, value))  # Value.list_value -> ListValue.values
    return _field(1, b"q") + _field(2, value)


GARBAGE = {
    "truncated varint": b"\x18\xff\xff",
    "length past the end": b"\x0a\x7fabc",
    "truncated inside the context": b"\x12\x04\x1a\x05ab",
    "group end tag": b"\x0c",
    "field number zero": b"\x02\x01a",
    "context past protobuf's nesting limit": _deep_list_bytes(60),
}

BAD_UTF8 = {
    # (wire bytes, field the message must name)
    "prompt with an encoded surrogate": (_field(1, b"a\xed\xa0\x80b"), "prompt"),
    "prompt with a stray continuation byte": (_field(1, b"ok\x80"), "prompt"),
    "root_model not UTF-8": (_field(1, b"q") + _field(4, b"\xff"), "root_model"),
    "context string not UTF-8": (_field(1, b"q") + _field(2, _field(3, b"\xc3")), "context"),
    "context key not UTF-8": (_field(1, b"q") + _field(2, _field(5, _field(
        1, _field(1, b"k\xed\xb3\xbf") + _field(2, _field(3, b"v"))))), "a key in context"),
}


async def _channel(server: Server) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")


@pytest.mark.parametrize("name", list(GARBAGE))
async def test_undecodable_bytes_are_invalid_argument(server: Server, name: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with await _channel(server) as channel:
        for method in (STREAM, COMPLETE):
            error = await call_raw(channel, method, GARBAGE[name])
            assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "CompletionRequest" in (error.details() or "")
    assert not noisy_records(caplog.records)


async def test_a_flood_of_bad_messages_logs_one_warning(
        server: Server, fake_gemini: FakeGemini, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with await _channel(server) as channel:
        for i in range(200):
            error = await call_raw(channel, STREAM if i % 2 else COMPLETE, b"\x0a\xff" + bytes([i]))
            assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The server still serves real work after the flood.
        fake_gemini.script("MARK-AFTER-FLOOD", [repl("FINAL('still fine')")])
        stub_events = [e async for e in channel.unary_stream(
            STREAM, request_serializer=rlm_pb2.CompletionRequest.SerializeToString,
            response_deserializer=rlm_pb2.CompletionEvent.FromString)(
                make_request("MARK-AFTER-FLOOD", "c"))]
    assert final_of(stub_events).answer == "still fine"
    assert not noisy_records(caplog.records)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and r.name == "rlm_service.decoding"]
    assert len(warnings) <= 1, [r.getMessage() for r in warnings]


@pytest.mark.parametrize("name", list(BAD_UTF8))
async def test_bad_utf8_names_the_field(server: Server, name: str,
                                        caplog: pytest.LogCaptureFixture) -> None:
    raw, field = BAD_UTF8[name]
    async with await _channel(server) as channel:
        error = await call_raw(channel, STREAM, raw)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith(field) and "UTF-8" in details, details
    assert not noisy_records(caplog.records)


def _context(value: object) -> rlm_pb2.CompletionRequest:
    request = make_request("q", value)
    return request


@pytest.mark.parametrize(("value", "path"), [
    (float("nan"), "context is nan"),
    ({"a": [1, float("inf")]}, "context.a[1] is inf"),
    ({"deep": {"x y": float("-inf")}}, "context.deep['x y'] is -inf"),
])
async def test_non_finite_numbers_are_refused_before_run_started(
        stub, fake_gemini: FakeGemini, value: object, path: str) -> None:
    request = rlm_pb2.CompletionRequest(prompt="q")
    if isinstance(value, float):
        request.context.number_value = value
    else:
        request.context.struct_value.update(value)  # type: ignore[arg-type]
    events: list[rlm_pb2.CompletionEvent] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for event in stub.StreamCompletion(request):
            events.append(event)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(path), info.value.details()
    assert not events, "refused before run_started"
    assert not fake_gemini.requests


def _nested(levels: int) -> object:
    value: object = "leaf"
    for _ in range(levels):
        value = [value]
    return value


async def test_nesting_deeper_than_the_setting_is_refused(start_server,
                                                          fake_gemini: FakeGemini) -> None:
    server = await start_server(max_context_depth=4)
    async with await _channel(server) as channel:
        from rlm_service._gen.rlm.v1 import rlm_pb2_grpc

        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Complete(make_request("q", _nested(5)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "context[0][0][0][0] is nested deeper than 4" in (info.value.details() or "")
        fake_gemini.script("MARK-DEPTH-OK", [repl("FINAL(str(context))")])
        events = await collect(stub, "MARK-DEPTH-OK", _nested(4))
    assert final_of(events).answer == "[[[['leaf']]]]"


@pytest.mark.parametrize(("field", "name"), [
    ("root_model", "a/../../x"), ("sub_model", "models/../../v1/files"),
    ("root_model", "a//b"), ("sub_model", "x/"), ("root_model", "./x"),
])
async def test_path_like_model_names_are_refused_before_run_started(
        stub, fake_gemini: FakeGemini, field: str, name: str) -> None:
    events: list[rlm_pb2.CompletionEvent] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for event in stub.StreamCompletion(make_request("q", "c", **{field: name})):
            events.append(event)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"{field} "), info.value.details()
    assert not events and not fake_gemini.requests


async def test_repl_code_meets_the_same_model_name_rule(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-REPL-MODEL", [
        repl("FINAL(llm_query('hi', model='a/../../x'))")])
    final = final_of(await collect(stub, "MARK-REPL-MODEL", "c"))
    assert final.answer.startswith("Error:") and "not a valid model name" in final.answer
    assert not [r for r in fake_gemini.requests if ".." in r.path]


def _url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


HTTP_BAD = {
    "NaN in the context": (b'{"prompt": "q", "context": {"a": NaN}}', "context.a is nan"),
    "Infinity in a list": (b'{"prompt": "q", "context": [1, -Infinity]}', "context[1] is -inf"),
    "lone surrogate in the prompt": (b'{"prompt": "q\\ud800"}', "prompt"),
    "surrogate in a context key": (b'{"prompt": "q", "context": {"\\udcff": 1}}', "context"),
    "context past protobuf's limit": (
        b'{"prompt": "q", "context": ' + b"[" * 60 + b"]" * 60 + b"}", "context"),
    "nesting past Python's recursion limit": (
        b'{"prompt": "q", "context": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
    "path-like model": (b'{"prompt": "q", "root_model": "a/../../x"}', "root_model"),
    "encoded surrogate in the body": (b'{"prompt": "q\xed\xa0\x80"}', "prompt"),
    "invalid UTF-8 body": (b'{"prompt": "q\xff"}', "not valid JSON"),
}


@pytest.mark.parametrize("name", list(HTTP_BAD))
async def test_http_face_refuses_the_same_with_400(server: Server, fake_gemini: FakeGemini,
                                                   name: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    body, needle = HTTP_BAD[name]
    for path in ("/completion", "/v1/completions:stream"):
        async with aiohttp.ClientSession() as http, http.post(
                _url(server, path), data=body,
                headers={"Content-Type": "application/json"}) as response:
            assert response.status == 400, await response.text()
            error = (await response.json())["error"]
        assert needle in error, error
        assert "Traceback" not in error
    assert not fake_gemini.requests
    assert not noisy_records(caplog.records)


def test_struct_value_helper_builds_what_the_tests_mean() -> None:
    # Guards the hand-built wire bytes above: protobuf itself parses the shallow form.
    parsed = rlm_pb2.CompletionRequest.FromString(_deep_list_bytes(3))
    assert parsed.prompt == "q"
    assert parsed.context.list_value.values[0].list_value.values[0].list_value.values[
        0].string_value == "x"
    assert isinstance(parsed.context, struct_pb2.Value)
