"""Backend for OpenAI and OpenAI-compatible Chat Completions servers.

Works with api.openai.com, vLLM, Ollama, llama.cpp and similar servers through
the official ``openai`` SDK. ``GenerateOptions.thinking_budget`` is not sent:
the compatible servers disagree on how (or whether) a reasoning budget is
expressed, and an unknown field makes some of them reject the request.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import grpc
import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.completion_usage import CompletionUsage

from rlm_service.config import Settings
from rlm_service.models._base import (
    AttemptHook,
    DeltaHook,
    GenerateOptions,
    Message,
    ModelReply,
    RetryHook,
    TokenUsage,
)
from rlm_service.models._retry import (
    EMPTY_RETRY_LIMIT,
    RETRYABLE_STATUS,
    AttemptError,
    RetryPolicy,
    malformed_error,
    prompt_too_large,
    run_with_retries,
    server_detail,
    status_error,
    transport_error,
    unexpected_error,
)
from rlm_service.models.limiter import Limiter

log = logging.getLogger(__name__)



class OpenAIBackend:
    """One ``AsyncOpenAI`` client shared by every call made through this backend."""

    name = "openai"

    def __init__(self, settings: Settings, limiter: Limiter | None = None) -> None:
        self._policy = RetryPolicy.from_settings(settings)
        self._api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        if not self._api_key and not settings.openai_base_url:
            raise ValueError("OPENAI_API_KEY is not set (or set OPENAI_BASE_URL for a local "
                             "OpenAI-compatible server)")
        # Shared by every backend of the process (build_backends), so the cap is process-wide.
        self._semaphore: Limiter = limiter or asyncio.Semaphore(settings.max_concurrent_model_calls)
        self._client = openai.AsyncOpenAI(
            # Local servers (vLLM, Ollama, llama.cpp) ignore the key, but the SDK needs one.
            api_key=self._api_key or "unused",
            base_url=settings.openai_base_url,
            # We retry ourselves so the policy, the deadline and on_retry see every failure.
            max_retries=0,
            timeout=settings.model_timeout_seconds,
        )

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
        wire: list[ChatCompletionMessageParam] = []
        if options.system_prompt:
            wire.append({"role": "system", "content": options.system_prompt})
        for m in messages:
            if m.role == "model":
                wire.append({"role": "assistant", "content": m.text})
            else:
                wire.append({"role": "user", "content": m.text})
        extra: dict[str, Any] = {}
        if options.temperature is not None:
            extra["temperature"] = options.temperature
        what = f"the model {model}"

        async def attempt() -> ModelReply:
            if on_delta is None:
                completion = await self._client.chat.completions.create(
                    model=model, messages=wire, stream=False, **extra)
                return _reply_from_completion(completion, what)
            stream = await self._client.chat.completions.create(
                model=model, messages=wire, stream=True,
                stream_options={"include_usage": True}, **extra)
            state = _StreamState()
            async with stream:
                async for chunk in stream:
                    piece = state.add(chunk)
                    if piece:
                        on_delta(piece)
            return state.reply(what)

        return await run_with_retries(
            attempt, policy=self._policy, classify=lambda e: self._classify(e, what),
            deadline=deadline, on_retry=on_retry, what=what,
            limiter=self._semaphore, on_attempt=on_attempt)

    async def aclose(self) -> None:
        await self._client.close()

    # -- error mapping ---------------------------------------------------------------

    def _classify(self, exc: Exception, what: str) -> AttemptError:
        if isinstance(exc, openai.APIStatusError):
            return self._classify_status(exc, what)
        if isinstance(exc, openai.APITimeoutError):
            return AttemptError(f"{what} did not answer in time (the connection timed out)",
                                kind="timeout", code=grpc.StatusCode.DEADLINE_EXCEEDED,
                                retryable=True)
        if isinstance(exc, openai.APIConnectionError | OSError):
            return transport_error(what)
        if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError
                      | pydantic.ValidationError):
            return malformed_error(what)
        return unexpected_error(what, exc)

    def _classify_status(self, exc: openai.APIStatusError, what: str) -> AttemptError:
        body = exc.body
        message = body.get("message") if isinstance(body, dict) else body
        detail = server_detail(message, [self._api_key])
        suffix = f": {detail}" if detail else ""
        if exc.code == "content_filter":
            return AttemptError(f"{what} refused the prompt: it was blocked by the content "
                                f"filter before any answer was generated{suffix}",
                                kind="blocked", code=grpc.StatusCode.FAILED_PRECONDITION,
                                retryable=False)
        if exc.code == "context_length_exceeded":
            return prompt_too_large(what, suffix)
        # 409 too: OpenAI's own clients retry a conflict.
        return status_error(exc.status_code, what, detail,
                            retry_after=_retry_after(exc.response.headers),
                            retryable=RETRYABLE_STATUS | {409})


def _retry_after(headers: Any) -> float | None:
    """Server-requested wait: ``retry-after-ms`` first (more precise), then ``retry-after``."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _usage_of(usage: CompletionUsage | None) -> TokenUsage:
    if usage is None:
        return TokenUsage()
    reasoning = 0
    if usage.completion_tokens_details is not None:
        reasoning = usage.completion_tokens_details.reasoning_tokens or 0
    cached = 0
    if usage.prompt_tokens_details is not None:
        cached = usage.prompt_tokens_details.cached_tokens or 0
    # completion_tokens includes the reasoning tokens; TokenUsage keeps them apart.
    return TokenUsage(
        prompt_tokens=usage.prompt_tokens or 0,
        output_tokens=max(0, (usage.completion_tokens or 0) - reasoning),
        thinking_tokens=reasoning,
        cached_tokens=cached,
    )


