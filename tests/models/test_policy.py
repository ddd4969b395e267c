"""Retry policy arithmetic and backend selection."""

from __future__ import annotations

import random
import threading

import pytest

from rlm_service.models import build_backends
from rlm_service.models._retry import RetryPolicy, scrub
from rlm_service.models.gemini import GeminiBackend
from rlm_service.models.openai_compat import OpenAIBackend
from tests.fakes import FakeGemini
from tests.models._support import make_settings


def test_full_jitter_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_retries=10, base_seconds=0.5, max_seconds=4.0, attempt_timeout=60)
    rng = random.Random(7)
    for retry in range(1, 9):
        ceiling = min(4.0, 0.5 * 2 ** (retry - 1))
        samples = [policy.backoff(retry, rng) for _ in range(300)]
        assert all(0.0 <= s <= ceiling for s in samples)
        # Full jitter spreads over the whole range rather than clustering at the top.
        assert min(samples) < ceiling * 0.1
        assert max(samples) > ceiling * 0.9


def test_scrub_removes_secrets() -> None:
    assert scrub("key sk-abc123 leaked", ["sk-abc123", None]) == "key [redacted] leaked"


async def test_build_backends_builds_only_what_is_needed() -> None:
    settings = make_settings(gemini_api_key="AIza-test-key")
    backends = build_backends(settings)
    try:
        assert list(backends) == ["gemini"]
        assert isinstance(backends["gemini"], GeminiBackend)
    finally:
        for backend in backends.values():
            await backend.aclose()

    settings = make_settings(gemini_api_key="AIza-test-key", rlm_sub_backend="openai",
                             openai_base_url="http://127.0.0.1:1/v1")
    backends = build_backends(settings)
    try:
        assert sorted(backends) == ["gemini", "openai"]
        assert isinstance(backends["openai"], OpenAIBackend)
    finally:
        for backend in backends.values():
            await backend.aclose()


def test_build_backends_names_the_missing_setting() -> None:
    with pytest.raises(ValueError, match="OPENAI_API_KEY or OPENAI_BASE_URL"):
        build_backends(make_settings(rlm_backend="openai"))
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        build_backends(make_settings())


def test_fake_server_stops_its_thread() -> None:
    before = threading.active_count()
    fake = FakeGemini().start()
    assert fake.base_url.startswith("http://127.0.0.1:")
    fake.stop()
    assert threading.active_count() == before
