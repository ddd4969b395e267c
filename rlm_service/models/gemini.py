"""Gemini backend on the official ``google-genai`` SDK (Gemini API or Vertex AI)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from typing import Any

import grpc
import httpx2
import pydantic
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from rlm_service.config import Settings, _vertex_configured
from rlm_service.models._base import (
    DeltaHook,
    GenerateOptions,
    Message,
    ModelError,
    ModelReply,
    RetryHook,
    TokenUsage,
)
from rlm_service.models._retry import (
    EMPTY_RETRY_LIMIT,
    AttemptError,
    RetryPolicy,
    run_with_retries,
    scrub,
)

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 500, 502, 503, 504}
_SAFETY_REASONS = {
    "SAFETY": "the model stopped for safety reasons (SAFETY) before answering",
    "RECITATION": "the model stopped because its answer would recite protected material (RECITATION)",
    "PROHIBITED_CONTENT": "the model stopped because the answer would contain prohibited content (PROHIBITED_CONTENT)",
    "BLOCKLIST": "the model stopped because the answer contained blocklisted terms (BLOCKLIST)",
    "SPII": "the model stopped because the answer would reveal sensitive personal information (SPII)",
    "IMAGE_SAFETY": "the model stopped for image safety reasons (IMAGE_SAFETY) before answering",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")
_SERVER_MESSAGE_LIMIT = 300


class GeminiBackend:
    """One ``genai.Client`` shared by every call made through this backend."""

    name = "gemini"

    def __init__(self, settings: Settings, limiter: asyncio.Semaphore | None = None) -> None:
        self._policy = RetryPolicy.from_settings(settings)
        self._api_key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else None
        # Shared by every backend of the process (build_backends), so the cap is process-wide.
        self._semaphore = limiter or asyncio.Semaphore(settings.max_concurrent_model_calls)
        # Our own httpx2 client pins the transport: left alone, the SDK switches
        # to aiohttp whenever that happens to be importable, which changes its
        # error types and timeout behaviour with the environment.
        self._http = httpx2.AsyncClient(
            limits=httpx2.Limits(max_connections=settings.max_concurrent_model_calls,
                                 max_keepalive_connections=settings.max_concurrent_model_calls),
            timeout=httpx2.Timeout(settings.model_timeout_seconds),
        )
        http_options = types.HttpOptions(
            base_url=settings.gemini_base_url,
            httpx_async_client=self._http,
            # One attempt per SDK call: the SDK's own retries (and its silent
            # 1-10 s reconnect on aiohttp errors) would hide failures from our
            # policy, our deadline and on_retry.
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        if _vertex_configured():
            # Project, location and credentials come from the SDK's own
            # environment handling (GOOGLE_CLOUD_PROJECT, ADC, ...).
            self._client = genai.Client(http_options=http_options)
        else:
            if not self._api_key and not settings.gemini_base_url:
                raise ValueError("GEMINI_API_KEY is not set (or set GOOGLE_GENAI_USE_VERTEXAI "
                                 "to use Vertex AI)")
            # A keyless proxy or local stand-in still needs some key for the SDK to start.
            self._client = genai.Client(api_key=self._api_key or "unused",
                                        http_options=http_options)

    async def generate(
        self,
        model: str,
        messages: Sequence[Message],
        options: GenerateOptions,
        *,
        deadline: float | None = None,
        on_delta: DeltaHook | None = None,
        on_retry: RetryHook | None = None,
    ) -> ModelReply:
        contents: list[types.ContentUnion] = [
            types.Content(role=m.role, parts=[types.Part(text=m.text)]) for m in messages
        ]
        config = types.GenerateContentConfig(
            system_instruction=options.system_prompt,
            temperature=options.temperature,
            thinking_config=(types.ThinkingConfig(thinking_budget=options.thinking_budget)
                             if options.thinking_budget is not None else None),
        )
        what = f"the Gemini model {model}"

        async def attempt() -> ModelReply:
            if on_delta is None:
                response = await self._client.aio.models.generate_content(
                    model=model, contents=contents, config=config)
                return _reply_from([response], what)
            chunks: list[types.GenerateContentResponse] = []
            stream = await self._client.aio.models.generate_content_stream(
                model=model, contents=contents, config=config)
            try:
                async for chunk in stream:
                    chunks.append(chunk)
                    text = _text_of(chunk)
                    if text:
                        on_delta(text)
            finally:
                # Closing the generator releases the HTTP response now, so
                # a timeout or cancellation mid-stream also ends the request
                # at the server instead of whenever the generator is collected.
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            return _reply_from(chunks, what)

        return await run_with_retries(
            attempt, policy=self._policy, classify=lambda e: self._classify(e, what),
            deadline=deadline, on_retry=on_retry, what=what,
            limiter=self._semaphore)

    async def aclose(self) -> None:
        await self._client.aio.aclose()
        await self._http.aclose()

    # -- error mapping ---------------------------------------------------------------

    def _classify(self, exc: Exception, what: str) -> AttemptError:
        if isinstance(exc, genai_errors.APIError):
            return self._classify_api_error(exc, what)
        if isinstance(exc, genai_errors.UnknownApiResponseError | json.JSONDecodeError
                      | pydantic.ValidationError):
            return AttemptError(f"{what} sent a response that could not be parsed",
                                kind="malformed", code=grpc.StatusCode.UNAVAILABLE,
                                retryable=True)
        if isinstance(exc, httpx2.TimeoutException):
            return AttemptError(f"{what} did not answer in time (the connection timed out)",
                                kind="timeout", code=grpc.StatusCode.DEADLINE_EXCEEDED,
                                retryable=True)
        if isinstance(exc, httpx2.TransportError | OSError):
            return AttemptError(
                f"{what} could not be reached: the connection failed or was closed "
                "before a complete answer arrived",
                kind="unavailable", code=grpc.StatusCode.UNAVAILABLE, retryable=True)
        log.warning("unexpected error from the Gemini client", exc_info=exc)
        return AttemptError(f"{what} failed with an unexpected client error "
                            f"({type(exc).__name__})",
                            kind="internal", code=grpc.StatusCode.INTERNAL, retryable=False)

    def _classify_api_error(self, exc: genai_errors.APIError, what: str) -> AttemptError:
        status = exc.code
        detail = self._server_message(exc)
        suffix = f": {detail}" if detail else ""
        if status == 429:
            return AttemptError(f"{what} is rate limited (429 {exc.status or 'RESOURCE_EXHAUSTED'})"
                                f"{suffix}", kind="rate_limited",
                                code=grpc.StatusCode.RESOURCE_EXHAUSTED, retryable=True,
                                retry_after=_retry_delay(exc.details))
        if status in _RETRYABLE_STATUS:
            return AttemptError(f"{what} is unavailable ({status} {exc.status or ''}".rstrip()
                                + f"){suffix}", kind="unavailable",
                                code=grpc.StatusCode.UNAVAILABLE, retryable=True)
        if status in (401, 403):
            return AttemptError(f"{what} refused the credentials ({status} {exc.status or ''}"
                                .rstrip() + f"){suffix}", kind="permission_denied",
                                code=grpc.StatusCode.PERMISSION_DENIED, retryable=False)
        if status == 404:
            return AttemptError(f"{what} was not found ({status}){suffix}", kind="not_found",
                                code=grpc.StatusCode.NOT_FOUND, retryable=False)
        if status == 400 and detail and "token" in detail.lower() and "exceed" in detail.lower():
            return AttemptError(f"the prompt is too large for {what}{suffix}",
                                kind="prompt_too_large", code=grpc.StatusCode.INVALID_ARGUMENT,
                                retryable=False)
        if 400 <= status < 500:
            return AttemptError(f"{what} rejected the request as invalid ({status} "
                                f"{exc.status or ''}".rstrip() + f"){suffix}",
                                kind="bad_request", code=grpc.StatusCode.INVALID_ARGUMENT,
                                retryable=False)
        return AttemptError(f"{what} failed with HTTP status {status}{suffix}",
                            kind="unavailable", code=grpc.StatusCode.UNAVAILABLE,
                            retryable=status >= 500)

    def _server_message(self, exc: genai_errors.APIError) -> str:
        message = exc.message if isinstance(exc.message, str) else ""
        message = " ".join(message.split())
        if len(message) > _SERVER_MESSAGE_LIMIT:
            message = message[:_SERVER_MESSAGE_LIMIT].rstrip() + "..."
        return scrub(message, [self._api_key])


# -- response handling -----------------------------------------------------------------


def _text_of(response: types.GenerateContentResponse) -> str:
    """Answer text of one response or chunk; thought summaries are not the answer."""
    if not response.candidates:
        return ""
    content = response.candidates[0].content
    if content is None or not content.parts:
        return ""
    return "".join(p.text for p in content.parts if p.text and not p.thought)


def _usage_of(meta: types.GenerateContentResponseUsageMetadata | None) -> TokenUsage:
    if meta is None:
        return TokenUsage()
    return TokenUsage(
        prompt_tokens=meta.prompt_token_count or 0,
        output_tokens=meta.candidates_token_count or 0,
        thinking_tokens=meta.thoughts_token_count or 0,
        cached_tokens=meta.cached_content_token_count or 0,
    )


def _reply_from(responses: Sequence[types.GenerateContentResponse], what: str) -> ModelReply:
    """Fold one response (or a stream's chunks) into a reply or an AttemptError."""
    text = "".join(_text_of(r) for r in responses)
    usage_meta = next((r.usage_metadata for r in reversed(responses) if r.usage_metadata), None)
    usage = _usage_of(usage_meta)
    finish: str | None = None
    block: str | None = None
    has_candidate = False
    for r in responses:
        if r.prompt_feedback is not None and r.prompt_feedback.block_reason is not None:
            block = _enum_name(r.prompt_feedback.block_reason)
        if r.candidates:
            has_candidate = True
            if r.candidates[0].finish_reason is not None:
                finish = _enum_name(r.candidates[0].finish_reason)

    if block is not None:
        raise AttemptError(f"{what} refused the prompt: it was blocked ({block}) before any "
                           "answer was generated", kind="blocked",
                           code=grpc.StatusCode.FAILED_PRECONDITION, retryable=False, usage=usage)
    if finish in _SAFETY_REASONS:
        raise AttemptError(_SAFETY_REASONS[finish].replace("the model", what, 1), kind="safety",
                           code=grpc.StatusCode.FAILED_PRECONDITION, retryable=False, usage=usage)
    if finish == "MAX_TOKENS":
        raise AttemptError(f"{what} hit its output token limit (MAX_TOKENS) before finishing "
                           f"the answer ({len(text)} characters were produced)", kind="max_tokens",
                           code=grpc.StatusCode.FAILED_PRECONDITION, retryable=False, usage=usage)
    if not has_candidate or not text:
        reason = "no candidates" if not has_candidate else f"no text (finish reason {finish})"
        raise AttemptError(f"{what} returned an empty answer ({reason})", kind="empty",
                           code=grpc.StatusCode.UNAVAILABLE, retryable=True, usage=usage,
                           retry_limit=EMPTY_RETRY_LIMIT)
    return ModelReply(text=text, usage=usage, finish_reason=finish or "STOP")


def _enum_name(value: Any) -> str:
    name = getattr(value, "value", value)
    return str(name)


def _retry_delay(details: Any) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail, as Gemini sends with a 429."""
    error = details.get("error", details) if isinstance(details, dict) else None
    items = error.get("details") if isinstance(error, dict) else None
    if not isinstance(items, list):
        return None
    for item in items:
        if (isinstance(item, dict) and str(item.get("@type", "")).endswith("google.rpc.RetryInfo")
                and isinstance(item.get("retryDelay"), str)):
            match = _DURATION.match(item["retryDelay"])
            if match:
                return float(match.group(1))
    return None


__all__ = ["GeminiBackend", "ModelError"]
