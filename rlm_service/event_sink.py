"""The one place CompletionEvent messages are built.

A request's runs emit domain events (rlm_service/run/events.py) into an EventSink;
the stream (rlm_service/streaming.py) takes wire events out, numbered and
timestamped, with heartbeats while the request is quiet."""

from __future__ import annotations

import asyncio
import time

from google.protobuf import json_format

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.budget import Limits, StopReason, Usage
from rlm_service.errors import status_of
from rlm_service.run import events
from rlm_service.run.types import FinalAnswer, RequestFailed

_STOP_REASONS: dict[StopReason, rlm_pb2.StopReason.ValueType] = {
    StopReason.ANSWERED: rlm_pb2.STOP_REASON_ANSWERED,
    StopReason.MAX_ITERATIONS: rlm_pb2.STOP_REASON_MAX_ITERATIONS,
    StopReason.MAX_LLM_CALLS: rlm_pb2.STOP_REASON_MAX_LLM_CALLS,
    StopReason.MAX_TOTAL_TOKENS: rlm_pb2.STOP_REASON_MAX_TOTAL_TOKENS,
    StopReason.MAX_COST: rlm_pb2.STOP_REASON_MAX_COST,
    StopReason.TIMEOUT: rlm_pb2.STOP_REASON_TIMEOUT,
}


class EventSink:
    """Collects one request's events in order; ``close()`` ends the stream."""

    def __init__(self, started: float) -> None:
        self._queue: asyncio.Queue[rlm_pb2.CompletionEvent | None] = asyncio.Queue()
        self._started = started
        self._seq = 0

    def __call__(self, event: events.RunEvent) -> None:
        """The runs' Emit."""
        self._queue.put_nowait(wire_event(event))

    def final(self, final: FinalAnswer) -> None:
        self._queue.put_nowait(rlm_pb2.CompletionEvent(final_answer=final_answer(final)))

    def error(self, failure: RequestFailed) -> None:
        self._queue.put_nowait(error_event(failure))

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def next(self, heartbeat_seconds: float) -> rlm_pb2.CompletionEvent | None:
        """The next event, or a heartbeat after ``heartbeat_seconds`` of quiet;
        None once closed."""
        try:
            async with asyncio.timeout(heartbeat_seconds):
                event = await self._queue.get()
        except TimeoutError:
            event = rlm_pb2.CompletionEvent(heartbeat=rlm_pb2.Heartbeat(
                elapsed_seconds=time.monotonic() - self._started))
        if event is None:
            return None
        self._seq += 1
        event.seq = self._seq
        event.time.GetCurrentTime()
        return event


def error_event(failure: RequestFailed, seq: int = 0) -> rlm_pb2.CompletionEvent:
    """The event that ends a failed request; rlm_service/runs/ numbers its own."""
    event = rlm_pb2.CompletionEvent(seq=seq, error=rlm_pb2.RunError(
        code=status_of(failure).grpc.name, message=failure.message))
    if seq:
        event.time.GetCurrentTime()
    return event


def usage(u: Usage) -> rlm_pb2.Usage:
    return rlm_pb2.Usage(calls=u.calls, prompt_tokens=u.prompt_tokens,
                         output_tokens=u.output_tokens, thinking_tokens=u.thinking_tokens,
                         cached_tokens=u.cached_tokens, cost_usd=round(u.cost_usd, 8))


def limits(lim: Limits) -> rlm_pb2.Limits:
    return rlm_pb2.Limits(
        max_iterations=lim.max_iterations, max_depth=lim.max_depth,
        max_llm_calls=lim.max_llm_calls, max_total_tokens=lim.max_total_tokens,
        max_cost_usd=lim.max_cost_usd, timeout_seconds=lim.timeout_seconds)


def final_answer(f: FinalAnswer) -> rlm_pb2.FinalAnswer:
    message = rlm_pb2.FinalAnswer(
        answer=f.answer, iterations=f.iterations, forced=f.forced,
        usage=[rlm_pb2.ModelUsage(model=m.model, depth=m.depth, usage=usage(m.usage))
               for m in f.usage],
        duration_seconds=f.duration_seconds, stop_reason=_STOP_REASONS[f.stop_reason],
        total_usage=usage(f.total_usage), request_id=f.request_id,
        schema_retries=f.schema_retries)
    if f.has_value:
        json_format.ParseDict(f.value, message.value)
    return message


def _kind(recursive: bool, tool: str) -> rlm_pb2.SubCallKind.ValueType:
    if tool:
        return rlm_pb2.SUB_CALL_KIND_TOOL
    return rlm_pb2.SUB_CALL_KIND_RLM if recursive else rlm_pb2.SUB_CALL_KIND_LLM


def wire_event(event: events.RunEvent) -> rlm_pb2.CompletionEvent:
    match event:
        case events.RunStarted():
            return rlm_pb2.CompletionEvent(run_started=rlm_pb2.RunStarted(
                request_id=event.request_id, root_model=event.model,
                sub_model=event.sub_model, limits=limits(event.limits),
                context_type=event.context_type, context_chars=event.context_chars,
                sandbox_layers=list(event.sandbox_layers), depth=event.depth,
                call_id=event.call_id))
        case events.RootTextDelta():
            return rlm_pb2.CompletionEvent(root_text_delta=rlm_pb2.RootTextDelta(
                iteration=event.iteration, text=event.text, depth=event.depth,
                call_id=event.call_id))
        case events.RootTurn():
            return rlm_pb2.CompletionEvent(root_turn=rlm_pb2.RootTurn(
                iteration=event.iteration, text=event.text, usage=usage(event.usage),
                latency_seconds=event.latency_seconds, depth=event.depth,
                call_id=event.call_id))
        case events.CodeBlock():
            return rlm_pb2.CompletionEvent(code_block=rlm_pb2.CodeBlock(
                iteration=event.iteration, block_index=event.block_index, code=event.code,
                stdout=event.stdout, stderr=event.stderr, error=event.error,
                duration_seconds=event.duration_seconds, truncated=event.truncated,
                timed_out=event.timed_out, repl_restarted=event.repl_restarted,
                depth=event.depth, call_id=event.call_id))
        case events.SubCallStarted():
            return rlm_pb2.CompletionEvent(sub_call_started=rlm_pb2.SubCallStarted(
                call_id=event.call_id, parent_id=event.parent_id, depth=event.depth,
                model=event.model, kind=_kind(event.recursive, event.tool),
                prompt_preview=event.prompt_preview, tool=event.tool))
        case events.SubCallFinished():
            return rlm_pb2.CompletionEvent(sub_call_finished=rlm_pb2.SubCallFinished(
                call_id=event.call_id, parent_id=event.parent_id, depth=event.depth,
                model=event.model, kind=_kind(event.recursive, event.tool), tool=event.tool,
                prompt_preview=event.prompt_preview, response_preview=event.response_preview,
                usage=usage(event.usage) if event.usage is not None else None,
                latency_seconds=event.latency_seconds, error=event.error,
                error_message=event.error_message, fell_back_to_llm=event.fell_back_to_llm,
                run_usage=usage(event.request_usage)))
        case events.Notice():
            return rlm_pb2.CompletionEvent(notice=rlm_pb2.Notice(
                kind=event.kind, message=event.message, depth=event.depth,
                call_id=event.call_id))
