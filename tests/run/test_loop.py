"""The run loop: turns, blocks, answers, sub-calls and REPL restarts."""

from __future__ import annotations

import grpc
import pytest

from rlm_service.budget import StopReason
from rlm_service.errors import status_of
from rlm_service.models import ModelError
from rlm_service.run import events as ev
from rlm_service.run import prompts
from rlm_service.run.types import ErrorKind, RequestFailed
from tests.run.conftest import ROOT, SUB, Harness, block


async def test_block_then_final_var(harness: Harness) -> None:
    final = await harness.complete(
        block("n = len(context)\nprint(n)"), "It is done.\nFINAL_VAR(n)")
    assert final.answer == str(len("the context"))
    assert (final.iterations, final.forced, final.stop_reason) == (2, False, StopReason.ANSWERED)
    kinds = [type(e).__name__ for e in harness.events]
    assert kinds == ["RunStarted", "RootTurn", "CodeBlock", "RootTurn"]
    assert harness.of(ev.CodeBlock)[0].stdout == "11\n"
    # Turn 2 saw the block's output; the REPL and its secret are gone afterwards.
    assert "11" in harness.model.root_calls()[1].messages[-1].text
    assert harness.pool.live == 0


@pytest.mark.parametrize(("turn", "answer"), [
    ('FINAL("a (b) c")', "a (b) c"),
    (block("FINAL('from code')\nprint('not reached')"), "from code"),
    (block("answer['content'] = 'dict answer'\nanswer['ready'] = True"), "dict answer"),
])
async def test_answer_forms(harness: Harness, turn: str, answer: str) -> None:
    final = await harness.complete(turn)
    assert final.answer == answer and final.iterations == 1
    assert all("not reached" not in b.stdout for b in harness.of(ev.CodeBlock))


async def test_text_without_code_or_answer_is_told_to_use_code(harness: Harness) -> None:
    final = await harness.complete("Let me think.", "FINAL(ok)")
    assert final.answer == "ok" and final.iterations == 2
    assert harness.model.root_calls()[1].messages[-1].text == prompts.NO_CODE


async def test_out_of_turns_forces_an_answer(harness: Harness) -> None:
    final = await harness.complete(block("x = 1"), block("x += 1"), "My best guess: 2",
                                   max_iterations=2)
    assert final.forced and final.stop_reason == StopReason.MAX_ITERATIONS
    assert final.answer == "My best guess: 2" and final.iterations == 3
    assert harness.model.root_calls()[2].messages[-1].text == prompts.FORCE_ANSWER


async def test_streamed_root_text(harness: Harness) -> None:
    await harness.complete("FINAL(streamed)", stream=True)
    deltas = harness.of(ev.RootTextDelta)
    assert [(d.iteration, d.text) for d in deltas] == [(1, "FINAL(streamed)")]


async def test_llm_query_accounts_each_model_and_depth(harness: Harness) -> None:
    harness.model.sub = lambda prompt: prompt.upper()
    final = await harness.complete(
        block("r = llm_query_batched(['a', 'b'])\ns = llm_query('c')\nprint(r, s)"),
        "FINAL_VAR(s)")
    assert final.answer == "C"
    usage = {(m.model, m.depth): m.usage for m in final.usage}
    assert usage[(ROOT, 0)].calls == 2 and usage[(SUB, 1)].calls == 3
    assert final.total_usage == usage[(ROOT, 0)] + usage[(SUB, 1)]
    assert final.total_usage.cost_usd == pytest.approx(5 * 100e-6)
    # Cost is computed once per model call, not again for events.
    assert harness.pricing.priced == 5
    finished = harness.of(ev.SubCallFinished)
    assert [f.response_preview for f in finished][-1] == "C"
    assert all(f.usage is not None and f.usage.calls == 1 and not f.error for f in finished)
    assert len(harness.of(ev.SubCallStarted)) == 3


async def test_rlm_query_runs_a_child_one_depth_down(harness: Harness) -> None:
    harness.model.root.extend([])
    harness.model.sub = lambda prompt: "FINAL(child says hi)"
    final = await harness.complete(block("r = rlm_query('go', context=[1, 2])"), "FINAL_VAR(r)",
                                   max_depth=2)
    assert final.answer == "child says hi"
    started = harness.of(ev.RunStarted)
    assert [s.depth for s in started] == [0, 1]
    assert started[1].context_type == "list" and started[1].model == SUB
    finished = harness.of(ev.SubCallFinished)
    assert finished[0].recursive and not finished[0].fell_back_to_llm
    assert finished[0].usage is None  # the child's own turns carry its usage
    assert harness.pool.live == 0 and len(harness.pool.acquired) == 2


async def test_rlm_query_at_max_depth_falls_back_with_its_context(harness: Harness) -> None:
    seen: list[str] = []
    harness.model.sub = lambda prompt: seen.append(prompt) or "plain"
    final = await harness.complete(block("r = rlm_query('sum it', context={'a': 1})"),
                                   "FINAL_VAR(r)", max_depth=1)
    assert final.answer == "plain"
    assert seen == ['sum it\n\nContext:\n{"a": 1}']
    notice = harness.of(ev.Notice)[0]
    assert notice.kind == "rlm_query_fallback" and notice.depth == 1
    assert harness.of(ev.SubCallFinished)[0].fell_back_to_llm


async def test_failed_sub_call_is_an_error_string_not_a_failure(harness: Harness) -> None:
    def sub(prompt: str) -> str:
        raise ModelError("quota gone", code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                         kind="rate_limited")

    harness.model.sub = sub
    final = await harness.complete(block("r = llm_query('x')"), "FINAL_VAR(r)")
    assert final.answer == "Error: quota gone"
    assert harness.of(ev.SubCallFinished)[0].error


async def test_crashed_repl_is_replaced_and_the_model_told(harness: Harness) -> None:
    final = await harness.complete(block("x = 5\nCRASH()"), block("print('x' in globals())"),
                                   "FINAL(done)")
    assert final.answer == "done"
    blocks = harness.of(ev.CodeBlock)
    assert blocks[0].repl_restarted and blocks[1].stdout == "False\n"
    assert [n.kind for n in harness.of(ev.Notice)] == ["repl_restarted"]
    assert "REPL process died" in harness.model.root_calls()[1].messages[-1].text
    assert len(harness.pool.acquired) == 2 and harness.pool.live == 0


async def test_repl_that_cannot_start_fails_the_request(harness: Harness) -> None:
    harness.pool.fail_next_acquire = True
    with pytest.raises(RequestFailed) as info:
        # Code needs the REPL (an answer without code does not wait for it).
        await harness.complete(block("x = 1"), "FINAL(never)")
    assert info.value.kind is ErrorKind.SANDBOX_UNAVAILABLE
    assert status_of(info.value).http == 503


async def test_root_model_failure_maps_to_its_status(harness: Harness) -> None:
    error = ModelError("slow down", code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                         kind="rate_limited")
    with pytest.raises(RequestFailed) as info:
        await harness.complete(error)
    assert info.value.kind is ErrorKind.MODEL_RATE_LIMITED
    assert "slow down" in info.value.message
    status = status_of(info.value)
    assert (status.grpc.name, status.http) == ("RESOURCE_EXHAUSTED", 429)
    assert harness.pool.live == 0
