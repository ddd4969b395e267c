"""Structured answers: the model is told the schema, its final value is validated,
a mismatch is sent back to it (bounded, counted against budgets), and the final
event carries the value as a google.protobuf.Value."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from google.protobuf import json_format

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.server import Server
from tests.conftest import collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini
from tests.http.test_http_face import url
from tests.recursion import open_stub

SCHEMA = {
    "type": "object",
    "properties": {"count": {"type": "integer", "minimum": 0}, "city": {"type": "string"}},
    "required": ["count", "city"],
    "additionalProperties": False,
}


def _request(prompt: str, schema: object = SCHEMA, **fields: object) -> rlm_pb2.CompletionRequest:
    request = make_request(prompt, "Oslo, Oslo and Oslo again", **fields)
    json_format.ParseDict(schema, request.answer_schema)
    return request


def _requests_for(fake: FakeGemini, mark: str) -> list[str]:
    return [r.last_user_text for r in fake.requests if mark in r.first_user_text]


async def test_a_valid_answer_comes_back_as_a_value(server: Server,
                                                    fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SCHEMA-OK", [
        repl("result = {'count': context.count('Oslo'), 'city': 'Oslo'}\nFINAL_VAR('result')")])
    async with open_stub(server) as stub:
        events = [e async for e in stub.StreamCompletion(_request("MARK-SCHEMA-OK count"))]
    final = final_of(events)
    assert json_format.MessageToDict(final.value) == {"count": 3, "city": "Oslo"}
    assert final.schema_retries == 0 and final.stop_reason == rlm_pb2.STOP_REASON_ANSWERED
    # The model was told the schema, in full.
    first = next(r for r in fake_gemini.requests if "MARK-SCHEMA-OK" in r.first_user_text)
    assert '"additionalProperties": false' in first.first_user_text
    assert "FINAL_VAR" in first.first_user_text


async def test_invalid_then_fixed(server: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SCHEMA-FIX", [
        repl("result = {'count': 'three', 'city': 'Oslo'}\nFINAL_VAR('result')"),
        'All right.\nFINAL({"count": 3, "city": "Oslo"})',
    ])
    async with open_stub(server) as stub:
        events = [e async for e in stub.StreamCompletion(_request("MARK-SCHEMA-FIX count"))]
    final = final_of(events)
    assert json_format.MessageToDict(final.value) == {"count": 3, "city": "Oslo"}
    assert final.schema_retries == 1 and final.iterations == 2
    notices = [n for n in of_kind(events, "notice") if n.kind == "answer_schema_mismatch"]
    assert len(notices) == 1 and "$.count" in notices[0].message
    # What failed was sent back to the model.
    told = _requests_for(fake_gemini, "MARK-SCHEMA-FIX")[1]
    assert "does not match the required JSON Schema" in told and "'three'" in told


async def test_invalid_until_the_retries_run_out(start_server,
                                                 fake_gemini: FakeGemini) -> None:
    server = await start_server(answer_schema_max_retries=1)
    fake_gemini.script("MARK-SCHEMA-BAD", [
        "FINAL(three)",
        'FINAL({"count": -1, "city": "Oslo", "extra": true})',
        'FINAL({"count": 3, "city": "Oslo"})',  # never reached
    ])
    async with open_stub(server) as stub:
        call = stub.StreamCompletion(_request("MARK-SCHEMA-BAD count"))
        events = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for event in call:
                events.append(event)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "answer_schema after 1 retry" in (err.value.details() or "")
    assert events[-1].error.code == "FAILED_PRECONDITION"
    assert "additional" in events[-1].error.message.lower()
    assert len(_requests_for(fake_gemini, "MARK-SCHEMA-BAD")) == 2
    assert "not a JSON value" in of_kind(events, "notice")[0].message


async def test_retries_count_against_the_call_budget(server: Server,
                                                     fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SCHEMA-BUDGET", ['FINAL({"count": "x", "city": "Oslo"})'] * 4)
    async with open_stub(server) as stub:
        events = [e async for e in stub.StreamCompletion(
            _request("MARK-SCHEMA-BUDGET count", max_llm_calls=2))]
    final = final_of(events)
    assert final.stop_reason == rlm_pb2.STOP_REASON_MAX_LLM_CALLS
    assert final.total_usage.calls == 2
    assert not final.HasField("value")  # the partial answer does not match


async def test_bad_schemas_are_refused(server: Server) -> None:
    async with open_stub(server) as stub:
        for schema, says in (({"type": "no-such-type"}, "not a valid JSON Schema"),
                             ({"$ref": "https://example.com/s.json"}, "local $refs")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Complete(_request("q", schema))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert says in (err.value.details() or "")


async def test_no_schema_no_value(server: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SCHEMA-NONE", ['FINAL({"count": 3})'])
    async with open_stub(server) as stub:
        final = final_of(await collect(stub, "MARK-SCHEMA-NONE q", "c"))
    assert final.answer == '{"count": 3}' and not final.HasField("value")


async def test_schema_over_http(server: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SCHEMA-HTTP", ['FINAL({"count": 3, "city": "Oslo"})'])
    async with aiohttp.ClientSession() as http, http.post(url(server, "/completion"), json={
            "prompt": "MARK-SCHEMA-HTTP", "context": "c", "answer_schema": SCHEMA}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert body["final"]["value"] == {"count": 3, "city": "Oslo"}
