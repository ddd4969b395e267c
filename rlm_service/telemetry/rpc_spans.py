"""An OpenTelemetry server span per RPC, as a telemetry-interceptor observer.

The span's parent is the W3C ``traceparent`` in the request metadata, and its status
mirrors the gRPC code (the OpenTelemetry gRPC auto-instrumentation reports OK for
cancelled streams, which is why it is not used). The span is current while the
handler runs, so the handler's own spans nest under it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from rlm_service.telemetry.interceptor import RpcInfo, RpcObserver
from rlm_service.telemetry.tracing import extract_context, tracer

__all__ = ["DEFAULT_UNTRACED_SERVICES", "RpcSpans"]

# Probes would flood the traces.
DEFAULT_UNTRACED_SERVICES: Final = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)

# OpenTelemetry semantic conventions for gRPC servers: these are the server's
# failures; the others are the client's doing or normal flow.
_SERVER_ERROR_CODES: Final = frozenset({
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
})
# Carry nothing beyond the code already recorded.
_UNINFORMATIVE = (asyncio.CancelledError, GeneratorExit, grpc.aio.AbortError)


class RpcSpans(RpcObserver):
    def __init__(self, untraced_services: Iterable[str] = DEFAULT_UNTRACED_SERVICES) -> None:
        self._untraced = frozenset(untraced_services)

    def on_start(self, rpc: RpcInfo) -> tuple[trace.Span, object] | None:
        if rpc.service in self._untraced:
            return None
        span = tracer().start_span(
            f"{rpc.service}/{rpc.method}", context=extract_context(rpc.metadata),
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": rpc.service,
                        "rpc.method": rpc.method},
        )
        return span, otel_context.attach(trace.set_span_in_context(span))

    def on_end(self, token: Any, code: grpc.StatusCode, error: BaseException | None) -> None:
        span, attached = token
        span.set_attribute("rpc.grpc.status_code", int(code.value[0]))
        if code in _SERVER_ERROR_CODES:
            if error is not None and not isinstance(error, _UNINFORMATIVE):
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, code.name))
        # The interceptor ends every RPC in the task that started it, so this detaches
        # in the context that attached.
        otel_context.detach(attached)
        span.end()
