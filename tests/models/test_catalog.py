"""Prices and input limits."""

from __future__ import annotations

import logging

import pytest

from rlm_service.models import TokenUsage, catalog
from rlm_service.models.catalog import ModelCatalog, estimate_tokens
from tests.models._support import make_settings


def test_gemini_flash_cost_bills_thinking_as_output_and_cached_input_cheaper() -> None:
    cat = ModelCatalog()
    usage = TokenUsage(prompt_tokens=1_000_000, output_tokens=100_000, thinking_tokens=100_000,
                       cached_tokens=400_000)
    # 600k fresh input at 0.30 + 400k cached at 0.03 + 200k output at 2.50 (USD per 1M).
    expected = 0.6 * 0.30 + 0.4 * 0.03 + 0.2 * 2.50
    assert cat.cost_usd("gemini-2.5-flash", usage) == pytest.approx(expected)


def test_long_prompts_use_the_long_context_tier() -> None:
    cat = ModelCatalog()
    short = TokenUsage(prompt_tokens=200_000, output_tokens=1_000)
    long = TokenUsage(prompt_tokens=200_001, output_tokens=1_000)
    assert cat.cost_usd("gemini-2.5-pro", short) == pytest.approx(0.2 * 1.25 + 0.001 * 10.0)
    assert cat.cost_usd("gemini-2.5-pro", long) == pytest.approx(
        0.200001 * 2.50 + 0.001 * 15.0)


def test_variants_match_their_family_by_longest_prefix() -> None:
    cat = ModelCatalog()
    assert cat.price_for("gemini-2.5-flash-lite-preview-06-17") == catalog.DEFAULT_PRICES[
        "gemini-2.5-flash-lite"]
    assert cat.price_for("models/gemini-2.5-flash-001") == catalog.DEFAULT_PRICES[
        "gemini-2.5-flash"]
    assert cat.price_for("gpt-4o-mini-2024-07-18") == catalog.DEFAULT_PRICES["gpt-4o-mini"]


def test_unknown_models_cost_nothing_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    cat = ModelCatalog()
    usage = TokenUsage(prompt_tokens=1000, output_tokens=1000)
    with caplog.at_level(logging.WARNING, logger="rlm_service.models.catalog"):
        assert cat.cost_usd("my-local-llama", usage) == 0.0
        assert cat.cost_usd("my-local-llama", usage) == 0.0
    assert cat.price_for("my-local-llama") is None
    warnings = [r for r in caplog.records if "my-local-llama" in r.getMessage()]
    assert len(warnings) == 1


def test_input_limits_and_default() -> None:
    cat = ModelCatalog()
    assert cat.input_limit("gemini-2.5-flash") == 1_048_576
    assert cat.input_limit("gemini-2.5-pro") == 1_048_576
    assert cat.input_limit("something-else") == 128_000


def test_settings_override_prices_and_limits() -> None:
    settings = make_settings(
        model_prices_json={"my-local-llama": {"input": 1.0, "output": 2.0},
                           "gemini-2.5-flash": {"input": 0.5, "output": 1.0, "cached": 0.1}},
        model_input_limits_json={"my-local-llama": 32_768},
        model_default_input_limit=8192,
    )
    cat = ModelCatalog(settings)
    usage = TokenUsage(prompt_tokens=1_000_000, output_tokens=1_000_000)
    assert cat.cost_usd("my-local-llama", usage) == pytest.approx(3.0)
    assert cat.cost_usd("gemini-2.5-flash", usage) == pytest.approx(1.5)
    assert cat.input_limit("my-local-llama") == 32_768
    assert cat.input_limit("unknown") == 8192


def test_settings_overrides_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PRICES_JSON", '{"x-model": {"input": 4, "output": 8}}')
    monkeypatch.setenv("MODEL_INPUT_LIMITS_JSON", '{"x-model": 1000}')
    cat = ModelCatalog(make_settings())
    assert cat.cost_usd("x-model", TokenUsage(prompt_tokens=500_000)) == pytest.approx(2.0)
    assert cat.input_limit("x-model") == 1000
    # Another catalog (another server in the same process) is not affected.
    assert ModelCatalog().price_for("x-model") is None


def test_bad_price_override_is_reported() -> None:
    with pytest.raises(ValueError, match="MODEL_PRICES_JSON entry 'x'"):
        ModelCatalog(make_settings(model_prices_json={"x": {"input": 1.0}}))


def test_estimate_tokens_rounds_up() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
