"""The one settings builder for tests, and the names the fakes are scripted with."""

from __future__ import annotations

from typing import Any

from rlm_service.config import Settings
from tests.fakes import FakeServer

ROOT_MODEL = "fake-root"
SUB_MODEL = "fake-sub"
API_KEY = "test-key-must-never-leak-4b1d"

# No .env file and fast retries, whatever the test.
_BASE: dict[str, Any] = {"model_retry_base_seconds": 0.01, "model_retry_max_seconds": 0.05}


def server_values(fake: FakeServer) -> dict[str, Any]:
    """A whole server on free 127.0.0.1 ports, its Gemini backend pointed at ``fake``."""
    return {
        "port": 0, "host": "127.0.0.1", "metrics_port": 0, "metrics_host": "127.0.0.1",
        "http_port": 0, "http_host": "127.0.0.1",
        "gemini_api_key": API_KEY, "gemini_base_url": fake.base_url,
        "gemini_model_name": ROOT_MODEL, "gemini_sub_model_name": SUB_MODEL,
        # A pool that may grow to 2 at most: tests start many servers on 2 cores.
        "sandbox_pool_size": 1, "sandbox_pool_max": 2, "shutdown_grace_seconds": 1.0,
    }


def make_settings(fake: FakeServer | None = None, **overrides: Any) -> Settings:
    """Settings built from values only (the developer's ``.env`` is not read).

    With ``fake``, the settings of a whole test server talking to it; without, only
    the test defaults, for tests that build a single part (a backend, a catalog).
    """
    values = dict(_BASE)
    if fake is not None:
        values.update(server_values(fake))
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]
