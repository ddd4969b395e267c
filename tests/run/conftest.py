"""The real run loop driven fast: an in-memory REPL and a scripted model backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from rlm_service.budget import Limits
from rlm_service.callback import CallbackRegistry
from rlm_service.config import Settings
from rlm_service.models import (
    AttemptHook,
    DeltaHook,
    GenerateOptions,
    Message,
    ModelError,
    ModelReply,
    RetryHook,
    TokenUsage,
)
from rlm_service.run import events as ev
from rlm_service.run.engine import Engine
from rlm_service.run.types import FinalAnswer, RequestSpec
from tests.support.memory_repl import MemoryReplPool

ROOT, SUB = "root-model", "sub-model"
# Every call reports this much, so budgets trip at a known call.
CALL_TOKENS = TokenUsage(prompt_tokens=100, output_tokens=10, thinking_tokens=5,
                         cached_tokens=20)


def block(code: str) -> str:
    return f"Running it.\n```repl\n{code}\n```"


@dataclass
class Call:
    model: str
    messages: list[Message]


@dataclass
class ScriptedModel:
    """A ModelBackend: root turns come from ``root`` in order (a ModelError is
    raised); sub-calls answer with ``sub(prompt)``."""

    root: list[str | ModelError] = field(default_factory=list)
    sub: Callable[[str], str] = lambda prompt: f"sub says {len(prompt)}"
    delay: float = 0.0
    calls: list[Call] = field(default_factory=list)
    name: str = "scripted"

    async def generate(self, model: str, messages: Sequence[Message],
                       options: GenerateOptions, *, deadline: float | None = None,
                       on_delta: DeltaHook | None = None, on_retry: RetryHook | None = None,
                       on_attempt: AttemptHook | None = None) -> ModelReply:
        if on_attempt is not None:
            on_attempt()
        self.calls.append(Call(model, list(messages)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if model == ROOT:
            reply = self.root.pop(0) if self.root else "Nothing left to say."
        else:
            reply = self.sub(messages[-1].text)
        if isinstance(reply, ModelError):
            raise reply
        if on_delta is not None:
            on_delta(reply)
        return ModelReply(reply, usage=CALL_TOKENS)

    def root_calls(self) -> list[Call]:
        return [c for c in self.calls if c.model == ROOT]

    async def aclose(self) -> None:
        pass


@dataclass
class Pricing:
    """One micro-dollar per prompt token; counts how often a cost is computed."""

    limits: dict[str, int] = field(default_factory=dict)
    priced: int = 0

    def cost_usd(self, model: str, usage: TokenUsage) -> float:
        self.priced += 1
        return usage.prompt_tokens * 1e-6

    def input_limit(self, model: str) -> int:
        return self.limits.get(model, 1_000_000)


@dataclass
class Harness:
    model: ScriptedModel
    pool: MemoryReplPool
    registry: CallbackRegistry
    pricing: Pricing
    settings: Settings
    events: list[ev.RunEvent] = field(default_factory=list)

    def engine(self) -> Engine:
        return Engine(self.settings, {"gemini": self.model}, self.pool, self.registry,
                      ("memory",), pricing=self.pricing)

    def spec(self, prompt: str = "What is it?", context: Any = "the context", *,
             stream: bool = False, **limits: Any) -> RequestSpec:
        values: dict[str, Any] = {"max_iterations": 5, "max_depth": 1,
                                  "timeout_seconds": 30.0}
        values.update(limits)
        return RequestSpec(request_id="req-1", prompt=prompt, context=context,
                           limits=Limits(**values), root_model=ROOT, sub_model=SUB,
                           root_options=GenerateOptions(), sub_options=GenerateOptions(),
                           stream_root_text=stream)

    async def complete(self, *root: str | ModelError, **spec: Any) -> FinalAnswer:
        self.model.root.extend(root)
        return await self.engine().complete(self.spec(**spec), self.events.append)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture
def harness() -> Harness:
    registry = CallbackRegistry()
    settings = Settings(_env_file=None, gemini_api_key="unused",  # type: ignore[call-arg]
                        sandbox_block_timeout_seconds=5)
    return Harness(ScriptedModel(), MemoryReplPool(registry), registry, Pricing(), settings)
