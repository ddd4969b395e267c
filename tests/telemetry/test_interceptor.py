"""The telemetry interceptor on a real grpc.aio server: exact metric deltas and spans
per outcome, for the two RPC shapes the service serves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode as SpanStatusCode
from prometheus_client import REGISTRY

from rlm_service.telemetry import (
    RpcMetrics,
    RpcObserver,
    RpcSpans,
    TelemetryInterceptor,
    setup_tracing,
)

SERVICE = "test.telemetry.Probe"

pytestmark = pytest.mark.timeout(30)


class ProbeState:
    def __init__(self) -> None:
        self.forever_closed = asyncio.Event()
        self.forever_cancelled = False


def _handlers(state: ProbeState) -> grpc.GenericRpcHandler:
    async def unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return request

    async def unary_abort(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
        raise AssertionError("abort returned")

    async def unary_raise(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        raise RuntimeError("boom")

    async def unary_set_code(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("nothing here")
        return b""

    async def unary_slow(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await asyncio.sleep(30)
        return b""

    async def stream(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()

    async def stream_forever(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        try:
            i = 0
            while True:
                yield str(i).encode()
                i += 1
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            state.forever_cancelled = True
            raise
        finally:
            state.forever_closed.set()

    async def stream_abort(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        yield b"first"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no")

    async def stream_writer(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        for i in range(3):
            await context.write(str(i).encode())

    async def client_stream(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        n = 0
        async for _ in requests:
            n += 1
        return str(n).encode()

    async def bidi(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for message in requests:
            yield message
            yield message

    def sync_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def sync_set_code(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
        return b""

    def sync_abort(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.OUT_OF_RANGE, "too far")

    def sync_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"a"
        yield b"b"

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "UnaryAbort": grpc.unary_unary_rpc_method_handler(unary_abort),
            "UnaryRaise": grpc.unary_unary_rpc_method_handler(unary_raise),
            "UnarySetCode": grpc.unary_unary_rpc_method_handler(unary_set_code),
            "UnarySlow": grpc.unary_unary_rpc_method_handler(unary_slow),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "StreamForever": grpc.unary_stream_rpc_method_handler(stream_forever),
            "StreamAbort": grpc.unary_stream_rpc_method_handler(stream_abort),
            "StreamWriter": grpc.unary_stream_rpc_method_handler(stream_writer),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "SyncUnary": grpc.unary_unary_rpc_method_handler(sync_unary),
            "SyncSetCode": grpc.unary_unary_rpc_method_handler(sync_set_code),
            "SyncAbort": grpc.unary_unary_rpc_method_handler(sync_abort),
            "SyncStream": grpc.unary_stream_rpc_method_handler(sync_stream),
        },
    )


class Server:
    def __init__(self, server: grpc.aio.Server, port: int, state: ProbeState) -> None:
        self.server = server
        self.port = port
        self.state = state
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    def unary(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        return self.channel.unary_unary(f"/{SERVICE}/{method}")

    def stream(self, method: str) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        return self.channel.unary_stream(f"/{SERVICE}/{method}")


@asynccontextmanager
async def probe_server(*observers: RpcObserver) -> AsyncIterator[Server]:
    state = ProbeState()
    pool = ThreadPoolExecutor(max_workers=2)
    aio_server = grpc.aio.server(interceptors=[TelemetryInterceptor(observers)],
                                 migration_thread_pool=pool)
    aio_server.add_generic_rpc_handlers((_handlers(state),))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, aio_server)
    port = aio_server.add_insecure_port("127.0.0.1:0")
    await aio_server.start()
    srv = Server(aio_server, port, state)
    try:
        yield srv
    finally:
        await srv.channel.close()
        await aio_server.stop(None)
        pool.shutdown(wait=True)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with probe_server(RpcMetrics(), RpcSpans()) as srv:
        yield srv


class Snapshot:
    """Values of every grpc_server_* series for one method, before a call."""

    def __init__(self, method: str, grpc_type: str, service: str = SERVICE) -> None:
        self.labels = {"grpc_type": grpc_type, "grpc_service": service, "grpc_method": method}
        self.before = self._read()

    def _value(self, name: str, extra: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, {**self.labels, **(extra or {})}) or 0.0

    def _read(self) -> dict[str, float]:
        values = {
            "started": self._value("grpc_server_started_total"),
            "received": self._value("grpc_server_msg_received_total"),
            "sent": self._value("grpc_server_msg_sent_total"),
            "observed": self._value("grpc_server_handling_seconds_count"),
        }
        for code in grpc.StatusCode:
            values[code.name] = self._value("grpc_server_handled_total", {"grpc_code": code.name})
        return values

    def delta(self) -> dict[str, float]:
        now = self._read()
        return {k: now[k] - self.before[k] for k in now if now[k] != self.before[k]}

    async def settled(self, wait_seconds: float = 5.0) -> dict[str, float]:
        """The delta once the RPC is finished on the server side.

        The client may see the status before the server task has unwound
        (abort sends the status first, then raises), hence the wait.
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            delta = self.delta()
            handled = sum(v for k, v in delta.items() if k in grpc.StatusCode.__members__)
            if handled or time.monotonic() > deadline:
                return delta
            await asyncio.sleep(0.01)


