"""The ``grpc_server_*`` metrics of each RPC, as a telemetry-interceptor observer."""

from __future__ import annotations

import time
from typing import Any

import grpc

from rlm_service.telemetry import metrics
from rlm_service.telemetry.interceptor import RpcInfo, RpcObserver


class _Counting:
    __slots__ = ("labels", "sent", "started")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        # Bound once: a stream sends hundreds of messages (one per run event).
        self.sent = metrics.grpc_server_msg_sent.labels(*labels)
        self.started = time.perf_counter()


class RpcMetrics(RpcObserver):
    """Started, handled (by code), messages in and out, and handling time."""

    def on_start(self, rpc: RpcInfo) -> _Counting:
        token = _Counting((rpc.grpc_type, rpc.service, rpc.method))
        metrics.grpc_server_started.labels(*token.labels).inc()
        # Both observed shapes take exactly one request message.
        metrics.grpc_server_msg_received.labels(*token.labels).inc()
        return token

    def on_sent(self, token: Any) -> None:
        token.sent.inc()

    def on_end(self, token: Any, code: grpc.StatusCode, error: BaseException | None) -> None:
        metrics.grpc_server_handling_seconds.labels(*token.labels).observe(
            time.perf_counter() - token.started)
        metrics.grpc_server_handled.labels(*token.labels, code.name).inc()
