"""Spans of real runs through the real server, collected with an in-memory exporter.

``setup_tracing(exporter=...)`` installs a provider for the service's own
``tracer()`` without touching the process-global provider (which the
OpenTelemetry API lets a process set only once), so each test gets a fresh
exporter. ``Server.start`` calls ``setup_tracing()`` itself (a no-op without
``OTEL_*`` variables, but it replaces any earlier provider), so the exporter is
installed after the server started; every span is made at call time through
``tracer()`` and picks it up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from rlm_client import make_request
from rlm_service.server import Server
from rlm_service.telemetry.tracing import setup_tracing, shutdown_tracing
from tests.conftest import StartServer, final_of, repl
from tests.fakes.gemini import FakeGemini, Fault
from tests.recursion import open_stub

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
SERVER_SPAN = "rlm.v1.RLMService/StreamCompletion"

ROOT_CODE = (
    "r = rlm_query('MARK-TKID summarize', context=['alpha', 'beta'])\n"
    "FINAL(r)"
)
KID_CODE = (
    "inner = llm_query('inner about ' + '|'.join(context))\n"
    "FINAL('kid: ' + inner)"
)


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    exp = InMemorySpanExporter()
    try:
        yield exp
    finally:
        shutdown_tracing()


@pytest.fixture
async def traced(start_server: StartServer, exporter: InMemorySpanExporter,
                 fake_gemini: FakeGemini) -> AsyncIterator[Server]:
    server = await start_server(sandbox_pool_size=2)
    assert setup_tracing("rlm-ops-test", exporter=exporter) is not None
    yield server
    # start_server's teardown stops the server, which shuts tracing down again.
    shutdown_tracing()


async def run_stream(server: Server, prompt: str, context: Any = "ctx",
                     **fields: Any) -> tuple[list[Any], grpc.aio.AioRpcError | None]:
    events: list[Any] = []
    error = None
    async with open_stub(server) as stub:
        try:
            async for event in stub.StreamCompletion(make_request(prompt, context, **fields),
                                                     metadata=TRACEPARENT):
                events.append(event)
        except grpc.aio.AioRpcError as exc:
            error = exc
    return events, error


async def finished(exporter: InMemorySpanExporter, name: str, count: int = 1,
                   timeout: float = 5.0) -> list[ReadableSpan]:
    """All finished spans, once ``count`` spans called ``name`` have ended."""
    for _ in range(int(timeout / 0.02)):
        spans = list(exporter.get_finished_spans())
        if sum(s.name == name for s in spans) >= count:
            return spans
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} x{count} not finished: {[s.name for s in spans]}")


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan | None:
    if span.parent is None:
        return None
    return next((s for s in spans if s.context and s.context.span_id == span.parent.span_id),
                None)


def named(spans: list[ReadableSpan], name: str, **attrs: Any) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name
            and all((s.attributes or {}).get(k) == v for k, v in attrs.items())]


def one(spans: list[ReadableSpan], name: str, **attrs: Any) -> ReadableSpan:
    found = named(spans, name, **attrs)
    assert len(found) == 1, (name, attrs, [(s.name, s.attributes) for s in spans])
    return found[0]


def trace_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


async def test_depth_two_span_tree(traced: Server, exporter: InMemorySpanExporter,
                                   fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-TROOT", [repl(ROOT_CODE)])
    fake_gemini.script("MARK-TKID", [repl(KID_CODE)])
    events, error = await run_stream(traced, "MARK-TROOT go", "root ctx", max_depth=2)
    assert error is None, error
    final = final_of(events)
    assert final.answer.startswith("kid: ")
    spans = await finished(exporter, SERVER_SPAN)

    server_span = one(spans, SERVER_SPAN)
    assert server_span.kind is SpanKind.SERVER
    # The client's traceparent is the root's parent.
    assert trace_hex(server_span) == TRACE_ID
    assert server_span.parent is not None and server_span.parent.is_remote
    assert format(server_span.parent.span_id, "016x") == PARENT_ID
    assert (server_span.attributes or {})["rpc.grpc.status_code"] == 0

    request = one(spans, "rlm.request")
    assert parent_of(request, spans) is server_span
    assert (request.attributes or {})["rlm.request_id"] == final.request_id
    root_run = one(spans, "rlm.run", **{"rlm.depth": 0})
    assert parent_of(root_run, spans) is request
    root_call = one(spans, "rlm.model_call", **{"rlm.depth": 0})
    assert (root_call.attributes or {})["rlm.model"] == "fake-root"
    assert parent_of(root_call, spans) is root_run
    root_block = one(spans, "rlm.repl_block", **{"rlm.depth": 0})
    assert parent_of(root_block, spans) is root_run

    # The child run: rlm.sub_rlm -> rlm.run (depth 1) -> its own turn and block.
    sub = one(spans, "rlm.sub_rlm")
    kid_run = one(spans, "rlm.run", **{"rlm.depth": 1})
    assert parent_of(kid_run, spans) is sub
    kid_call = one(spans, "rlm.model_call", **{"rlm.depth": 1})
    assert (kid_call.attributes or {})["rlm.model"] == "fake-sub"
    assert parent_of(kid_call, spans) is kid_run
    kid_block = one(spans, "rlm.repl_block", **{"rlm.depth": 1})
    assert parent_of(kid_block, spans) is kid_run
    assert trace_hex(kid_run) == trace_hex(sub) == trace_hex(kid_block)
    # The kid's llm_query is a model call at depth 2.
    one(spans, "rlm.model_call", **{"rlm.depth": 2})
    # Children end before their parents.
    for span in spans:
        parent = parent_of(span, spans)
        if parent is not None:
            assert span.end_time is not None and parent.end_time is not None
            assert span.end_time <= parent.end_time, (span.name, parent.name)

    # Success: nothing is marked as an error.
    assert [s.name for s in spans if s.status.status_code is StatusCode.ERROR] == []
    assert len(spans) == 10, [s.name for s in spans]


async def test_sub_calls_join_the_request_trace(traced: Server, exporter: InMemorySpanExporter,
                                                fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-TROOT", [repl(ROOT_CODE)])
    fake_gemini.script("MARK-TKID", [repl(KID_CODE)])
    _, error = await run_stream(traced, "MARK-TROOT go", "root ctx", max_depth=2)
    assert error is None, error
    spans = await finished(exporter, SERVER_SPAN)
    # Every span of the request is in the caller's trace...
    assert {trace_hex(s) for s in spans} == {TRACE_ID}, sorted(
        (s.name, trace_hex(s)) for s in spans)
    # ... and the sub-calls hang under the root's REPL block that made them.
    root_block = one(spans, "rlm.repl_block", **{"rlm.depth": 0})
    assert parent_of(one(spans, "rlm.sub_rlm"), spans) is root_block
    kid_block = one(spans, "rlm.repl_block", **{"rlm.depth": 1})
    assert parent_of(one(spans, "rlm.model_call", **{"rlm.depth": 2}), spans) is kid_block


async def test_root_model_error_marks_request_and_model_call(
        traced: Server, exporter: InMemorySpanExporter, fake_gemini: FakeGemini) -> None:
    fake_gemini.inject(Fault.BAD_REQUEST_400, model="fake-root")
    events, error = await run_stream(traced, "MARK-TERR fail please")
    assert error is not None
    assert events[-1].HasField("error"), events
    message = events[-1].error.message
    spans = await finished(exporter, SERVER_SPAN)

    call = one(spans, "rlm.model_call", **{"rlm.depth": 0})
    assert call.status.status_code is StatusCode.ERROR
    assert "invalid argument" in (call.status.description or "").lower()
    request = one(spans, "rlm.request")
    assert request.status.status_code is StatusCode.ERROR
    assert request.status.description
    assert request.status.description in message or message in request.status.description, (
        request.status.description, message)
    assert one(spans, "rlm.run", **{"rlm.depth": 0}).status.status_code is StatusCode.ERROR
    server_span = one(spans, SERVER_SPAN)
    assert (server_span.attributes or {})["rpc.grpc.status_code"] == error.code().value[0]
    assert {trace_hex(s) for s in spans} == {TRACE_ID}
    assert not named(spans, "rlm.repl_block")


async def test_client_cancel_is_not_reported_as_success(
        traced: Server, exporter: InMemorySpanExporter, fake_gemini: FakeGemini) -> None:
    fake_gemini.script("MARK-TCANCEL", [repl("import time\ntime.sleep(30)")])
    async with open_stub(traced) as stub:
        call = stub.StreamCompletion(make_request("MARK-TCANCEL wait", "ctx"),
                                     metadata=TRACEPARENT)
        async for event in call:
            if event.HasField("root_turn"):
                break
        await asyncio.sleep(0.3)  # the block is running in the sandbox
        call.cancel()
    spans = await finished(exporter, SERVER_SPAN)
    spans = await finished(exporter, "rlm.run")

    request = one(spans, "rlm.request")
    assert request.status.status_code is StatusCode.ERROR
    assert request.status.description == "cancelled by client"
    server_span = one(spans, SERVER_SPAN)
    assert (server_span.attributes or {})["rpc.grpc.status_code"] == (
        grpc.StatusCode.CANCELLED.value[0])
    # A client cancel is not the server's fault: OTel's gRPC conventions leave a
    # server span's status unset for CANCELLED; the request span (above) says so.
    assert server_span.status.status_code is StatusCode.UNSET, server_span.status
    # The run and its block were ended, not left running.
    one(spans, "rlm.run", **{"rlm.depth": 0})
    for _ in range(100):
        if not traced.engine or not traced.engine.active:
            break
        await asyncio.sleep(0.02)
    assert traced.engine is not None and not traced.engine.active
