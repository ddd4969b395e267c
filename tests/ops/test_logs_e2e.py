"""The real ``rlm-server``'s stdout: Cloud Logging JSON lines, correlated, without secrets.

Tracing is switched on the way production does it, with ``OTEL_EXPORTER_OTLP_ENDPOINT``,
pointed at a tiny OTLP/gRPC collector in this test process: stdout stays pure JSON
(unlike ``OTEL_TRACES_EXPORTER=console``) and the exported spans can be matched
with the ``logging.googleapis.com/spanId`` of the log lines.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent import futures
from datetime import datetime
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from rlm_client import make_request
from rlm_service._gen.rlm.v1 import rlm_pb2_grpc
from tests.conftest import API_KEY, final_of, repl
from tests.fakes.gemini import FakeGemini, Fault
from tests.ops.conftest import ServerProcess, StartProc, wait_for

TRACE_ID = "5b8efff798038103d269b633813fc60c"
PARENT_ID = "eee19b7ec3c1b174"
PROJECT = "ops-test-project"
PROMPT_TEXT = "PROMPT-PRIVATE-7731 what is in the box"
CONTEXT_TEXT = "CONTEXT-PRIVATE-5520 the box holds 3 red marbles"
SEVERITIES = {"DEFAULT", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint that keeps what it receives."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], Any]] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {kv.key: kv.value.string_value
                            for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Any]:
        with self._lock:
            return [span for _, span in self.spans if span.name == name]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    sink = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield sink, port
    finally:
        server.stop(grace=None).wait(5)


def run_once(proc: ServerProcess, prompt: str, context: str) -> list[Any]:
    with grpc.insecure_channel(proc.target()) as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
        return list(stub.StreamCompletion(make_request(prompt, context), timeout=30,
                                          metadata=metadata))


def stop(proc: ServerProcess) -> None:
    proc.terminate()
    assert proc.wait_exit(8) == 0, proc.stderr[-20:]


def check_every_line(proc: ServerProcess) -> list[dict[str, Any]]:
    logs = proc.logs()  # raises on any stdout line that is not a JSON object
    assert logs, "no logs at all"
    for record in logs:
        assert record["severity"] in SEVERITIES, record
        assert isinstance(record["message"], str), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", record["time"]), record
        datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
        location = record["logging.googleapis.com/sourceLocation"]
        assert location["file"] and location["line"].isdigit(), record
    return logs


def everything(proc: ServerProcess) -> str:
    return "\n".join(proc.stdout + proc.stderr)


def prepare(fake: FakeGemini, marker: str) -> None:
    fake.script(marker, [repl("n = len(context)\nprint('chars', n)\nFINAL(f'ok {n}')")])
    # One retried 503 whose error body repeats the API key (as some proxies do): the
    # retry is logged inside the run, and the key must still never reach the logs.
    fake.inject(Fault.UNAVAILABLE_503, model="fake-root", echo_key=True)


def test_json_logs_with_request_and_trace_ids(server_proc: StartProc, fake_gemini: FakeGemini,
                                             collector: tuple[Collector, int]) -> None:
    sink, otlp_port = collector
    proc = server_proc(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_SERVICE_NAME="rlm-ops-logs", GOOGLE_CLOUD_PROJECT=PROJECT)
    prepare(fake_gemini, "MARK-LOGS")
    events = run_once(proc, f"MARK-LOGS {PROMPT_TEXT}", CONTEXT_TEXT)
    final = final_of(events)
    assert final.answer == f"ok {len(CONTEXT_TEXT)}"
    assert len(fake_gemini.calls_for("fake-root")) == 2  # the 503 and its retry
    # The key did reach the fake (so the redaction below is really tested).
    assert fake_gemini.calls_for("fake-root")[0].headers.get("x-goog-api-key") == API_KEY
    wait_for(lambda: sink.named("rlm.request"), 5)
    stop(proc)

    logs = check_every_line(proc)
    messages = [r["message"] for r in logs]
    for expected in ("sandbox ready", "rlm-service listening", "shutdown signal received",
                     "rlm-service stopped"):
        assert expected in messages, messages
    # Lines logged inside the run carry its request id and the caller's trace.
    run_lines = [r for r in logs if r.get("request_id") == final.request_id]
    retry = [r for r in run_lines if r["message"].startswith("model call failed")]
    assert len(retry) == 1, run_lines
    assert retry[0]["severity"] == "INFO" and retry[0]["logger"] == "rlm_service.models._retry"
    for record in run_lines:
        assert record["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{TRACE_ID}"
        assert re.fullmatch(r"[0-9a-f]{16}", record["logging.googleapis.com/spanId"]), record
        assert record["logging.googleapis.com/trace_sampled"] is True
    # No request id (and no trace) outside a request.
    for record in logs:
        if record["message"] in ("rlm-service listening", "rlm-service stopped"):
            assert "request_id" not in record and "logging.googleapis.com/trace" not in record

    # The retry's spanId is the model call span the collector received over OTLP.
    calls = {span.span_id.hex(): span for span in sink.named("rlm.model_call")}
    assert retry[0]["logging.googleapis.com/spanId"] in calls
    exported = [(resource, span) for resource, span in sink.spans]
    assert {span.trace_id.hex() for _, span in exported} >= {TRACE_ID}
    assert all(resource.get("service.name") == "rlm-ops-logs" for resource, _ in exported)
    request_span = sink.named("rlm.request")[0]
    assert request_span.trace_id.hex() == TRACE_ID

    # Nothing private in stdout or stderr: not the key, not the prompt, not the context.
    text = everything(proc)
    assert API_KEY not in text
    assert "PROMPT-PRIVATE-7731" not in text and "CONTEXT-PRIVATE-5520" not in text


def test_debug_logs_stay_json_and_never_show_the_key(
        server_proc: StartProc, fake_gemini: FakeGemini) -> None:
    proc = server_proc(LOG_DEBUG="true")
    prepare(fake_gemini, "MARK-DEBUG")
    events = run_once(proc, f"MARK-DEBUG {PROMPT_TEXT}", CONTEXT_TEXT)
    assert final_of(events).answer == f"ok {len(CONTEXT_TEXT)}"
    stop(proc)
    logs = check_every_line(proc)
    assert any(r["severity"] == "DEBUG" for r in logs), "LOG_DEBUG=true logged no DEBUG line"
    # The chatty client libraries are let through at DEBUG; the key is still redacted.
    assert API_KEY not in everything(proc)
    # Tracing is off (no OTEL_*), yet the run's lines still carry its request id and the
    # caller's trace context from `traceparent`: trace id and the caller's span id.
    run_lines = [r for r in logs if r.get("request_id") == final_of(events).request_id]
    assert any(r["message"].startswith("model call failed") for r in run_lines), run_lines
    for record in run_lines:
        assert record["logging.googleapis.com/trace"] == TRACE_ID, record
        assert record["logging.googleapis.com/spanId"] == PARENT_ID, record
