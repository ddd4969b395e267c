"""Compaction: when the root history nears the model's input limit, one model call
summarises the older turns into a note (variables, facts, plan) that replaces them.

It runs at most once per threshold crossing: after a compaction it waits until the
history has been below the threshold again. Trimming (history.py) stays the
fallback when even the compacted history is too long."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rlm_service.models import GenerateOptions, Message
from rlm_service.models.catalog import estimate_tokens
from rlm_service.run import events, prompts
from rlm_service.run.context import ModelCallFailed

if TYPE_CHECKING:
    from rlm_service.run.loop import Run

log = logging.getLogger(__name__)

INSTRUCTION = """\
You are working on the task below with a Python REPL, and the conversation has \
grown too long. Write a compact note for yourself that replaces the earlier turns \
shown in the transcript. Keep:
1. every REPL variable, function and import you created: its name and what it holds;
2. the facts you have found so far, with the numbers;
3. your plan: what is done and the next steps.
Write only the note, without code blocks.

Task:
{task}

Transcript of the earlier turns:
{transcript}"""

SUMMARY_HEADER = "[Note on the earlier turns, written when the history grew long]"
CONTINUE = ("Continue from the note above. The REPL state is unchanged: every variable "
            "it lists still exists.")
# Share of the input limit the transcript may take in the summary call.
_TRANSCRIPT_SHARE = 0.6


def _render(messages: list[Message], max_chars: int) -> str:
    text = "\n\n".join(f"[{m.role}]\n{m.text}" for m in messages)
    if len(text) <= max_chars:
        return text
    # The newest part matters most for the plan; the oldest is cut.
    return "[... older turns cut ...]\n" + text[-max_chars:]


class Compactor:
    def __init__(self) -> None:
        self.armed = True

    async def maybe_compact(self, run: Run, messages: list[Message],
                            options: GenerateOptions) -> None:
        """Compacts ``messages`` in place when they cross the threshold. A failed
        summary call leaves them as they are; budget stops propagate."""
        threshold = run.req.settings.compaction_threshold
        if threshold <= 0 or len(messages) < 5 or messages[-2].role != "model":
            return
        limit = run.req.services.pricing.input_limit(run.model)
        used = estimate_tokens(prompts.SYSTEM_PROMPT) + sum(
            estimate_tokens(m.text) for m in messages)
        if used < threshold * limit:
            self.armed = True
            return
        if not self.armed:
            return
        self.armed = False
        old = messages[1:-2]
        prompt = INSTRUCTION.format(
            task=messages[0].text[:4000],
            transcript=_render(old, int(limit * _TRANSCRIPT_SHARE) * 4))
        try:
            call = await run.req.call_model(
                sub=run.depth > 0, model=run.model, messages=[Message("user", prompt)],
                options=options, depth=run.depth)
        except ModelCallFailed as exc:
            log.warning("compaction call failed: %s", exc)
            run.req.emit(events.Notice("compaction_failed", f"the summary call failed: {exc}",
                                       depth=run.depth, call_id=run.call_id))
            return
        messages[1:-2] = [Message("model", f"{SUMMARY_HEADER}\n{call.text.strip()}"),
                          Message("user", CONTINUE)]
        after = estimate_tokens(prompts.SYSTEM_PROMPT) + sum(
            estimate_tokens(m.text) for m in messages)
        run.req.emit(events.Notice(
            "history_compacted",
            f"summarised {len(old)} earlier messages in one model call "
            f"(~{used:,} -> ~{after:,} tokens of {limit:,}): {call.text.strip()[:500]}",
            depth=run.depth, call_id=run.call_id))
