"""The telemetry interceptor: observers see each RPC start and end, whatever its shape.

Observers (``RpcObserver``: metrics in ``rpc_metrics``, spans in ``rpc_spans``) know
nothing of handler shapes. A small invoker per shape runs the handler between their
hooks. Only the two shapes the service serves are observed, both async: unary
(``Complete``, health ``Check``) and server-streaming (``StreamCompletion``, health
``Watch``). Anything else (reflection's bidi stream, sync handlers) passes through.

How grpc.aio runs handlers shapes the invokers (grpc ``server.pyx.pxi``):

* ``intercept_service`` only resolves the handler; the RPC runs later, so the
  behaviour function is wrapped and a new ``RpcMethodHandler`` with the same
  (de)serializers returned.
* For an async-generator streaming handler the server writes each message itself,
  outside the generator. A client cancel during such a write cancels the task
  without reaching the generator, so a generator wrapper would never learn how the
  RPC ended. The stream invoker is therefore a coroutine that writes through
  ``context.write``: every outcome passes through it, and it closes the handler's
  generator itself, in the RPC's task.
* ``context.abort`` raises ``grpc.aio.AbortError`` after the status is sent, and
  records the code, which ``context.code()`` returns.
* A client cancel or an expired deadline surfaces as ``asyncio.CancelledError`` in
  the handler; ``context.time_remaining()`` tells the two apart.
* Any other exception makes the server send UNKNOWN, unless the handler had already
  chosen a code with ``context.set_code``.
* A write that a client cancel overtakes fails in grpc core (``ExecuteBatchError``,
  logged by grpc at ERROR); the invoker turns it into the cancel it is.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import grpc
import grpc.aio

__all__ = ["RpcInfo", "RpcObserver", "TelemetryInterceptor", "split_method"]

UNARY: Final = "UNARY"
SERVER_STREAM: Final = "SERVER_STREAM"

# The client's deadline-triggered cancel and the server's own deadline timer arrive
# within network jitter of each other, so "cancelled with almost no time left" is a
# deadline, not a client cancel.
_DEADLINE_SLACK_SECONDS: Final = 0.1

if TYPE_CHECKING:
    _InterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
    _MethodHandler = grpc.RpcMethodHandler[Any, Any]
else:  # the runtime classes are not subscriptable
    _InterceptorBase = grpc.aio.ServerInterceptor
    _MethodHandler = grpc.RpcMethodHandler

_Behaviour = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class RpcInfo:
    """What an observer knows about an RPC when it starts."""

    grpc_type: str  # UNARY or SERVER_STREAM
    service: str
    method: str
    metadata: tuple[tuple[str, str | bytes], ...]


class RpcObserver:
    """Hooks around one RPC. ``on_start`` returns a token handed back to the others
    (None: this observer sits this RPC out). ``on_end`` runs exactly once per started
    RPC, in the RPC's own task, with the status code the client gets."""

    def on_start(self, rpc: RpcInfo) -> Any:
        return None

    def on_sent(self, token: Any) -> None:
        """One response message went out."""

    def on_end(self, token: Any, code: grpc.StatusCode, error: BaseException | None) -> None:
        """The RPC ended; ``error`` is what the handler raised, if anything."""


def split_method(full_method: str) -> tuple[str, str]:
    """``"/pkg.Service/Method"`` -> ``("pkg.Service", "Method")``."""
    parts = full_method.lstrip("/").split("/", 1)
    if len(parts) == 2:
        return parts[0], parts[1]
    return "unknown", parts[0] or "unknown"


class _Watch:
    """The observers' tokens for one RPC: start in order, end in reverse."""

    __slots__ = ("_started",)

    def __init__(self, observers: Sequence[RpcObserver], rpc: RpcInfo) -> None:
        self._started: list[tuple[RpcObserver, Any]] = []
        for observer in observers:
            self._started.append((observer, observer.on_start(rpc)))

    def sent(self) -> None:
        for observer, token in self._started:
            if token is not None:
                observer.on_sent(token)

    def end(self, code: grpc.StatusCode, error: BaseException | None = None) -> None:
        for observer, token in reversed(self._started):
            if token is not None:
                observer.on_end(token, code, error)


