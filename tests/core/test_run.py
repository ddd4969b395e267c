"""End-to-end runs through the real server, sandbox and google-genai SDK."""

from __future__ import annotations

import asyncio
import os
import time

import grpc
import pytest

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2
from tests.conftest import busy_repl_pids, collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini


async def test_chunked_batched_run_with_final_var(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.sub_answer = lambda prompt: f"count={prompt.count('apple')}"
    context = " ".join(["apple pear"] * 300)
    fake_gemini.script("MARK-CHUNKS", [
        repl("print(type(context).__name__, len(context))"),
        repl(
            "size = 1000\n"
            "chunks = [context[i:i + size] for i in range(0, len(context), size)]\n"
            "answers = llm_query_batched(['Count apples: ' + c for c in chunks])\n"
            "total = sum(int(a.split('=')[1]) for a in answers)\n"
            "result = f'{total} apples in {len(chunks)} chunks'\n"
            "print(result)"
        ),
        "Done.\nFINAL_VAR(result)",
    ])
    events = await collect(stub, "MARK-CHUNKS how many apples?", context)
    final = final_of(events)
    chunks = [context[i:i + 1000] for i in range(0, len(context), 1000)]
    expected = sum(('Count apples: ' + c).count('apple') for c in chunks)
    assert final.answer == f"{expected} apples in {len(chunks)} chunks"
    assert final.iterations == 3 and not final.forced
    assert final.stop_reason == rlm_pb2.STOP_REASON_ANSWERED
    assert events[0].HasField("run_started")
    assert events[0].run_started.context_chars == len(context)
    blocks = of_kind(events, "code_block")
    assert blocks[0].stdout.strip() == f"str {len(context)}"
    subs = of_kind(events, "sub_call_finished")
    assert len(subs) == len(chunks) and all(not s.error for s in subs)
    # Root turn 2 saw turn 1's output, and the root never saw the context itself.
    root_calls = fake_gemini.calls_for("fake-root")
    assert f"str {len(context)}" in root_calls[1].last_user_text
    assert all("apple pear apple pear apple pear" not in str(r.contents)[600:] for r in root_calls)
    usage = {(u.model, u.depth): u.usage for u in final.usage}
    assert usage[("fake-root", 0)].calls == 3
    assert usage[("fake-sub", 1)].calls == len(chunks)
    assert final.total_usage.calls == 3 + len(chunks)


ANSWER = 'The result (see "f(x)" and (nested (parens)))\nline two: done)'


@pytest.mark.parametrize("form", ["FINAL", "FINAL_VAR", "answer_dict", "text_tag", "text_var"])
async def test_answer_forms_keep_parens_quotes_newlines(stub, fake_gemini: FakeGemini,
                                                        form: str) -> None:
    setup = f"value = {ANSWER!r}"
    turns = {
        "FINAL": [repl(f"FINAL({ANSWER!r})\nprint('not reached')")],
        "FINAL_VAR": [repl(f"{setup}\nFINAL_VAR('value')")],
        "answer_dict": [repl(f"answer['content'] = {ANSWER!r}\nanswer['ready'] = True")],
        "text_tag": [f"I know it.\nFINAL({ANSWER})"],
        "text_var": [repl(setup), "FINAL_VAR(value)"],
    }[form]
    fake_gemini.script(f"MARK-{form}", turns)
    events = await collect(stub, f"MARK-{form} answer please", "ctx")
    assert final_of(events).answer == ANSWER
    blocks = of_kind(events, "code_block")
    assert len(blocks) == {"FINAL": 1, "FINAL_VAR": 1, "answer_dict": 1, "text_tag": 0,
                           "text_var": 1}[form]
    assert all("not reached" not in b.stdout for b in blocks)


async def test_code_after_final_in_same_turn_does_not_run(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-AFTER", [
        "```repl\nFINAL('early')\n```\n```repl\nprint('second block ran')\n```"
    ])
    events = await collect(stub, "MARK-AFTER go", "ctx")
    assert final_of(events).answer == "early"
    assert len(of_kind(events, "code_block")) == 1


