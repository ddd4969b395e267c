"""The public RLMService: request validation and the event stream."""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import json_format

from rlm_service import validation
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from rlm_service.budget import Limits
from rlm_service.config import Settings
from rlm_service.errors import STATUS, status_of
from rlm_service.models import GenerateOptions, catalog
from rlm_service.run.answer_schema import AnswerSchema, BadSchema
from rlm_service.run.engine import Engine, RunSpec
from rlm_service.run.types import ErrorKind, RequestFailed
from rlm_service.runs.live import Attachment
from rlm_service.runs.registry import RunRegistry
from rlm_service.runs.rpc import RunControl
from rlm_service.sessions.rpc import SessionControl
from rlm_service.sessions.store import SessionStore
from rlm_service.slots import Overloaded, RunSlots
from rlm_service.streaming import RequestStream
from rlm_service.tools import Toolbox
from rlm_service.uploads import ContextStore
from rlm_service.uploads import rpc as uploads_rpc

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


class InvalidRequest(RequestFailed):
    """Bad input; the message says what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.INVALID_REQUEST, message)


SHUTTING_DOWN = "the server is shutting down; retry on another instance"


def _check_options(opts: rlm_pb2.ModelOptions, which: str) -> GenerateOptions:
    temperature = opts.temperature if opts.HasField("temperature") else None
    thinking = opts.thinking_budget if opts.HasField("thinking_budget") else None
    if temperature is not None and not (0.0 <= temperature <= 2.0):
        raise InvalidRequest(f"{which}.temperature must be between 0 and 2, got {temperature:g}")
    if thinking is not None and thinking < -1:
        raise InvalidRequest(f"{which}.thinking_budget must be -1 (automatic) or >= 0")
    return GenerateOptions(temperature=temperature, thinking_budget=thinking)


def build_spec(request: rlm_pb2.CompletionRequest, settings: Settings,
               deadline_left: float | None, contexts: ContextStore | None = None,
               sessions: SessionStore | None = None,
               toolbox: Toolbox | None = None) -> RunSpec:
    """Turns a request into a RunSpec or raises InvalidRequest with an actionable message
    (ContextNotFound for an unknown ``context_ref``)."""
    try:  # edge: value checks protobuf does not make, and the spend ceilings
        validation.check_request(request, settings)
        spend = validation.spend_limits(request, settings)
    except validation.Refused as exc:
        raise InvalidRequest(str(exc)) from None
    prompt = request.prompt
    if not prompt.strip():
        raise InvalidRequest("prompt is required: set `prompt` to the question to answer")
    if len(prompt) > settings.max_prompt_chars:
        raise InvalidRequest(
            f"prompt has {len(prompt):,} characters; the limit is {settings.max_prompt_chars:,}. "
            "Put long material in `context` instead."
        )
    context: Any = ""
    if request.WhichOneof("context_source") == "context_ref" and contexts is None:
        raise InvalidRequest("this server takes no uploaded contexts")
    if request.HasField("context"):
        kind = request.context.WhichOneof("kind")
        if kind == "string_value":
            context = request.context.string_value
        elif kind in ("list_value", "struct_value"):
            context = json_format.MessageToDict(request.context)
        else:
            raise InvalidRequest(
                f"context must be a string, a list or an object, got {kind or 'nothing'}"
            )
    s = settings
    if not 0 <= request.max_iterations <= s.max_iterations_limit:
        raise InvalidRequest(
            f"max_iterations must be between 1 and {s.max_iterations_limit} (0 = default "
            f"{s.default_max_iterations}), got {request.max_iterations}")
    if not 0 <= request.max_depth <= s.max_depth_limit:
        raise InvalidRequest(
            f"max_depth must be between 1 and {s.max_depth_limit} (0 = default "
            f"{s.default_max_depth}), got {request.max_depth}")
    if not math.isfinite(request.timeout_seconds) or not (
            0 <= request.timeout_seconds <= s.max_timeout_seconds):
        raise InvalidRequest(
            f"timeout_seconds must be between 0 and {s.max_timeout_seconds:g} (0 = default "
            f"{s.default_timeout_seconds:g})")
    for name, value in (("root_model", request.root_model), ("sub_model", request.sub_model)):
        if value and not catalog.valid_model_name(value):
            raise InvalidRequest(f"{name} {value[:40]!r} is not a valid model name")
    grace = request.detach_grace_seconds
    if not math.isfinite(grace) or not 0 <= grace <= s.max_detach_grace_seconds:
        raise InvalidRequest(
            f"detach_grace_seconds must be between 0 and {s.max_detach_grace_seconds:g} "
            "(0 = cancel the run when its stream drops)")
    schema = None
    if request.HasField("answer_schema"):
        try:
            schema = AnswerSchema(json_format.MessageToDict(request.answer_schema))
        except BadSchema as exc:
            raise InvalidRequest(str(exc)) from None
    tools = None
    if request.HasField("tools"):
        tools = frozenset(request.tools.names)
        declared = (toolbox or Toolbox()).all.names
        if unknown := sorted(tools - declared):
            raise InvalidRequest(
                f"tools names {unknown[0][:80]!r}, which this server does not offer "
                f"(it offers: {', '.join(sorted(declared)) or 'none'})")
    session = None
    if request.session_id or request.session_token:
        if sessions is None:
            raise InvalidRequest("sessions are not available on this face")
        session = sessions.get(request.session_id, request.session_token)
    if request.WhichOneof("context_source") == "context_ref":
        assert contexts is not None
        # Last: it opens the file, which the request's stream closes when it ends.
        context = contexts.open(request.context_ref)
    timeout = request.timeout_seconds or s.default_timeout_seconds
    if deadline_left is not None:
        timeout = min(timeout, max(deadline_left, 0.001))
    limits = Limits(
        max_iterations=request.max_iterations or s.default_max_iterations,
        max_depth=request.max_depth or s.default_max_depth,
        max_llm_calls=spend.max_llm_calls,
        max_total_tokens=spend.max_total_tokens,
        max_cost_usd=spend.max_cost_usd,
        timeout_seconds=timeout,
    )
    if session is not None:
        limits = session.limits_for(limits)
    return RunSpec(
        request_id=uuid.uuid4().hex,
        prompt=prompt,
        context=context,
        limits=limits,
        root_model=request.root_model or s.default_model(s.rlm_backend, sub=False),
        sub_model=request.sub_model or s.default_model(s.sub_backend, sub=True),
        root_options=_check_options(request.root_options, "root_options"),
        sub_options=_check_options(request.sub_options, "sub_options"),
        stream_root_text=request.stream_root_text,
        detach_grace_seconds=grace,
        answer_schema=schema,
        session=session,
        tools=tools,
    )


async def _abort(context: Context, exc: RequestFailed) -> None:
    """Ends the RPC with the failure's status; an Overloaded one carries the retry hint
    as trailing metadata ``retry-after`` (seconds), as HTTP's Retry-After does."""
    if isinstance(exc, Overloaded):
        context.set_trailing_metadata((("retry-after", exc.retry_after_header),))
    await context.abort(status_of(exc).grpc, exc.message)


