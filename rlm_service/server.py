"""Wires the servicers, interceptors, sandbox pool and telemetry; handles shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from rlm_service.callback import CallbackRegistry, start_callback_server
from rlm_service.config import Settings
from rlm_service.http import HttpFace, start_http_face
from rlm_service.models import ModelBackend, build_backends
from rlm_service.reflection import enable_reflection
from rlm_service.repl import ReplPool, Sandbox
from rlm_service.run.engine import Engine
from rlm_service.servicer import RLMServicer
from rlm_service.telemetry import metrics
from rlm_service.telemetry.interceptor import MetricsInterceptor
from rlm_service.telemetry.tracing import setup_tracing, shutdown_tracing
from rlm_service.uploads import ContextStore

log = logging.getLogger(__name__)
SERVICE_NAME = rlm_pb2.DESCRIPTOR.services_by_name["RLMService"].full_name


class Server:
    """One running service: start() binds everything, stop() takes it all down."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = 0
        self.metrics_port = 0
        self.http_port = 0
        self._http: HttpFace | None = None
        self._grpc: grpc.aio.Server | None = None
        self._callback: grpc.aio.Server | None = None
        self._pool: ReplPool | None = None
        self._backends: dict[str, ModelBackend] = {}
        self._metrics: metrics.MetricsServer | None = None
        self._runtime_dir: Path | None = None
        self._owns_runtime_dir = False
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.engine: Engine | None = None
        self.servicer: RLMServicer | None = None
        self.sandbox: Sandbox | None = None
        self.contexts: ContextStore | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._gauges: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        setup_tracing(s.otel_service_name)
        self._backends = build_backends(s)
        if s.runtime_dir:
            self._runtime_dir = Path(s.runtime_dir)
            self._runtime_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._runtime_dir = Path(tempfile.mkdtemp(prefix="rlm-service-"))
            self._owns_runtime_dir = True
        # Sandboxes (other uids) must traverse it to reach their own files, not list it.
        os.chmod(self._runtime_dir, 0o711)
        (self._runtime_dir / "runs").mkdir(mode=0o711, exist_ok=True)
        os.chmod(self._runtime_dir / "runs", 0o711)
        socket_path = self._runtime_dir / "callback.sock"
        registry = CallbackRegistry()
        self._callback = await start_callback_server(
            registry, socket_path, s.max_message_bytes, s.max_batch_prompts)
        self.sandbox = Sandbox(s, self._runtime_dir, socket_path)
        await asyncio.to_thread(self.sandbox.probe)
        self._pool = ReplPool(self.sandbox, s.sandbox_pool_size)
        await self._pool.start()
        self.engine = Engine(s, self._backends, self._pool, registry, self.sandbox.layers)
        self.contexts = ContextStore(
            self._runtime_dir / "uploads", max_bytes=s.context_upload_max_bytes,
            total_bytes=s.context_upload_total_bytes, ttl_seconds=s.context_upload_ttl_seconds)
        self._sweeper = asyncio.create_task(
            self.contexts.sweep_forever(min(60.0, s.context_upload_ttl_seconds / 4)))
        self.servicer = RLMServicer(self.engine, s, self.contexts)

        options = [
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            # Long streams sit idle between model turns; keep the HTTP/2 connection alive.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        self._grpc = grpc.aio.server(interceptors=[MetricsInterceptor()], options=options)
        rlm_pb2_grpc.add_RLMServiceServicer_to_server(self.servicer, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        enable_reflection(self._grpc, (
            SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
        self.port = self._grpc.add_insecure_port(f"{s.host}:{s.port}")
        if self.port == 0:
            raise RuntimeError(f"could not listen on {s.host}:{s.port}")
        await self._grpc.start()
        if s.http_port >= 0:
            self._http = await start_http_face(self.servicer, s)
            self.http_port = self._http.port
        if s.metrics_port >= 0:
            self._metrics = metrics.start_metrics_server(s.metrics_host, s.metrics_port)
            self.metrics_port = self._metrics.port
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._gauges = asyncio.create_task(self._update_gauges())
        log.info("rlm-service listening", extra={
            "port": self.port, "metrics_port": self.metrics_port, "http_port": self.http_port,
            "sandbox_layers": list(self.sandbox.layers),
            "root_backend": s.rlm_backend, "sub_backend": s.sub_backend,
        })

    async def _update_gauges(self) -> None:
        while True:
            if self._pool is not None:
                metrics.rlm_sandbox_pool_idle.set(self._pool.idle)
                metrics.rlm_sandbox_busy.set(self._pool.busy)
            await asyncio.sleep(1.0)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: refuse new runs, let running ones finish within the grace
        period, then end them with an error event and kill every sandbox."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self.servicer is not None:
            self.servicer.accepting = False
        deadline = time.monotonic() + grace
        while self.engine is not None and self.engine.active and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.engine is not None and self.engine.active:
            log.warning("ending %d runs at shutdown", len(self.engine.active))
            await self.engine.shutdown_runs("server shutting down")
        if self._grpc is not None:
            # Lets the ended runs send their final error event.
            await self._grpc.stop(grace=1.0)
        if self._http is not None:
            await self._http.stop()
        if self._gauges is not None:
            self._gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauges
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.contexts is not None:
            self.contexts.close()
        if self._pool is not None:
            await self._pool.close()
        if self._callback is not None:
            await self._callback.stop(grace=None)
        for backend in self._backends.values():
            with contextlib.suppress(Exception):
                await backend.aclose()
        if self._metrics is not None:
            self._metrics.close()
        if self._runtime_dir is not None and self._owns_runtime_dir:
            await asyncio.to_thread(shutil.rmtree, self._runtime_dir, True)
        shutdown_tracing()
        log.info("rlm-service stopped")


async def serve(settings: Settings | None = None) -> None:
    """Runs the service until SIGTERM or SIGINT, then shuts down gracefully."""
    server = Server(settings or Settings())
    try:
        await server.start()
    except BaseException:
        await server.stop(grace=0)
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown signal received")
    await server.stop()
