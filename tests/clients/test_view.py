"""The pure renderer: events in, view state, exit code and summary out."""

from __future__ import annotations

from rlm_client.view import ViewState
from rlm_service._gen.rlm.v1 import rlm_pb2

E = rlm_pb2.CompletionEvent


def _run(*events: rlm_pb2.CompletionEvent) -> ViewState:
    state = ViewState()
    for event in events:
        state.apply(event)
    return state


def test_answered_run_counts_calls_and_exits_0() -> None:
    state = _run(
        E(run_started=rlm_pb2.RunStarted(root_model="m", sub_model="s")),
        E(root_turn=rlm_pb2.RootTurn(iteration=1, text="```repl\nx=1\n```\n```repl\ny=2\n```",
                                     usage=rlm_pb2.Usage(calls=1, prompt_tokens=10))),
        E(code_block=rlm_pb2.CodeBlock(iteration=1, block_index=1, code="x=1\n", stdout="a")),
    )
    assert state.root.running_block == 2 and state.root.code == "y=2\n"
    state.apply(E(sub_call_started=rlm_pb2.SubCallStarted(call_id="c1", depth=1)))
    assert state.depths[1].in_flight == 1
    state.apply(E(sub_call_finished=rlm_pb2.SubCallFinished(
        call_id="c1", depth=1, latency_seconds=0.5,
        run_usage=rlm_pb2.Usage(calls=2, prompt_tokens=15))))
    assert (state.depths[1].in_flight, state.depths[1].done) == (0, 1)
    assert state.usage.calls == 2
    state.apply(E(final_answer=rlm_pb2.FinalAnswer(
        answer="42", iterations=1, stop_reason=rlm_pb2.STOP_REASON_ANSWERED,
        total_usage=rlm_pb2.Usage(calls=2, prompt_tokens=15), duration_seconds=1.25)))
    assert state.exit_code == 0
    assert state.summary == "answered · 1 iteration · 2 calls · 15 tokens · $0.0000 · 1.2s"


def test_exit_codes() -> None:
    forced = _run(E(final_answer=rlm_pb2.FinalAnswer(
        answer="p", forced=True, stop_reason=rlm_pb2.STOP_REASON_MAX_LLM_CALLS)))
    assert forced.exit_code == 3
    bad = ViewState()
    bad.fail("INVALID_ARGUMENT", "no")
    assert bad.exit_code == 2
    down = _run(E(error=rlm_pb2.RunError(code="UNAVAILABLE", message="x")))
    assert down.exit_code == 4
    assert ViewState().exit_code == 4
