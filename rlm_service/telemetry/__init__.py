"""Metrics, logs and traces of the RLM service.

Wiring (server start-up, in this order)::

    configure_logging(settings.log_level, debug=settings.log_debug)
    add_secrets_from(settings)
    setup_tracing(settings.otel_service_name)
    metrics_server = start_metrics_server(settings.metrics_host, settings.metrics_port)
    interceptor = TelemetryInterceptor([RpcMetrics(), RpcSpans()])
    server = grpc.aio.server(interceptors=[interceptor, ...], ...)

and at shutdown, after ``server.stop(grace)``: ``metrics_server.close()`` then
``shutdown_tracing()``.
"""

from rlm_service.telemetry import metrics
from rlm_service.telemetry.interceptor import RpcObserver, TelemetryInterceptor
from rlm_service.telemetry.logs import (
    REDACTED,
    add_secret,
    add_secrets_from,
    clear_secrets,
    configure_logging,
    redact,
    request_id_var,
)
from rlm_service.telemetry.metrics import MetricsServer, observe_model_call, start_metrics_server
from rlm_service.telemetry.rpc_metrics import RpcMetrics
from rlm_service.telemetry.rpc_spans import RpcSpans
from rlm_service.telemetry.tracing import (
    extract_context,
    setup_tracing,
    shutdown_tracing,
    tracer,
    tracing_enabled,
)

__all__ = [
    "REDACTED",
    "MetricsServer",
    "RpcMetrics",
    "RpcObserver",
    "RpcSpans",
    "TelemetryInterceptor",
    "add_secret",
    "add_secrets_from",
    "clear_secrets",
    "configure_logging",
    "extract_context",
    "metrics",
    "observe_model_call",
    "redact",
    "request_id_var",
    "setup_tracing",
    "shutdown_tracing",
    "start_metrics_server",
    "tracer",
    "tracing_enabled",
]
