"""RLMClient and AsyncRLMClient: thin wrappers over the generated stubs, sync and async.

The stubs are the server package's generated code (rlm_service._gen), shared rather than
copied so `make proto` keeps one copy fresh; importing them loads nothing of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from google.protobuf import json_format

from rlm_client import upload
from rlm_client.reconnect import Resume, grace_of
from rlm_service._gen.rlm.v1 import rlm_pb2, rlm_pb2_grpc

_OPTIONS = [
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
    ("grpc.max_receive_message_length", 512 * 1024 * 1024),
    # After a dropped connection, reconnect within a detached run's grace.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def make_request(prompt: str, context: Any = None, **fields: Any) -> rlm_pb2.CompletionRequest:
    """Builds a CompletionRequest; ``context`` may be a str, list or dict (or pass
    ``context_ref`` for an uploaded one)."""
    request = rlm_pb2.CompletionRequest(prompt=prompt, **fields)
    if context is not None:
        if isinstance(context, str):
            request.context.string_value = context
        else:
            json_format.ParseDict(json.loads(json.dumps(context)), request.context)
    return request


class RLMClient:
    """Blocking client. Use as a context manager or call close().

    A context that is a path, or a str above ``upload_above`` UTF-8 bytes, is sent
    with UploadContext first and the request names it (see rlm_client/upload.py)."""

    def __init__(self, target: str = "localhost:8080", *,
                 upload_above: int = upload.UPLOAD_ABOVE) -> None:
        self._channel = grpc.insecure_channel(target, options=_OPTIONS)
        self._stub = rlm_pb2_grpc.RLMServiceStub(self._channel)
        self.upload_above = upload_above

    def upload_context(self, source: upload.TextSource, *,
                       timeout: float | None = None) -> rlm_pb2.ContextRef:
        """Stores a text context on the server for a while; pass ``ref.ref`` as
        ``context_ref``."""
        ref: rlm_pb2.ContextRef = self._stub.UploadContext(upload.chunks(source),
                                                           timeout=timeout)
        return ref

    def _request(self, prompt: str, context: Any, timeout: float | None,
                 fields: dict[str, Any]) -> rlm_pb2.CompletionRequest:
        if upload.wants_upload(context, self.upload_above):
            fields = {**fields, "context_ref": self.upload_context(context, timeout=timeout).ref}
            context = None
        return make_request(prompt, context, **fields)

    def stream(self, prompt: str, context: Any = None, *, timeout: float | None = None,
               **fields: Any) -> Iterator[rlm_pb2.CompletionEvent]:
        """Yields every event of the run as it arrives. Closing the iterator early (or an
        exception such as KeyboardInterrupt while waiting) cancels the run on the server.
        With ``detach_grace_seconds`` > 0 a dropped stream is picked up again (WatchRun)."""
        resume = Resume(grace_of(fields), timeout)
        call = self._stub.StreamCompletion(self._request(prompt, context, timeout, fields),
                                           timeout=timeout)
        try:
            while True:
                try:
                    for event in call:
                        if resume.fresh(event):
                            yield event
                    return
                except grpc.RpcError as exc:
                    if not resume.should_retry(exc):
                        raise
                time.sleep(min(resume.backoff(), resume.time_left()))
                call = self._stub.WatchRun(resume.request(), timeout=resume.timeout_left())
        except (GeneratorExit, KeyboardInterrupt):
            # With a grace the server cannot tell leaving from a drop: say so.
            if resume.can_cancel():
                with contextlib.suppress(grpc.RpcError):
                    self._stub.CancelRun(resume.ref(), timeout=5)
            raise
        finally:
            call.cancel()  # type: ignore[no-untyped-call]

    def complete(self, prompt: str, context: Any = None, *, timeout: float | None = None,
                 **fields: Any) -> rlm_pb2.CompletionResponse:
        response: rlm_pb2.CompletionResponse = self._stub.Complete(
            self._request(prompt, context, timeout, fields), timeout=timeout)
        return response

    def create_session(self) -> rlm_pb2.SessionInfo:
        """A session; pass ``session_id=info.session_id, session_token=info.session_token``
        to stream()/complete() to run in it."""
        info: rlm_pb2.SessionInfo = self._stub.CreateSession(rlm_pb2.CreateSessionRequest())
        return info

    def close_session(self, session: rlm_pb2.SessionInfo) -> rlm_pb2.SessionInfo:
        info: rlm_pb2.SessionInfo = self._stub.CloseSession(rlm_pb2.SessionRef(
            session_id=session.session_id, session_token=session.session_token))
        return info

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRLMClient:
    """asyncio client. Use as an async context manager or await close()."""

    def __init__(self, target: str = "localhost:8080", *,
                 upload_above: int = upload.UPLOAD_ABOVE) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=_OPTIONS)
        self._stub = rlm_pb2_grpc.RLMServiceStub(self._channel)
        self.upload_above = upload_above

    async def upload_context(self, source: upload.TextSource, *,
                             timeout: float | None = None) -> rlm_pb2.ContextRef:
        # The chunks are made lazily by the channel's own iteration, as in the blocking
        # client; a file is read piece by piece.
        ref: rlm_pb2.ContextRef = await self._stub.UploadContext(upload.chunks(source),
                                                                 timeout=timeout)
        return ref

    async def _request(self, prompt: str, context: Any, timeout: float | None,
                       fields: dict[str, Any]) -> rlm_pb2.CompletionRequest:
        if upload.wants_upload(context, self.upload_above):
            ref = await self.upload_context(context, timeout=timeout)
            fields, context = {**fields, "context_ref": ref.ref}, None
        return make_request(prompt, context, **fields)

    async def stream(self, prompt: str, context: Any = None, *, timeout: float | None = None,
                     **fields: Any) -> AsyncIterator[rlm_pb2.CompletionEvent]:
        resume = Resume(grace_of(fields), timeout)
        call: grpc.aio.UnaryStreamCall[Any, rlm_pb2.CompletionEvent] = (
            self._stub.StreamCompletion(await self._request(prompt, context, timeout, fields),
                                        timeout=timeout))
        try:
            while True:
                try:
                    async for event in call:
                        if resume.fresh(event):
                            yield event
                    return
                except grpc.RpcError as exc:
                    if not resume.should_retry(exc):
                        raise
                await asyncio.sleep(min(resume.backoff(), resume.time_left()))
                call = self._stub.WatchRun(resume.request(), timeout=resume.timeout_left())
        except (GeneratorExit, asyncio.CancelledError):
            if resume.can_cancel():
                with contextlib.suppress(grpc.RpcError):
                    await self._stub.CancelRun(resume.ref(), timeout=5)
            raise
        finally:
            call.cancel()

    async def complete(self, prompt: str, context: Any = None, *, timeout: float | None = None,
                       **fields: Any) -> rlm_pb2.CompletionResponse:
        response: rlm_pb2.CompletionResponse = await self._stub.Complete(
            await self._request(prompt, context, timeout, fields), timeout=timeout)
        return response

    async def create_session(self) -> rlm_pb2.SessionInfo:
        info: rlm_pb2.SessionInfo = await self._stub.CreateSession(
            rlm_pb2.CreateSessionRequest())
        return info

    async def close_session(self, session: rlm_pb2.SessionInfo) -> rlm_pb2.SessionInfo:
        info: rlm_pb2.SessionInfo = await self._stub.CloseSession(rlm_pb2.SessionRef(
            session_id=session.session_id, session_token=session.session_token))
        return info

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncRLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["AsyncRLMClient", "RLMClient", "make_request"]
