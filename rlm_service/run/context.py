"""What all runs of one request share: the ledger, the limiters, the deadline and
the one door to the models."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlm_service.budget import Ledger, LimitExceeded, Usage
from rlm_service.config import Settings
from rlm_service.models import (
    GenerateOptions,
    Message,
    ModelBackend,
    ModelError,
    ModelReply,
    TokenUsage,
)
from rlm_service.models.limiter import request_key
from rlm_service.run.events import Emit, Notice
from rlm_service.run.ports import Pricing, ReplProvider, SecretRegistry
from rlm_service.run.types import RequestSpec, RunResult
from rlm_service.telemetry import metrics
from rlm_service.telemetry.tracing import error_status, tracer
from rlm_service.tools import Toolbox, ToolGrant
from rlm_service.tools.http_call import HttpToolClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """The process-wide parts a request uses, handed down by the Engine."""

    settings: Settings
    backends: dict[str, ModelBackend]
    repls: ReplProvider[Any]
    registry: SecretRegistry
    pricing: Pricing
    sandbox_layers: tuple[str, ...]
    # The operator's tools (rlm_service/tools/) and the client HTTP tools go through.
    tools: Toolbox = field(default_factory=Toolbox)
    tool_client: HttpToolClient | None = None

    def backend_for(self, sub: bool) -> ModelBackend:
        name = self.settings.sub_backend if sub else self.settings.rlm_backend
        return self.backends[name]


@dataclass(frozen=True)
class ModelCall:
    """A finished model call and what it cost, computed once by the ledger."""

    text: str
    usage: Usage


class ModelCallFailed(Exception):
    """A model call failed for good; ``usage`` is what it still cost."""

    def __init__(self, error: ModelError, usage: Usage) -> None:
        super().__init__(error.message)
        self.error = error
        self.usage = usage


class RequestContext:
    """One client request: the ledger, limiters and event stream shared by all its depths."""

    def __init__(self, services: Services, spec: RequestSpec, emit: Emit) -> None:
        self.services = services
        self.settings = services.settings
        self.spec = spec
        self.emit = emit
        self.started = spec.received
        # Stop a little before the limit, so the final answer still reaches a
        # client whose gRPC deadline set the limit (it expires at the same time).
        timeout = spec.limits.timeout_seconds
        self.stop_after = max(0.0, timeout - min(0.5, 0.1 * timeout))
        self.deadline = self.started + self.stop_after
        self.ledger = Ledger(spec.limits, services.pricing.cost_usd,
                             on_exceeded=self._on_exceeded)
        self.llm_limiter = asyncio.Semaphore(self.settings.batch_concurrency)
        self._child_limiters: dict[int, asyncio.Semaphore] = {}
        self.partial_answer = ""
        # The tools of the root run and of child runs; HTTP tool calls made so far.
        self.root_tools, self.child_tools = services.tools.grants(spec.tools)
        self.tool_calls = 0
        self.task: asyncio.Task[RunResult] | None = None
        self.shutdown_reason = ""

    def tools_for(self, depth: int) -> ToolGrant:
        return self.root_tools if depth == 0 else self.child_tools

    def child_limiter(self, depth: int) -> asyncio.Semaphore:
        if depth not in self._child_limiters:
            self._child_limiters[depth] = asyncio.Semaphore(self.settings.child_run_concurrency)
        return self._child_limiters[depth]

    def _on_exceeded(self, exc: LimitExceeded) -> None:
        metrics.rlm_budget_stops.labels(limit=exc.reason.value).inc()
        log.info("budget stop: %s", exc.detail, extra={"request_id": self.spec.request_id})
        if self.task is not None:
            self.task.cancel()

    async def call_model(self, *, sub: bool, model: str, messages: list[Message],
                         options: GenerateOptions, depth: int,
                         on_delta: Callable[[str], None] | None = None) -> ModelCall:
        """Every model call of the request goes through here: budget, limiter, accounting.

        Raises ModelCallFailed, LimitExceeded or CancelledError."""
        self.ledger.reserve_call()
        # The process-wide limiter shares its slots fairly by this key.
        key = request_key.set(self.spec.request_id)
        try:
            return await self._call_model(sub=sub, model=model, messages=messages,
                                          options=options, depth=depth, on_delta=on_delta)
        finally:
            request_key.reset(key)

    async def _call_model(self, *, sub: bool, model: str, messages: list[Message],
                          options: GenerateOptions, depth: int,
                          on_delta: Callable[[str], None] | None) -> ModelCall:
        backend = self.services.backend_for(sub)
        started = time.monotonic()
        outcome = "error"
        sent = False
        tokens: TokenUsage | None = None  # what to account for, once the call is over
        usage = Usage()
        reply: ModelReply | None = None
        failed: ModelError | None = None

        def on_attempt() -> None:
            nonlocal sent
            sent = True

        def on_retry(attempt: int, delay: float, kind: str) -> None:
            metrics.rlm_model_retries.labels(model=model, reason=kind).inc()
            # Also tells a client that streamed text of this call so far is void.
            self.emit(Notice("model_retry", f"{model}: {kind}, retry {attempt} in {delay:.2f} s",
                             depth=depth))

        with tracer().start_as_current_span("rlm.model_call", attributes={
            "rlm.model": model, "rlm.depth": depth, "rlm.request_id": self.spec.request_id,
        }) as span:
            try:
                # The backends' shared limiter caps model calls process-wide,
                # per attempt, so a call sleeping before a retry holds no slot.
                reply = await backend.generate(
                    model, messages, options, deadline=self.deadline, on_delta=on_delta,
                    on_retry=on_retry, on_attempt=on_attempt)
                outcome, tokens = "ok", reply.usage
            except ModelError as exc:
                tokens = exc.usage
                span.set_status(error_status(exc.message))
                failed = exc
            except asyncio.CancelledError:
                if sent:
                    # Stopped mid-call (a budget, a cancel): the provider has the
                    # request, so it counts as a call; its tokens are unknown.
                    tokens = TokenUsage()
                raise
            finally:
                # Recording may trip a budget, which stops the request: last.
                if tokens is not None:
                    usage = self.ledger.record(model, depth, tokens)
                metrics.observe_model_call(
                    model, depth, outcome, time.monotonic() - started,
                    prompt_tokens=usage.prompt_tokens, output_tokens=usage.output_tokens,
                    thinking_tokens=usage.thinking_tokens, cached_tokens=usage.cached_tokens,
                    cost_usd=usage.cost_usd)
        if reply is None:
            assert failed is not None
            raise ModelCallFailed(failed, usage)
        return ModelCall(reply.text, usage)
