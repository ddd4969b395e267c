"""Wires the servicers, interceptors, sandbox pool and telemetry; handles shutdown.

Start-up pushes each part's undo onto one ``AsyncExitStack`` as the part comes up,
so a start that fails half way takes down exactly what it had started, and
``stop()`` is the same unwinding after the drain."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.auth import KeyRing
from rlm_service.auth_interceptor import AuthInterceptor
from rlm_service.callback import CallbackRegistry, start_callback_server
from rlm_service.config import Settings
from rlm_service.decoding import add_servicer
from rlm_service.http import start_http_face
from rlm_service.models import build_backends
from rlm_service.models.catalog import ModelCatalog
from rlm_service.reflection import enable_reflection
from rlm_service.repl import ReplPool, Sandbox
from rlm_service.run.engine import Engine
from rlm_service.servicer import RLMServicer
from rlm_service.telemetry import metrics
from rlm_service.telemetry.interceptor import TelemetryInterceptor
from rlm_service.telemetry.rpc_metrics import RpcMetrics
from rlm_service.telemetry.rpc_spans import RpcSpans
from rlm_service.telemetry.tracing import setup_tracing, shutdown_tracing
from rlm_service.tools import Toolbox
from rlm_service.tools.http_call import HttpToolClient
from rlm_service.tools.http_config import AllowList
from rlm_service.uploads import ContextStore

if TYPE_CHECKING:
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor

log = logging.getLogger(__name__)
SERVICE_NAME = rlm_pb2.DESCRIPTOR.services_by_name["RLMService"].full_name
HEALTH_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
# After the drain: long enough for runs ended at shutdown to send their final error event.
_FINAL_EVENT_GRACE = 1.0


class Server:
    """One running service: ``start()`` binds everything, ``stop()`` takes it all down.

    Also an async context manager (``async with Server(settings) as server``).
    ``interceptors`` run after the telemetry interceptor, which times and sees the
    outcome of everything, theirs included (e.g. authentication).
    """

    def __init__(self, settings: Settings, *, interceptors: Sequence[Interceptor] = ()) -> None:
        self.settings = settings
        self.port = 0
        self.metrics_port = 0
        self.http_port = 0
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.catalog: ModelCatalog | None = None
        self.engine: Engine | None = None
        self.servicer: RLMServicer | None = None
        self.sandbox: Sandbox | None = None
        self.keys: KeyRing | None = None
        self.contexts: ContextStore | None = None
        self._interceptors = tuple(interceptors)
        self._pool: ReplPool | None = None
        self._runtime_dir: Path | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._started = False

    @property
    def runtime_dir(self) -> Path | None:
        """The folder of the callback socket and the runs' folders (None before start)."""
        return self._runtime_dir

    def repl_pids(self, which: Literal["idle", "busy", "all"] = "all") -> set[int]:
        """Host pids of the pool's REPL processes: waiting, serving a run, or both."""
        return self._pool.pids(which) if self._pool is not None else set()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("a Server starts once")
        self._started = True
        stack = contextlib.AsyncExitStack()
        try:
            await self._start_parts(stack)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def _start_parts(self, stack: contextlib.AsyncExitStack) -> None:
        s = self.settings
        setup_tracing(s.otel_service_name)
        stack.callback(shutdown_tracing)
        self.keys = KeyRing(s) if KeyRing.enabled(s) else None  # edge: fails on a bad keys file
        # Built here, not at import: the settings' price and limit overrides apply to
        # this server only, and a bad override fails the start.
        catalog = self.catalog = ModelCatalog(s)
        tools = Toolbox.from_settings(s)  # edge: a bad tool setting fails the start
        backends = build_backends(s)
        for backend in backends.values():
            stack.push_async_callback(_quietly, backend.aclose)
        runtime_dir = self._runtime_dir = self._make_runtime_dir(stack)
        if s.metrics_port >= 0:
            metrics_server = metrics.start_metrics_server(s.metrics_host, s.metrics_port)
            stack.callback(metrics_server.close)
            self.metrics_port = metrics_server.port

        socket_path = runtime_dir / "callback.sock"
        registry = CallbackRegistry()
        callback = await start_callback_server(
            registry, socket_path, s.max_message_bytes, s.max_batch_prompts)
        stack.push_async_callback(callback.stop, None)
        sandbox = self.sandbox = Sandbox(s, runtime_dir, socket_path, tools.module)
        stack.push_async_callback(asyncio.to_thread, sandbox.close)
        await asyncio.to_thread(sandbox.probe)
        pool = self._pool = ReplPool(sandbox, s.sandbox_pool_size, s.sandbox_pool_max,
                                     s.sandbox_pool_idle_seconds)
        stack.push_async_callback(pool.close)
        await pool.start()
        metrics.rlm_sandbox_pool_idle.set_function(lambda: pool.idle)
        metrics.rlm_sandbox_busy.set_function(lambda: pool.busy)
        upkeep = asyncio.create_task(_upkeep(pool, sandbox))
        stack.push_async_callback(_cancelled, upkeep)
        tool_client = None
        if tools.http:
            tool_client = HttpToolClient(AllowList(s.http_tools_allowed_hosts),
                                         s.http_tools_max_bytes)
            stack.push_async_callback(tool_client.aclose)
        self.engine = Engine(s, backends, pool, registry, sandbox.layers, pricing=catalog,
                             tools=tools, tool_client=tool_client)
        contexts = self.contexts = ContextStore(
            runtime_dir / "uploads", max_bytes=s.context_upload_max_bytes,
            total_bytes=s.context_upload_total_bytes, ttl_seconds=s.context_upload_ttl_seconds)
        stack.callback(contexts.close)
        sweeper = asyncio.create_task(
            contexts.sweep_forever(min(60.0, s.context_upload_ttl_seconds / 4)))
        stack.push_async_callback(_cancelled, sweeper)
        self.servicer = RLMServicer(self.engine, s, contexts)

        grpc_server = self._grpc_server(self.servicer)
        # Pushed before it starts: a grpc.aio server left unstopped hangs the process
        # when it is garbage-collected.
        stack.push_async_callback(grpc_server.stop, _FINAL_EVENT_GRACE)
        self.port = grpc_server.add_insecure_port(f"{s.host}:{s.port}")
        if self.port == 0:
            raise RuntimeError(f"could not listen on {s.host}:{s.port}")
        await grpc_server.start()
        if s.http_port >= 0:
            http = await start_http_face(self.servicer, s, self.keys)
            stack.push_async_callback(http.stop)
            self.http_port = http.port
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("rlm-service listening", extra={
            "port": self.port, "metrics_port": self.metrics_port, "http_port": self.http_port,
            "sandbox_layers": list(sandbox.layers),
            "root_backend": s.rlm_backend, "sub_backend": s.sub_backend,
        })

    def _make_runtime_dir(self, stack: contextlib.AsyncExitStack) -> Path:
        if self.settings.runtime_dir:
            path = Path(self.settings.runtime_dir)
            path.mkdir(parents=True, exist_ok=True)
        else:
            path = Path(tempfile.mkdtemp(prefix="rlm-service-"))
            stack.push_async_callback(asyncio.to_thread, shutil.rmtree, path, True)
        # Sandboxes (other uids) must traverse it to reach their own files, not list it.
        os.chmod(path, 0o711)
        (path / "runs").mkdir(mode=0o711, exist_ok=True)
        os.chmod(path / "runs", 0o711)
        return path

    def _grpc_server(self, servicer: RLMServicer) -> grpc.aio.Server:
        s = self.settings
        options = [
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            # Long streams sit idle between model turns; keep the HTTP/2 connection alive.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        # Telemetry first: it times and sees the outcome of the interceptors after it
        # (authentication refusals are counted).
        auth = [AuthInterceptor(self.keys)] if self.keys is not None else []
        interceptors = [TelemetryInterceptor([RpcMetrics(), RpcSpans()]), *auth,
                        *self._interceptors]
        server = grpc.aio.server(interceptors=interceptors, options=options)
        add_servicer(servicer, server)  # edge: parses request bytes itself
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if s.grpc_reflection:
            enable_reflection(server, (SERVICE_NAME, HEALTH_NAME))
        return server

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: refuse new runs, let running ones finish within the grace
        period, then end them with an error event and take every part down.

        Safe to call more than once and concurrently: every call waits for the one
        shutdown. A server that never started (or failed to) has nothing to stop."""
        if self._stopping is None:
            if self._stack is None:
                return
            grace = self.settings.shutdown_grace_seconds if grace is None else grace
            self._stopping = asyncio.create_task(self._shutdown(self._stack, grace))
        await asyncio.shield(self._stopping)

    async def _shutdown(self, stack: contextlib.AsyncExitStack, grace: float) -> None:
        try:
            await self.health.enter_graceful_shutdown()
            if self.servicer is not None:
                self.servicer.accepting = False
            engine = self.engine
            if engine is not None and not await _within(grace, engine.wait_idle()):
                log.warning("ending %d runs at shutdown", len(engine.active))
                await engine.shutdown_runs("server shutting down")
        finally:
            await stack.aclose()
        log.info("rlm-service stopped")


async def _within(seconds: float, done: Awaitable[None]) -> bool:
    """True if ``done`` finished within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            await done
    except TimeoutError:
        return False
    return True


async def _upkeep(pool: ReplPool, sandbox: Sandbox) -> None:
    """Every second the pool adapts to demand; every five the reaper looks for processes
    of finished REPLs that escaped."""
    for tick in itertools.count():
        try:
            await pool.maintain()
        except Exception:
            log.exception("REPL pool upkeep failed")
        if tick % 5 == 0:
            escaped = await asyncio.to_thread(sandbox.reap)
            metrics.rlm_sandbox_escaped_processes.inc(escaped)
        await asyncio.sleep(1.0)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _quietly(close: Callable[[], Awaitable[None]]) -> None:
    """A close that must not stop the rest of the shutdown if it fails."""
    try:
        await close()
    except Exception:
        log.warning("a model backend did not close cleanly", exc_info=True)


async def serve(settings: Settings | None = None) -> None:
    """Runs the service until SIGTERM or SIGINT, then shuts down gracefully."""
    async with Server(settings or Settings()):
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutdown signal received")
