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
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import grpc
import pydantic
import yarl
from aiohttp.helpers import get_env_proxy_for_url
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from rlm_service.config import Settings
from rlm_service.models._base import (
    AttemptHook,
    DeltaHook,
    GenerateOptions,
    Message,
    ModelError,
    ModelReply,
    RetryHook,
)
from rlm_service.models._retry import (
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
from rlm_service.models.gemini_wire import (
    Chunk,
    chunk_from_json,
    chunk_from_sdk,
    reply_from,
    request_body,
    retry_delay,
)
from rlm_service.models.limiter import Limiter

log = logging.getLogger(__name__)

_PATH_CACHE_SIZE = 256
_GEMINI_API_URL = "https://generativelanguage.googleapis.com/"
_VERTEX_URL = "https://aiplatform.googleapis.com/"


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
        self._vertex = settings.google_genai_use_vertexai
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
            self._client = genai.Client(vertexai=True, http_options=http_options)
        else:
            # A keyless proxy or local stand-in still needs some key for the SDK to start.
            self._client = genai.Client(vertexai=False, api_key=self._api_key or "unused",
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
                return reply_from([chunk_from_json(payload)], what)
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
                    return reply_from([chunk_from_sdk(response)], what)
                chunks: list[Chunk] = []
                stream = await client.aio.models.generate_content_stream(
                    model=model, contents=contents, config=config)
                try:
                    async for piece in stream:
                        chunk = chunk_from_sdk(piece)
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
                return reply_from(chunks, what)

        return await run_with_retries(
            attempt, policy=self._policy, classify=lambda e: self._classify(e, what),
            deadline=deadline, on_retry=on_retry, what=what,
            limiter=self._semaphore, on_attempt=on_attempt)

    @property
    def fast_path(self) -> bool:
        """Plain calls send JSON through the SDK's API client (see the module doc)."""
        self._sdk()
        return self._raw_api is not None

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
                                retry_after=retry_delay(exc.details))
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


__all__ = ["GeminiBackend", "ModelError"]
