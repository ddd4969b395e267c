"""Recursion and sub-call fan-out through the real server, sandbox and fake Gemini."""

from __future__ import annotations

import asyncio
import json

from rlm_service._gen.rlm.v1 import rlm_pb2
from tests.conftest import collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini, Fault
from tests.recursion import open_stub

RLM = rlm_pb2.SUB_CALL_KIND_RLM
LLM = rlm_pb2.SUB_CALL_KIND_LLM

ROOT_CODE = (
    "r = rlm_query('MARK-KID summarize the list', context=['alpha', 'beta', 'gamma'])\n"
    "print(r)\n"
    "FINAL(r)"
)
KID_CODE = (
    "print(type(context).__name__, len(context))\n"
    "seen = '|'.join(context)\n"
    "inner = llm_query('inner question about ' + seen)\n"
    "FINAL('kid saw ' + seen + ' / ' + inner)"
)


async def test_depth_two_child_run_has_its_own_repl(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.sub_answer = lambda prompt: f"echo[{prompt}]"
    fake_gemini.script("MARK-TREE", [repl(ROOT_CODE)])
    fake_gemini.script("MARK-KID", [repl(KID_CODE)])
    events = await collect(stub, "MARK-TREE go", "root ctx", max_depth=2)
    final = final_of(events)
    expected = "kid saw alpha|beta|gamma / echo[inner question about alpha|beta|gamma]"
    assert final.answer == expected
    assert final.stop_reason == rlm_pb2.STOP_REASON_ANSWERED and not final.forced

    started = of_kind(events, "run_started")
    assert [(s.depth, bool(s.call_id)) for s in started] == [(0, False), (1, True)]
    kid_id = started[1].call_id
    assert started[1].context_type == "list"
    assert started[1].root_model == "fake-sub"

    calls = of_kind(events, "sub_call_started")
    assert [(c.depth, c.kind) for c in calls] == [(1, RLM), (2, LLM)]
    root_call, kid_call = calls
    # A tree: the root's call starts the child, whose own llm_query hangs under it.
    assert root_call.call_id == kid_id and root_call.parent_id == ""
    assert kid_call.parent_id == kid_id and kid_call.call_id not in ("", kid_id)
    finished = {f.call_id: f for f in of_kind(events, "sub_call_finished")}
    assert set(finished) == {kid_id, kid_call.call_id}
    for c in calls:
        f = finished[c.call_id]
        assert (f.depth, f.parent_id, f.kind) == (c.depth, c.parent_id, c.kind)
        assert not f.error and not f.fell_back_to_llm
    assert finished[kid_id].response_preview == expected
    assert finished[kid_call.call_id].usage.calls == 1

    blocks = of_kind(events, "code_block")
    assert [(b.depth, b.call_id) for b in blocks] == [(1, kid_id), (0, "")]
    # The child's REPL held the child's context, not the root's.
    assert blocks[0].code.strip() == KID_CODE
    assert blocks[0].stdout.strip() == "list 3"
    assert of_kind(events, "root_turn")[0].depth == 0
    assert {(t.depth, t.call_id) for t in of_kind(events, "root_turn")} == {(0, ""), (1, kid_id)}

    # The child's first message describes its own context; the root never saw it.
    kid_turns = [r for r in fake_gemini.calls_for("fake-sub") if "MARK-KID" in r.first_user_text]
    assert len(kid_turns) == 1 and "list of 3 items" in kid_turns[0].first_user_text

    # Usage of every depth rolls up into the request's totals.
    usage = {(u.model, u.depth): u.usage.calls for u in final.usage}
    assert usage == {("fake-root", 0): 1, ("fake-sub", 1): 1, ("fake-sub", 2): 1}
    assert final.total_usage.calls == len(fake_gemini.requests) == 3
    assert final.total_usage.prompt_tokens == sum(u.usage.prompt_tokens for u in final.usage)


async def test_rlm_query_at_max_depth_falls_back_to_a_model_call(stub,
                                                                 fake_gemini: FakeGemini) -> None:
    fake_gemini.sub_answer = lambda prompt: f"plain[{prompt}]"
    fake_gemini.script("MARK-FLAT", [repl(ROOT_CODE.replace("MARK-KID", "KID"))])
    events = await collect(stub, "MARK-FLAT go", "root ctx", max_depth=1)
    final = final_of(events)
    assert final.answer.startswith("plain[KID summarize the list")
    # The context passed to rlm_query is not dropped on the way.
    assert "alpha" in final.answer and "gamma" in final.answer
    assert [s.depth for s in of_kind(events, "run_started")] == [0]
    (finished,) = of_kind(events, "sub_call_finished")
    assert finished.fell_back_to_llm and finished.kind == RLM and finished.depth == 1
    assert not finished.error and finished.usage.calls == 1
    notices = [n for n in of_kind(events, "notice") if n.kind == "rlm_query_fallback"]
    assert len(notices) == 1 and notices[0].call_id == finished.call_id
    assert [b.depth for b in of_kind(events, "code_block")] == [0]
    assert len(fake_gemini.requests) == 2


async def test_rlm_query_batched_children_run_in_parallel_bounded(
        start_server, fake_gemini: FakeGemini) -> None:
    server = await start_server(child_run_concurrency=2, sandbox_pool_size=3)
    fake_gemini.model_latency["fake-sub"] = 0.3
    fake_gemini.script("MARK-FAN", [repl(
        "out = rlm_query_batched(['MARK-BRANCH upper it'] * 3, contexts=['ab', 'cd', 'ef'])\n"
        "FINAL(','.join(out))")])
    fake_gemini.script("MARK-BRANCH", [repl("FINAL(context.upper())")])
    async with open_stub(server) as stub:
        events = await collect(stub, "MARK-FAN go", "ctx", max_depth=2)
    final = final_of(events)
    assert final.answer == "AB,CD,EF"
    kids = {s.call_id for s in of_kind(events, "run_started") if s.depth == 1}
    assert len(kids) == 3
    # Replay the stream: children alive at once never exceed child_run_concurrency.
    alive = peak = 0
    for e in events:
        kind = e.WhichOneof("event")
        if kind == "run_started" and e.run_started.depth == 1:
            alive += 1
            peak = max(peak, alive)
        elif kind == "sub_call_finished" and e.sub_call_finished.call_id in kids:
            alive -= 1
    assert peak == 2
    usage = {(u.model, u.depth): u.usage.calls for u in final.usage}
    assert usage == {("fake-root", 0): 1, ("fake-sub", 1): 3}


async def test_fifty_prompt_batch_runs_concurrently_in_order(stub, fake_gemini: FakeGemini) -> None:
    fake_gemini.sub_answer = lambda prompt: f"ans-{prompt.split()[-1]}"
    fake_gemini.model_latency["fake-sub"] = 0.2
    # Fails the first sub-call to reach the fake, whichever slot that is; 400 is not retried.
    fake_gemini.inject(Fault.BAD_REQUEST_400, model="fake-sub")
    fake_gemini.script("MARK-FIFTY", [repl(
        "import json\n"
        "out = llm_query_batched([f'question number {i}' for i in range(50)])\n"
        "print(json.dumps(out))"), "FINAL(done)"])
    events = await collect(stub, "MARK-FIFTY go", "ctx")
    assert final_of(events).answer == "done"
    (block,) = of_kind(events, "code_block")
    assert not block.error, block.stderr
    out = json.loads(block.stdout)
    assert len(out) == 50
    failed = [i for i, text in enumerate(out) if text.startswith("Error:")]
    assert len(failed) == 1, out
    assert all(out[i] == f"ans-{i}" for i in range(50) if i not in failed)
    # 50 x 200 ms one by one would be 10 s; batch_concurrency=64 makes one wave (0.2 s).
    assert block.duration_seconds < 2.0, block.duration_seconds
    assert 16 < fake_gemini.max_in_flight <= 50
    finished = of_kind(events, "sub_call_finished")
    assert len(finished) == 50 and sum(f.error for f in finished) == 1


async def test_process_wide_model_limiter_holds_across_runs(start_server,
                                                           fake_gemini: FakeGemini) -> None:
    server = await start_server(max_concurrent_model_calls=5, sandbox_pool_size=3)
    fake_gemini.model_latency["fake-sub"] = 0.15
    fake_gemini.script("MARK-LIMIT", [repl(
        "out = llm_query_batched([f'p{i}' for i in range(20)])\n"
        "FINAL(str(sum(not o.startswith('Error') for o in out)))")])
    fake_gemini.reset_stats()
    async with open_stub(server) as stub:
        runs = await asyncio.gather(*(collect(stub, f"MARK-LIMIT run {n}", "ctx")
                                      for n in range(3)))
    assert [final_of(events).answer for events in runs] == ["20", "20", "20"]
    assert len(fake_gemini.calls_for("fake-sub")) == 60
    assert fake_gemini.max_in_flight == 5