async def test_error_traceback_reaches_model_and_run_recovers(stub,
                                                               fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-ERR", [
        repl("def broken():\n    return 1 / 0\nbroken()"),
        repl("FINAL('recovered')"),
    ])
    events = await collect(stub, "MARK-ERR go", "ctx")
    first = of_kind(events, "code_block")[0]
    assert first.error and "ZeroDivisionError" in first.stderr and "Traceback" in first.stderr
    assert "in broken" in first.stderr
    assert "ZeroDivisionError" in fake_gemini.calls_for("fake-root")[1].last_user_text
    assert final_of(events).answer == "recovered"


async def test_state_persists_across_blocks_and_turns(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-STATE", [
        "```repl\nbase = 40\n```\n```repl\ndef add(n):\n    return base + n\n```",
        repl("FINAL(add(2))"),
    ])
    events = await collect(stub, "MARK-STATE go", "ctx")
    assert final_of(events).answer == "42"


async def test_forced_answer_at_max_iterations(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-FORCE", [
        repl("print('still working')"), repl("print('still working')"),
        "FINAL(best guess: 7)",
    ])
    events = await collect(stub, "MARK-FORCE go", "ctx", max_iterations=2)
    final = final_of(events)
    assert final.forced and final.answer == "best guess: 7"
    assert final.stop_reason == rlm_pb2.STOP_REASON_MAX_ITERATIONS
    assert final.iterations == 3
    assert "used all your turns" in fake_gemini.calls_for("fake-root")[-1].last_user_text


async def test_hundred_megabyte_context(stub, fake_gemini: FakeGemini) -> None:
    context = ("0123456789" * 10_000_000)[:100_000_000]
    fake_gemini.script("MARK-BIG", [repl("FINAL(len(context) + context.count('7'))")])
    events = await collect(stub, "MARK-BIG size?", context)
    assert final_of(events).answer == str(100_000_000 + 10_000_000)
    assert events[0].run_started.context_chars == 100_000_000
    # The root model got metadata, not the context.
    assert len(str(fake_gemini.calls_for("fake-root")[0].contents)) < 10_000


async def test_list_context_metadata(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-LIST", [repl("FINAL(sum(len(x) for x in context))")])
    docs = ["a" * 10, "b" * 20, "c" * 30]
    events = await collect(stub, "MARK-LIST total?", docs)
    assert final_of(events).answer == "60"
    first = fake_gemini.calls_for("fake-root")[0].last_user_text
    assert "list of 3 items" in first and "[10, 20, 30]" in first


async def test_repl_environment_has_no_secrets(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-ENV", [repl(
        "import os\nFINAL(repr(sorted(os.environ.items())))")])
    events = await collect(stub, "MARK-ENV env?", "ctx")
    env = final_of(events).answer
    assert "GEMINI" not in env and "test-key" not in env
    assert "PYTHONPATH" in env


async def test_client_cancel_kills_repl(server, stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-CANCEL", [repl("import subprocess, time\n"
                                            "subprocess.Popen(['sleep', '60'])\n"
                                            "time.sleep(60)")])
    call = stub.StreamCompletion(make_request("MARK-CANCEL go", "ctx"))
    async for event in call:
        if event.HasField("root_turn"):
            break
    # bwrap, its init, the REPL and the sleep the block started.
    deadline = time.monotonic() + 10.0
    while len(running := busy_repl_pids(server)) < 4:
        assert time.monotonic() < deadline, running
        await asyncio.sleep(0.05)
    call.cancel()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in running):
        await asyncio.sleep(0.05)
    assert not [p for p in running if os.path.exists(f"/proc/{p}")]


async def test_health_and_reflection(server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "rlm.v1.RLMService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = [r async for r in refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))]
        names = {s.name for s in responses[0].list_services_response.service}
        assert "rlm.v1.RLMService" in names


async def test_complete_unary(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-UNARY", [repl("FINAL(context.upper())")])
    response = await stub.Complete(make_request("MARK-UNARY go", "abc"))
    assert response.answer == "ABC" and response.final.iterations == 1


async def test_sub_call_with_a_malformed_model_name_is_refused(stub,
                                                               fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-BADMODEL", [
        repl("print(llm_query('hi', model='../../evil model?'))"), "FINAL(done)"])
    events = await collect(stub, "MARK-BADMODEL go", "ctx")
    assert of_kind(events, "code_block")[0].stdout.startswith(
        "Error: '../../evil model?' is not a valid model name")
    [finished] = of_kind(events, "sub_call_finished")
    assert finished.error
    assert all(r.model == "fake-root" for r in fake_gemini.requests)
