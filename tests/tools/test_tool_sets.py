"""Which tools each run gets: CHILD_RUN_TOOLS for rlm_query's child runs, and a
request's own narrowing."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest

from rlm_service._gen.rlm.v1 import rlm_pb2
from tests.conftest import ROOT_MODEL, SUB_MODEL, collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini
from tests.support.servers import StartServer, open_stub
from tests.tools.conftest import Endpoint

pytestmark = pytest.mark.timeout(120)

PROBE = "print(sorted(n for n in ('shout', 'whoami', 'echo', 'words') if n in globals()))"


def system_of(fake: FakeGemini, model: str, marker: str) -> str:
    return next(r.system_instruction or "" for r in fake.calls_for(model)
                if marker in r.first_user_text)


async def test_a_child_run_gets_its_own_tool_set(
        start_server: StartServer, fake_gemini: FakeGemini, tools_module: Path,
        tools_file: Path, endpoint: Endpoint) -> None:
    server = await start_server(tools_module=str(tools_module),
                                http_tools_file=str(tools_file),
                                http_tools_allowed_hosts=f"127.0.0.1:{endpoint.port}",
                                child_run_tools="shout, words")
    fake_gemini.script("MARK-PARENT", [repl(PROBE + "\nprint(rlm_query('MARK-CHILD go'))"),
                                       "FINAL(done)"])
    fake_gemini.script("MARK-CHILD", [repl(PROBE + "\nprint(shout('kid'), words())\n"
                                           "try:\n    echo(msg='x')\n"
                                           "except NameError:\n    print('no echo')"),
                                      "FINAL(child done)"])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-PARENT go", "ctx", max_depth=2)
    assert final_of(events).answer == "done"
    blocks = {b.depth: b for b in of_kind(events, "code_block")}
    assert blocks[0].stdout.splitlines()[0] == "['echo', 'shout', 'whoami', 'words']"
    assert blocks[1].stdout.splitlines() == ["['shout', 'words']", "KID plain words",
                                             "no echo"]
    root, child = (system_of(fake_gemini, ROOT_MODEL, "MARK-PARENT"),
                   system_of(fake_gemini, SUB_MODEL, "MARK-CHILD"))
    assert "- echo(**arguments)" in root and "- whoami()" in root
    assert "- shout(" in child and "- words(**arguments)" in child
    assert "echo" not in child and "whoami" not in child
    # The child's tool call hangs under the child run in the event tree.
    kid_id = of_kind(events, "run_started")[1].call_id
    tool_calls = [s for s in of_kind(events, "sub_call_started")
                  if s.kind == rlm_pb2.SUB_CALL_KIND_TOOL]
    assert [(s.tool, s.parent_id, s.depth) for s in tool_calls] == [("words", kid_id, 2)]


async def test_a_request_narrows_its_tools(
        start_server: StartServer, fake_gemini: FakeGemini, tools_module: Path,
        tools_file: Path) -> None:
    server = await start_server(tools_module=str(tools_module),
                                http_tools_file=str(tools_file),
                                http_tools_allowed_hosts="127.0.0.1", child_run_tools="")
    fake_gemini.script("MARK-NARROW", [repl(PROBE), "FINAL(done)"])
    fake_gemini.script("MARK-EMPTY", [repl(PROBE), "FINAL(done)"])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-NARROW go", "ctx",
                               tools=rlm_pb2.ToolSelection(names=["words", "shout"]))
        assert of_kind(events, "code_block")[0].stdout.strip() == "['shout', 'words']"
        system = system_of(fake_gemini, ROOT_MODEL, "MARK-NARROW")
        assert "- words(" in system and "echo" not in system and "whoami" not in system
        # Set and empty: no tools at all.
        events = await collect(stub, "MARK-EMPTY go", "ctx", tools=rlm_pb2.ToolSelection())
        assert of_kind(events, "code_block")[0].stdout.strip() == "[]"
        assert "Operator tools" not in system_of(fake_gemini, ROOT_MODEL, "MARK-EMPTY")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await collect(stub, "MARK-NARROW go", "ctx",
                          tools=rlm_pb2.ToolSelection(names=["words", "rm_rf"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'rm_rf', which this server does not offer" in (err.value.details() or "")
    # The HTTP face refuses the same way, and its OpenAPI document lists the names.
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/completion", json={
                "prompt": "MARK-NARROW go", "tools": {"names": ["rm_rf"]}}) as response:
            assert response.status == 400
            assert "'rm_rf', which this server does not offer" in (await response.json())[
                "error"]
        async with http.get(f"{base}/openapi.json") as response:
            doc = await response.json()
    names = doc["components"]["schemas"]["CompletionRequest"]["properties"]["tools"][
        "properties"]["names"]
    assert names["items"]["enum"] == ["big", "bounce", "echo", "scribble", "shout", "slow",
                                      "whoami", "words"]
