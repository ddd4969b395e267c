"""Helpers shared by the backend tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlm_service.config import Settings
from rlm_service.models import ModelBackend
from tests.fakes import FakeServer
from tests.support import settings as support

GEMINI_KEY = "AIzaSyTEST-gemini-key-0123456789"
OPENAI_KEY = "sk-test-openai-key-0123456789abcdef"


# Backoff long enough for the timing tests to tell attempts apart.
_BACKEND_DEFAULTS: dict[str, Any] = {
    "model_retry_base_seconds": 0.02,
    "model_retry_max_seconds": 0.2,
    "model_max_retries": 4,
    "model_timeout_seconds": 5.0,
}


def make_settings(**overrides: Any) -> Settings:
    """The shared builder (tests/support/settings.py) with the backend tests' defaults."""
    return support.make_settings(None, **{**_BACKEND_DEFAULTS, **overrides})


@dataclass
class Harness:
    """One backend kind wired to its fake, so tests can run against both."""

    kind: str
    fake: FakeServer
    key: str
    make: Callable[..., ModelBackend]
    opened: list[ModelBackend]

    def backend(self, **overrides: Any) -> ModelBackend:
        backend = self.make(**overrides)
        self.opened.append(backend)
        return backend
