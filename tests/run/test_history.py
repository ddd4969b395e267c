"""History trimming keeps the root under its model's input limit."""

from __future__ import annotations

from rlm_service.models import Message
from rlm_service.run import events as ev
from rlm_service.run import prompts
from rlm_service.run.history import fit_history
from tests.run.conftest import ROOT, Harness, block


def tokens(text: str) -> int:
    return len(text)


def test_oldest_outputs_go_first_and_the_task_and_newest_stay() -> None:
    system = tokens(prompts.SYSTEM_PROMPT)
    messages = [Message("user", "T" * 100), Message("model", "m1"), Message("user", "a" * 500),
                Message("model", "m2"), Message("user", "b" * 500), Message("model", "m3"),
                Message("user", "c" * 500)]
    # Room for everything once the oldest output is a stub, not before.
    after_one = sum(tokens(m.text) for m in messages) - 500 + tokens(prompts.TRIMMED)
    limit = int((system + after_one) / 0.9) + 2
    assert fit_history(messages, limit, tokens) == 1
    assert messages[0].text == "T" * 100 and messages[-1].text == "c" * 500
    assert messages[2].text == prompts.TRIMMED and messages[4].text == "b" * 500
    # Already trimmed and model turns are never touched; a fitting history is left alone.
    assert fit_history(messages, limit, tokens) == 0
    assert [m.text for m in messages if m.role == "model"] == ["m1", "m2", "m3"]


def test_nothing_to_trim_when_only_task_and_newest() -> None:
    messages = [Message("user", "T" * 10_000), Message("user", "x" * 10_000)]
    assert fit_history(messages, 10, tokens) == 0


async def test_loop_trims_and_tells_the_client(harness: Harness) -> None:
    harness.pricing.limits[ROOT] = 3_000
    big = block("print('x' * 6000)")
    final = await harness.complete(big, big, "FINAL(fits)")
    assert final.answer == "fits"
    notices = [n for n in harness.of(ev.Notice) if n.kind == "history_trimmed"]
    assert notices and "root-model" in notices[0].message
    last = harness.model.root_calls()[-1].messages
    assert any(m.text == prompts.TRIMMED for m in last)
    assert "x" * 6000 in last[-1].text
