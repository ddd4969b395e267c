"""The ``generateContent`` wire format, for both request paths of the Gemini backend.

The request JSON (REST field names) for the fast path, and one reading of a reply,
whether it arrives as the SDK's typed response or as the REST JSON: both become
``Chunk``s, and a reply's chunks become a ``ModelReply`` or an ``AttemptError``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.genai import types

from rlm_service.models._base import GenerateOptions, Message, ModelReply, TokenUsage
from rlm_service.models._retry import EMPTY_RETRY_LIMIT, AttemptError

_SAFETY_REASONS = {
    "SAFETY": "the model stopped for safety reasons (SAFETY) before answering",
    "RECITATION": "the model stopped because its answer would recite protected material (RECITATION)",
    "PROHIBITED_CONTENT": "the model stopped because the answer would contain prohibited content (PROHIBITED_CONTENT)",
    "BLOCKLIST": "the model stopped because the answer contained blocklisted terms (BLOCKLIST)",
    "SPII": "the model stopped because the answer would reveal sensitive personal information (SPII)",
    "IMAGE_SAFETY": "the model stopped for image safety reasons (IMAGE_SAFETY) before answering",
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)s\s*$")


@dataclass(frozen=True, slots=True)
class Chunk:
    """What the reply logic needs from one response (or one streamed chunk),
    whichever path produced it."""

    text: str = ""
    has_candidate: bool = False
    finish: str | None = None
    block: str | None = None
    usage: TokenUsage | None = None


def chunk_from_sdk(response: types.GenerateContentResponse) -> Chunk:
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
        return Chunk(block=block, usage=usage)
    first = response.candidates[0]
    parts = first.content.parts if first.content is not None else None
    # Thought summaries are not the answer.
    text = "".join(p.text for p in parts or () if p.text and not p.thought)
    finish = _enum_name(first.finish_reason) if first.finish_reason is not None else None
    return Chunk(text=text, has_candidate=True, finish=finish, block=block, usage=usage)


def chunk_from_json(payload: Any) -> Chunk:
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
            return Chunk(block=block, usage=usage)
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
        return Chunk(text="".join(texts), has_candidate=True,
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


def reply_from(chunks: Sequence[Chunk], what: str) -> ModelReply:
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


def retry_delay(details: Any) -> float | None:
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
