"""Property-based check that what the server answers matches its OpenAPI document:
schemathesis (its CLI, a real HTTP client) against the running server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from rlm_service.server import Server

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


async def test_served_api_matches_the_openapi_document(start_server) -> None:
    # One model turn per run keeps a hundred generated requests quick.
    server: Server = await start_server(default_max_iterations=1)
    base = f"http://127.0.0.1:{server.http_port}"
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", f"{base}/openapi.json", "--url", base,
        "--phases", "examples,coverage,fuzzing", "--max-examples", "12", "--seed", "1",
        "--workers", "1", "--request-timeout", "60",
        "--generation-deterministic", "--no-color",
        # The progress page and metrics are not JSON APIs; their bodies are checked
        # by the other tests.
        "--exclude-path", "/metrics",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 180)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "No issues found" in text or "passed" in text, text[-3000:]
