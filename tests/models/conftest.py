"""Fixtures for the backend tests: real fake servers plus backends built on the real SDKs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from rlm_service.models import ModelBackend, build_backend
from rlm_service.models.gemini import GeminiBackend
from tests.fakes import FakeGemini, FakeOpenAI, FakeServer
from tests.models._support import GEMINI_KEY, OPENAI_KEY, Harness, make_settings


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's Vertex or key settings must not change what the tests exercise.
    for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_API_KEY", "GEMINI_API_KEY",
                 "OPENAI_API_KEY", "OPENAI_BASE_URL", "GEMINI_BASE_URL",
                 "MODEL_PRICES_JSON", "MODEL_INPUT_LIMITS_JSON"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


# "gemini-typed" is the Gemini backend with its plain-call fast path off, so the
# SDK's typed path (the fallback, and every streamed call) meets every case too.
@pytest.fixture(params=["gemini", "gemini-typed", "openai"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    variant: str = request.param
    kind = "openai" if variant == "openai" else "gemini"
    fake: FakeServer = FakeGemini() if kind == "gemini" else FakeOpenAI()
    fake.start()
    opened: list[ModelBackend] = []

    def make(**overrides: Any) -> ModelBackend:
        if kind == "gemini":
            settings = make_settings(gemini_api_key=GEMINI_KEY, gemini_base_url=fake.base_url,
                                     **overrides)
        else:
            settings = make_settings(rlm_backend="openai", openai_api_key=OPENAI_KEY,
                                     openai_base_url=fake.base_url + "/v1", **overrides)
        if variant == "gemini-typed":
            return GeminiBackend(settings, typed_only=True)
        return build_backend("gemini" if kind == "gemini" else "openai", settings)

    try:
        yield Harness(kind, fake, GEMINI_KEY if kind == "gemini" else OPENAI_KEY, make, opened)
    finally:
        for backend in opened:
            await backend.aclose()
        fake.stop()
