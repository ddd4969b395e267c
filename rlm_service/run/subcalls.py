"""Sub-calls a run's REPL code makes: llm_query (a plain model call), rlm_query (a
child run one depth down, or a plain call at max_depth), and their batched forms.

A sub-call never fails the request: the model gets an error string instead."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from rlm_service.budget import LimitExceeded, Usage
from rlm_service.models import Message
from rlm_service.models.catalog import estimate_tokens, valid_model_name
from rlm_service.run import events
from rlm_service.run.context import ModelCallFailed
from rlm_service.run.loop import Run
from rlm_service.run.types import RequestFailed
from rlm_service.telemetry.tracing import tracer

log = logging.getLogger(__name__)
PREVIEW = 200


async def query(parent: Run, prompt: str, model: str, recursive: bool, context: Any,
                has_context: bool) -> tuple[str, bool]:
    """One sub-call of ``parent``: (the text for the model, whether it is an error)."""
    req = parent.req
    spec = req.spec
    model = model or spec.sub_model
    call_id = uuid.uuid4().hex[:12]
    depth = parent.depth + 1
    fell_back = recursive and depth >= spec.limits.max_depth
    started = time.monotonic()
    req.emit(events.SubCallStarted(call_id=call_id, parent_id=parent.call_id, depth=depth,
                                   model=model, recursive=recursive,
                                   prompt_preview=prompt[:PREVIEW]))
    if fell_back:
        req.emit(events.Notice(
            "rlm_query_fallback",
            f"rlm_query at max_depth={spec.limits.max_depth}: ran as a plain model call",
            depth=depth, call_id=call_id))
    usage: Usage | None = None
    error = False
    try:
        if recursive and not fell_back:
            text = await _child_run(parent, call_id, prompt,
                                    context if has_context else prompt)
        else:
            # A fallen-back rlm_query still owes the model its context.
            llm_prompt = _with_context(prompt, context) if fell_back and has_context else prompt
            async with req.llm_limiter:
                text, usage, error = await _llm(parent, llm_prompt, model, depth)
    except RequestFailed as exc:
        text, error = f"Error: the sub-RLM failed: {exc.message}", True
    except LimitExceeded as exc:
        text, error = f"Error: budget exhausted ({exc.detail})", True
    except Exception:
        # The model gets an error string and the client a matching
        # sub_call_finished; the details stay in our logs.
        log.exception("sub-call failed unexpectedly")
        text, error = "Error: the sub-call failed inside the service", True
    req.emit(events.SubCallFinished(
        call_id=call_id, parent_id=parent.call_id, depth=depth, model=model,
        recursive=recursive, prompt_preview=prompt[:PREVIEW], response_preview=text[:PREVIEW],
        usage=usage, latency_seconds=time.monotonic() - started, error=error,
        error_message=text if error else "", fell_back_to_llm=fell_back,
        request_usage=req.ledger.total,
    ))
    return text, error


async def query_batched(parent: Run, prompts: list[str], model: str, recursive: bool,
                        contexts: list[Any] | None) -> list[tuple[str, bool]]:
    """Every prompt as its own sub-call, concurrently; results in prompt order."""
    return list(await asyncio.gather(*(
        query(parent, p, model, recursive, contexts[i] if contexts else None,
              contexts is not None)
        for i, p in enumerate(prompts))))


async def _child_run(parent: Run, call_id: str, prompt: str, context: Any) -> str:
    req = parent.req
    depth = parent.depth + 1
    # One limiter per depth: a parent holding a slot never waits on its own
    # children for one, so nesting cannot deadlock.
    async with req.child_limiter(depth):
        child = Run(req, depth=depth, call_id=call_id, prompt=prompt, context=context)
        with tracer().start_as_current_span("rlm.sub_rlm"):
            result = await child.run()
    return result.answer


async def _llm(parent: Run, prompt: str, model: str,
               depth: int) -> tuple[str, Usage | None, bool]:
    req = parent.req
    if not valid_model_name(model):
        return f"Error: {model[:40]!r} is not a valid model name.", None, True
    limit = req.services.pricing.input_limit(model)
    estimate = estimate_tokens(prompt)
    if estimate > limit:
        return (f"Error: prompt too large for {model}: about {estimate:,} tokens, the limit "
                f"is {limit:,}. Split it into smaller pieces.", None, True)
    try:
        reply = await req.call_model(sub=True, model=model, messages=[Message("user", prompt)],
                                     options=req.spec.sub_options, depth=depth)
    except ModelCallFailed as exc:
        return f"Error: {exc.error.message}", exc.usage, True
    return reply.text, reply.usage, False


def _with_context(prompt: str, context: Any) -> str:
    """An rlm_query prompt with its context appended, for a plain model call."""
    if context is None:
        return prompt
    text = context if isinstance(context, str) else json.dumps(context, ensure_ascii=False)
    return f"{prompt}\n\nContext:\n{text}"
