"""A grpc.aio server interceptor recording the ``grpc_server_*`` metrics.

How grpc.aio runs handlers shapes this code (grpc ``server.pyx.pxi``):

* ``intercept_service`` only resolves the handler; the RPC runs later, so the
  handler's behaviour function is wrapped and a new ``RpcMethodHandler`` with
  the same (de)serializers is returned.
* The server picks the calling convention by inspecting the behaviour function
  (coroutine function, async generator function, or plain function run in the
  thread pool), so each wrapper must keep the kind of the function it wraps.
* For an async-generator streaming handler the server writes each message
  itself, outside the generator. A client cancel arriving during such a write
  cancels the task without ever reaching the generator, so a generator wrapper
  would never learn how the RPC ended. Async-generator handlers are therefore
  turned into coroutine handlers that write through ``context.write``: every
  outcome then passes through the wrapper.
* ``context.abort`` raises ``grpc.aio.AbortError`` (an ``Exception``) after the
  status is sent, and records the code, which ``context.code()`` returns.
* A client cancel or an expired deadline surfaces as ``asyncio.CancelledError``
  in the handler; ``context.time_remaining()`` tells the two apart.
* Any other exception makes the server send UNKNOWN, unless the handler had
  already chosen a code with ``context.set_code``.

Optionally each RPC also gets an OpenTelemetry server span whose parent is the
W3C ``traceparent`` in the request metadata and whose status mirrors the gRPC
code (the OpenTelemetry gRPC auto-instrumentation reports OK for cancelled
streams, which is why it is not used).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from rlm_service.telemetry import metrics
from rlm_service.telemetry.tracing import extract_context, tracer

__all__ = ["DEFAULT_UNTRACED_SERVICES", "MetricsInterceptor", "split_method"]

UNARY: Final = "UNARY"
CLIENT_STREAM: Final = "CLIENT_STREAM"
SERVER_STREAM: Final = "SERVER_STREAM"
BIDI_STREAM: Final = "BIDI_STREAM"

# The client's deadline-triggered cancel and the server's own deadline timer
# arrive within network jitter of each other (the server's deadline is the
# client's shifted by the one-way latency), so "cancelled with almost no time
# left" is a deadline, not a client cancel.
_DEADLINE_SLACK_SECONDS: Final = 0.1

# Codes that are the client's doing or normal flow; the span is not marked as
# an error for these (OpenTelemetry semantic conventions for gRPC servers
# mark UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and
# DATA_LOSS as server errors).
_SERVER_ERROR_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_Handler = Callable[..., Any]

DEFAULT_UNTRACED_SERVICES: Final = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)

if TYPE_CHECKING:
    _InterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
    _AnyMethodHandler = grpc.RpcMethodHandler[Any, Any]
else:  # the runtime classes are not subscriptable
    _InterceptorBase = grpc.aio.ServerInterceptor
    _AnyMethodHandler = grpc.RpcMethodHandler

# grpc.aio.EOF is missing from grpc-stubs.
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]
_AbortError = grpc.aio.AbortError


def split_method(full_method: str) -> tuple[str, str]:
    """``"/pkg.Service/Method"`` -> ``("pkg.Service", "Method")``."""
    parts = full_method.lstrip("/").split("/", 1)
    if len(parts) == 2:
        return parts[0], parts[1]
    return "unknown", parts[0] or "unknown"


def _to_status_code(value: object) -> grpc.StatusCode | None:
    if isinstance(value, grpc.StatusCode):
        return value
    if isinstance(value, int):
        for code in grpc.StatusCode:
            if code.value[0] == value:
                return code
    return None


class _Rpc:
    """Bookkeeping for one RPC: labels, timing, message counts, final code."""

    __slots__ = ("_labels", "_received", "_sent", "_start", "_token", "span")

    def __init__(
        self,
        grpc_type: str,
        service: str,
        method: str,
        metadata: Any,
        *,
        traced: bool,
        make_current: bool,
    ) -> None:
        self._labels = (grpc_type, service, method)
        self._token: object | None = None
        self.span: trace.Span | None = None
        if traced:
            self.span = tracer().start_span(
                f"{service}/{method}",
                context=extract_context(metadata or ()),
                kind=SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": method,
                },
            )
            if make_current:
                self._token = otel_context.attach(trace.set_span_in_context(self.span))
        metrics.grpc_server_started.labels(*self._labels).inc()
        # Bound once: a stream sends hundreds of messages (one per run event).
        self._received = metrics.grpc_server_msg_received.labels(*self._labels)
        self._sent = metrics.grpc_server_msg_sent.labels(*self._labels)
        self._start = time.perf_counter()

    def received(self, n: int = 1) -> None:
        self._received.inc(n)

    def sent(self, n: int = 1) -> None:
        self._sent.inc(n)

    def finish(self, code: grpc.StatusCode, exc: BaseException | None = None) -> None:
        metrics.grpc_server_handling_seconds.labels(*self._labels).observe(
            time.perf_counter() - self._start
        )
        metrics.grpc_server_handled.labels(*self._labels, code.name).inc()
        span = self.span
        if span is None:
            return
        self.span = None
        span.set_attribute("rpc.grpc.status_code", int(code.value[0]))
        if code in _SERVER_ERROR_CODES:
            # AbortError carries no information beyond the code already set.
            if exc is not None and not isinstance(
                exc, (asyncio.CancelledError, GeneratorExit, _AbortError)
            ):
                span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, code.name))
        if self._token is not None:
            # Detach in the context that attached: the handler's own task, so
            # the span does not stay current for whatever reuses the context.
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None
        span.end()


def _code_after_return(context: Any) -> grpc.StatusCode:
    return _to_status_code(_safe_code(context)) or grpc.StatusCode.OK


def _code_after_exception(context: Any, exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, asyncio.CancelledError):
        remaining = _safe_time_remaining(context)
        if remaining is not None and remaining <= _DEADLINE_SLACK_SECONDS:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    # AbortError and handlers that set_code() before raising: the server sends
    # the recorded code; otherwise it sends UNKNOWN.
    return _to_status_code(_safe_code(context)) or grpc.StatusCode.UNKNOWN


def _safe_code(context: Any) -> object:
    try:
        return context.code()
    except Exception:  # no code() in this grpc version
        return None


def _safe_time_remaining(context: Any) -> float | None:
    try:
        value = context.time_remaining()
    except Exception:
        return None
    return float(value) if value is not None else None


class _CountingContext:
    """Delegates to the real servicer context, counting read()/write() calls.

    Only used for coroutine-style streaming handlers, which move messages
    through the context instead of through return values.
    """

    def __init__(self, context: Any, rpc: _Rpc) -> None:
        self._context = context
        self._rpc = rpc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self._rpc.sent()

    async def read(self) -> Any:
        message = await self._context.read()
        if message is not _EOF:
            self._rpc.received()
        return message


class _SyncContext:
    """Wraps the sync-handler context, which lacks ``code()``, to remember the code."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._code: object = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def code(self) -> object:
        return self._code

    def set_code(self, code: Any) -> None:
        self._code = code
        self._context.set_code(code)

    def abort(self, code: Any, details: str = "", *args: Any) -> None:
        self._code = code
        self._context.abort(code, details, *args)

    def abort_with_status(self, status: Any) -> None:
        self._code = status.code
        self._context.abort_with_status(status)


