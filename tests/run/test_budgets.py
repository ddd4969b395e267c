"""Budgets stop a request at once, and it still answers with the best partial answer."""

from __future__ import annotations

import time

import pytest

from rlm_service.budget import StopReason
from tests.run.conftest import CALL_TOKENS, Harness, block

# A root that keeps working: sets a partial answer, then sub-calls forever.
WORKING = block("answer['content'] = 'partial so far'\n"
                "for i in range(1000):\n    llm_query(f'piece {i}')")


async def test_max_llm_calls_stops_with_the_partial_answer(harness: Harness) -> None:
    final = await harness.complete(WORKING, max_llm_calls=4)
    assert final.stop_reason == StopReason.MAX_LLM_CALLS and final.forced
    assert final.answer == "partial so far"
    assert final.total_usage.calls == 4
    assert harness.pool.live == 0


async def test_max_total_tokens(harness: Harness) -> None:
    per_call = CALL_TOKENS.prompt_tokens + CALL_TOKENS.output_tokens + CALL_TOKENS.thinking_tokens
    final = await harness.complete(WORKING, max_total_tokens=3 * per_call)
    assert final.stop_reason == StopReason.MAX_TOTAL_TOKENS
    assert final.total_usage.total_tokens == 3 * per_call
    assert final.answer == "partial so far"


async def test_max_cost(harness: Harness) -> None:
    final = await harness.complete(WORKING, max_cost_usd=250e-6)
    assert final.stop_reason == StopReason.MAX_COST
    assert final.total_usage.calls == 3
    assert final.total_usage.cost_usd == pytest.approx(300e-6)


async def test_timeout_stops_a_slow_model(harness: Harness) -> None:
    harness.model.delay = 0.2
    started = time.monotonic()
    final = await harness.complete(WORKING, timeout_seconds=1.0)
    assert final.stop_reason == StopReason.TIMEOUT and final.answer == "partial so far"
    # Stopped a little before the limit, so the answer reaches a client in time.
    assert time.monotonic() - started < 1.0


async def test_call_that_crosses_the_limit_keeps_its_answer(harness: Harness) -> None:
    final = await harness.complete("FINAL(just in time)", max_total_tokens=1)
    assert final.answer == "just in time"

