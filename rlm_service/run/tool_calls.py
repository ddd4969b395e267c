"""HTTP tool calls a run's REPL code makes (rlm_service/tools/): checked, counted
against the request's limit, made, and reported as sub-call events.

A tool call never fails the request: the model's code gets a ToolError instead."""

from __future__ import annotations

import logging
import time
import uuid

from rlm_service.run import events
from rlm_service.run.loop import Run
from rlm_service.telemetry import metrics
from rlm_service.tools import ToolCallFailed
from rlm_service.tools.http_call import ToolReply

log = logging.getLogger(__name__)
PREVIEW = 200


async def call(run: Run, name: str, arguments_json: str) -> tuple[ToolReply, bool]:
    """(the reply, or why the call failed as its text; whether it failed)."""
    req = run.req
    declared = req.services.tools.http_tool(name)
    shown = name[:80]
    call_id = uuid.uuid4().hex[:12]
    depth = run.depth + 1
    started = time.monotonic()
    preview = arguments_json[:PREVIEW]
    req.emit(events.SubCallStarted(call_id=call_id, parent_id=run.call_id, depth=depth,
                                   model="", recursive=False, prompt_preview=preview,
                                   tool=shown))
    outcome = "refused"
    try:
        client = req.services.tool_client
        if declared is None or client is None or name not in run.tools.http:
            raise ToolCallFailed(f"this run has no HTTP tool named {shown!r}")
        body = client.check(declared, arguments_json)
        limit = req.services.tools.max_calls
        if limit and req.tool_calls >= limit:
            raise ToolCallFailed(f"this request has made its {limit} HTTP tool calls, the "
                                 "limit; work with the results you have")
        req.tool_calls += 1
        timeout = min(declared.timeout_seconds, req.deadline - time.monotonic())
        if timeout <= 0:
            raise ToolCallFailed("the request's time is up")
        outcome = "error"
        sent = time.monotonic()
        try:
            async with req.llm_limiter:
                reply = await client.post(declared, body, timeout, req.spec.request_id)
        finally:
            metrics.rlm_tool_call_duration_seconds.labels(tool=declared.name).observe(
                time.monotonic() - sent)
        outcome, error = "ok", False
    except ToolCallFailed as exc:
        reply, error = ToolReply(str(exc), False), True
    except Exception:
        log.exception("tool call failed unexpectedly")
        reply, error = ToolReply("the tool call failed inside the service", False), True
    metrics.rlm_tool_calls.labels(tool=declared.name if declared else "unknown",
                                  outcome=outcome).inc()
    req.emit(events.SubCallFinished(
        call_id=call_id, parent_id=run.call_id, depth=depth, model="", recursive=False,
        prompt_preview=preview, response_preview=reply.text[:PREVIEW], usage=None,
        latency_seconds=time.monotonic() - started, error=error,
        error_message=reply.text if error else "", fell_back_to_llm=False,
        request_usage=req.ledger.total, tool=shown,
    ))
    return reply, error
