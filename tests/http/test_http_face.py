"""The HTTP face against the real server and the fake Gemini API."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
from google.protobuf import json_format

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.server import Server
from tests.conftest import API_KEY, ROOT_MODEL, busy_repl_pids, repl
from tests.fakes.gemini import FakeGemini, Fault
from tests.support.procs import is_alive as alive
from tests.support.procs import settled as wait_for

OPENAPI = Path(__file__).resolve().parents[2] / "rlm_service/http/openapi.json"


def url(server: Server, path: str) -> str:
    return f"http://127.0.0.1:{server.http_port}{path}"


async def read_sse(response: aiohttp.ClientResponse) -> tuple[list[rlm_pb2.CompletionEvent],
                                                               list[str]]:
    events, comments = [], []
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            events.append(json_format.Parse(line[6:], rlm_pb2.CompletionEvent()))
        elif line.startswith(":"):
            comments.append(line)
    return events, comments


async def test_completion_keeps_the_go_contract(server: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-GO", [repl("print(len(context))"), repl("FINAL('forty-two')")])
    async with aiohttp.ClientSession() as http, http.post(url(server, "/completion"), json={
            "prompt": "MARK-GO what is it?", "context": "some context", "max_iterations": 5,
    }) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["root_model"] == ROOT_MODEL
    assert body["prompt"] == "MARK-GO what is it?"
    assert body["response"] == "forty-two"
    summary = body["usage_summary"]
    assert set(summary) == {"total_calls", "total_input_tokens", "total_output_tokens"}
    assert summary["total_calls"] == 2
    assert all(isinstance(v, int) and v > 0 for v in summary.values()), summary
    assert isinstance(body["execution_time"], float) and 0 < body["execution_time"] < 60
    # Our additions ride along without changing the Go fields.
    assert body["iterations"] == 2 and body["stop_reason"] == "STOP_REASON_ANSWERED"
    assert body["final"]["answer"] == "forty-two"


async def test_completion_accepts_the_full_proto_request(server: Server,
                                                         fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-FULL", [repl("FINAL(str(int(context['n'] * 2)))")])
    async with aiohttp.ClientSession() as http, http.post(url(server, "/completion"), json={
            "prompt": "MARK-FULL", "context": {"n": 21}, "maxIterations": 3,
            "rootOptions": {"temperature": 0.5}, "max_llm_calls": 10, "timeout_seconds": 60,
    }) as response:
        body = await response.json()
    assert response.status == 200, body
    assert body["response"] == "42"


async def test_bad_requests_get_400_or_405_with_an_error_body(server: Server) -> None:
    cases: list[tuple[str, str, Any, int]] = [
        ("POST", "/completion", b"{not json", 400),
        ("POST", "/completion", b"[1, 2]", 400),
        ("POST", "/completion", {"context": "no prompt"}, 400),
        ("POST", "/completion", {"prompt": "   "}, 400),
        ("POST", "/completion", {"prompt": 123}, 400),
        ("POST", "/completion", {"prompt": "x", "max_iterations": "many"}, 400),
        ("POST", "/completion", {"prompt": "x", "max_iterations": -1}, 400),
        ("POST", "/completion", {"prompt": "x", "max_iterations": 10**12}, 400),
        ("POST", "/completion", {"prompt": "x", "root_model": "../../etc"}, 400),
        ("POST", "/v1/completions:stream", {"prompt": 1.5}, 400),
        ("GET", "/completion", None, 405),
        ("PUT", "/completion", {"prompt": "x"}, 405),
        ("GET", "/v1/completions:stream", None, 405),
        ("GET", "/no/such/page", None, 404),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, body, status in cases:
            kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
            async with http.request(method, url(server, path), **kwargs) as response:
                text = await response.text()
                assert response.status == status, (method, path, body, text)
                assert response.content_type == "application/json", text
                payload = json.loads(text)
                assert list(payload) == ["error"] and payload["error"], text
                assert "Traceback" not in text and API_KEY not in text


async def test_a_50_mb_context(server: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-BIG", [repl("FINAL(str(len(context)))")])
    context = "x" * (50 * 1024 * 1024)
    async with aiohttp.ClientSession() as http, http.post(url(server, "/completion"), json={
            "prompt": "MARK-BIG how long?", "context": context}) as response:
        body = await response.json()
    assert response.status == 200, body
    assert body["response"] == str(len(context))


async def test_sse_events_in_order_ending_with_the_answer(start_server,
                                                          fake_gemini: FakeGemini) -> None:
    server = await start_server(heartbeat_seconds=0.2)
    fake_gemini.script("MARK-SSE", [
        repl("import time\ntime.sleep(0.7)\nprint(llm_query('sub question'))"),
        repl("FINAL('done')")])
    async with aiohttp.ClientSession() as http, http.post(
            url(server, "/v1/completions:stream"),
            json={"prompt": "MARK-SSE", "context": "c"}) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events, comments = await read_sse(response)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "final_answer", kinds
    assert {"root_turn", "code_block", "sub_call_started", "sub_call_finished"} <= set(kinds)
    seqs = [e.seq for e in events]
    assert seqs[0] == 1 and all(a < b for a, b in itertools.pairwise(seqs)), seqs
    times = [e.time.ToNanoseconds() for e in events]
    assert times == sorted(times) and abs(times[0] / 1e9 - time.time()) < 60
    # Heartbeats are SSE comments and take their place in the numbering.
    assert comments and all(c.startswith(": heartbeat seq=") for c in comments), comments
    assert "heartbeat" not in kinds
    assert events[-1].final_answer.answer == "done"


async def test_sse_ends_with_the_error_event(server: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.inject(Fault.UNAUTHORIZED_401, count=1, model=ROOT_MODEL)
    async with aiohttp.ClientSession() as http, http.post(
            url(server, "/v1/completions:stream"), json={"prompt": "MARK-ERR"}) as response:
        assert response.status == 200
        events, _ = await read_sse(response)
    assert events[-1].WhichOneof("event") == "error", events
    assert events[-1].error.code == "PERMISSION_DENIED"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_completion_maps_run_errors_to_http_statuses(server: Server,
                                                           fake_gemini: FakeGemini) -> None:
    fake_gemini.inject(Fault.UNAUTHORIZED_401, count=1, model=ROOT_MODEL)
    async with aiohttp.ClientSession() as http, http.post(
            url(server, "/completion"), json={"prompt": "MARK-ERR2"}) as response:
        text = await response.text()
    assert response.status == 403, text
    assert list(json.loads(text)) == ["error"] and API_KEY not in text


async def test_disconnect_cancels_the_run(server: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-HANG", [repl("import time\ntime.sleep(60)\nFINAL('late')")])
    async with aiohttp.ClientSession() as http:
        response = await http.post(url(server, "/v1/completions:stream"),
                                   json={"prompt": "MARK-HANG", "context": "c"})
        async for raw in response.content:
            if b'"rootTurn"' in raw:
                break
        assert await wait_for(lambda: bool(busy_repl_pids(server)), 5.0)
        running = busy_repl_pids(server)
        response.close()
        t0 = time.monotonic()
        assert await wait_for(lambda: not [p for p in running if alive(p)], 1.0), \
            [p for p in running if alive(p)]
        assert time.monotonic() - t0 < 1.0
    engine = server.engine
    assert engine is not None
    assert await wait_for(lambda: not engine.active, 1.0)


async def test_healthz_openapi_and_metrics(server: Server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-M", [repl("FINAL('m')")])
    async with aiohttp.ClientSession() as http:
        async with http.get(url(server, "/healthz")) as response:
            assert response.status == 200 and (await response.json()) == {"status": "ok"}
        async with http.get(url(server, "/openapi.json")) as response:
            served = await response.json()
        assert served == json.loads(OPENAPI.read_text())
        assert served["openapi"].startswith("3.1")
        async with http.post(url(server, "/completion"), json={"prompt": "MARK-M"}) as response:
            assert response.status == 200
        async with http.get(url(server, "/metrics")) as response:
            text = await response.text()
    assert 'rlm_http_requests_total{code="200",method="POST",path="/completion"}' in text
    assert 'rlm_http_request_duration_seconds_bucket{le="0.005",method="GET",path="/healthz"}' \
        in text
    assert "rlm_requests_total" in text
