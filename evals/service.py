"""A real ``rlm-server`` subprocess on a free local port, for the demo and the eval runner."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_START = "from rlm_service.cli import server_main; server_main()"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceError(RuntimeError):
    pass


class LocalService:
    """Starts the service with ``settings`` (environment variables) on top of the
    caller's environment; ``address`` is ready once ``__enter__`` returns."""

    def __init__(self, settings: dict[str, str], log_path: Path,
                 start_timeout: float = 60.0) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port),
                     "HTTP_PORT": "-1", "METRICS_PORT": "0",
                     **settings}
        self._timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalService:
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen([sys.executable, "-c", _START], env=self._env,
                                          stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_serving(self) -> None:
        assert self._proc is not None
        end = time.monotonic() + self._timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < end:
                if self._proc.poll() is not None:
                    raise ServiceError(f"rlm-server exited with {self._proc.returncode}:\n"
                                       f"{self.log_tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise ServiceError(f"rlm-server did not start within {self._timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
