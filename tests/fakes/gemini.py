"""A fake Gemini API (generativelanguage ``v1beta``) speaking the real wire format.

``google-genai`` pointed at ``base_url`` sends
``POST {base_url}/v1beta/models/{model}:generateContent`` and
``...:streamGenerateContent?alt=sse``; both are served here.
"""

from __future__ import annotations

import itertools
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

__all__ = ["FakeGemini", "Fault", "Reply", "Req"]

_ERRORS: dict[Fault, tuple[int, str, str]] = {
    Fault.RATE_LIMIT_429: (
        429, "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. "
        "For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
    ),
    Fault.SERVER_ERROR_500: (
        500, "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    Fault.UNAVAILABLE_503: (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    Fault.GATEWAY_TIMEOUT_504: (504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
    Fault.BAD_REQUEST_400: (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    Fault.UNAUTHORIZED_401: (
        401, "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, "
        "login cookie or other valid authentication credential.",
    ),
    Fault.FORBIDDEN_403: (
        403, "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers (callers without established identity). "
        "Please use API Key or other form of API consumer identity to call this API.",
    ),
    Fault.NOT_FOUND_404: (
        404, "NOT_FOUND",
        "models/unknown is not found for API version v1beta, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their "
        "supported methods.",
    ),
}


def _texts(parts: Any) -> list[str]:
    if not isinstance(parts, list):
        return []
    return [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]


class FakeGemini(FakeServer):
    """See tests/fakes/_common.py for the scripting, stats and fault API.

    Fault params: ``retry_delay`` (seconds, RATE_LIMIT_429: adds a
    ``google.rpc.RetryInfo`` detail), ``message`` (any HTTP error), ``echo_key``
    (error message repeats the API key the client sent, as some proxies do),
    ``text`` (partial text for MAX_TOKENS / RECITATION), ``variant``
    (EMPTY_CANDIDATES: ``"no_candidates"`` (default) or ``"empty_parts"``),
    ``block_reason`` (PROMPT_BLOCKED, default ``"SAFETY"``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(1)

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/models/{target}", self._handle)
        # Vertex AI's publisher-model path, as the SDK builds it in express mode (API key).
        app.router.add_post("/{version}/publishers/google/models/{target}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            return self._error(404, "NOT_FOUND", f"Method {method!r} is not served by FakeGemini.")
        body = await read_json(request)
        req = self._parse(model, body, request, stream=method == "streamGenerateContent")
        return await self._tracked(req, request, lambda: self._respond(req, request))

    @staticmethod
    def _parse(model: str, body: dict[str, Any], request: web.Request, *, stream: bool) -> Req:
        contents = body.get("contents") or []
        if not isinstance(contents, list):
            contents = []
        user_texts: list[str] = []
        model_turns = 0
        chars = 0
        for entry in contents:
            if not isinstance(entry, dict):
                continue
            texts = _texts(entry.get("parts"))
            chars += sum(map(len, texts))
            if entry.get("role") == "model":
                model_turns += 1
            else:
                user_texts.append("".join(texts))
        system = body.get("systemInstruction") or body.get("system_instruction")
        system_text = "".join(_texts(system.get("parts"))) if isinstance(system, dict) else None
        chars += len(system_text or "")
        config = body.get("generationConfig") or {}
        return Req(
            model=model,
            contents=contents,
            system_instruction=system_text,
            last_user_text=user_texts[-1] if user_texts else "",
            first_user_text=user_texts[0] if user_texts else "",
            generation_config=config if isinstance(config, dict) else {},
            headers=dict(request.headers),
            stream=stream,
            model_turns=model_turns,
            prompt_chars=chars,
            body=body,
            path=request.path,
        )

    # -- responses ---------------------------------------------------------------

    async def _respond(self, req: Req, request: web.Request) -> web.StreamResponse:
        hit = self._take_fault(req.model)
        fault = hit.fault if hit else None
        params = dict(hit.params) if hit else {}
        special = await self._transport_fault(hit, req, request)
        if special is not None:
            return special
        if fault in _ERRORS:
            assert fault is not None
            code, status, message = _ERRORS[fault]
            message = params.get("message", message)
            if params.get("echo_key"):
                key = request.headers.get("x-goog-api-key", "")
                message = f"API key {key} is not authorized for this project. {message}"
            details: list[dict[str, Any]] = []
            if fault is Fault.RATE_LIMIT_429:
                details = self._quota_details(req.model, params.get("retry_delay"))
            return self._error(code, status, message, details)

        reply = self._reply_for(req)
        if fault is Fault.HUGE_REPLY:
            reply = huge_reply(params)
        if fault is Fault.PROMPT_BLOCKED:
            blocked: dict[str, Any] = {
                "promptFeedback": {
                    "blockReason": params.get("block_reason", "SAFETY"),
                    "safetyRatings": _ratings(blocked=True),
                },
                "usageMetadata": self._usage(req, reply, ""),
                "modelVersion": req.model,
                "responseId": self._response_id(),
            }
            return await self._send([blocked], req, request)
        if fault is Fault.EMPTY_CANDIDATES:
            payload: dict[str, Any] = {"usageMetadata": self._usage(req, reply, ""),
                                       "modelVersion": req.model,
                                       "responseId": self._response_id()}
            if params.get("variant") == "empty_parts":
                payload["candidates"] = [{"content": {"role": "model"}, "finishReason": "STOP",
                                          "index": 0}]
            return await self._send([payload], req, request)
        if fault is Fault.SAFETY:
            return await self._send([self._candidate_payload(req, reply, None, "SAFETY")],
                                    req, request)
        if fault in (Fault.MAX_TOKENS, Fault.RECITATION):
            text = params.get("text", reply.text[: max(1, len(reply.text) // 2)])
            finish = "MAX_TOKENS" if fault is Fault.MAX_TOKENS else "RECITATION"
            return await self._send(self._chunks(req, reply, text, finish), req, request)
        finish = reply.finish_reason or "STOP"
        return await self._send(self._chunks(req, reply, reply.text, finish), req, request)

    def _chunks(self, req: Req, reply: Reply, text: str, finish: str) -> list[dict[str, Any]]:
        if not req.stream:
            return [self._candidate_payload(req, reply, text, finish)]
        pieces = chunk_text(text)
        response_id = self._response_id()
        out: list[dict[str, Any]] = []
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            payload = self._candidate_payload(req, reply, piece, finish if last else None,
                                              usage_text=text if last else None)
            payload["responseId"] = response_id
            out.append(payload)
        return out

    def _candidate_payload(self, req: Req, reply: Reply, text: str | None, finish: str | None,
                           *, usage_text: str | None = None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"index": 0}
        if text is not None:
            parts: list[dict[str, Any]] = [{"text": text}]
            if reply.thought and finish is not None:
                parts.insert(0, {"text": reply.thought, "thought": True})
            candidate["content"] = {"parts": parts, "role": "model"}
        if finish is not None:
            candidate["finishReason"] = finish
        if finish == "SAFETY":
            candidate["safetyRatings"] = _ratings(blocked=True)
        payload: dict[str, Any] = {"candidates": [candidate], "modelVersion": req.model,
                                   "responseId": self._response_id()}
        # Like the real stream, only the final chunk carries the full usage.
        if finish is not None:
            payload["usageMetadata"] = self._usage(
                req, reply, usage_text if usage_text is not None else (text or ""))
        return payload

    def _usage(self, req: Req, reply: Reply, text: str) -> dict[str, int]:
        prompt = reply.prompt_tokens if reply.prompt_tokens is not None else tokens_for(req.prompt_chars)
        output = reply.output_tokens if reply.output_tokens is not None else (
            tokens_for(len(text)) if text else 0)
        thoughts = reply.thoughts_tokens if reply.thoughts_tokens is not None else self.thinking_tokens
        cached = reply.cached_tokens if reply.cached_tokens is not None else self.cached_tokens
        usage: dict[str, int] = {"promptTokenCount": prompt}
        # The real API leaves zero counts out of the JSON, so clients must treat
        # a missing field as 0; doing the same here keeps that path tested.
        if output:
            usage["candidatesTokenCount"] = output
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        if cached:
            usage["cachedContentTokenCount"] = cached
        usage["totalTokenCount"] = prompt + output + thoughts
        return usage

    async def _send(self, payloads: list[dict[str, Any]], req: Req,
                    request: web.Request) -> web.StreamResponse:
        if not req.stream:
            return json_response(payloads[-1])
        return await self._send_sse(request, [sse(p) for p in payloads])

    def _response_id(self) -> str:
        return f"fake-{next(self._ids)}"

    @staticmethod
    def _quota_details(model: str, retry_delay: float | None) -> list[dict[str, Any]]:
        details: list[dict[str, Any]] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": "10",
                }],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{"description": "Learn more about Gemini API quotas",
                           "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}],
            },
        ]
        if retry_delay is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": _duration(retry_delay)})
        return details

    @staticmethod
    def _error(code: int, status: str, message: str,
               details: list[dict[str, Any]] | None = None) -> web.Response:
        error: dict[str, Any] = {"code": code, "message": message, "status": status}
        if details:
            error["details"] = details
        return json_response({"error": error}, status=code)


def _duration(seconds: float) -> str:
    """google.protobuf.Duration JSON form: "37s" or "0.250s"."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.3f}s"


def _ratings(*, blocked: bool) -> list[dict[str, Any]]:
    ratings: list[dict[str, Any]] = [
        {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"},
        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
    ]
    if blocked:
        ratings[1]["blocked"] = True
    return ratings
