"""Server-Sent Events framing: one protobuf-JSON CompletionEvent per data line;
heartbeats are comments, which EventSource-style parsers skip."""

from __future__ import annotations

from aiohttp import web
from google.protobuf import json_format

from rlm_service._gen.rlm.v1 import rlm_pb2


async def open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        # Proxies such as nginx would otherwise buffer the stream.
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    return response


async def send_event(response: web.StreamResponse, event: rlm_pb2.CompletionEvent) -> None:
    if event.HasField("heartbeat"):
        frame = f": heartbeat seq={event.seq} elapsed={event.heartbeat.elapsed_seconds:.1f}\n\n"
    else:
        # indent=None keeps the JSON on one line, as an SSE data field must be.
        data = json_format.MessageToJson(event, indent=None)
        frame = f"id: {event.seq}\ndata: {data}\n\n"
    await response.write(frame.encode())