def _invoke_unary(behaviour: _Behaviour, observers: Sequence[RpcObserver],
                  rpc: RpcInfo) -> _Behaviour:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        watch = _Watch(observers, rpc)
        try:
            response = await behaviour(request, context)
        except BaseException as exc:
            watch.end(_code_after_exception(context, exc), exc)
            raise
        code = _code_after_return(context)
        if code is grpc.StatusCode.OK:
            watch.sent()
        watch.end(code)
        return response

    return unary


def _invoke_server_stream(behaviour: _Behaviour, observers: Sequence[RpcObserver],
                          rpc: RpcInfo) -> _Behaviour:
    is_generator = inspect.isasyncgenfunction(behaviour)

    async def server_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        watch = _Watch(observers, rpc)
        try:
            if is_generator:
                messages = behaviour(request, context)
                try:
                    async for message in messages:
                        await _write(context, message)
                        watch.sent()
                finally:
                    # Here, not at garbage collection: the handler's finally blocks
                    # (and the context managers it holds) unwind in this task.
                    await messages.aclose()
            else:
                await behaviour(request, _CountingContext(context, watch))
        except BaseException as exc:
            watch.end(_code_after_exception(context, exc), exc)
            raise
        watch.end(_code_after_return(context))

    return server_stream


async def _write(context: grpc.aio.ServicerContext[Any, Any], message: Any) -> None:
    try:
        await context.write(message)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # A write that the client's cancel overtook fails in grpc core before the
        # context knows it is cancelled, and grpc would log that at ERROR. A failed send
        # means the call is over (cancelled, deadline, connection gone): end it as such.
        if context.cancelled() or type(exc).__name__ == "ExecuteBatchError":
            raise asyncio.CancelledError("the call ended before this message was sent") from exc
        raise


class _CountingContext:
    """The servicer context of a coroutine-style streaming handler, counting writes."""

    def __init__(self, context: grpc.aio.ServicerContext[Any, Any], watch: _Watch) -> None:
        self._context = context
        self._watch = watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: Any) -> None:
        await _write(self._context, message)
        self._watch.sent()


def _code_after_return(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    return _to_status_code(context.code()) or grpc.StatusCode.OK


def _code_after_exception(context: grpc.aio.ServicerContext[Any, Any],
                          exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, asyncio.CancelledError):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= _DEADLINE_SLACK_SECONDS:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    # AbortError, and handlers that set_code() before raising: the server sends the
    # recorded code; otherwise it sends UNKNOWN.
    return _to_status_code(context.code()) or grpc.StatusCode.UNKNOWN


def _to_status_code(value: object) -> grpc.StatusCode | None:
    if isinstance(value, grpc.StatusCode):
        return value
    if isinstance(value, int):
        for code in grpc.StatusCode:
            if code.value[0] == value:
                return code
    return None


class TelemetryInterceptor(_InterceptorBase):
    """Runs ``observers`` around every async unary and server-streaming RPC.

    Put it first in ``grpc.aio.server(interceptors=[...])`` so it times and sees the
    outcome of everything after it. ``exclude_services`` are not observed at all.
    """

    def __init__(self, observers: Iterable[RpcObserver], *,
                 exclude_services: Iterable[str] = ()) -> None:
        self._observers = tuple(observers)
        self._exclude = frozenset(exclude_services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _MethodHandler:
        handler = await continuation(handler_call_details)
        # None means "method not found": the server answers UNIMPLEMENTED, and unknown
        # method names would be unbounded label values.
        if handler is None or handler.request_streaming:
            return handler
        service, method = split_method(handler_call_details.method)
        if service in self._exclude:
            return handler
        metadata = tuple(handler_call_details.invocation_metadata or ())
        kw: dict[str, Any] = {"request_deserializer": handler.request_deserializer,
                              "response_serializer": handler.response_serializer}
        if not handler.response_streaming:
            behaviour = handler.unary_unary
            if behaviour is None or not _is_async(behaviour):
                return handler
            rpc = RpcInfo(UNARY, service, method, metadata)
            return grpc.unary_unary_rpc_method_handler(
                _invoke_unary(behaviour, self._observers, rpc), **kw)
        behaviour = handler.unary_stream
        if behaviour is None or not _is_async(behaviour):
            return handler
        rpc = RpcInfo(SERVER_STREAM, service, method, metadata)
        return grpc.unary_stream_rpc_method_handler(
            _invoke_server_stream(behaviour, self._observers, rpc), **kw)


def _is_async(fn: _Behaviour) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)

