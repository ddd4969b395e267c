"""One ledger per request: usage at every depth and the limits that stop it."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rlm_service.models import TokenUsage


class StopReason(enum.Enum):
    """Why a request ended with an answer. The values are the metric labels."""

    ANSWERED = "answered"
    MAX_ITERATIONS = "max_iterations"
    MAX_LLM_CALLS = "max_llm_calls"
    MAX_TOTAL_TOKENS = "max_total_tokens"
    MAX_COST = "max_cost_usd"
    TIMEOUT = "timeout"


class LimitExceeded(Exception):
    """A budget is used up; no further model call may start."""

    def __init__(self, reason: StopReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    max_iterations: int
    max_depth: int
    max_llm_calls: int = 0
    max_total_tokens: int = 0
    max_cost_usd: float = 0.0
    timeout_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Usage:
    """Calls, tokens and cost: of one model call, or summed with ``+``."""

    calls: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def of_call(cls, tokens: TokenUsage, cost_usd: float) -> Usage:
        return cls(calls=1, prompt_tokens=tokens.prompt_tokens,
                   output_tokens=tokens.output_tokens, thinking_tokens=tokens.thinking_tokens,
                   cached_tokens=tokens.cached_tokens, cost_usd=cost_usd)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            thinking_tokens=self.thinking_tokens + other.thinking_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )

    @property
    def total_tokens(self) -> int:
        """Tokens that count against budgets: prompt + output + thinking."""
        return self.prompt_tokens + self.output_tokens + self.thinking_tokens


@dataclass(frozen=True)
class ModelUsage:
    model: str
    depth: int
    usage: Usage


@dataclass
class Ledger:
    """Usage per (model, depth) for a whole request, children included.

    ``on_exceeded`` is called once, the moment a limit is crossed, so the
    request can stop preemptively instead of at the next iteration.
    """

    limits: Limits
    cost_fn: Callable[[str, TokenUsage], float]
    on_exceeded: Callable[[LimitExceeded], None] = lambda exc: None
    by_model: dict[tuple[str, int], Usage] = field(default_factory=dict)
    total: Usage = field(default_factory=Usage)
    calls_started: int = 0
    exceeded: LimitExceeded | None = None
    started: float = field(default_factory=time.monotonic)

    def reserve_call(self) -> None:
        """Counts a model call before it starts; refuses it past max_llm_calls."""
        if self.exceeded is not None:
            raise self.exceeded
        cap = self.limits.max_llm_calls
        if cap and self.calls_started >= cap:
            self._trip(StopReason.MAX_LLM_CALLS, f"max_llm_calls={cap} reached")
        self.calls_started += 1

    def record(self, model: str, depth: int, tokens: TokenUsage) -> Usage:
        """Books one finished call; its cost is computed here, once, and returned with it."""
        usage = Usage.of_call(tokens, self.cost_fn(model, tokens))
        key = (model, depth)
        self.by_model[key] = self.by_model.get(key, Usage()) + usage
        self.total += usage
        lim = self.limits
        if lim.max_total_tokens and self.total.total_tokens >= lim.max_total_tokens:
            self._trip(StopReason.MAX_TOTAL_TOKENS,
                       f"max_total_tokens={lim.max_total_tokens} reached "
                       f"({self.total.total_tokens} used)", raise_=False)
        elif lim.max_cost_usd and self.total.cost_usd >= lim.max_cost_usd:
            self._trip(StopReason.MAX_COST,
                       f"max_cost_usd={lim.max_cost_usd:g} reached "
                       f"(${self.total.cost_usd:.6f} used)", raise_=False)
        return usage

    def trip_timeout(self) -> None:
        self._trip(StopReason.TIMEOUT,
                   f"timeout of {self.limits.timeout_seconds:g} s reached", raise_=False)

    def _trip(self, reason: StopReason, detail: str, raise_: bool = True) -> None:
        if self.exceeded is None:
            self.exceeded = LimitExceeded(reason, detail)
            self.on_exceeded(self.exceeded)
        if raise_:
            raise self.exceeded

    def model_usage(self) -> list[ModelUsage]:
        """Per (model, depth), shallowest depth first."""
        return [ModelUsage(model, depth, usage) for (model, depth), usage
                in sorted(self.by_model.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