async def test_unary_ok(server: Server) -> None:
    snap = Snapshot("Unary", "UNARY")
    assert await server.unary("Unary")(b"hi") == b"hi"
    assert await snap.settled() == {
        "started": 1,
        "received": 1,
        "sent": 1,
        "observed": 1,
        "OK": 1,
    }


async def test_unary_abort_invalid_argument(server: Server) -> None:
    snap = Snapshot("UnaryAbort", "UNARY")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.unary("UnaryAbort")(b"x")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await snap.settled() == {
        "started": 1,
        "received": 1,
        "observed": 1,
        "INVALID_ARGUMENT": 1,
    }


async def test_unary_unexpected_exception_is_unknown(server: Server) -> None:
    snap = Snapshot("UnaryRaise", "UNARY")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.unary("UnaryRaise")(b"x")
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert await snap.settled() == {"started": 1, "received": 1, "observed": 1, "UNKNOWN": 1}


async def test_unary_set_code_without_raising(server: Server) -> None:
    snap = Snapshot("UnarySetCode", "UNARY")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.unary("UnarySetCode")(b"x")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await snap.settled() == {"started": 1, "received": 1, "observed": 1, "NOT_FOUND": 1}


async def test_unary_deadline_exceeded(server: Server) -> None:
    snap = Snapshot("UnarySlow", "UNARY")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.unary("UnarySlow")(b"x", timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await snap.settled() == {
        "started": 1,
        "received": 1,
        "observed": 1,
        "DEADLINE_EXCEEDED": 1,
    }


async def test_server_stream_ok(server: Server) -> None:
    snap = Snapshot("Stream", "SERVER_STREAM")
    got = [m async for m in server.stream("Stream")(b"4")]
    assert got == [b"0", b"1", b"2", b"3"]
    assert await snap.settled() == {
        "started": 1,
        "received": 1,
        "sent": 4,
        "observed": 1,
        "OK": 1,
    }


async def test_server_stream_cancelled_by_client(server: Server) -> None:
    snap = Snapshot("StreamForever", "SERVER_STREAM")
    call = server.stream("StreamForever")(b"")
    for _ in range(3):
        await call.read()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    delta = await snap.settled()
    # The server may have written a few more messages before the cancel
    # arrived; sent is at least what the client read.
    assert delta.pop("sent") >= 3
    assert delta == {"started": 1, "received": 1, "observed": 1, "CANCELLED": 1}
    # The handler's own cleanup ran while the RPC was being torn down.
    await asyncio.wait_for(server.state.forever_closed.wait(), 5)


async def test_server_stream_abort_mid_stream(server: Server) -> None:
    snap = Snapshot("StreamAbort", "SERVER_STREAM")
    call = server.stream("StreamAbort")(b"")
    assert await call.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await snap.settled() == {
        "started": 1,
        "received": 1,
        "sent": 1,
        "observed": 1,
        "PERMISSION_DENIED": 1,
    }


async def test_server_stream_writer_api(server: Server) -> None:
    snap = Snapshot("StreamWriter", "SERVER_STREAM")
    got = [m async for m in server.stream("StreamWriter")(b"")]
    assert got == [b"0", b"1", b"2"]
    assert await snap.settled() == {
        "started": 1,
        "received": 1,
        "sent": 3,
        "observed": 1,
        "OK": 1,
    }


async def test_other_shapes_pass_through_unobserved(server: Server) -> None:
    """Client streams, bidi streams and sync handlers are not served by the service;
    the interceptor hands them on untouched and records nothing for them."""
    snaps = [Snapshot("ClientStream", "CLIENT_STREAM"), Snapshot("Bidi", "BIDI_STREAM"),
             Snapshot("SyncUnary", "UNARY"), Snapshot("SyncStream", "SERVER_STREAM")]
    reply = await server.channel.stream_unary(f"/{SERVICE}/ClientStream")(iter([b"a", b"b"]))
    assert reply == b"2"
    call = server.channel.stream_stream(f"/{SERVICE}/Bidi")(iter([b"x", b"y"]))
    assert [m async for m in call] == [b"x", b"x", b"y", b"y"]
    assert await server.unary("SyncUnary")(b"s") == b"s"
    assert [m async for m in server.stream("SyncStream")(b"")] == [b"a", b"b"]
    for snap in snaps:
        assert snap.delta() == {}, snap.labels


async def test_metrics_and_spans_are_separable(clean_tracing: None) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing(exporter=exporter)
    async with probe_server(RpcSpans()) as spans_only:
        snap = Snapshot("Unary", "UNARY")
        await spans_only.unary("Unary")(b"x")
        assert snap.delta() == {}
        assert [s.name for s in exporter.get_finished_spans()] == [f"{SERVICE}/Unary"]
    exporter.clear()
    async with probe_server(RpcMetrics()) as metrics_only:
        snap = Snapshot("Unary", "UNARY")
        await metrics_only.unary("Unary")(b"x")
        assert (await snap.settled())["OK"] == 1
        assert exporter.get_finished_spans() == ()


async def test_registered_health_service(server: Server) -> None:
    snap = Snapshot("Check", "UNARY", service="grpc.health.v1.Health")
    stub = health_pb2_grpc.HealthStub(server.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert (await snap.settled())["OK"] == 1


async def test_unknown_method_not_counted(server: Server) -> None:
    before = REGISTRY.get_sample_value(
        "grpc_server_started_total",
        {"grpc_type": "UNARY", "grpc_service": SERVICE, "grpc_method": "Nope"},
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.unary("Nope")(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    after = REGISTRY.get_sample_value(
        "grpc_server_started_total",
        {"grpc_type": "UNARY", "grpc_service": SERVICE, "grpc_method": "Nope"},
    )
    assert before is None and after is None


async def test_server_spans_carry_status_and_remote_parent(
    server: Server, clean_tracing: None
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing(exporter=exporter)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    parent = "b7ad6b7169203331"
    metadata = (("traceparent", f"00-{trace_id}-{parent}-01"),)

    await server.unary("Unary")(b"x", metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError):
        await server.unary("UnaryRaise")(b"x")
    with pytest.raises(grpc.aio.AioRpcError):
        await server.unary("UnaryAbort")(b"x")
    call = server.stream("StreamForever")(b"")
    await call.read()
    call.cancel()
    await asyncio.wait_for(server.state.forever_closed.wait(), 5)
    # Probes keep their metrics but make no spans.
    await health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest())

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the exporter has no event to await
        if len(exporter.get_finished_spans()) >= 4:
            break
        await asyncio.sleep(0.01)
    spans = {s.name.rsplit("/", 1)[1]: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"Unary", "UnaryRaise", "UnaryAbort", "StreamForever"}

    ok = spans["Unary"]
    assert ok.context is not None and ok.parent is not None
    assert format(ok.context.trace_id, "032x") == trace_id
    assert format(ok.parent.span_id, "016x") == parent
    assert ok.status.status_code is SpanStatusCode.UNSET
    assert ok.attributes is not None and ok.attributes["rpc.grpc.status_code"] == 0

    assert spans["UnaryRaise"].status.status_code is SpanStatusCode.ERROR
    # A client error or a client cancel is not the server's failure, but the
    # span still says which code it ended with.
    assert spans["UnaryAbort"].status.status_code is SpanStatusCode.UNSET
    assert spans["UnaryAbort"].attributes["rpc.grpc.status_code"] == 3  # type: ignore[index]
    cancelled = spans["StreamForever"]
    assert cancelled.attributes["rpc.grpc.status_code"] == 1  # type: ignore[index]
