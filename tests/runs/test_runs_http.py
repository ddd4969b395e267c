"""Run control on the HTTP face: a dropped SSE stream, reattached with Last-Event-ID,
inspected and cancelled by id, and a request without the token refused."""

from __future__ import annotations

import aiohttp
from google.protobuf import json_format

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.server import Server
from tests.conftest import repl
from tests.fakes.gemini import FakeGemini
from tests.http.test_http_face import read_sse, url


async def _first(response: aiohttp.ClientResponse, kind: str) -> list[rlm_pb2.CompletionEvent]:
    seen = []
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            seen.append(json_format.Parse(line[6:], rlm_pb2.CompletionEvent()))
            if seen[-1].WhichOneof("event") == kind:
                return seen
    raise AssertionError(f"the stream ended before {kind}")


async def test_sse_drop_then_watch_with_last_event_id(server: Server,
                                                      fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-HTTP-DETACH", [
        repl("import time\ntime.sleep(0.5)\nprint('one')"), repl("FINAL('http done')")])
    async with aiohttp.ClientSession() as http:
        response = await http.post(url(server, "/v1/completions:stream"), json={
            "prompt": "MARK-HTTP-DETACH", "context": "c", "detachGraceSeconds": 20})
        first = await _first(response, "root_turn")
        response.close()
        started = first[0].run_started
        run = url(server, f"/v1/runs/{started.request_id}")
        token = {"X-Run-Token": started.run_token}
        async with http.get(run, headers=token) as got:
            assert got.status == 200
            info = await got.json()
        assert info["runId"] == started.request_id
        assert info["state"] in ("RUN_STATE_DETACHED", "RUN_STATE_ANSWERED")
        async with http.get(f"{run}:watch", headers={
                **token, "Last-Event-ID": str(first[-1].seq)}) as watch:
            assert watch.status == 200
            assert watch.headers["Content-Type"].startswith("text/event-stream")
            rest, _ = await read_sse(watch)
    events = first + rest
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].final_answer.answer == "http done"


async def test_cancel_and_refusals_over_http(server: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-HTTP-CANCEL", [repl("import time\ntime.sleep(60)\nFINAL('no')")])
    async with aiohttp.ClientSession() as http:
        response = await http.post(url(server, "/v1/completions:stream"), json={
            "prompt": "MARK-HTTP-CANCEL", "context": "c", "detachGraceSeconds": 20})
        started = (await _first(response, "run_started"))[0].run_started
        run = url(server, f"/v1/runs/{started.request_id}")
        for method, path in (("GET", run), ("POST", f"{run}:cancel"), ("GET", f"{run}:watch")):
            async with http.request(method, path, headers={"X-Run-Token": "nope"}) as bad:
                assert bad.status == 403, path
                assert "run_token" in (await bad.json())["error"]
        async with http.get(url(server, "/v1/runs/feedface"),
                            params={"run_token": started.run_token}) as missing:
            assert missing.status == 404
        async with http.get(f"{run}:watch", params={"run_token": started.run_token,
                                                    "after_seq": "-1"}) as bad_seq:
            assert bad_seq.status == 400
        async with http.post(f"{run}:cancel", params={"run_token": started.run_token}) as done:
            assert done.status == 200
            assert (await done.json())["state"] == "RUN_STATE_CANCELLED"
        rest, _ = await read_sse(response)
        assert rest[-1].error.code == "CANCELLED"
