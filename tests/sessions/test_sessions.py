"""Sessions: one REPL, root history and contexts kept across requests; idle TTL,
per-instance cap, concurrent use refused, unknown or foreign sessions refused.
Real server, real sandbox, fake Gemini."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from rlm_client import AsyncRLMClient, make_request
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from tests.conftest import final_of, of_kind, repl, sandbox_pids
from tests.fakes.gemini import FakeGemini
from tests.recursion import open_stub
from tests.support.procs import is_alive as alive
from tests.support.procs import settled as wait_for


def _on(session: rlm_pb2.SessionInfo, prompt: str, context: str,
        **fields: object) -> rlm_pb2.CompletionRequest:
    return make_request(prompt, context, session_id=session.session_id,
                        session_token=session.session_token, **fields)


async def _run(stub: rlm_pb2_grpc.RLMServiceStub,
               request: rlm_pb2.CompletionRequest) -> list[rlm_pb2.CompletionEvent]:
    return [e async for e in stub.StreamCompletion(request)]


async def test_state_is_kept_across_three_requests(server, fake_gemini: FakeGemini) -> None:
    # The fake picks a scripted turn by how many model turns the history holds, so
    # the second and third replies are reached only if the root history was kept.
    fake_gemini.script("MARK-SESS-1", [
        repl("import math\ndef double(x):\n    return 2 * x\nseen = [len(context)]\n"
             "FINAL('one')"),
        repl("seen.append(len(context))\nFINAL(str(double(seen[-1])))"),
        repl("FINAL(f'{seen} {context_0} {context_1} {context} {math.floor(2.5)}')"),
    ])
    async with open_stub(server) as stub:
        session = await stub.CreateSession(rlm_pb2.CreateSessionRequest())
        assert len(session.session_token) >= 32
        answers = []
        for n, context in ((1, "aa"), (2, "bbbb"), (3, "c")):
            events = await _run(stub, _on(session, f"MARK-SESS-{n} go", context))
            answers.append(final_of(events).answer)
        assert answers == ["one", "8", "[2, 4] aa bbbb c 2"]
        closed = await stub.CloseSession(rlm_pb2.SessionRef(
            session_id=session.session_id, session_token=session.session_token))
        assert closed.turns == 3 and closed.closed
    third = [r for r in fake_gemini.requests if "MARK-SESS-1" in r.first_user_text][-1]
    assert third.model_turns == 2
    assert "MARK-SESS-3" in third.last_user_text
    assert "context_0 to context_1" in third.last_user_text


async def test_closed_or_unknown_session_is_not_found(server) -> None:
    async with open_stub(server) as stub:
        session = await stub.CreateSession(rlm_pb2.CreateSessionRequest())
        ref = rlm_pb2.SessionRef(session_id=session.session_id,
                                 session_token=session.session_token)
        await stub.CloseSession(ref)
        for request in (_on(session, "q", "c"),
                        make_request("q", "c", session_id="0" * 32, session_token="x")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Complete(request)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "create a new session" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CloseSession(ref)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_wrong_token_is_refused(server) -> None:
    async with open_stub(server) as stub:
        session = await stub.CreateSession(rlm_pb2.CreateSessionRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Complete(make_request("q", "c", session_id=session.session_id,
                                             session_token="guess"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_idle_ttl_ends_the_session_and_its_repl(start_server,
                                                      fake_gemini: FakeGemini) -> None:
    server = await start_server(session_idle_ttl_seconds=0.6, sandbox_pool_size=0,
                                sandbox_pool_max=0)
    fake_gemini.script("MARK-SESS-TTL", [repl("x = 1\nFINAL('kept')")])
    async with open_stub(server) as stub:
        before = sandbox_pids()
        session = await stub.CreateSession(rlm_pb2.CreateSessionRequest())
        assert final_of(await _run(stub, _on(session, "MARK-SESS-TTL go", "c"))).answer == "kept"
        kept = sandbox_pids() - before
        assert kept  # the session's REPL outlives the request
        assert await wait_for(lambda: not [p for p in kept if alive(p)], 3.0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Complete(_on(session, "q", "c"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "expired" in (err.value.details() or "")


async def test_the_per_instance_cap(start_server) -> None:
    server = await start_server(max_sessions=2)
    async with open_stub(server) as stub:
        first = await stub.CreateSession(rlm_pb2.CreateSessionRequest())
        await stub.CreateSession(rlm_pb2.CreateSessionRequest())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateSession(rlm_pb2.CreateSessionRequest())
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        await stub.CloseSession(rlm_pb2.SessionRef(session_id=first.session_id,
                                                   session_token=first.session_token))
        await stub.CreateSession(rlm_pb2.CreateSessionRequest())


async def test_concurrent_use_is_refused(server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SESS-SLOW", [repl("import time\ntime.sleep(1.0)\nFINAL('first')")])
    async with open_stub(server) as stub:
        session = await stub.CreateSession(rlm_pb2.CreateSessionRequest())
        first = asyncio.create_task(_run(stub, _on(session, "MARK-SESS-SLOW go", "c")))
        await asyncio.sleep(0.5)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Complete(_on(session, "second", "c"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "running another request" in (err.value.details() or "")
        events = await first
        assert final_of(events).answer == "first"
        assert not of_kind(events, "error")


async def test_through_the_python_client(server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SESS-CLIENT", [repl("total = len(context)\nFINAL('a')"),
                                            repl("total += len(context)\nFINAL(str(total))")])
    async with AsyncRLMClient(f"127.0.0.1:{server.port}") as client:
        session = await client.create_session()
        ids = {"session_id": session.session_id, "session_token": session.session_token}
        first = await client.complete("MARK-SESS-CLIENT go", "abc", **ids)
        second = await client.complete("again", "de", **ids)
        info = await client.close_session(session)
    assert (first.answer, second.answer) == ("a", "5")
    assert info.turns == 2 and info.closed


async def test_a_session_budget_spans_its_requests(server, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-SESS-BUDGET", [
        repl("x = 1\nprint(x)"), "FINAL(first)",          # request 1: two calls
        repl("x += 1\nprint(x)"), "FINAL(never reached)",  # request 2: one call left
    ])
    async with open_stub(server) as stub:
        session = await stub.CreateSession(rlm_pb2.CreateSessionRequest(max_llm_calls=3))
        first = final_of(await _run(stub, _on(session, "MARK-SESS-BUDGET go", "c")))
        assert first.answer == "first" and first.total_usage.calls == 2
        second = final_of(await _run(stub, _on(session, "more", "c", max_llm_calls=10)))
        assert second.stop_reason == rlm_pb2.STOP_REASON_MAX_LLM_CALLS
        assert second.total_usage.calls == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Complete(_on(session, "and more", "c"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_llm_calls budget" in (err.value.details() or "")
        info = await stub.CloseSession(rlm_pb2.SessionRef(
            session_id=session.session_id, session_token=session.session_token))
        assert info.usage.calls == 3
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateSession(rlm_pb2.CreateSessionRequest(max_cost_usd=-1))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