async def _count_async_requests(requests: Any, rpc: _Rpc) -> AsyncIterator[Any]:
    async for message in requests:
        rpc.received()
        yield message


def _count_sync_requests(requests: Any, rpc: _Rpc) -> Iterator[Any]:
    for message in requests:
        rpc.received()
        yield message


class MetricsInterceptor(_InterceptorBase):
    """Records ``grpc_server_*`` metrics (and, if ``trace``, a server span) per RPC.

    Put it first in ``grpc.aio.server(interceptors=[...])`` so it times and
    sees the outcome of everything after it. ``exclude_services`` get neither
    metrics nor spans; ``untraced_services`` get metrics only (by default the
    health and reflection services, whose probes would flood the traces).
    """

    def __init__(
        self,
        *,
        trace: bool = True,
        exclude_services: Iterable[str] = (),
        untraced_services: Iterable[str] = DEFAULT_UNTRACED_SERVICES,
    ) -> None:
        self._trace = trace
        self._exclude = frozenset(exclude_services)
        self._untraced = frozenset(untraced_services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_AnyMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _AnyMethodHandler:
        handler = await continuation(handler_call_details)
        # None means "method not found": the server answers UNIMPLEMENTED and
        # there is no handler to wrap; unknown method names would also be
        # unbounded label values.
        if handler is None:
            return handler
        service, method = split_method(handler_call_details.method)
        if service in self._exclude:
            return handler
        metadata = handler_call_details.invocation_metadata
        return self._wrap(handler, service, method, metadata)

    def _start(
        self, grpc_type: str, service: str, method: str, metadata: Any, *, make_current: bool
    ) -> _Rpc:
        traced = self._trace and service not in self._untraced
        return _Rpc(grpc_type, service, method, metadata, traced=traced, make_current=make_current)

    def _wrap(
        self, handler: _AnyMethodHandler, service: str, method: str, metadata: Any
    ) -> _AnyMethodHandler:
        kw: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if not handler.request_streaming and not handler.response_streaming:
            if handler.unary_unary is None:
                return handler
            fn = self._wrap_unary_response(handler.unary_unary, UNARY, service, method, metadata)
            return grpc.unary_unary_rpc_method_handler(fn, **kw)
        if not handler.request_streaming and handler.response_streaming:
            if handler.unary_stream is None:
                return handler
            fn = self._wrap_stream_response(
                handler.unary_stream, SERVER_STREAM, service, method, metadata
            )
            return grpc.unary_stream_rpc_method_handler(fn, **kw)
        if handler.request_streaming and not handler.response_streaming:
            if handler.stream_unary is None:
                return handler
            fn = self._wrap_unary_response(
                handler.stream_unary, CLIENT_STREAM, service, method, metadata
            )
            return grpc.stream_unary_rpc_method_handler(fn, **kw)
        if handler.stream_stream is None:
            return handler
        fn = self._wrap_stream_response(
            handler.stream_stream, BIDI_STREAM, service, method, metadata
        )
        return grpc.stream_stream_rpc_method_handler(fn, **kw)

    # -- single response (unary-unary, stream-unary) ---------------------------

    def _wrap_unary_response(
        self, behaviour: _Handler, grpc_type: str, service: str, method: str, metadata: Any
    ) -> _Handler:
        request_streaming = grpc_type == CLIENT_STREAM
        start = self._start

        if _is_async(behaviour):

            async def unary_response(request: Any, context: Any) -> Any:
                rpc = start(grpc_type, service, method, metadata, make_current=True)
                if request_streaming:
                    request = _count_async_requests(request, rpc)
                else:
                    rpc.received()
                try:
                    response = await behaviour(request, context)
                except BaseException as exc:
                    rpc.finish(_code_after_exception(context, exc), exc)
                    raise
                code = _code_after_return(context)
                if code is grpc.StatusCode.OK:
                    rpc.sent()
                rpc.finish(code)
                return response

            return unary_response

        # Sync handlers run in the server's thread pool with a sync context;
        # keep the wrapper sync so they are not moved onto the event loop.
        def unary_response_sync(request: Any, raw_context: Any) -> Any:
            context = _SyncContext(raw_context)
            rpc = start(grpc_type, service, method, metadata, make_current=True)
            if request_streaming:
                request = _count_sync_requests(request, rpc)
            else:
                rpc.received()
            try:
                response = behaviour(request, context)
            except BaseException as exc:
                rpc.finish(_code_after_exception(context, exc), exc)
                raise
            code = _code_after_return(context)
            if code is grpc.StatusCode.OK:
                rpc.sent()
            rpc.finish(code)
            return response

        return unary_response_sync

    # -- streamed responses (unary-stream, stream-stream) ----------------------

    def _wrap_stream_response(
        self, behaviour: _Handler, grpc_type: str, service: str, method: str, metadata: Any
    ) -> _Handler:
        request_streaming = grpc_type == BIDI_STREAM
        start = self._start

        if inspect.isasyncgenfunction(behaviour) or inspect.iscoroutinefunction(behaviour):
            is_generator = inspect.isasyncgenfunction(behaviour)

            async def stream_response(request: Any, context: Any) -> None:
                rpc = start(grpc_type, service, method, metadata, make_current=True)
                if request_streaming:
                    request = _count_async_requests(request, rpc)
                else:
                    rpc.received()
                try:
                    if is_generator:
                        agen = behaviour(request, context)
                        try:
                            async for message in agen:
                                await context.write(message)
                                rpc.sent()
                        finally:
                            # Closing here (not at garbage collection) runs the
                            # handler's finally blocks while the RPC is still ours.
                            await agen.aclose()
                    else:
                        await behaviour(request, _CountingContext(context, rpc))
                except BaseException as exc:
                    rpc.finish(_code_after_exception(context, exc), exc)
                    raise
                rpc.finish(_code_after_return(context))

            return stream_response

        def stream_response_sync(request: Any, raw_context: Any) -> Iterator[Any]:
            context = _SyncContext(raw_context)
            rpc = start(grpc_type, service, method, metadata, make_current=False)
            if request_streaming:
                request = _count_sync_requests(request, rpc)
            else:
                rpc.received()
            try:
                for message in behaviour(request, context):
                    yield message
                    rpc.sent()
            except GeneratorExit as exc:
                # The server dropped the generator: the RPC was cancelled.
                rpc.finish(grpc.StatusCode.CANCELLED, exc)
                raise
            except BaseException as exc:
                rpc.finish(_code_after_exception(context, exc), exc)
                raise
            rpc.finish(_code_after_return(context))

        return stream_response_sync


def _is_async(fn: _Handler) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)
