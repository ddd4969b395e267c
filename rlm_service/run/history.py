"""Keeping a run's root history under the model's input limit."""

from __future__ import annotations

from collections.abc import Callable

from rlm_service.models import Message
from rlm_service.run import prompts


def fit_history(messages: list[Message], input_limit: int,
                estimate_tokens: Callable[[str], int]) -> int:
    """Replaces the oldest REPL outputs with a stub until the history, with the
    system prompt, fits in 90% of ``input_limit``. The first message (the task)
    and the last (the newest feedback) stay whole. Returns how many were replaced."""
    budget = int(input_limit * 0.9) - estimate_tokens(prompts.SYSTEM_PROMPT)
    sizes = [estimate_tokens(m.text) for m in messages]
    total = sum(sizes)
    stub = estimate_tokens(prompts.TRIMMED)
    trimmed = 0
    for i in range(1, len(messages) - 1):
        if total <= budget:
            break
        m = messages[i]
        if m.role != "user" or m.text == prompts.TRIMMED:
            continue
        messages[i] = Message("user", prompts.TRIMMED)
        total += stub - sizes[i]
        sizes[i] = stub
        trimmed += 1
    return trimmed
