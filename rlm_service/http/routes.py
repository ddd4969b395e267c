"""POST /completion (the Go service's contract) and POST /v1/completions:stream (SSE)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from rlm_service._gen.rlm.v1 import rlm_pb2
from rlm_service.http import sse
from rlm_service.http._runs import run_events, spec_for
from rlm_service.http.errors import error_response, status_for
from rlm_service.run.types import RequestFailed
from rlm_service.servicer import RLMServicer
from rlm_service.slots import Overloaded

SERVICER: web.AppKey[RLMServicer] = web.AppKey("servicer", RLMServicer)


class BadBody(ValueError):
    pass


async def _read_request(request: web.Request) -> rlm_pb2.CompletionRequest:
    """The body as a CompletionRequest (protobuf JSON mapping; unknown fields ignored,
    as the Go service's decoder does)."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadBody(f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # edge: a hostile depth is a bad body, not a 500
        raise BadBody("the body is nested too deeply to be a request") from None
    if not isinstance(body, dict):
        raise BadBody("the body must be a JSON object such as {\"prompt\": \"...\"}")
    if not isinstance(body.get("prompt"), str):
        raise BadBody("prompt is required and must be a string")
    _reject_bools(body, rlm_pb2.CompletionRequest.DESCRIPTOR)
    try:
        return json_format.ParseDict(body, rlm_pb2.CompletionRequest(),
                                     ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        if "too deep" in str(exc):
            # protobuf names no field; the deepest top-level value is the one to fix.
            field = max(body, key=lambda k: _depth(body[k]))
            raise BadBody(f"{field} is nested too deeply ({exc})") from None
        raise BadBody(f"invalid request: {exc}") from None


def _depth(value: Any) -> int:
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [v for item in level if isinstance(item, dict | list)
                 for v in (item.values() if isinstance(item, dict) else item)]
    return depth


def _reject_bools(body: dict[str, Any], descriptor: Any) -> None:
    """json_format takes true/false for numbers (bool is an int in Python) and a string
    for a message; refuse both."""
    for key, value in body.items():
        field = descriptor.fields_by_name.get(key) or next(
            (f for f in descriptor.fields if f.json_name == key), None)
        if field is None:
            continue
        if field.message_type is not None and field.message_type.full_name.startswith("rlm."):
            if value is not None and not isinstance(value, dict):
                raise BadBody(f"{key} must be an object")
            _reject_bools(value or {}, field.message_type)
        elif isinstance(value, bool) and field.type != field.TYPE_BOOL:
            raise BadBody(f"{key} must be a number, not {str(value).lower()}")


async def _spec(request: web.Request) -> Any:
    servicer = request.app[SERVICER]
    try:
        return spec_for(servicer, await _read_request(request))
    except BadBody as exc:
        return error_response(400, str(exc))
    except RequestFailed as exc:  # bad input, an unknown context_ref, overloaded, ...
        return _failed(exc)


def _failed(exc: RequestFailed) -> web.Response:
    response = error_response(status_for(exc), exc.message)
    if isinstance(exc, Overloaded):
        response.headers["Retry-After"] = exc.retry_after_header
    return response


def _go_response(final: rlm_pb2.FinalAnswer, spec: Any) -> dict[str, Any]:
    total = final.total_usage
    return {
        # The Go service's fields, exactly.
        "root_model": spec.root_model,
        "prompt": spec.prompt,
        "response": final.answer,
        "usage_summary": {
            "total_calls": total.calls,
            "total_input_tokens": total.prompt_tokens,
            "total_output_tokens": total.output_tokens,
        },
        "execution_time": final.duration_seconds,
        # Ours, added.
        "request_id": final.request_id,
        "iterations": final.iterations,
        "forced": final.forced,
        "stop_reason": rlm_pb2.StopReason.Name(final.stop_reason),
        "final": json_format.MessageToDict(final),
    }


async def completion(request: web.Request) -> web.StreamResponse:
    spec = await _spec(request)
    if isinstance(spec, web.Response):
        return spec
    final: rlm_pb2.FinalAnswer | None = None
    stream = run_events(request.app[SERVICER], spec)
    async with stream as events:
        async for event in events:
            if event.HasField("final_answer"):
                final = event.final_answer
    if stream.failure is not None:
        return _failed(stream.failure)
    if final is None:
        return error_response(500, "the run ended without an answer")
    return web.json_response(_go_response(final, spec))


async def stream(request: web.Request) -> web.StreamResponse:
    spec = await _spec(request)
    if isinstance(spec, web.Response):
        return spec
    response = await sse.open_stream(request)
    # A client that goes away cancels this handler (handler_cancellation), which
    # closes the run's events and so cancels the run, as a gRPC cancel does.
    async with run_events(request.app[SERVICER], spec) as events:
        async for event in events:
            await sse.send_event(response, event)
    await response.write_eof()
    return response


def method_not_allowed(allowed: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        response = error_response(405, f"method {request.method} is not allowed; use {allowed}")
        response.headers["Allow"] = allowed
        return response
    return handler
