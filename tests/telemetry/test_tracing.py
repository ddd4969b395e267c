"""setup_tracing / extract_context / shutdown_tracing."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rlm_service.telemetry import (
    extract_context,
    setup_tracing,
    shutdown_tracing,
    tracer,
    tracing_enabled,
)

pytestmark = pytest.mark.usefixtures("clean_tracing")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_off_without_env() -> None:
    assert setup_tracing() is None
    assert not tracing_enabled()
    with tracer().start_as_current_span("noop") as span:
        assert not span.get_span_context().is_valid


def test_explicit_exporter_and_remote_parent() -> None:
    exporter = InMemorySpanExporter()
    provider = setup_tracing("svc-under-test", exporter=exporter)
    assert isinstance(provider, TracerProvider)
    ctx = extract_context(
        [
            ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),
            ("tracestate", "vendor=1"),
            ("user-agent", "grpc-python"),
            ("x-bin", b"\x00\x01"),
        ]
    )
    with (
        tracer().start_as_current_span("child", context=ctx),
        tracer().start_as_current_span("grandchild"),
    ):
        pass

    spans = {s.name: s for s in exporter.get_finished_spans()}
    child, grandchild = spans["child"], spans["grandchild"]
    assert child.context is not None and child.parent is not None
    assert format(child.context.trace_id, "032x") == TRACE_ID
    assert format(child.parent.span_id, "016x") == PARENT_ID
    assert child.parent.is_remote
    assert child.context.trace_state.get("vendor") == "1"
    assert grandchild.parent is not None and grandchild.parent.span_id == child.context.span_id
    assert child.resource.attributes["service.name"] == "svc-under-test"


def test_extract_without_traceparent_is_a_new_root() -> None:
    setup_tracing(exporter=InMemorySpanExporter())
    with tracer().start_as_current_span("outer"):
        ctx = extract_context([("user-agent", "x")])
        # The caller's current span must not leak in as the "remote parent".
        assert not trace.get_current_span(ctx).get_span_context().is_valid
    assert not trace.get_current_span(extract_context(None)).get_span_context().is_valid


def test_malformed_traceparent_ignored() -> None:
    ctx = extract_context([("traceparent", "garbage")])
    assert not trace.get_current_span(ctx).get_span_context().is_valid


def test_env_console_and_otlp(monkeypatch: pytest.MonkeyPatch, clean_tracing: list[object]) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    console = setup_tracing()
    assert isinstance(console, TracerProvider)
    # Made global so libraries tracing through the API join our traces.
    assert clean_tracing == [console]
    shutdown_tracing()
    assert not tracing_enabled()

    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    # Nothing listens there: no span is exported, so shutdown stays quick.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    monkeypatch.setenv("K_SERVICE", "rlm")
    provider = setup_tracing()
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "from-env"
    assert provider.resource.attributes["cloud.platform"] == "gcp_cloud_run"
    shutdown_tracing()
    shutdown_tracing()  # idempotent
    # A provider we installed globally and then shut down is not used.
    assert isinstance(tracer(), trace.NoOpTracer)


def test_env_none_and_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert setup_tracing() is None
    monkeypatch.delenv("OTEL_TRACES_EXPORTER")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert setup_tracing() is None


def test_shutdown_flushes() -> None:
    exporter = InMemorySpanExporter()
    setup_tracing(exporter=exporter)
    tracer().start_span("pending").end()
    shutdown_tracing()
    assert [s.name for s in exporter.get_finished_spans()] == ["pending"]
    assert not tracing_enabled()
