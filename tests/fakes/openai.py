"""A fake OpenAI-compatible Chat Completions server (``POST /v1/chat/completions``).

Clients use ``base_url = fake.base_url + "/v1"``, as with vLLM, Ollama or
llama.cpp servers.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

from aiohttp import web

from tests.fakes._common import (
    FakeServer,
    Fault,
    Reply,
    Req,
    chunk_text,
    huge_reply,
    json_response,
    read_json,
    sse,
    tokens_for,
)

__all__ = ["FakeOpenAI", "Fault", "Reply", "Req"]

_ERRORS: dict[Fault, tuple[int, str, str | None, str]] = {
    Fault.RATE_LIMIT_429: (
        429, "requests", "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Visit https://platform.openai.com/account/rate-limits "
        "to learn more.",
    ),
    Fault.SERVER_ERROR_500: (
        500, "server_error", None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    Fault.UNAVAILABLE_503: (
        503, "server_error", None, "The engine is currently overloaded, please try again later.",
    ),
    Fault.GATEWAY_TIMEOUT_504: (504, "server_error", None, "Gateway timeout."),
    Fault.BAD_REQUEST_400: (
        400, "invalid_request_error", None,
        "Invalid value for 'temperature': expected a number between 0 and 2.",
    ),
    Fault.UNAUTHORIZED_401: (
        401, "invalid_request_error", "invalid_api_key",
        "Incorrect API key provided: sk-****. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
    ),
    Fault.FORBIDDEN_403: (
        403, "invalid_request_error", "unsupported_country_region_territory",
        "Country, region, or territory not supported",
    ),
    Fault.NOT_FOUND_404: (
        404, "invalid_request_error", "model_not_found",
        "The model `{model}` does not exist or you do not have access to it.",
    ),
    # Azure-style: the prompt itself tripped the content filter.
    Fault.PROMPT_BLOCKED: (
        400, "invalid_request_error", "content_filter",
        "The response was filtered due to the prompt triggering Azure OpenAI's content "
        "management policy. Please modify your prompt and retry.",
    ),
}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


class FakeOpenAI(FakeServer):
    """See tests/fakes/_common.py for the scripting, stats and fault API.

    Fault params: ``retry_delay`` (seconds, RATE_LIMIT_429) sent as
    ``retry_header`` = ``"retry-after"`` (whole seconds, rounded up),
    ``"retry-after-ms"`` or ``"both"`` (default); ``message``; ``echo_key``
    (the error message repeats the bearer key, as some proxies do); ``text``
    (partial text for MAX_TOKENS); ``variant`` for EMPTY_CANDIDATES
    (``"no_choices"`` default, or ``"null_content"``); ``code`` overrides the
    error's ``code`` field (e.g. ``"context_length_exceeded"``).

    SAFETY and RECITATION both answer ``finish_reason: "content_filter"``;
    MAX_TOKENS answers ``"length"``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        req = self._parse(body, request)
        return await self._tracked(req, request, lambda: self._respond(req, request))

    @staticmethod
    def _parse(body: dict[str, Any], request: web.Request) -> Req:
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            messages = []
        user_texts: list[str] = []
        system_texts: list[str] = []
        model_turns = 0
        chars = 0
        for message in messages:
            if not isinstance(message, dict):
                continue
            text = _text(message.get("content"))
            chars += len(text)
            role = message.get("role")
            if role == "assistant":
                model_turns += 1
            elif role in ("system", "developer"):
                system_texts.append(text)
            else:
                user_texts.append(text)
        config = {k: v for k, v in body.items() if k != "messages"}
        return Req(
            model=str(body.get("model", "")),
            contents=messages,
            system_instruction="\n".join(system_texts) if system_texts else None,
            last_user_text=user_texts[-1] if user_texts else "",
            first_user_text=user_texts[0] if user_texts else "",
            generation_config=config,
            headers=dict(request.headers),
            stream=bool(body.get("stream")),
            model_turns=model_turns,
            prompt_chars=chars,
        )

    async def _respond(self, req: Req, request: web.Request) -> web.StreamResponse:
        hit = self._take_fault(req.model)
        special = await self._transport_fault(hit, req, request)
        if special is not None:
            return special
        fault = hit.fault if hit else None
        params = dict(hit.params) if hit else {}
        if fault in _ERRORS:
            assert fault is not None
            return self._error(fault, params, req, request)

        reply = self._reply_for(req)
        if fault is Fault.HUGE_REPLY:
            reply = huge_reply(params)
        if fault is Fault.EMPTY_CANDIDATES:
            if params.get("variant") == "null_content":
                return await self._send(req, request, reply, None, "stop")
            return await self._send(req, request, reply, None, None)
        if fault in (Fault.SAFETY, Fault.RECITATION):
            return await self._send(req, request, reply, "", "content_filter")
        if fault is Fault.MAX_TOKENS:
            text = params.get("text", reply.text[: max(1, len(reply.text) // 2)])
            return await self._send(req, request, reply, text, "length")
        return await self._send(req, request, reply, reply.text, reply.finish_reason or "stop")

    def _error(self, fault: Fault, params: dict[str, Any], req: Req,
               request: web.Request) -> web.Response:
        status, err_type, code, message = _ERRORS[fault]
        message = params.get("message", message).replace("{model}", req.model)
        if params.get("echo_key"):
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            message = f"Incorrect API key provided: {key}. {message}"
        headers: dict[str, str] = {}
        delay = params.get("retry_delay")
        if fault is Fault.RATE_LIMIT_429 and delay is not None:
            which = params.get("retry_header", "both")
            if which in ("retry-after-ms", "both"):
                headers["retry-after-ms"] = str(int(delay * 1000))
            if which in ("retry-after", "both"):
                headers["retry-after"] = str(math.ceil(delay))
        error = {"message": message, "type": err_type, "param": None,
                 "code": params.get("code", code)}
        return json_response({"error": error}, status=status, headers=headers)

    def _usage(self, req: Req, reply: Reply, text: str) -> dict[str, Any]:
        prompt = reply.prompt_tokens if reply.prompt_tokens is not None else tokens_for(req.prompt_chars)
        output = reply.output_tokens if reply.output_tokens is not None else (
            tokens_for(len(text)) if text else 0)
        thoughts = reply.thoughts_tokens if reply.thoughts_tokens is not None else self.thinking_tokens
        cached = reply.cached_tokens if reply.cached_tokens is not None else self.cached_tokens
        # OpenAI counts reasoning inside completion_tokens and cached inside prompt_tokens.
        return {
            "prompt_tokens": prompt,
            "completion_tokens": output + thoughts,
            "total_tokens": prompt + output + thoughts,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": thoughts, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0},
        }

    async def _send(self, req: Req, request: web.Request, reply: Reply, text: str | None,
                    finish: str | None) -> web.StreamResponse:
        """``finish=None`` means no choices at all."""
        base = {"id": f"chatcmpl-fake{next(self._ids)}", "created": int(time.time()),
                "model": req.model, "system_fingerprint": "fp_fake"}
        usage = self._usage(req, reply, text or "")
        if not req.stream:
            choices: list[dict[str, Any]] = []
            if finish is not None:
                choices.append({
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                })
            return json_response({**base, "object": "chat.completion", "choices": choices,
                                  "usage": usage})

        chunk = {**base, "object": "chat.completion.chunk"}
        events: list[bytes] = []
        if finish is not None:
            events.append(sse({**chunk, "choices": [{
                "index": 0, "delta": {"role": "assistant", "content": ""},
                "logprobs": None, "finish_reason": None}]}))
            for piece in chunk_text(text or "") if text else []:
                events.append(sse({**chunk, "choices": [{
                    "index": 0, "delta": {"content": piece}, "logprobs": None,
                    "finish_reason": None}]}))
            events.append(sse({**chunk, "choices": [{
                "index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}))
        options = req.generation_config.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events.append(sse({**chunk, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\r\n\r\n")
        return await self._send_sse(request, events)
