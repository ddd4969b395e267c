"""The one small interface every model backend implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import grpc


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total(self) -> int:
        """Tokens that count against budgets: prompt + output + thinking."""
        return self.prompt_tokens + self.output_tokens + self.thinking_tokens


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["user", "model"]
    text: str


@dataclass(frozen=True, slots=True)
class GenerateOptions:
    temperature: float | None = None
    thinking_budget: int | None = None
    system_prompt: str | None = None


@dataclass(frozen=True, slots=True)
class ModelReply:
    text: str
    usage: TokenUsage = field(default_factory=TokenUsage)
    finish_reason: str = "STOP"
    retries: int = 0


class ModelError(Exception):
    """A model call that failed for good (after any retries).

    ``code`` is the gRPC status a root-model failure maps to; ``kind`` names
    the cause for metrics and for the message given to the root model when a
    sub-call fails (``rate_limited``, ``unavailable``, ``timeout``, ``safety``,
    ``max_tokens``, ``blocked``, ``empty``, ``bad_request``, ``malformed``,
    ``prompt_too_large``, ...).
    """

    def __init__(self, message: str, *, code: grpc.StatusCode, kind: str,
                 usage: TokenUsage | None = None, retries: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.kind = kind
        self.usage = usage or TokenUsage()
        self.retries = retries


# Called before each retry sleep: (attempt number starting at 1, delay seconds, reason kind).
RetryHook = Callable[[int, float, str], None]
# Called with each text fragment as a streamed reply is generated.
DeltaHook = Callable[[str], None]
# Called as each attempt is admitted by the process-wide limiter and sent.
AttemptHook = Callable[[], None]


class ModelBackend(Protocol):
    """A model provider. Implementations are shared by every run in the process."""

    name: str

    async def generate(
        self,
        model: str,
        messages: Sequence[Message],
        options: GenerateOptions,
        *,
        deadline: float | None = None,
        on_delta: DeltaHook | None = None,
        on_retry: RetryHook | None = None,
        on_attempt: AttemptHook | None = None,
    ) -> ModelReply:
        """One model call with retries. ``deadline`` is a ``time.monotonic()``
        value no retry or attempt may run past. ``on_delta`` set means stream the
        reply. ``on_attempt`` tells the caller a request has really gone out
        (waiting for the limiter does not count). Raises ModelError on failure;
        cancellation propagates."""
        ...

    async def aclose(self) -> None: ...