def _finish(text: str, finish: str | None, refusal: str | None, has_choice: bool,
            usage: TokenUsage, what: str) -> ModelReply:
    if refusal:
        raise AttemptError(f"{what} refused to answer: {' '.join(refusal.split())[:200]}",
                           kind="safety", code=grpc.StatusCode.FAILED_PRECONDITION,
                           retryable=False, usage=usage)
    if finish == "content_filter":
        raise AttemptError(f"{what} stopped for safety reasons (content_filter) before "
                           "answering", kind="safety", code=grpc.StatusCode.FAILED_PRECONDITION,
                           retryable=False, usage=usage)
    if finish == "length":
        raise AttemptError(f"{what} hit its output token limit (length) before finishing the "
                           f"answer ({len(text)} characters were produced)", kind="max_tokens",
                           code=grpc.StatusCode.FAILED_PRECONDITION, retryable=False,
                           usage=usage)
    if not has_choice or not text:
        reason = "no choices" if not has_choice else f"no text (finish reason {finish})"
        raise AttemptError(f"{what} returned an empty answer ({reason})", kind="empty",
                           code=grpc.StatusCode.UNAVAILABLE, retryable=True, usage=usage,
                           retry_limit=EMPTY_RETRY_LIMIT)
    return ModelReply(text=text, usage=usage, finish_reason=(finish or "stop").upper())


def _reply_from_completion(completion: ChatCompletion, what: str) -> ModelReply:
    usage = _usage_of(completion.usage)
    if not completion.choices:
        return _finish("", None, None, False, usage, what)
    choice = completion.choices[0]
    message = choice.message
    return _finish(message.content or "", choice.finish_reason, message.refusal, True, usage,
                   what)


class _StreamState:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.refusal: list[str] = []
        self.finish: str | None = None
        self.usage: CompletionUsage | None = None
        self.has_choice = False

    def add(self, chunk: ChatCompletionChunk) -> str:
        if chunk.usage is not None:
            self.usage = chunk.usage
        if not chunk.choices:
            return ""
        self.has_choice = True
        choice = chunk.choices[0]
        if choice.finish_reason is not None:
            self.finish = choice.finish_reason
        if choice.delta.refusal:
            self.refusal.append(choice.delta.refusal)
        piece = choice.delta.content or ""
        if piece:
            self.parts.append(piece)
        return piece

    def reply(self, what: str) -> ModelReply:
        return _finish("".join(self.parts), self.finish, "".join(self.refusal) or None,
                       self.has_choice, _usage_of(self.usage), what)
