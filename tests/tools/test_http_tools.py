"""Host-side HTTP tools: called from the REPL through the callback, made by the service
within its allow-list, timeout, size cap and per-request limit, streamed as sub-calls."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from rlm_service._gen.rlm.v1 import rlm_pb2
from tests.conftest import ROOT_MODEL, collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini
from tests.support.servers import StartServer, open_stub
from tests.tools.conftest import MAX_BYTES, SLOW_SECONDS, Endpoint

pytestmark = pytest.mark.timeout(120)
TOOL = rlm_pb2.SUB_CALL_KIND_TOOL

TRY = '''
def attempt(label, fn):
    try:
        print(label, "->", fn())
    except ToolError as exc:
        print(label, "ToolError:", exc)
'''


def settings(tools_file: Path, **more: Any) -> dict[str, Any]:
    return {"http_tools_file": str(tools_file), "http_tools_allowed_hosts": "127.0.0.1",
            "http_tools_max_bytes": MAX_BYTES, **more}


def lines(events: list[rlm_pb2.CompletionEvent]) -> dict[str, str]:
    block = of_kind(events, "code_block")[-1]
    assert not block.error, block.stderr
    return dict(line.split(" ", 1) for line in block.stdout.splitlines())


async def test_a_valid_call_works_and_streams_its_event(
        start_server: StartServer, fake_gemini: FakeGemini, tools_file: Path,
        endpoint: Endpoint) -> None:
    server = await start_server(**settings(tools_file))
    code = TRY + ("attempt('kw', lambda: echo(msg='héllo', n=2))\n"
                  "attempt('dict', lambda: echo({'msg': 'as dict'}))\n"
                  "attempt('text', lambda: words())")
    fake_gemini.script("MARK-OK", [repl(code), "FINAL(done)"])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-OK go", "ctx")
    assert final_of(events).answer == "done"
    out = lines(events)
    assert out["kw"] == "-> {'got': {'msg': 'héllo', 'n': 2}}"
    assert out["dict"] == "-> {'got': {'msg': 'as dict'}}"
    assert out["text"] == "-> plain words"
    # The endpoint got the exact JSON, the operator's header and the request id.
    assert endpoint.bodies[0] == {"msg": "héllo", "n": 2}
    request_id = of_kind(events, "run_started")[0].request_id
    assert endpoint.headers[0]["X-Tool-Key"] == "operator-secret"
    assert endpoint.headers[0]["X-RLM-Request-Id"] == request_id

    started = of_kind(events, "sub_call_started")
    finished = of_kind(events, "sub_call_finished")
    assert [(s.kind, s.tool, s.depth, s.model) for s in started] == [
        (TOOL, "echo", 1, ""), (TOOL, "echo", 1, ""), (TOOL, "words", 1, "")]
    assert json.loads(started[0].prompt_preview) == {"msg": "héllo", "n": 2}
    by_id = {f.call_id: f for f in finished}
    assert set(by_id) == {s.call_id for s in started}
    first = by_id[started[0].call_id]
    assert (first.kind, first.tool, first.error) == (TOOL, "echo", False)
    assert json.loads(first.response_preview) == {"got": {"msg": "héllo", "n": 2}}
    assert not first.HasField("usage")
    # The model was told about the tool, its schema and the call limit.
    system = fake_gemini.calls_for(ROOT_MODEL)[0].system_instruction or ""
    assert "- echo(**arguments): Echoes its arguments back." in system
    assert '"required":["msg"]' in system and "at most 100 calls per request" in system
    # The operator's URL and header never reach the model.
    assert "operator-secret" not in system and str(endpoint.port) not in system


async def test_refusals_and_failures_come_back_as_tool_errors(
        start_server: StartServer, fake_gemini: FakeGemini, tools_file: Path,
        endpoint: Endpoint) -> None:
    server = await start_server(**settings(tools_file))
    code = TRY + ("attempt('wrongtype', lambda: echo(msg=5))\n"
                  "attempt('extra', lambda: echo(msg='a', color='red'))\n"
                  "attempt('notjson', lambda: echo(msg=object()))\n"
                  "attempt('slow', lambda: slow())\n"
                  "attempt('big', lambda: big())\n"
                  "attempt('bounce', lambda: bounce())\n"
                  "attempt('after', lambda: echo(msg='still works'))")
    fake_gemini.script("MARK-BAD", [repl(code), "FINAL(done)"])
    started = time.monotonic()
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-BAD go", "ctx")
    assert final_of(events).answer == "done"
    out = lines(events)
    assert out["wrongtype"].startswith("ToolError: echo: the arguments do not match the "
                                       "tool's schema: at $.msg: 5 is not of type 'string'")
    assert "Additional properties are not allowed ('color'" in out["extra"]
    assert out["notjson"].startswith("ToolError: echo: the arguments are not JSON")
    assert out["slow"] == "ToolError: slow: no reply within 0.5 s (timed out)"
    assert out["big"] == (f"ToolError: big: the reply is larger than {MAX_BYTES:,} bytes, "
                          "the limit; ask the endpoint for less")
    assert out["bounce"] == ("ToolError: bounce: the endpoint answered HTTP 302 (a "
                             "redirect), which is not followed")
    assert out["after"] == "-> {'got': {'msg': 'still works'}}"
    # The slow call was cut at its timeout, not waited out.
    assert time.monotonic() - started < SLOW_SECONDS + 20
    # Refused arguments never reached the endpoint; the redirect was not followed.
    assert endpoint.bodies == [{"msg": "still works"}]
    assert endpoint.hits["/redirect"] == 1 and endpoint.hits["/echo"] == 1
    finished = {f.tool: f for f in of_kind(events, "sub_call_finished") if f.error}
    assert set(finished) == {"echo", "slow", "big", "bounce"}
    assert "timed out" in finished["slow"].error_message
    # No URL, port or traceback in anything the model saw.
    block = of_kind(events, "code_block")[-1]
    assert str(endpoint.port) not in block.stdout and "Traceback" not in block.stdout


async def test_the_per_request_call_limit_holds(
        start_server: StartServer, fake_gemini: FakeGemini, tools_file: Path,
        endpoint: Endpoint) -> None:
    server = await start_server(**settings(tools_file, http_tools_max_calls=2))
    code = TRY + "for i in range(4):\n    attempt(f'c{i}', lambda: echo(msg=str(i)))"
    fake_gemini.script("MARK-LIM", [repl(code), repl(TRY + "attempt('later', words)"),
                                    "FINAL(done)"])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-LIM go", "ctx")
    out = [b.stdout for b in of_kind(events, "code_block")]
    assert "c0 -> {'got': {'msg': '0'}}" in out[0] and "c1 -> {'got'" in out[0]
    limit = "ToolError: echo: this request has made its 2 HTTP tool calls, the limit"
    assert f"c2 {limit}" in out[0] and f"c3 {limit}" in out[0]
    assert "later ToolError: words: this request has made its 2 HTTP tool calls" in out[1]
    assert len(endpoint.bodies) == 2 and endpoint.hits["/text"] == 0
    # A fresh request has its own count.
    fake_gemini.script("MARK-FRESH", [repl(TRY + "attempt('again', words)"), "FINAL(done)"])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-FRESH go", "ctx")
    assert of_kind(events, "code_block")[0].stdout.strip() == "again -> plain words"
