"""The Gemini backend's two request paths: plain calls send hand-built REST JSON
through the SDK's API client, streamed calls (and the fallback) use the SDK's
typed API. Both must put the same request on the wire and read replies alike."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from rlm_service.models import GenerateOptions, Message, ModelError
from rlm_service.models.gemini import GeminiBackend
from tests.fakes import FakeGemini, Fault, Reply
from tests.models._support import GEMINI_KEY, make_settings

CONVERSATION = [
    Message("user", "first question"),
    Message("model", "an answer with \"quotes\" and\nnewlines"),
    Message("user", "ünïcödé follow-up ✓"),
]


def _backend(fake: FakeGemini, *, typed_only: bool, **overrides: Any) -> GeminiBackend:
    return GeminiBackend(make_settings(gemini_api_key=GEMINI_KEY, gemini_base_url=fake.base_url,
                                       **overrides), typed_only=typed_only)


def _camel(value: Any) -> Any:
    """REST field names are camelCase; the SDK sends some nested ones in
    snake_case, which the API also accepts, and an empty generationConfig."""
    if isinstance(value, dict):
        return {_camel_key(k): _camel(v) for k, v in value.items() if v != {}}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word.title() for word in rest)


@pytest.mark.parametrize("options", [
    GenerateOptions(),
    GenerateOptions(system_prompt="Be brief."),
    GenerateOptions(temperature=0.0),
    GenerateOptions(temperature=0.7, thinking_budget=0, system_prompt="sys\nprompt"),
    GenerateOptions(thinking_budget=1024),
], ids=["none", "system", "temp0", "all", "thinking"])
async def test_both_paths_send_the_same_request(fake_gemini: FakeGemini,
                                                options: GenerateOptions) -> None:
    fast = _backend(fake_gemini, typed_only=False)
    typed = _backend(fake_gemini, typed_only=True)
    try:
        a = await fast.generate("gemini-2.5-flash", CONVERSATION, options)
        b = await typed.generate("gemini-2.5-flash", CONVERSATION, options)
        # Only the fast backend has the SDK's API client to send JSON through.
        assert fast.fast_path and not typed.fast_path
    finally:
        await fast.aclose()
        await typed.aclose()
    sent_fast, sent_typed = fake_gemini.requests
    assert sent_fast.model == sent_typed.model == "gemini-2.5-flash"
    assert _camel(sent_fast.body) == _camel(sent_typed.body)
    assert sent_fast.headers["x-goog-api-key"] == sent_typed.headers["x-goog-api-key"] == GEMINI_KEY
    assert sent_fast.headers["User-Agent"] == sent_typed.headers["User-Agent"]
    assert (a.text, a.usage, a.finish_reason) == (b.text, b.usage, b.finish_reason)


@pytest.mark.parametrize("typed_only", [False, True], ids=["fast", "typed"])
async def test_vertex_express_mode_uses_the_publisher_model_path(
        fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch, typed_only: bool) -> None:
    monkeypatch.setenv("GOOGLE_GENAI_USE_VERTEXAI", "true")
    monkeypatch.setenv("GOOGLE_API_KEY", "vertex-express-key-0123")
    backend = GeminiBackend(make_settings(gemini_base_url=fake_gemini.base_url),
                            typed_only=typed_only)
    try:
        reply = await backend.generate("gemini-2.5-flash", CONVERSATION,
                                       GenerateOptions(system_prompt="Be brief."))
    finally:
        await backend.aclose()
    assert reply.text
    [sent] = fake_gemini.requests
    assert sent.path == "/v1beta1/publishers/google/models/gemini-2.5-flash:generateContent"
    assert sent.headers["x-goog-api-key"] == "vertex-express-key-0123"
    assert sent.system_instruction == "Be brief."


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("typed_only", [False, True], ids=["fast", "typed"])
async def test_thought_summaries_are_not_the_answer(fake_gemini: FakeGemini, typed_only: bool,
                                                    stream: bool) -> None:
    fake_gemini.script("MARK-THOUGHT", [Reply(text="the answer", thought="I think therefore")])
    deltas: list[str] = []
    backend = _backend(fake_gemini, typed_only=typed_only)
    try:
        reply = await backend.generate("m", [Message("user", "MARK-THOUGHT q")],
                                       GenerateOptions(),
                                       on_delta=deltas.append if stream else None)
    finally:
        await backend.aclose()
    assert reply.text == "the answer"
    assert "".join(deltas) == ("the answer" if stream else "")
    assert fake_gemini.requests[-1].stream is stream


@pytest.mark.parametrize("body", [
    b'[1, 2, 3]',
    b'"just a string"',
    b'{"candidates": "not a list"}',
    b'{"candidates": [{"content": {"parts": [{"text": 42}]}}]}',
    b'{"candidates": [{"content": {"parts": "text"}}]}',
    b'{"candidates": [{"content": {"parts": [{"text": "ok"}]}}], "usageMetadata": []}',
    b'{"candidates": [{"content": {"parts": [{"text": "ok"}]}}], '
    b'"usageMetadata": {"promptTokenCount": {"n": 1}}}',
], ids=["list", "string", "candidates", "text", "parts", "usage", "count"])
@pytest.mark.parametrize("typed_only", [False, True], ids=["fast", "typed"])
async def test_wrong_shaped_reply_is_malformed_and_retried(fake_gemini: FakeGemini, body: bytes,
                                                           typed_only: bool) -> None:
    fake_gemini.inject(Fault.MALFORMED_JSON, count=10, body=body)
    backend = _backend(fake_gemini, typed_only=typed_only, model_max_retries=2)
    try:
        with pytest.raises(ModelError) as info:
            await backend.generate("m", CONVERSATION, GenerateOptions())
    finally:
        await backend.aclose()
    # The SDK's typed path reads some odd shapes as an empty answer; both are retried.
    assert info.value.kind == "malformed" or (typed_only and info.value.kind == "empty")
    assert info.value.retries == 2
    assert len(fake_gemini.requests) == 3


@pytest.mark.parametrize("typed_only", [False, True], ids=["fast", "typed"])
async def test_model_name_cannot_escape_the_path(fake_gemini: FakeGemini,
                                                 typed_only: bool) -> None:
    backend = _backend(fake_gemini, typed_only=typed_only)
    try:
        with pytest.raises(ModelError) as info:
            await backend.generate("../../v1/evil", CONVERSATION, GenerateOptions())
    finally:
        await backend.aclose()
    assert info.value.kind == "bad_request"
    assert fake_gemini.requests == []


async def test_http_proxy_from_the_environment_is_used(fake_gemini: FakeGemini,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's default transport honoured HTTP(S)_PROXY; ours must as well.
    seen: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        async with aiohttp.ClientSession() as upstream, upstream.request(
                request.method, str(request.url), data=await request.read(),
                headers={k: v for k, v in request.headers.items()
                         if k.lower() not in ("host", "content-length")}) as reply:
            return web.Response(status=reply.status, body=await reply.read(),
                                content_type=reply.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    backend = _backend(fake_gemini, typed_only=False)
    try:
        reply = await backend.generate("m", CONVERSATION, GenerateOptions())
        streamed = await backend.generate("m", CONVERSATION, GenerateOptions(),
                                          on_delta=lambda _: None)
    finally:
        await backend.aclose()
        await runner.cleanup()
    assert reply.text and streamed.text
    assert len(seen) == 2 and all(fake_gemini.base_url in url for url in seen)
    assert len(fake_gemini.requests) == 2
