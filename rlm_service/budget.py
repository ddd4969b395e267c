"""One ledger per request: usage at every depth and the limits that stop a run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.models import TokenUsage

StopReason: TypeAlias = rlm_pb2.StopReason.ValueType

LIMIT_NAMES: dict[StopReason, str] = {
    rlm_pb2.STOP_REASON_MAX_ITERATIONS: "max_iterations",
    rlm_pb2.STOP_REASON_MAX_LLM_CALLS: "max_llm_calls",
    rlm_pb2.STOP_REASON_MAX_TOTAL_TOKENS: "max_total_tokens",
    rlm_pb2.STOP_REASON_MAX_COST: "max_cost_usd",
    rlm_pb2.STOP_REASON_TIMEOUT: "timeout",
}


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

    def to_proto(self) -> rlm_pb2.Limits:
        return rlm_pb2.Limits(
            max_iterations=self.max_iterations, max_depth=self.max_depth,
            max_llm_calls=self.max_llm_calls, max_total_tokens=self.max_total_tokens,
            max_cost_usd=self.max_cost_usd, timeout_seconds=self.timeout_seconds,
        )


@dataclass
class Counter:
    calls: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, usage: TokenUsage, cost: float, calls: int = 1) -> None:
        self.calls += calls
        self.prompt_tokens += usage.prompt_tokens
        self.output_tokens += usage.output_tokens
        self.thinking_tokens += usage.thinking_tokens
        self.cached_tokens += usage.cached_tokens
        self.cost_usd += cost

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens + self.thinking_tokens

    def to_proto(self) -> rlm_pb2.Usage:
        return rlm_pb2.Usage(
            calls=self.calls, prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens, thinking_tokens=self.thinking_tokens,
            cached_tokens=self.cached_tokens, cost_usd=round(self.cost_usd, 8),
        )


def usage_proto(usage: TokenUsage, cost: float, calls: int = 1) -> rlm_pb2.Usage:
    c = Counter()
    c.add(usage, cost, calls)
    return c.to_proto()


@dataclass
class Ledger:
    """Usage per (model, depth) for a whole request, children included.

    ``on_exceeded`` is called once, the moment a limit is crossed, so the
    request can stop preemptively instead of at the next iteration.
    """

    limits: Limits
    cost_fn: Callable[[str, TokenUsage], float]
    on_exceeded: Callable[[LimitExceeded], None] = lambda exc: None
    by_model: dict[tuple[str, int], Counter] = field(default_factory=dict)
    total: Counter = field(default_factory=Counter)
    calls_started: int = 0
    exceeded: LimitExceeded | None = None
    started: float = field(default_factory=time.monotonic)

    def reserve_call(self) -> None:
        """Counts a model call before it starts; refuses it past max_llm_calls."""
        if self.exceeded is not None:
            raise self.exceeded
        cap = self.limits.max_llm_calls
        if cap and self.calls_started >= cap:
            self._trip(rlm_pb2.STOP_REASON_MAX_LLM_CALLS, f"max_llm_calls={cap} reached")
        self.calls_started += 1

    def record(self, model: str, depth: int, usage: TokenUsage) -> float:
        cost = self.cost_fn(model, usage)
        self.by_model.setdefault((model, depth), Counter()).add(usage, cost)
        self.total.add(usage, cost)
        lim = self.limits
        if lim.max_total_tokens and self.total.total_tokens >= lim.max_total_tokens:
            self._trip(rlm_pb2.STOP_REASON_MAX_TOTAL_TOKENS,
                       f"max_total_tokens={lim.max_total_tokens} reached "
                       f"({self.total.total_tokens} used)", raise_=False)
        elif lim.max_cost_usd and self.total.cost_usd >= lim.max_cost_usd:
            self._trip(rlm_pb2.STOP_REASON_MAX_COST,
                       f"max_cost_usd={lim.max_cost_usd:g} reached "
                       f"(${self.total.cost_usd:.6f} used)", raise_=False)
        return cost

    def trip_timeout(self) -> None:
        self._trip(rlm_pb2.STOP_REASON_TIMEOUT,
                   f"timeout of {self.limits.timeout_seconds:g} s reached", raise_=False)

    def _trip(self, reason: StopReason, detail: str, raise_: bool = True) -> None:
        if self.exceeded is None:
            self.exceeded = LimitExceeded(reason, detail)
            self.on_exceeded(self.exceeded)
        if raise_:
            raise self.exceeded

    def model_usage(self) -> list[rlm_pb2.ModelUsage]:
        return [
            rlm_pb2.ModelUsage(model=model, depth=depth, usage=c.to_proto())
            for (model, depth), c in sorted(self.by_model.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ]
