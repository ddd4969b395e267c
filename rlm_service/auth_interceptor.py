"""The gRPC face of API keys: a server interceptor over every service but health.

It runs inside the metrics interceptor, so a refused call is still counted (with its
UNAUTHENTICATED / PERMISSION_DENIED code) and the key id lands on the RPC's span. RLM
runs also take one of the key's run slots and book their cost to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import grpc

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.auth import (
    ApiKey,
    KeyRing,
    OverLimit,
    PermissionDenied,
    Unauthenticated,
    tag,
)

if TYPE_CHECKING:
    _InterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:  # the runtime classes are not subscriptable
    _InterceptorBase = grpc.aio.ServerInterceptor
    _Handler = grpc.RpcMethodHandler

OPEN_SERVICES: Final = frozenset({"grpc.health.v1.Health"})
RLM_SERVICE: Final = rlm_pb2.DESCRIPTOR.services_by_name["RLMService"].full_name
Context = grpc.aio.ServicerContext[Any, Any]


def _metadata_value(details: grpc.HandlerCallDetails, name: str) -> str | None:
    for key, value in details.invocation_metadata or ():
        if key == name:
            return value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return None


def _refusal(handler: _Handler, code: grpc.StatusCode, message: str) -> _Handler:
    """A handler of the same kind as ``handler`` that only refuses."""

    async def unary(request: Any, context: Context) -> Any:
        await context.abort(code, message)

    async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield None  # never reached; makes this an async generator like the real one

    de, ser = handler.request_deserializer, handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, de, ser)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, de, ser)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, de, ser)
    return grpc.unary_unary_rpc_method_handler(unary, de, ser)


class AuthInterceptor(_InterceptorBase):
    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(details)
        service = details.method.lstrip("/").split("/", 1)[0]
        if handler is None or service in OPEN_SERVICES:
            return handler
        try:
            key = await self.ring.identify(_metadata_value(details, "authorization"))
        except Unauthenticated as exc:
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except PermissionDenied as exc:
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if service != RLM_SERVICE:
            return handler
        if handler.unary_stream is not None:
            return self._stream(handler, key)
        if handler.unary_unary is not None:
            return self._unary(handler, key)
        return handler

    def _stream(self, handler: _Handler, key: ApiKey) -> _Handler:
        behaviour: Any = handler.unary_stream  # an async generator function (grpc.aio)
        ring = self.ring

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            tag(key)
            try:
                lease = ring.admit(key)
            except OverLimit as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                return
            try:
                async with contextlib.aclosing(behaviour(request, context)) as events:
                    async for event in events:
                        lease.observe(event)
                        yield event
            finally:
                lease.release()

        return grpc.unary_stream_rpc_method_handler(
            stream, handler.request_deserializer, handler.response_serializer)

    def _unary(self, handler: _Handler, key: ApiKey) -> _Handler:
        behaviour: Any = handler.unary_unary  # a coroutine function (grpc.aio)
        ring = self.ring

        async def unary(request: Any, context: Context) -> Any:
            tag(key)
            try:
                lease = ring.admit(key)
            except OverLimit as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                raise AssertionError("unreachable") from exc
            try:
                response = await behaviour(request, context)
            finally:
                lease.release()
            if isinstance(response, rlm_pb2.CompletionResponse):
                lease.add_cost(response.final.total_usage.cost_usd)
            return response

        return grpc.unary_unary_rpc_method_handler(
            unary, handler.request_deserializer, handler.response_serializer)
