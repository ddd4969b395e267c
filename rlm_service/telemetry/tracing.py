"""OpenTelemetry tracing, configured only through the standard ``OTEL_*`` variables.

Tracing is on when any of these is set:

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
  (OTLP over gRPC, e.g. ``http://localhost:4317`` for a collector sidecar);
* ``OTEL_TRACES_EXPORTER=otlp`` or ``console`` (comma lists allowed).

``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true`` turn it off.
Sampling (``OTEL_TRACES_SAMPLER``/``_ARG``), resource attributes
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), headers and timeouts
(``OTEL_EXPORTER_OTLP_*``) are read by the SDK itself.

When off, ``tracer()`` returns the API's no-op tracer, so instrumented code
costs next to nothing and needs no ``if``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

__all__ = [
    "TRACER_NAME",
    "error_status",
    "extract_context",
    "setup_tracing",
    "shutdown_tracing",
    "tracer",
    "tracing_enabled",
]

TRACER_NAME = "rlm_service"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
# Set once we install our provider globally: after shutdown_tracing() the
# global one is dead, and tracer() must not hand out its tracers.
_global_is_ours = False


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _exporters_from_env() -> list[str]:
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return []
    names = [n.strip().lower() for n in _env("OTEL_TRACES_EXPORTER").split(",") if n.strip()]
    if names:
        return [n for n in names if n != "none"]
    if _env("OTEL_EXPORTER_OTLP_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return ["otlp"]
    return []


def _resource(service_name: str) -> Resource:
    attributes: dict[str, str] = {}
    # OTEL_SERVICE_NAME, when set, should win over the code's default name.
    if not _env("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name
    # Cloud Run's own variables identify the service and revision for free.
    if _env("K_SERVICE"):
        attributes["cloud.provider"] = "gcp"
        attributes["cloud.platform"] = "gcp_cloud_run"
        attributes["faas.name"] = _env("K_SERVICE")
        if _env("K_REVISION"):
            attributes["faas.version"] = _env("K_REVISION")
    return Resource.create(attributes)


def _make_exporter(name: str) -> SpanExporter | None:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = (
            _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL")
        ).lower()
        if protocol and protocol != "grpc":
            _log.warning(
                "OTLP protocol %r is not installed; exporting traces over gRPC instead", protocol
            )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    _log.warning("unsupported OTEL_TRACES_EXPORTER value %r ignored", name)
    return None


def setup_tracing(
    service_name: str = "rlm-service", *, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """Configure tracing from the environment, or with ``exporter`` (tests).

    Returns the provider, or None when tracing stays off. An explicit
    ``exporter`` is wired with a SimpleSpanProcessor (spans exported as they
    end) and is not installed as the global provider, so tests can call this
    repeatedly; the environment-configured provider is also made global so
    libraries that trace through the API join the same traces.
    """
    global _provider, _tracer, _global_is_ours
    with _lock:
        _shutdown_locked()
        if exporter is not None:
            provider = TracerProvider(resource=_resource(service_name))
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            exporters = [e for e in map(_make_exporter, _exporters_from_env()) if e]
            if not exporters:
                return None
            provider = TracerProvider(resource=_resource(service_name))
            for exp in exporters:
                provider.add_span_processor(BatchSpanProcessor(exp))
            # The API allows setting the global provider once per process;
            # later calls only log a warning, which is fine for a server.
            if not isinstance(trace.get_tracer_provider(), TracerProvider):
                trace.set_tracer_provider(provider)
                _global_is_ours = True
        _provider = provider
        _tracer = provider.get_tracer(TRACER_NAME)
        return provider


def tracing_enabled() -> bool:
    return _provider is not None


def error_status(message: str) -> trace.Status:
    """An ERROR span status carrying ``message``."""
    return trace.Status(trace.StatusCode.ERROR, message)


def tracer() -> trace.Tracer:
    """The service's tracer: the configured provider's, else the global one.

    Call it where spans are made rather than caching it at import time, so a
    later ``setup_tracing`` takes effect.
    """
    current = _tracer
    if current is not None:
        return current
    if _global_is_ours:
        return trace.NoOpTracer()
    return trace.get_tracer(TRACER_NAME)


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """W3C trace context (``traceparent``/``tracestate``/``baggage``) from gRPC metadata.

    Accepts ``context.invocation_metadata()`` or
    ``HandlerCallDetails.invocation_metadata`` as they are. Binary (``-bin``)
    entries are skipped: no text propagator reads them.
    """
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        if isinstance(value, bytes):
            continue
        # gRPC lower-cases metadata keys already; repeat for hand-built lists.
        carrier[key.lower()] = value
    # An empty Context as the base keeps the caller's current span from being
    # mistaken for the remote parent when the request carries none.
    return extract(carrier, context=Context())


def _shutdown_locked() -> None:
    global _provider, _tracer
    provider = _provider
    _provider = None
    _tracer = None
    if provider is not None:
        try:
            provider.force_flush()
        finally:
            provider.shutdown()


def shutdown_tracing() -> None:
    """Flush pending spans and stop the exporters. Safe to call more than once."""
    with _lock:
        _shutdown_locked()
