"""UploadContext: chunked contexts on disk, named by context_ref, against the real
server, sandbox and fake Gemini."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from rlm_client import AsyncRLMClient, RLMClient
from rlm_client.upload import chunks
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc
from rlm_service.server import Server
from tests.conftest import StartServer, collect, final_of, of_kind, repl
from tests.fakes.gemini import FakeGemini

DIGEST = "import hashlib\nprint(len(context), hashlib.sha256(context.encode()).hexdigest())"


def _chunked(data: bytes, size: int) -> list[rlm_pb2.ContextChunk]:
    pieces = [rlm_pb2.ContextChunk(data=data[i:i + size], offset=i)
              for i in range(0, len(data), size)]
    pieces[-1].last = True
    return pieces


async def _upload(stub: rlm_pb2_grpc.RLMServiceStub,
                  pieces: list[rlm_pb2.ContextChunk]) -> rlm_pb2.ContextRef:
    async def gen() -> AsyncIterator[rlm_pb2.ContextChunk]:
        for piece in pieces:
            yield piece
    ref: rlm_pb2.ContextRef = await stub.UploadContext(gen())
    return ref


def _files(server: Server) -> list[str]:
    assert server.contexts is not None
    return sorted(p.name for p in server.contexts.root.iterdir())


def _digest_script(fake: FakeGemini, marker: str) -> None:
    fake.script(marker, [repl(DIGEST), "FINAL(done)"])


def _printed(events: list[rlm_pb2.CompletionEvent]) -> str:
    return str(of_kind(events, "code_block")[0].stdout.strip())


async def test_chunks_in_order_make_the_context_the_run_sees(
        server: Server, stub, fake_gemini: FakeGemini) -> None:
    text = "héllo wörld, ünïcode ✓ " * 3000
    data = text.encode()
    # 7-byte chunks split many two- and three-byte characters between chunks.
    head = _chunked(data[:700], 7)
    head[-1].last = False
    ref = await _upload(stub, [*head, rlm_pb2.ContextChunk(data=data[700:], offset=700),
                               rlm_pb2.ContextChunk(offset=len(data), last=True)])
    assert ref.ref.startswith("ctx-") and ref.size_bytes == len(data) and ref.chars == len(text)
    assert ref.expires_at.ToSeconds() > time.time() + 60
    _digest_script(fake_gemini, "MARK-ORDER")
    events = await collect(stub, "MARK-ORDER digest", context_ref=ref.ref)
    assert final_of(events).answer == "done"
    assert _printed(events) == f"{len(text)} {hashlib.sha256(data).hexdigest()}"
    started = events[0].run_started
    assert (started.context_type, started.context_chars) == ("str", len(text))
    # The root model is told the size and a preview, never the text.
    first = fake_gemini.calls_for("fake-root")[0].first_user_text
    assert f"str of {len(text):,} characters" in first and "héllo wörld" in first
    assert len(first) < 2000
    # Two requests can use one ref.
    _digest_script(fake_gemini, "MARK-AGAIN")
    again = await collect(stub, "MARK-AGAIN digest", context_ref=ref.ref)
    assert _printed(again) == _printed(events)


async def test_a_chunk_out_of_order_fails_and_leaves_no_file(server: Server, stub) -> None:
    pieces = _chunked(b"0123456789" * 10, 10)
    pieces[3], pieces[4] = pieces[4], pieces[3]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _upload(stub, pieces)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "starts at byte 40" in str(info.value.details()) and "30 bytes" in str(
        info.value.details())
    assert _files(server) == []


async def test_an_upload_without_its_last_chunk_stores_nothing(server: Server, stub) -> None:
    pieces = _chunked(b"0123456789" * 10, 10)
    pieces[-1].last = False
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _upload(stub, pieces)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "without a chunk marked last" in str(info.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _upload(stub, [*_chunked(b"abc", 3), rlm_pb2.ContextChunk(data=b"d", offset=3)])
    assert "after the one marked last" in str(info.value.details())
    assert _files(server) == []


async def test_not_utf8_or_cut_inside_a_character_is_refused(server: Server, stub) -> None:
    for data, words in ((b"ok\xff\xfe", "not UTF-8 text (byte 2)"),
                        ("abc✓".encode()[:-1], "ends inside a UTF-8 character")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _upload(stub, _chunked(data, 2))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in str(info.value.details())
    assert _files(server) == []


async def test_size_caps(start_server: StartServer, fake_gemini: FakeGemini) -> None:
    server = await start_server(context_upload_max_bytes=1000, context_upload_total_bytes=1500)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _upload(stub, _chunked(b"x" * 1001, 100))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "upload limit of 1,000 bytes" in str(info.value.details())
        assert _files(server) == []
        kept = await _upload(stub, _chunked(b"y" * 1000, 100))
        # The total cap counts what is stored: no room for a second one now.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _upload(stub, _chunked(b"z" * 600, 100))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "no room" in str(info.value.details())
        assert _files(server) == [kept.ref]


async def test_unknown_and_expired_refs_are_not_found(
        start_server: StartServer, fake_gemini: FakeGemini) -> None:
    server = await start_server(context_upload_ttl_seconds=0.5)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = rlm_pb2_grpc.RLMServiceStub(channel)
        for bogus in ("ctx-" + "0" * 32, "../../etc/passwd", "x" * 500):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await collect(stub, "q", context_ref=bogus)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert repr(bogus[:20])[:-1] in str(info.value.details())
        ref = await _upload(stub, _chunked(b"short lived", 4))
        assert _files(server) == [ref.ref]
        await asyncio.sleep(0.7)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await collect(stub, "q", context_ref=ref.ref)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert ref.ref in str(info.value.details()) and "expired" in str(info.value.details())
        assert _files(server) == []


async def test_concurrent_uploads_keep_their_own_text(
        server: Server, stub, fake_gemini: FakeGemini) -> None:
    texts = [f"document {i}: " + chr(ord("a") + i) * (50_000 + i) for i in range(6)]
    refs = await asyncio.gather(*(_upload(stub, _chunked(t.encode(), 1000)) for t in texts))
    assert len({r.ref for r in refs}) == len(texts)
    assert [r.size_bytes for r in refs] == [len(t) for t in texts]
    for i, ref in enumerate(refs[:2]):
        _digest_script(fake_gemini, f"MARK-CONC-{i}")
        events = await collect(stub, f"MARK-CONC-{i}", context_ref=ref.ref)
        assert _printed(events) == f"{len(texts[i])} " \
            f"{hashlib.sha256(texts[i].encode()).hexdigest()}"


async def test_a_cancelled_upload_leaves_no_file(server: Server, stub) -> None:
    sent = asyncio.Event()

    async def gen() -> AsyncIterator[rlm_pb2.ContextChunk]:
        yield rlm_pb2.ContextChunk(data=b"a" * 100_000, offset=0)
        sent.set()
        await asyncio.sleep(3600)
        yield rlm_pb2.ContextChunk(data=b"never", offset=100_000)

    assert server.contexts is not None
    call = stub.UploadContext(gen())
    await asyncio.wait_for(sent.wait(), 5)
    end = time.monotonic() + 5
    while server.contexts.bytes_used < 100_000:
        assert time.monotonic() < end, "the first chunk never arrived"
        await asyncio.sleep(0.01)
    assert [n.endswith(".part") for n in _files(server)] == [True]
    call.cancel()
    while _files(server) or server.contexts.bytes_used:
        assert time.monotonic() < end, f"left behind: {_files(server)}"
        await asyncio.sleep(0.01)


async def test_both_a_context_and_a_ref_cannot_be_set() -> None:
    request = rlm_pb2.CompletionRequest(prompt="q", context_ref="ctx-1")
    request.context.string_value = "inline"
    assert request.WhichOneof("context_source") == "context"


async def test_the_clients_upload_above_their_threshold(
        server: Server, fake_gemini: FakeGemini, tmp_path: Path) -> None:
    text = "line of text ✓\n" * 2000
    target = f"127.0.0.1:{server.port}"
    _digest_script(fake_gemini, "MARK-CLIENT")
    expected = f"{len(text)} {hashlib.sha256(text.encode()).hexdigest()}"
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")

    def blocking(context: object, upload_above: int) -> str:
        # In a thread: the server runs on this test's event loop.
        with RLMClient(target, upload_above=upload_above) as client:
            events = list(client.stream("MARK-CLIENT digest", context))
        return str(of_kind(events, "code_block")[0].stdout.strip())

    for context in (text, path):
        assert await asyncio.to_thread(blocking, context, 1000) == expected
    async with AsyncRLMClient(target, upload_above=1000) as aclient:
        response = await aclient.complete("MARK-CLIENT digest", text)
        assert response.answer == "done"
    assert server.contexts is not None and server.contexts.count == 3
    # Below the threshold the context goes inline, as before.
    assert await asyncio.to_thread(blocking, text, 1 << 20) == expected
    assert server.contexts.count == 3
    assert sum(1 for _ in chunks(text, 1000)) > 30
