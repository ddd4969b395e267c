"""Run control on the HTTP face: GET /v1/runs/{id}, POST /v1/runs/{id}:cancel and
GET /v1/runs/{id}:watch (SSE), the same as GetRun, CancelRun and WatchRun.

The run token goes in the ``X-Run-Token`` header, or the ``run_token`` query
parameter for EventSource, which cannot set headers."""

from __future__ import annotations

from aiohttp import web
from google.protobuf import json_format

from rlm_service.http import sse
from rlm_service.http.errors import error_response, status_for
from rlm_service.http.routes import SERVICER
from rlm_service.run.types import RequestFailed
from rlm_service.runs.registry import LiveRun
from rlm_service.runs.rpc import run_info

_ID = "{run_id:[^/:]+}"


def _find(request: web.Request) -> LiveRun:
    token = request.headers.get("X-Run-Token") or request.query.get("run_token", "")
    return request.app[SERVICER].runs.get(request.match_info["run_id"], token)


def _info(request: web.Request, live: LiveRun) -> web.Response:
    info = run_info(request.app[SERVICER].runs, live)
    return web.json_response(json_format.MessageToDict(info, always_print_fields_with_no_presence=True))


def _after_seq(request: web.Request) -> int | None:
    raw = request.query.get("after_seq") or request.headers.get("Last-Event-ID") or "0"
    return int(raw) if raw.isdigit() and len(raw) < 20 else None


async def get_run(request: web.Request) -> web.Response:
    try:
        return _info(request, _find(request))
    except RequestFailed as exc:
        return error_response(status_for(exc), exc.message)


async def cancel_run(request: web.Request) -> web.Response:
    try:
        live = _find(request)
    except RequestFailed as exc:
        return error_response(status_for(exc), exc.message)
    live.cancel("cancelled by CancelRun")
    await live.wait()
    return _info(request, live)


async def watch_run(request: web.Request) -> web.StreamResponse:
    after = _after_seq(request)
    if after is None:
        return error_response(400, "after_seq must be a whole number >= 0")
    try:
        attachment = _find(request).attach(after)
    except RequestFailed as exc:
        return error_response(status_for(exc), exc.message)
    # Entered first, so a client gone while the stream opens still detaches.
    async with attachment as events:
        response = await sse.open_stream(request)
        async for event in events:
            await sse.send_event(response, event)
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"/v1/runs/{_ID}:watch", watch_run)
    app.router.add_post(f"/v1/runs/{_ID}:cancel", cancel_run)
    app.router.add_get(f"/v1/runs/{_ID}", get_run)
