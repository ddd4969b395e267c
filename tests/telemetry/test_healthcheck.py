"""rlm_service.healthcheck against a real grpc.aio health service."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from rlm_service.healthcheck import check, main

pytestmark = pytest.mark.timeout(30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serving_not_serving_and_down() -> None:
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    try:
        # The probe is a blocking client: run it off the loop serving it.
        assert await asyncio.to_thread(main, ["--address", address]) == 0
        await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await asyncio.to_thread(check, address) == (False, "NOT_SERVING")
        assert await asyncio.to_thread(main, ["--address", address]) == 1
        serving, status = await asyncio.to_thread(check, address, "no.such.Service")
        assert (serving, status) == (False, "NOT_FOUND")
    finally:
        await server.stop(None)
    serving, status = await asyncio.to_thread(check, address, "", 0.5)
    assert not serving and status in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_module_entry_point_uses_port_env(repo_root: Path) -> None:
    port = _free_port()  # nothing listens: the probe must fail fast
    result = subprocess.run(
        [sys.executable, "-m", "rlm_service.healthcheck", "--timeout", "0.5"],
        env={"PORT": str(port), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=20,
        cwd=repo_root,
    )
    assert result.returncode == 1
    assert f"localhost:{port}" in result.stderr