class RLMServicer(RunControl, SessionControl, rlm_pb2_grpc.RLMServiceServicer):
    def __init__(self, engine: Engine, settings: Settings,
                 contexts: ContextStore | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.contexts = contexts
        self.accepting = True
        self._slots = RunSlots(settings.max_concurrent_runs, settings.max_queued_runs)
        self.runs = RunRegistry(engine, settings)
        self.sessions = SessionStore(settings, engine.services.repls)

    async def _spec(self, request: rlm_pb2.CompletionRequest, context: Context) -> RunSpec:
        if not self.accepting:
            await context.abort(STATUS[ErrorKind.SHUTTING_DOWN].grpc, SHUTTING_DOWN)
        try:
            spec = build_spec(request, self.settings, context.time_remaining(), self.contexts,
                              self.sessions, self.engine.services.tools)
            # Refused before any event, so a client sees only the status and its hint.
            self._slots.check(spec.received + spec.limits.timeout_seconds)
            return spec
        except RequestFailed as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from exc

    @property
    def slots(self) -> RunSlots:
        """The request-slot queue, shared with the HTTP face."""
        return self._slots

    def stream(self, spec: RunSpec,
               observe: Callable[[rlm_pb2.CompletionEvent], None] | None = None) -> Attachment:
        """Starts a request and attaches to its stream, for either face; ``observe``
        sees each event as the run emits it, attached or not."""
        return self.runs.start(
            RequestStream(self.engine, self.settings, self._slots, spec, observe)).attach(0)

    async def _events(self, spec: RunSpec,
                      context: Context) -> AsyncGenerator[rlm_pb2.CompletionEvent, None]:
        """Yields the request's events; a failed request then ends the RPC with its status."""
        stream = self.stream(spec)
        async with stream as events:
            async for event in events:
                yield event
        if stream.failure is not None:
            # Outside the request's span: abort() raises AbortError, which the span would
            # otherwise record, overwriting the request's error with "Locally aborted.".
            await _abort(context, stream.failure)

    async def StreamCompletion(self, request: rlm_pb2.CompletionRequest,
                               context: Context) -> AsyncIterator[rlm_pb2.CompletionEvent]:
        spec = await self._spec(request, context)
        # aclosing: when the interceptor closes this generator (a client cancel during a
        # write), the inner ones close now, in this task. Left to garbage collection they
        # would close in another task, and OpenTelemetry could not detach the run's span
        # context there ("Failed to detach context", logged at ERROR).
        async with contextlib.aclosing(self._events(spec, context)) as events:
            async for event in events:
                yield event

    async def UploadContext(self, request_iterator: AsyncIterator[rlm_pb2.ContextChunk],
                            context: Context) -> rlm_pb2.ContextRef:
        if not self.accepting:
            await context.abort(STATUS[ErrorKind.SHUTTING_DOWN].grpc, SHUTTING_DOWN)
        if self.contexts is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "this server takes no uploaded contexts")
            raise AssertionError("unreachable")
        try:
            return await uploads_rpc.receive(self.contexts, request_iterator)
        except RequestFailed as exc:
            await context.abort(status_of(exc).grpc, exc.message)
            raise AssertionError("unreachable") from exc

    async def Complete(self, request: rlm_pb2.CompletionRequest,
                       context: Context) -> rlm_pb2.CompletionResponse:
        spec = await self._spec(request, context)
        final = None
        async with contextlib.aclosing(self._events(spec, context)) as events:
            async for event in events:
                if event.HasField("final_answer"):
                    final = event.final_answer
        if final is None:
            await context.abort(STATUS[ErrorKind.INTERNAL].grpc, "the run ended without an answer")
            raise AssertionError("unreachable")
        return rlm_pb2.CompletionResponse(answer=final.answer, final=final)

