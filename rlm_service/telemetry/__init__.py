"""Metrics, logs and traces of the RLM service.

Wiring (server start-up, in this order)::

    configure_logging(settings.log_level, debug=settings.log_debug)
    add_secrets_from(settings)
    setup_tracing(settings.otel_service_name)
    metrics_server = start_metrics_server(settings.metrics_host, settings.metrics_port)
    server = grpc.aio.server(interceptors=[MetricsInterceptor()], ...)

and at shutdown, after ``server.stop(grace)``: ``metrics_server.close()`` then
``shutdown_tracing()``.
"""

from rlm_service.telemetry import metrics
from rlm_service.telemetry.interceptor import MetricsInterceptor
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
from rlm_service.telemetry.tracing import (
    extract_context,
    setup_tracing,
    shutdown_tracing,
    tracer,
    tracing_enabled,
)

__all__ = [
    "REDACTED",
    "MetricsInterceptor",
    "MetricsServer",
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
