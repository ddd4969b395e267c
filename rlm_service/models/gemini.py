"""Gemini backend on the official ``google-genai`` SDK (Gemini API or Vertex AI).

Two request paths share one SDK client, its auth, endpoints and error types:

* Streamed calls (root turns) go through the SDK's public typed API,
  ``client.aio.models.generate_content_stream``.
* Plain calls (``llm_query`` sub-calls, the hot path of a wide fan-out) send
  the ``generateContent`` JSON through the SDK's own API client
  (``BaseApiClient.async_request``) and read the reply JSON directly. The
  typed path spends about 0.5 ms of CPU per call turning pydantic models into
  request dicts and back, which on one event loop is the ceiling on how many
  sub-calls a process can keep in flight. The wire format is the public REST
  API; a test checks that both paths send the same request.

If a future SDK drops the internal client, plain calls fall back to the typed
path (``_raw_api`` is None) and only get slower.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pydantic
import yarl
from aiohttp.helpers import get_env_proxy_for_url
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from rlm_service.config import Settings, vertex_configured
from rlm_service.models._base import (
    AttemptHook,
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

_SAFETY_REASONS = {
    "SAFETY": "the model stopped for safety reasons (SAFETY) before answering",
    "RECITATION": "the model stopped because its answer would recite protected material (RECITATION)",
    "PROHIBITED_CONTENT": "the model stopped because the answer would contain prohibited content (PROHIBITED_CONTENT)",
    "BLOCKLIST": "the model stopped because the answer contained blocklisted terms (BLOCKLIST)",
    "SPII": "the model stopped because the answer would reveal sensitive personal information (SPII)",
    "IMAGE_SAFETY": "the model stopped for image safety reasons (IMAGE_SAFETY) before answering",
}
_PATH_CACHE_SIZE = 256
_GEMINI_API_URL = "https://generativelanguage.googleapis.com/"
_VERTEX_URL = "https://aiplatform.googleapis.com/"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")


class GeminiBackend:
    """One ``genai.Client`` (over one aiohttp session) shared by every call made
    through this backend. Both belong to the event loop that runs the calls:
    they are built at construction when a loop is running, else on first use."""

    name = "gemini"

    def __init__(self, settings: Settings, limiter: Limiter | None = None, *,
                 typed_only: bool = False) -> None:
        self._policy = RetryPolicy.from_settings(settings)
        self._api_key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else None
        self._base_url = settings.gemini_base_url
        self._pool_size = settings.max_concurrent_model_calls
        # Shared by every backend of the process (build_backends), so the cap is process-wide.
        self._semaphore: Limiter = limiter or asyncio.Semaphore(settings.max_concurrent_model_calls)
        self._vertex = vertex_configured()
        self._typed_only = typed_only
        if not self._vertex and not self._api_key and not settings.gemini_base_url:
            raise ValueError("GEMINI_API_KEY is not set (or set GOOGLE_GENAI_USE_VERTEXAI "
                             "to use Vertex AI)")
        self._session: aiohttp.ClientSession | None = None
        self._client: genai.Client | None = None
        self._raw_api: Any = None
        self._t_model: Callable[[Any, str], str] = lambda _api, model: model
        self._paths: dict[str, str] = {}
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        # Building the SDK client loads CA certificates (about 0.2 s); inside a
        # loop (the server's start-up) do it now, not in the first request.
        self._sdk()

    def _sdk(self) -> genai.Client:
        if self._client is not None:
            return self._client
        # Our own aiohttp session pins the transport. The SDK's default
        # (httpx) walks its whole connection pool on every request, which
        # costs about 1 ms of CPU per call with 64 connections open; aiohttp's
        # connector does not. No aiohttp timeouts: the retry loop owns them.
        proxy, proxy_auth = _env_proxy(self._base_url or (
            _VERTEX_URL if self._vertex else _GEMINI_API_URL))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None),
            proxy=proxy, proxy_auth=proxy_auth,
        )
        http_options = types.HttpOptions(
            base_url=self._base_url,
            aiohttp_client=self._session,
            # One attempt per SDK call: the SDK's own retries would hide
            # failures from our policy, our deadline and on_retry.
            retry_options=types.HttpRetryOptions(attempts=1),
        )
        if self._vertex:
            # Project, location and credentials come from the SDK's own
            # environment handling (GOOGLE_CLOUD_PROJECT, ADC, ...).
            self._client = genai.Client(http_options=http_options)
        else:
            # A keyless proxy or local stand-in still needs some key for the SDK to start.
            self._client = genai.Client(api_key=self._api_key or "unused",
                                        http_options=http_options)
        api = getattr(self._client.aio, "_api_client", None)
        if not self._typed_only and callable(getattr(api, "async_request", None)):
            try:
                # The SDK's own model-name rule ("models/x" for the Gemini API,
                # "publishers/google/models/x" for Vertex, names that would
                # escape the path refused). Internal too, hence the guard.
                from google.genai._transformers import t_model
            except ImportError:
                return self._client
            self._raw_api, self._t_model = api, t_model
        return self._client

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
        client = self._sdk()
        what = f"the Gemini model {model}"
        if on_delta is None and self._raw_api is not None:
            body = request_body(messages, options)
            try:
                path = self._path_for(model)
            except ValueError:
                raise ModelError(f"{what} is not a valid model name", kind="bad_request",
                                 code=grpc.StatusCode.INVALID_ARGUMENT) from None
            raw_api = self._raw_api

            async def attempt() -> ModelReply:
                response = await raw_api.async_request("post", path, body, None)
                payload = json.loads(response.body) if response.body else {}
                return _reply_from([_chunk_from_json(payload)], what)
        else:
            contents: list[types.ContentUnion] = [
                types.Content(role=m.role, parts=[types.Part(text=m.text)]) for m in messages
            ]
            config = types.GenerateContentConfig(
                system_instruction=options.system_prompt,
                temperature=options.temperature,
                thinking_config=(types.ThinkingConfig(thinking_budget=options.thinking_budget)
                                 if options.thinking_budget is not None else None),
            )

            async def attempt() -> ModelReply:
                if on_delta is None:
                    response = await client.aio.models.generate_content(
                        model=model, contents=contents, config=config)
                    return _reply_from([_chunk_from_sdk(response)], what)
                chunks: list[_Chunk] = []
                stream = await client.aio.models.generate_content_stream(
                    model=model, contents=contents, config=config)
                try:
                    async for piece in stream:
                        chunk = _chunk_from_sdk(piece)
                        chunks.append(chunk)
                        if chunk.text:
                            on_delta(chunk.text)
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
            limiter=self._semaphore, on_attempt=on_attempt)

    def _path_for(self, model: str) -> str:
        path = self._paths.get(model)
        if path is None:
            if len(self._paths) >= _PATH_CACHE_SIZE:
                self._paths.clear()  # model names come from requests and REPL code
            path = self._paths[model] = f"{self._t_model(self._raw_api, model)}:generateContent"
        return path

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aio.aclose()
        if self._session is not None:
            await self._session.close()

    # -- error mapping ---------------------------------------------------------------

    def _classify(self, exc: Exception, what: str) -> AttemptError:
        if isinstance(exc, genai_errors.APIError):
            detail = server_detail(exc.message, [self._api_key])
            if (exc.code == 400 and "token" in detail.lower()
                    and "exceed" in detail.lower()):
                return prompt_too_large(what, f": {detail}")
            default = "RESOURCE_EXHAUSTED" if exc.code == 429 else ""
            return status_error(exc.code, what, detail,
                                label=f"{exc.code} {exc.status or default}".rstrip(),
                                retry_after=_retry_delay(exc.details))
        if isinstance(exc, genai_errors.UnknownApiResponseError | json.JSONDecodeError
                      | pydantic.ValidationError):
            return malformed_error(what)
        if isinstance(exc, ValueError) and str(exc).startswith("invalid model"):
            return AttemptError(f"{what} is not a valid model name", kind="bad_request",
                                code=grpc.StatusCode.INVALID_ARGUMENT, retryable=False)
        if isinstance(exc, aiohttp.ClientError | OSError):
            return transport_error(what)
        return unexpected_error(what, exc)


def _env_proxy(url: str) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
    """HTTP(S)_PROXY / NO_PROXY for the model endpoint, as the SDK's httpx
    default honoured them. Read once: aiohttp's ``trust_env`` would look them
    (and ~/.netrc) up in a worker thread on every request."""
    try:
        return get_env_proxy_for_url(yarl.URL(url))
    except LookupError:
        return None, None


# -- response handling -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Chunk:
    """What the reply logic needs from one response (or one streamed chunk),
    whichever path produced it."""

    text: str = ""
    has_candidate: bool = False
    finish: str | None = None
    block: str | None = None
    usage: TokenUsage | None = None


def _chunk_from_sdk(response: types.GenerateContentResponse) -> _Chunk:
    block = None
    if response.prompt_feedback is not None and response.prompt_feedback.block_reason is not None:
        block = _enum_name(response.prompt_feedback.block_reason)
    meta = response.usage_metadata
    usage = None if meta is None else TokenUsage(
        prompt_tokens=meta.prompt_token_count or 0,
        output_tokens=meta.candidates_token_count or 0,
        thinking_tokens=meta.thoughts_token_count or 0,
        cached_tokens=meta.cached_content_token_count or 0,
    )
    if not response.candidates:
        return _Chunk(block=block, usage=usage)
    first = response.candidates[0]
    parts = first.content.parts if first.content is not None else None
    # Thought summaries are not the answer.
    text = "".join(p.text for p in parts or () if p.text and not p.thought)
    finish = _enum_name(first.finish_reason) if first.finish_reason is not None else None
    return _Chunk(text=text, has_candidate=True, finish=finish, block=block, usage=usage)


def _chunk_from_json(payload: Any) -> _Chunk:
    """The same reading of the REST JSON, with every shape checked: a body the
    typed SDK would reject is a malformed reply here too."""
    try:
        block = None
        feedback = payload.get("promptFeedback")
        if feedback is not None and feedback.get("blockReason") is not None:
            block = str(feedback["blockReason"])
        meta = payload.get("usageMetadata")
        usage = None if meta is None else TokenUsage(
            prompt_tokens=_count(meta, "promptTokenCount"),
            output_tokens=_count(meta, "candidatesTokenCount"),
            thinking_tokens=_count(meta, "thoughtsTokenCount"),
            cached_tokens=_count(meta, "cachedContentTokenCount"),
        )
        candidates = payload.get("candidates")
        if not candidates:
            return _Chunk(block=block, usage=usage)
        first = candidates[0]
        parts = (first.get("content") or {}).get("parts") or ()
        texts: list[str] = []
        for part in parts:
            text = part.get("text")
            if text is not None and not isinstance(text, str):
                raise TypeError("part text is not a string")
            if text and not part.get("thought"):
                texts.append(text)
        finish = first.get("finishReason")
        return _Chunk(text="".join(texts), has_candidate=True,
                      finish=None if finish is None else str(finish), block=block, usage=usage)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        raise AttemptError("the model sent a response that could not be parsed",
                           kind="malformed", code=grpc.StatusCode.UNAVAILABLE,
                           retryable=True) from None


def _count(meta: Any, key: str) -> int:
    value = meta.get(key) or 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"{key} is not a count")
    return int(value)  # int64 counts may arrive as JSON strings


def request_body(messages: Sequence[Message], options: GenerateOptions) -> dict[str, Any]:
    """The ``generateContent`` request JSON (REST field names)."""
    body: dict[str, Any] = {
        "contents": [{"role": m.role, "parts": [{"text": m.text}]} for m in messages],
    }
    if options.system_prompt is not None:
        body["systemInstruction"] = {"role": "user", "parts": [{"text": options.system_prompt}]}
    config: dict[str, Any] = {}
    if options.temperature is not None:
        config["temperature"] = options.temperature
    if options.thinking_budget is not None:
        config["thinkingConfig"] = {"thinkingBudget": options.thinking_budget}
    if config:
        body["generationConfig"] = config
    return body


def _reply_from(chunks: Sequence[_Chunk], what: str) -> ModelReply:
    """Fold one response (or a stream's chunks) into a reply or an AttemptError."""
    text = "".join(c.text for c in chunks)
    usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None) or TokenUsage()
    finish = next((c.finish for c in reversed(chunks) if c.finish is not None), None)
    block = next((c.block for c in reversed(chunks) if c.block is not None), None)
    has_candidate = any(c.has_candidate for c in chunks)

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
