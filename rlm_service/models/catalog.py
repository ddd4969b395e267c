"""Per-model prices and input-token limits.

Prices are USD per 1M tokens from the providers' published price lists
(Gemini API paid tier, text input; OpenAI standard tier). Thinking/reasoning
tokens are billed as output. Cached input is billed at the cached price and is
part of the prompt count both providers report. Models billed by prompt size
(Gemini Pro above 200k prompt tokens) carry a second, "long" tier.

A model name matches a table key exactly or by the longest key that is a
prefix of it, so dated or preview variants (``gemini-2.5-flash-preview-09-2025``)
price like their family. A model found nowhere costs 0: ``price_for`` returns
None, ``cost_usd`` returns 0.0 and logs once that the cost is unknown.

``ModelCatalog(settings)`` is the table with the MODEL_PRICES_JSON /
MODEL_INPUT_LIMITS_JSON overrides applied; the server builds one at start and
hands it to the engine (there is no process-wide catalog).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from rlm_service.config import Settings
from rlm_service.models._base import TokenUsage

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    input: float
    output: float
    cached: float
    long_threshold: int | None = None  # prompt tokens above which the long tier applies
    long_input: float | None = None
    long_output: float | None = None
    long_cached: float | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, float]) -> ModelPrice:
        known = {"input", "output", "cached", "long_threshold", "long_input", "long_output",
                 "long_cached"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown price fields {sorted(unknown)}; expected {sorted(known)}")
        if "input" not in data or "output" not in data:
            raise ValueError("a price needs at least 'input' and 'output' (USD per 1M tokens)")
        threshold = data.get("long_threshold")
        return cls(
            input=float(data["input"]),
            output=float(data["output"]),
            cached=float(data.get("cached", data["input"])),
            long_threshold=int(threshold) if threshold is not None else None,
            long_input=data.get("long_input"),
            long_output=data.get("long_output"),
            long_cached=data.get("long_cached"),
        )


_LONG = 200_000

DEFAULT_PRICES: dict[str, ModelPrice] = {
    # Gemini 3
    "gemini-3-pro": ModelPrice(2.00, 12.00, 0.20, _LONG, 4.00, 18.00, 0.40),
    "gemini-3-flash": ModelPrice(0.50, 3.00, 0.05),
    # Gemini 2.5
    "gemini-2.5-pro": ModelPrice(1.25, 10.00, 0.125, _LONG, 2.50, 15.00, 0.25),
    "gemini-2.5-flash": ModelPrice(0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": ModelPrice(0.10, 0.40, 0.01),
    # Gemini 2.0
    "gemini-2.0-flash": ModelPrice(0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": ModelPrice(0.075, 0.30, 0.075),
    # OpenAI
    "gpt-4o": ModelPrice(2.50, 10.00, 1.25),
    "gpt-4o-mini": ModelPrice(0.15, 0.60, 0.075),
    "gpt-4.1": ModelPrice(2.00, 8.00, 0.50),
    "gpt-4.1-mini": ModelPrice(0.40, 1.60, 0.10),
    "gpt-4.1-nano": ModelPrice(0.10, 0.40, 0.025),
    "gpt-5": ModelPrice(1.25, 10.00, 0.125),
    "gpt-5-mini": ModelPrice(0.25, 2.00, 0.025),
    "gpt-5-nano": ModelPrice(0.05, 0.40, 0.005),
    "o3": ModelPrice(2.00, 8.00, 0.50),
    "o4-mini": ModelPrice(1.10, 4.40, 0.275),
    # The offline scripted model (rlm_service/models/scripted.py) costs nothing.
    "offline-scripted": ModelPrice(0.0, 0.0, 0.0),
}

_GEMINI_CONTEXT = 1_048_576

DEFAULT_INPUT_LIMITS: dict[str, int] = {
    "gemini-3-pro": _GEMINI_CONTEXT,
    "gemini-3-flash": _GEMINI_CONTEXT,
    "gemini-2.5-pro": _GEMINI_CONTEXT,
    "gemini-2.5-flash": _GEMINI_CONTEXT,
    "gemini-2.5-flash-lite": _GEMINI_CONTEXT,
    "gemini-2.0-flash": _GEMINI_CONTEXT,
    "gemini-2.0-flash-lite": _GEMINI_CONTEXT,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-5": 272_000,
    "gpt-5-mini": 272_000,
    "gpt-5-nano": 272_000,
    "o3": 200_000,
    "o4-mini": 200_000,
}


def _normalize(model: str) -> str:
    # The Gemini API also accepts "models/<name>"; Vertex can add a publisher path.
    return model.rsplit("/", 1)[-1].strip().lower()


def _lookup(table: Mapping[str, T], model: str) -> T | None:
    name = _normalize(model)
    if name in table:
        return table[name]
    best: str | None = None
    for key in table:
        if name.startswith(key) and (best is None or len(key) > len(best)):
            best = key
    return table[best] if best is not None else None


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")


def valid_model_name(name: str) -> bool:
    """The shape every provider's model names have. Names come from clients
    and from REPL code; anything else is refused before it reaches a URL, a
    metric label or a cache. Path segments must be real names: ``a/../../x``
    (which the Gemini SDK refuses only when the call is made) and empty or
    ``.`` segments would address something other than a model."""
    if _MODEL_NAME.fullmatch(name) is None or ".." in name:
        return False
    return all(part not in ("", ".") for part in name.split("/"))


def estimate_tokens(text: str) -> int:
    """Rough token count for budgeting before a call: 4 characters per token, rounded up."""
    return math.ceil(len(text) / 4)


class ModelCatalog:
    """Prices and input limits: the defaults above plus the settings' overrides."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._prices: dict[str, ModelPrice] = dict(DEFAULT_PRICES)
        self._limits: dict[str, int] = dict(DEFAULT_INPUT_LIMITS)
        self.default_input_limit = 128_000
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        if settings is not None:
            for name, data in settings.model_prices_json.items():
                try:
                    self._prices[_normalize(name)] = ModelPrice.from_mapping(data)
                except ValueError as exc:
                    raise ValueError(f"MODEL_PRICES_JSON entry {name!r}: {exc}") from None
            for name, limit in settings.model_input_limits_json.items():
                if limit < 1:
                    raise ValueError(f"MODEL_INPUT_LIMITS_JSON entry {name!r} must be positive")
                self._limits[_normalize(name)] = limit
            self.default_input_limit = settings.model_default_input_limit

    def price_for(self, model: str) -> ModelPrice | None:
        return _lookup(self._prices, model)

    def cost_usd(self, model: str, usage: TokenUsage) -> float:
        price = self.price_for(model)
        if price is None:
            with self._lock:
                first = model not in self._warned
                self._warned.add(model)
            if first:
                log.warning("no price known for model %s; its cost is counted as 0 "
                            "(set MODEL_PRICES_JSON to price it)", model)
            return 0.0
        input_price, output_price, cached_price = price.input, price.output, price.cached
        if price.long_threshold is not None and usage.prompt_tokens > price.long_threshold:
            input_price = price.long_input if price.long_input is not None else input_price
            output_price = price.long_output if price.long_output is not None else output_price
            cached_price = price.long_cached if price.long_cached is not None else cached_price
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        fresh = usage.prompt_tokens - cached
        billed_output = usage.output_tokens + usage.thinking_tokens
        return (fresh * input_price + cached * cached_price
                + billed_output * output_price) / 1_000_000

    def input_limit(self, model: str) -> int:
        limit = _lookup(self._limits, model)
        return limit if limit is not None else self.default_input_limit


__all__ = [
    "DEFAULT_INPUT_LIMITS",
    "DEFAULT_PRICES",
    "ModelCatalog",
    "ModelPrice",
    "estimate_tokens",
    "valid_model_name",
]
