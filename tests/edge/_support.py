"""Raw-bytes calls and log checks shared by the edge tests."""

from __future__ import annotations

import logging

import grpc

STREAM = "/rlm.v1.RLMService/StreamCompletion"
COMPLETE = "/rlm.v1.RLMService/Complete"


async def call_raw(channel: grpc.aio.Channel, method: str, raw: bytes,
                   timeout: float = 10.0) -> grpc.aio.AioRpcError | None:
    """Sends ``raw`` as the request message, unparsed; returns the error, or None on OK."""
    try:
        if method == STREAM:
            call = channel.unary_stream(method)(raw, timeout=timeout)
            async for _ in call:
                pass
        else:
            await channel.unary_unary(method)(raw, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


def noisy_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """ERROR (or worse) lines and tracebacks: what a hostile client must never cause."""
    return [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
